"""Models placed by accelerate (`load_model(..., device_map=...)`): a split the CPU can do here, some blocks
offloaded to disk through `offload_folder` and the rest on the CPU, gives what the unsplit model gives.

Disk offload runs the same code as a model too large for its GPUs (CPU offload beside GPUs): each offloaded
module holds a meta placeholder, and accelerate's hook brings its weights to the execution device for every
call. Activations, Steer, Ablate, generation (with and without the KV cache, plain-HF fast path and bridge
path), CAA vectors, the refusal fit and MELBO are compared with the unsplit model; weight editing refuses
clearly; every placement argument is checked with an error that names it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_caa import LETTER_FORMAT, tiny_pairs
from test_refusal import HARMFUL, HARMLESS, make_planted_refusal_folder, says_no

from interp.activations import LastK, collect_residuals
from interp.caa import build_caa_vectors
from interp.chat import format_chats, tokenize
from interp.directions import Direction
from interp.hooked import (
    forward,
    hook_points,
    hooks_on,
    input_device,
    model_device,
    offloaded_weights,
    plain_hooks,
    plain_model,
    share_clone,
)
from interp.melbo import MelboConfig, learn_melbo
from interp.models import load_model, model_name
from interp.refusal import SelectionConfig, fit_refusal_direction
from interp.runner import PromptCache, frozen, generate, generate_greedy, last_logits
from interp.steering import Ablate, Steer
from interp.weight_diff import weight_diff_directions
from interp.weight_edit import abliterate, orthogonalize_weights

from tiny_letters import make_letter_model_folder

pytestmark = pytest.mark.usefixtures("single_thread")


def split_map(n_layers: int, disk: set[int], *, embed: str = "cpu", head: str = "disk") -> dict[str, str]:
    """A device map of a Llama-layout model: layers in `disk` (and the head) offloaded to disk, the rest on the CPU."""
    layers = {f"model.layers.{i}": "disk" if i in disk else "cpu" for i in range(n_layers)}
    return {"model.embed_tokens": embed, **layers, "model.norm": "disk", "model.rotary_emb": "cpu", "lm_head": head}


@pytest.fixture(scope="module")
def letter_folder(tmp_path_factory) -> Path:
    return make_letter_model_folder(tmp_path_factory.mktemp("split-letters"))


@pytest.fixture(scope="module")
def pair(letter_folder, tmp_path_factory):
    """(unsplit, split): the split one has its embedding, layer 1, the final norm and the head on disk."""
    unsplit = load_model(letter_folder, device="cpu")
    split = load_model(letter_folder, device_map=split_map(3, {1}, embed="disk"),
                       offload_folder=tmp_path_factory.mktemp("offload"))
    return unsplit, split


@pytest.fixture(scope="module")
def prompts(pair):
    return format_chats(pair[0], ["hello world", "what is the capital of france ?", "tell me a joke about the sky",
                                  "i love the sea"])


def direction(model, layer: int = 1, seed: int = 0) -> Direction:
    vector = torch.randn(32, generator=torch.Generator().manual_seed(seed)) * 3
    return Direction(vector, layer=layer, model=model_name(model), source="test")


def test_the_split_offloads_and_takes_inputs_on_the_embedding_device(pair):
    unsplit, split = pair
    plain = plain_model(split)
    assert plain.hf_device_map["model.layers.1"] == "disk"
    offloaded = offloaded_weights(plain)
    assert "model.embed_tokens.weight" in offloaded and "model.layers.1.mlp.down_proj.weight" in offloaded
    assert not any(name.startswith("model.layers.0.") for name in offloaded)
    assert model_device(split) == input_device(plain) == torch.device("cpu") and split.cfg.device == "cpu"
    batch = tokenize(unsplit, format_chats(unsplit, ["hello world", "tell me a joke about the sky"]))
    with torch.no_grad():
        assert torch.equal(forward(split, batch), forward(unsplit, batch))  # the bridge path
        # The plain clone keeps accelerate's hooks, bound to the clone itself: it runs its own children.
        seen = []
        with plain_hooks(split, [("blocks.1.hook_resid_pre", lambda activation, hook: seen.append(hook.name))]):
            plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
        assert seen == ["blocks.1.hook_resid_pre"]


def test_activations_steer_and_ablate_equal_the_unsplit_model(pair, prompts):
    unsplit, split = pair
    for site in ("resid_pre", "attn_out", "mlp_out", "resid_post"):
        expected = collect_residuals(unsplit, prompts, [0, 1, 2], LastK(2), site=site, progress=False)
        assert torch.equal(collect_residuals(split, prompts, [0, 1, 2], LastK(2), site=site, progress=False), expected)
    batch = tokenize(unsplit, prompts)
    bridged_calls: list[str] = []
    watch = split.blocks[1].register_forward_hook(lambda *args: bridged_calls.append("x"))  # not a hook point
    last_logits(split, prompts, [Steer(direction(unsplit), scale=2.0)])
    watch.remove()
    assert not bridged_calls  # the fast path ran the plain clone, not a silent fallback to the bridge
    for interventions in ([Steer(direction(unsplit), scale=2.0)], [Ablate(direction(unsplit))],
                          [Steer(direction(unsplit, 2), scale=-1.0), Ablate(direction(unsplit, 0, seed=1))]):
        expected, acts = last_logits(unsplit, prompts, interventions, batch_size=3, record_layers=[1, 2])
        logits, split_acts = last_logits(split, prompts, interventions, batch_size=3, record_layers=[1, 2])
        assert torch.equal(logits, expected) and torch.equal(split_acts, acts)  # the plain-HF fast path
        with interventions[0].apply(split), torch.no_grad():  # the bridge's own hook points
            bridged = forward(split, batch)[:, -1]
        with interventions[0].apply(unsplit), torch.no_grad():
            assert torch.equal(bridged, forward(unsplit, batch)[:, -1])


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")  # TL's note that it recomputes the norm
def test_hooks_inside_an_offloaded_norm_see_its_real_weights(pair, prompts):
    """An edited hook_normalized makes the bridge recompute the norm from its raw weight, outside the HF module's
    own forward (where accelerate fills it): `materialise_offloaded_components` covers that on TL < 4.3."""
    unsplit, split = pair
    batch = tokenize(unsplit, prompts)
    for name in ("blocks.1.ln1.hook_normalized", "blocks.1.ln2.hook_scale", "ln_final.hook_normalized"):
        outputs = []
        for model in (unsplit, split):
            with hooks_on(model, [(name, lambda activation, hook: activation * 1.5)]), torch.no_grad():
                outputs.append(forward(model, batch))
        assert torch.equal(outputs[1], outputs[0]), name


@pytest.mark.parametrize("fast", [True, False])
def test_generation_with_and_without_the_kv_cache_equals_the_unsplit_model(pair, prompts, fast):
    unsplit, split = pair
    for interventions in ([], [Steer(direction(unsplit), scale=3.0, positions="new")], [Ablate(direction(unsplit))]):
        expected = generate(unsplit, prompts, interventions=interventions, max_new_tokens=6, progress=False)
        for use_cache in (True, False):
            assert generate(split, prompts, interventions=interventions, max_new_tokens=6, use_cache=use_cache,
                            progress=False, fast=fast) == expected
    assert generate_greedy(split, prompts, [Ablate(direction(unsplit))], max_new_tokens=6, batch_size=2) == \
        generate_greedy(unsplit, prompts, [Ablate(direction(unsplit))], max_new_tokens=6, batch_size=2)


def test_caa_vectors_and_prompt_cache_equal_the_unsplit_model(pair):
    unsplit, split = pair
    for kv_cache in (True, False):
        expected = build_caa_vectors(unsplit, tiny_pairs(8), LETTER_FORMAT, batch_size=3, kv_cache=kv_cache, progress=False)
        vectors = build_caa_vectors(split, tiny_pairs(8), LETTER_FORMAT, batch_size=3, kv_cache=kv_cache, progress=False)
        assert torch.allclose(vectors.vectors, expected.vectors, atol=1e-6)
    # The continuation cache skips the layers below the intervention (inputs kept per layer, each on its device).
    heads = [tokenize(unsplit, [prompt]).input_ids[0].tolist() for prompt in format_chats(unsplit, ["hello", "the sea"])]
    steer = [Steer(direction(unsplit, 2), scale=2.0)]
    expected = PromptCache(unsplit, heads, progress=False).run([5, 6], interventions=steer, token_ids=[7, 8])
    result = PromptCache(split, heads, progress=False).run([5, 6], interventions=steer, token_ids=[7, 8])
    assert torch.allclose(result.log_probs, expected.log_probs, atol=1e-6)


def test_melbo_learns_the_same_vectors_and_restores_the_gradient_flags(pair, prompts):
    unsplit, split = pair
    config = MelboConfig(0, 2, radius=3.0, n_vectors=2, steps=4, lr=0.02)
    expected = learn_melbo(unsplit, prompts[:3], config, progress=False)
    result = learn_melbo(split, prompts[:3], config, progress=False)
    assert torch.allclose(torch.stack([d.vector for d in result.vectors]),
                          torch.stack([d.vector for d in expected.vectors]), atol=1e-5)
    assert all(parameter.requires_grad for parameter in plain_model(split).parameters())
    with frozen(split):  # flags live in module slots: accelerate swaps an offloaded placeholder on every call
        forward(split, tokenize(split, prompts[:1]))
        assert not any(parameter.requires_grad for parameter in plain_model(split).parameters())


def test_refusal_fit_on_a_split_model_equals_the_unsplit_fit(tmp_path):
    folder, _ = make_planted_refusal_folder(tmp_path / "planted")
    unsplit = load_model(folder, device="cpu")
    split = load_model(folder, device_map=split_map(4, {0, 2, 3}), offload_folder=tmp_path / "offload")
    fits = [
        fit_refusal_direction(model, HARMFUL[:8], HARMLESS[:8], judge=says_no, n_select_harmful=3, n_select_harmless=3,
                              filter_new_tokens=3, config=SelectionConfig(score_all=True, progress=False))
        for model in (unsplit, split)
    ]
    assert fits[1].harmful_refused == fits[0].harmful_refused
    assert (fits[1].direction.layer, fits[1].direction.meta["position"]) == (fits[0].direction.layer, fits[0].direction.meta["position"])
    assert torch.allclose(fits[1].table.vectors, fits[0].table.vectors, atol=1e-5)  # the differences in means
    assert torch.allclose(fits[1].table.ablation_score, fits[0].table.ablation_score, atol=1e-4, equal_nan=True)


def test_weight_editing_refuses_offloaded_weights_and_works_on_a_dispatched_model(pair, letter_folder, tmp_path):
    unsplit, split = pair
    d = direction(unsplit)
    with pytest.raises(ValueError, match=r"model: \d+ weights .* are offloaded by accelerate.*abliterate"):
        orthogonalize_weights(split, d)
    assert offloaded_weights(plain_model(split))  # nothing was touched
    # A placement without offload (every weight real, each on its device; here all on the CPU) is edited in place.
    placed = load_model(letter_folder, device_map={name: "cpu" for name in split_map(3, set())})
    assert not offloaded_weights(plain_model(placed))
    orthogonalize_weights(placed, d)
    edited = load_model(abliterate(letter_folder, d, tmp_path / "edited"), device="cpu")
    batch = tokenize(unsplit, format_chats(unsplit, ["hello world"]))
    with torch.no_grad():
        assert torch.allclose(forward(placed, batch), forward(edited, batch), atol=1e-5)


def test_svd_of_weight_differences_refuses_offloaded_weights(pair):
    unsplit, split = pair
    with pytest.raises(ValueError, match=r"edited: \d+ weights .* are offloaded by accelerate.*SVD"):
        weight_diff_directions(unsplit, split, layers=[0])


def test_share_clone_rebinds_accelerate_forwards_to_the_clone(pair):
    plain = plain_model(pair[1])
    layer = plain.model.layers[1].mlp.down_proj
    clone = share_clone(layer)
    assert clone.forward.args[0] is clone and clone._old_forward.__self__ is clone
    assert clone._hf_hook is layer._hf_hook  # one offload store, read by each tree for itself
    assert hook_points(pair[1])  # the bridge is untouched


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "cpu", "device_map": "auto"}, r"device, device_map: give one of them"),
        ({"device_map": "everywhere"}, r"device_map: expected one of \('auto'"),
        ({"device_map": {}}, r"device_map: expected a strategy"),
        ({"device_map": {"model": "meta"}}, r"device_map\['model'\]: 'meta' holds no weights"),
        ({"device_map": {"model": 1.5}}, r"device_map\['model'\]: expected a GPU index"),
        ({"device_map": {"": "disk"}}, r"offload_folder: device_map puts modules on 'disk'"),
        ({"max_memory": {"cpu": "1GiB"}}, r"max_memory: only used with a device_map"),
        ({"offload_folder": "x"}, r"offload_folder: only used with a device_map"),
        ({"device_map": {"": "cpu"}, "max_memory": {"cpu": "1GiB"}}, r"max_memory: only used when accelerate chooses"),
        ({"device_map": "auto", "max_memory": {"cpu": "lots"}}, r"max_memory\['cpu'\]: expected a size"),
        ({"device_map": "auto", "max_memory": {"gpu": 10}}, r"max_memory: keys are GPU indices"),
        ({"quantization": "3bit"}, r"quantization: expected one of \('8bit', '4bit'\)"),
        ({"dtype": torch.int8}, r"dtype: expected a floating-point torch.dtype"),
    ],
)
def test_placement_arguments_are_checked_before_loading(letter_folder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_model(letter_folder, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without CUDA gives")
def test_gpu_placements_on_a_machine_without_cuda_are_clear_errors(letter_folder):
    with pytest.raises(ValueError, match=r"device_map\['model.layers.0'\]: 'cuda:1' was asked for, but this torch"):
        load_model(letter_folder, device_map={"model.layers.0": "cuda:1"})
    with pytest.raises(ValueError, match=r"device_map\['lm_head'\]: 'cuda:0' was asked for"):
        load_model(letter_folder, device_map={"model": "cpu", "lm_head": 0})


def test_an_offload_folder_holding_other_files_is_refused_and_kept(letter_folder, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"offload_folder: .* holds other files \(notes.txt"):
        load_model(letter_folder, device_map=split_map(3, {1}), offload_folder=folder)
    assert (folder / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"offload_folder: .* is a file"):
        load_model(letter_folder, device_map=split_map(3, {1}), offload_folder=tmp_path / "file")


def test_auto_placement_under_a_memory_budget_offloads_and_still_agrees(pair, letter_folder, prompts, tmp_path):
    unsplit = pair[0]
    auto = load_model(letter_folder, device_map="auto", max_memory={"cpu": 60_000}, offload_folder=tmp_path / "off")
    assert "disk" in set(plain_model(auto).hf_device_map.values())
    steer = [Steer(direction(unsplit), scale=2.0)]
    assert torch.equal(last_logits(auto, prompts, steer)[0], last_logits(unsplit, prompts, steer)[0])


@pytest.mark.integration
@pytest.mark.generation
def test_smollm_with_blocks_on_disk_steers_and_generates_as_unsplit(smollm, tmp_path):
    # SmolLM2 ties its head to the embedding: both stay on the CPU; 10 of its 30 blocks go to disk.
    device_map = split_map(30, set(range(10, 30, 2)), head="cpu")
    split = load_model("smollm2-135m-instruct", device_map=device_map, offload_folder=tmp_path / "offload")
    assert len({name.split(".")[2] for name in offloaded_weights(plain_model(split)) if name.startswith("model.layers.")}) == 10
    prompts = format_chats(smollm, ["Tell me about the weather today.", "Write a short poem about the sea."])
    d = Direction(torch.randn(576, generator=torch.Generator().manual_seed(0)), layer=12, model=model_name(smollm),
                  source="test")
    for interventions in ([Steer(d, scale=8.0, unit=True, positions="new")], [Ablate(d)]):
        expected = generate(smollm, prompts, interventions=interventions, max_new_tokens=12, progress=False)
        assert generate(split, prompts, interventions=interventions, max_new_tokens=12, progress=False) == expected
    expected = collect_residuals(smollm, prompts, [5, 20], LastK(3), progress=False)
    assert torch.allclose(collect_residuals(split, prompts, [5, 20], LastK(3), progress=False), expected, atol=1e-5)
