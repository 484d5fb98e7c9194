"""Dictionary formats read from files, the table of readers, where a dictionary reads (always known or said),
transcoders in each workflow, and bad input.

Gemma Scope and circuit-tracer do not install beside our stack (NOTES.md), so their files are written here by
small functions that follow each library's documented format, and compared with each library's published
formula, transcribed below with its source:
- Gemma Scope (the `JumpReLUSAE` of Google DeepMind's Gemma Scope tutorial notebook, and
  `sae_lens/loading/pretrained_sae_loaders.py`'s `gemma_2_sae_huggingface_loader`): `params.npz` holds W_enc
  [d, m], W_dec [m, d], b_enc, b_dec, threshold; `pre = x @ W_enc + b_enc`, `acts = (pre > threshold) · relu(pre)`,
  `decode = acts @ W_dec + b_dec`.
- circuit-tracer (`circuit_tracer/transcoder/single_layer_transcoder.py`, `activation_functions.py`,
  safety-research/circuit-tracer): `layer_{i}.safetensors` holds W_enc [d_transcoder, d_model], W_dec
  [d_transcoder, d_model], b_enc, b_dec and optionally `activation_function.threshold`, `k`, `W_skip`;
  `encode = act(x @ W_enc.T + b_enc)` with JumpReLU `pre · (pre > threshold)`, TopK `pre · topk-gate` or relu;
  `forward = acts @ W_dec + b_dec + x @ W_skip.T`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from interp.dictionaries import (
    READERS,
    Dictionary,
    HooklessDictionaryWarning,
    build_dictionary,
    from_circuit_tracer,
    from_decoder,
    load_dictionary,
    register_reader,
)
from interp.directions import Direction
from interp.sparse import code_direction

D, M = 32, 40  # the tiny model's width, and the features


def randn(*shape: int, seed: int, scale: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def x_batch(width: int = D) -> torch.Tensor:
    return randn(2, 7, width, seed=99, scale=1.0)


# ---------------------------------------------------------------------------------------------
# Gemma Scope params.npz
# ---------------------------------------------------------------------------------------------


def write_gemma_scope(root: Path, release: str, layer: int = 1) -> Path:
    folder = root / release / f"layer_{layer}" / "width_16k" / "average_l0_5"
    folder.mkdir(parents=True)
    arrays = {"W_enc": randn(D, M, seed=1).numpy(), "W_dec": randn(M, D, seed=2).numpy(),
              "b_enc": randn(M, seed=3, scale=0.1).numpy(), "b_dec": randn(D, seed=4).numpy(),
              "threshold": randn(M, seed=5, scale=0.2).abs().numpy()}
    np.savez(folder / "params.npz", **arrays)
    return folder / "params.npz"


def gemma_scope_reference(path: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = {name: torch.from_numpy(value) for name, value in np.load(path).items()}
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = (pre > p["threshold"]) * torch.relu(pre)
    return acts, acts @ p["W_dec"] + p["b_dec"]


def test_gemma_scope_sae_and_transcoder_files(tmp_path):
    x = x_batch()
    path = write_gemma_scope(tmp_path, "gemma-scope-2b-pt-res", layer=3)
    sae = load_dictionary(path)
    acts, out = gemma_scope_reference(path, x)
    torch.testing.assert_close(sae.encode(x), acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), out, atol=1e-5, rtol=1e-5)
    assert sae.hook_name == "blocks.3.hook_resid_post" and not sae.transcoder
    transcoder = load_dictionary(write_gemma_scope(tmp_path, "gemma-scope-2b-pt-transcoders", layer=2).parent)
    assert transcoder.transcoder and (transcoder.hook_name, transcoder.output_hook) == (
        "blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out")
    with pytest.raises(ValueError, match="hook_z"):
        load_dictionary(write_gemma_scope(tmp_path, "gemma-scope-2b-pt-att"))


# ---------------------------------------------------------------------------------------------
# circuit-tracer per-layer transcoders
# ---------------------------------------------------------------------------------------------


def write_transcoder_set(folder: Path, activation: str, layers: int = 3) -> Path:
    folder.mkdir(parents=True)
    for layer in range(layers):
        tensors = {"W_enc": randn(M, D, seed=10 + layer), "W_dec": randn(M, D, seed=20 + layer),
                   "b_enc": randn(M, seed=30 + layer, scale=0.1), "b_dec": randn(D, seed=40 + layer),
                   "W_skip": randn(D, D, seed=50 + layer, scale=0.05)}
        if activation == "jumprelu":  # negative thresholds: circuit-tracer's JumpReLU has no relu
            tensors["activation_function.threshold"] = randn(M, seed=60 + layer, scale=0.2)
        if activation == "topk":
            tensors["k"] = torch.tensor(5)
        save_file(tensors, str(folder / f"layer_{layer}.safetensors"))
    (folder / "config.yaml").write_text("model_name: tiny\nfeature_input_hook: ln2.hook_normalized\n"
                                        "feature_output_hook: hook_mlp_out\n")
    return folder


def circuit_tracer_reference(file: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    p = load_file(str(file))
    pre = torch.nn.functional.linear(x, p["W_enc"], p["b_enc"])
    if "activation_function.threshold" in p:
        acts = pre * (pre > p["activation_function.threshold"])
    elif "k" in p:
        gate = torch.zeros_like(pre).scatter_(-1, pre.topk(int(p["k"]), dim=-1).indices, 1)
        acts = pre * gate
    else:
        acts = torch.relu(pre)
    return acts, acts @ p["W_dec"] + p["b_dec"] + x @ p["W_skip"].T


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_circuit_tracer_transcoders_by_layer(activation, tmp_path):
    folder = write_transcoder_set(tmp_path / "set", activation)
    x = x_batch()
    transcoder = load_dictionary(folder, layer=1)
    acts, out = circuit_tracer_reference(folder / "layer_1.safetensors", x)
    torch.testing.assert_close(transcoder.encode(x), acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(transcoder.reconstruct(x), out, atol=1e-5, rtol=1e-5)
    assert (transcoder.hook_name, transcoder.output_hook, transcoder.model) == (
        "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", "tiny")
    assert from_circuit_tracer(folder / "layer_2.safetensors").layer == 2
    with pytest.raises(ValueError, match=r"layers \[0, 1, 2\]; pass layer="):
        load_dictionary(folder)


def test_cross_layer_transcoders_are_refused_clearly(tmp_path):
    folder = tmp_path / "clt"
    folder.mkdir()
    save_file({"W_enc_0": randn(D, M, seed=1)}, str(folder / "W_enc_0.safetensors"))
    with pytest.raises(ValueError, match="cross-layer transcoders are not supported"):
        load_dictionary(folder)


# ---------------------------------------------------------------------------------------------
# The table of readers
# ---------------------------------------------------------------------------------------------


def test_an_unknown_source_lists_every_kind_and_what_it_needs(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ValueError) as error:
        load_dictionary(tmp_path)
    message = str(error.value)
    for reader in READERS:
        assert f"- {reader.name}: {reader.needs}" in message
    assert "sae_weights.safetensors" in message and "ae.pt" in message and "params.npz" in message
    with pytest.raises(TypeError, match="a dict is no dictionary interp reads; tried"):
        load_dictionary({"W_dec": 1})


def test_a_new_format_is_one_function_and_one_registration(tmp_path):
    def read_rows(path, request):
        rows = torch.from_numpy(np.loadtxt(path, delimiter=",", dtype=np.float32))
        return build_dictionary({"W_dec": rows}, source=str(path), architecture=None, model=request.model)

    register_reader("csv rows", lambda source: str(source).endswith(".csv"), read_rows, "a .csv of decoder rows")
    try:
        np.savetxt(tmp_path / "rows.csv", randn(5, D, seed=1).numpy(), delimiter=",")
        dictionary = load_dictionary(tmp_path / "rows.csv", layer=2)
        assert dictionary.n_atoms == 5 and dictionary.hook_name == "blocks.2.hook_resid_pre"
    finally:
        READERS[:] = [reader for reader in READERS if reader.name != "csv rows"]


# ---------------------------------------------------------------------------------------------
# Where it reads: honoured, stored, said, checked
# ---------------------------------------------------------------------------------------------


def saelens_topk_folder(folder: Path) -> Path:
    sae_lens = pytest.importorskip("sae_lens")
    sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D, d_sae=M, k=4))
    sae.save_model(folder)
    return folder


def sources(tmp_path: Path) -> dict[str, object]:
    """One source of each kind, none recording a hook point of its own."""
    decoder = randn(M, D, seed=7)
    save_file({"W_dec": decoder}, str(tmp_path / "decoder.safetensors"))
    return {"tensor": decoder, "decoder file": tmp_path / "decoder.safetensors",
            "SAE-Lens folder": saelens_topk_folder(tmp_path / "topk"),
            "Gemma Scope": write_gemma_scope(tmp_path, "somewhere"),
            "Dictionary": from_decoder(decoder)}


def test_hook_name_and_layer_are_honoured_and_stored_for_every_source(tmp_path, tiny_model):
    for kind, source in sources(tmp_path).items():
        with pytest.warns(HooklessDictionaryWarning, match="records no hook point.*hook_name="):
            hookless = load_dictionary(source)
        assert hookless.hook_name is None, kind
        placed = load_dictionary(source, hook_name="blocks.1.hook_resid_mid", model=tiny_model)
        assert (placed.hook_name, placed.layer, placed.site) == ("blocks.1.hook_resid_mid", 1, "resid_mid"), kind
        assert load_dictionary(source, layer=2).hook_name == "blocks.2.hook_resid_pre", kind
    recorded = load_dictionary(write_gemma_scope(tmp_path / "g", "gemma-scope-2b-pt-res", layer=1), layer=2)
    assert recorded.hook_name == "blocks.2.hook_resid_post" and recorded.meta["recorded_hook_name"] == "blocks.1.hook_resid_post"
    with pytest.raises(ValueError, match="layer: 1 disagrees with hook_name"):
        load_dictionary(randn(M, D, seed=1), layer=1, hook_name="blocks.2.hook_resid_pre")


def test_a_fresh_saelens_sae_loads_with_the_hook_it_is_given_and_workflows_refuse_a_hookless_one(tmp_path, tiny_model):
    from interp.features import max_activating

    folder = saelens_topk_folder(tmp_path / "fresh")
    placed = load_dictionary(folder, model=tiny_model, hook_name="blocks.1.hook_resid_pre")
    assert placed.layer == 1
    result = max_activating(tiny_model, placed, ["the cat sat on the mat", "hello world"], [0, 1], n_top=2,
                            progress=False)
    assert result.features == [0, 1] and result.n_tokens > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HooklessDictionaryWarning)
        hookless = load_dictionary(folder)
    with pytest.raises(ValueError, match="records no hook point, so max-activating examples has nowhere to read it; "
                                         "pass hook_name="):
        max_activating(tiny_model, hookless, ["the cat"], [0], progress=False)


def test_a_direction_and_a_dictionary_at_different_places_are_refused_unless_allowed():
    dictionary = from_decoder(randn(M, D, seed=3), hook_name="blocks.1.hook_resid_pre")
    direction = Direction(randn(D, seed=4), layer=2, model="m", source="test")
    with pytest.raises(ValueError, match="lives at blocks.2.hook_resid_pre but the dictionary's atoms live at "
                                         "blocks.1.hook_resid_pre; pass allow_other_layer=True"):
        code_direction(direction, dictionary, 3)
    assert code_direction(direction, dictionary, 3, allow_other_layer=True).meta["k"] == 3
    # resid_post of 0 is resid_pre of 1: the same tensor
    code_direction(Direction(randn(D, seed=4), layer=0, site="resid_post", model="m", source="t"), dictionary, 3)
    with pytest.raises(ValueError, match="resid_pre but the dictionary's atoms live at blocks.1.hook_mlp_out"):
        code_direction(direction.with_vector(direction.vector, layer=1), random_transcoder(), 2)


# ---------------------------------------------------------------------------------------------
# Transcoders in each workflow
# ---------------------------------------------------------------------------------------------


def random_transcoder() -> Dictionary:
    weights = {"W_enc": randn(D, M, seed=11), "b_enc": torch.zeros(M), "W_dec": randn(M, D, seed=12),
               "b_dec": torch.zeros(D), "W_skip": randn(D, D, seed=13, scale=0.05)}
    return build_dictionary(weights, source="transcoder", apply_b_dec_to_input=False, transcoder=True,
                            hook_name="blocks.1.ln2.hook_normalized", output_hook="blocks.1.hook_mlp_out")


def test_a_transcoder_in_each_workflow(tiny_model):
    from interp.classify import feature_scores
    from interp.features import max_activating
    from interp.sae_training.evaluation import reconstruction_stats

    transcoder = random_transcoder()
    transcoder.check_model(tiny_model)
    examples = max_activating(tiny_model, transcoder, ["the cat sat on the mat", "one two three four"], [0, 5],
                              n_top=2, progress=False)  # read at its input site
    assert examples.features == [0, 5] and examples.n_tokens > 0
    atom = transcoder.atom_direction(4)
    assert (atom.layer, atom.site) == (1, "mlp_out")
    target = Direction(2.0 * transcoder.atoms[4] + transcoder.atoms[9], layer=1, site="mlp_out", model="m", source="t")
    assert set(code_direction(target, transcoder, 2).meta["features"]) == {4, 9}
    assert feature_scores(transcoder, x_batch(), "encoder").shape == (2, 7, M)
    with pytest.raises(ValueError, match="transcoder: its atoms live at blocks.1.hook_mlp_out, not at "
                                         "blocks.1.ln2.hook_normalized"):
        feature_scores(transcoder, x_batch(), "decoder")
    with pytest.raises(ValueError, match="is a transcoder, and reconstruction_stats needs an SAE: variance explained"):
        reconstruction_stats(transcoder, torch.randn(10, D))


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error naming the file and what was expected, before any model work
# ---------------------------------------------------------------------------------------------


def sparsify_folder(folder: Path, **config) -> Path:
    folder.mkdir(parents=True)
    save_file({"encoder.weight": randn(M, D, seed=1), "encoder.bias": torch.zeros(M), "W_dec": randn(M, D, seed=2),
               "b_dec": torch.zeros(D)}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "k": 4, "num_latents": M, "d_in": D, **config}))
    return folder


def test_bad_dictionaries_name_the_file_and_what_was_expected(tmp_path, tiny_model):
    with pytest.raises(ValueError, match=r"dictionary: width 16 does not match the model's d_model 32 \(.*narrow"):
        load_dictionary(build_dictionary({"W_dec": randn(M, 16, seed=1)}, source="narrow", architecture=None,
                                         hook_name="blocks.1.hook_resid_pre"), model=tiny_model)
    with pytest.raises(ValueError, match="the model has no hook point 'blocks.1.hook_nowhere'"):
        load_dictionary(randn(M, D, seed=1), hook_name="blocks.1.hook_nowhere", model=tiny_model)
    with pytest.raises(ValueError, match="dictionary: layer 7 is out of range for a model with 3 layers"):
        load_dictionary(randn(M, D, seed=1), layer=7, model=tiny_model)
    with pytest.raises(ValueError, match=r"cfg.json says d_in|the config says d_in = 64"):
        load_dictionary(sparsify_folder(tmp_path / "wide", d_in=64))
    with pytest.raises(ValueError, match="k: expected a whole number from 1 to d_sae = 40, got 400"):
        load_dictionary(sparsify_folder(tmp_path / "k", k=400))
    with pytest.raises(ValueError, match="activation: 'softmax' is not a sparsify activation"):
        load_dictionary(sparsify_folder(tmp_path / "act", activation="softmax"))
    with pytest.raises(ValueError, match=r"activation: \['topk'\] is not a sparsify activation"):
        load_dictionary(sparsify_folder(tmp_path / "act_list", activation=["topk"]))  # not a TypeError
    with pytest.raises(ValueError, match="output_hook: .* is an SAE, which writes where it reads"):
        load_dictionary(sparsify_folder(tmp_path / "sae", k=4), output_hook="blocks.1.hook_mlp_out")
    nan = randn(M, D, seed=1)
    nan[3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        load_dictionary(nan)


def test_damaged_and_unsafe_files_are_refused_naming_the_file(tmp_path):
    dl = tmp_path / "dl"
    dl.mkdir()
    (dl / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoder", "layer": 1,
                                                            "submodule_name": "resid_post_layer_1"}}))
    torch.save({"encoder.weight": randn(M, D, seed=1), "encoder.bias": torch.zeros(M), "bias": torch.zeros(D),
                "decoder.weight": randn(D, M, seed=2)}, dl / "ae.pt")
    assert load_dictionary(dl).hook_name == "blocks.1.hook_resid_post"
    data = (dl / "ae.pt").read_bytes()
    (dl / "ae.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ae.pt: not a readable PyTorch state dict with weights_only=True"):
        load_dictionary(dl)
    torch.save({"encoder.weight": Path("code")}, dl / "ae.pt")  # an arbitrary object: refused, never unpickled
    with pytest.raises(ValueError, match=r"ae.pt: not a readable PyTorch state dict with weights_only=True"):
        load_dictionary(dl)
    npz = write_gemma_scope(tmp_path, "gemma-scope-res")
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"params.npz: not a readable .npz file"):
        load_dictionary(npz)
    (dl / "config.json").write_text(json.dumps({"trainer": {"dict_class": "MysteryAE"}}))
    with pytest.raises(ValueError, match="dict_class: 'MysteryAE' is not one interp reads"):
        load_dictionary(dl)
    folder = sparsify_folder(tmp_path / "sp")
    (folder / "sae.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="sae.safetensors: not a readable safetensors file"):
        load_dictionary(folder)
