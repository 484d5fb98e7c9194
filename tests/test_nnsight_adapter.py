"""A `Direction` inside an nnsight trace (interp.nnsight_adapter) gives what `Steer` / `Ablate` give on the same
weights, offline (conftest sets HF_HUB_OFFLINE): one forward, generation steered at every step, a model with
blocks offloaded to disk, sandwich-norm blocks; and the README's inline recipe (plain tensors, nothing of
interp inside the trace: the form sent to NDIF) runs as written with remote=False."""

from __future__ import annotations

import pytest
import torch
from test_split_model import split_map

from interp.chat import format_chats, tokenize
from interp.directions import Direction
from interp.hooked import forward
from interp.models import load_model, model_name
from interp.runner import generate, last_logits
from interp.steering import Ablate, Steer

from tiny_letters import make_letter_model_folder

nnsight = pytest.importorskip("nnsight", reason="nnsight is not installed (pip install nnsight)")
from interp.nnsight_adapter import (
    ablate,
    add_vector,
    layout,
    nnsight_inputs,
    nnsight_model,
    project_out,
    steer,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(make_letter_model_folder(tmp_path_factory.mktemp("nnsight-letters")), device="cpu")


@pytest.fixture(scope="module")
def lm(model):
    return nnsight_model(model)


@pytest.fixture(scope="module")
def prompts(model):
    return format_chats(model, ["hello world", "tell me a joke about the sky", "what is the capital of france ?"])


def direction(model, layer: int = 1, site: str = "resid_pre") -> Direction:
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(layer)) * 3
    return Direction(vector, layer=layer, model=model_name(model), source="test", site=site)


def traced_last_logits(lm, inputs, intervene) -> torch.Tensor:
    with torch.no_grad(), lm.trace(inputs):
        intervene()
        logits = lm.output.logits[:, -1].save()
    return logits


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "resid_post"])
def test_steering_in_a_trace_equals_steer(model, lm, prompts, site):
    d = direction(model, site=site)
    for kwargs in ({"scale": 2.0}, {"scale": 5.0, "unit": True}, {"scale": -1.0, "layer": 2}):
        expected, _ = last_logits(model, prompts, [Steer(d, **kwargs)])
        logits = traced_last_logits(lm, nnsight_inputs(model, prompts), lambda kwargs=kwargs: steer(lm, d, **kwargs))
        assert torch.allclose(logits, expected, atol=1e-5), (site, kwargs)


def test_ablation_in_a_trace_equals_ablate(model, lm, prompts):
    d = direction(model)
    expected, _ = last_logits(model, prompts, [Ablate(d)])
    unsteered, _ = last_logits(model, prompts)
    logits = traced_last_logits(lm, nnsight_inputs(model, prompts), lambda: ablate(lm, d))
    assert torch.allclose(logits, expected, atol=1e-5) and not torch.allclose(logits, unsteered, atol=1e-3)
    only = Ablate(d, hook_names=tuple(f"blocks.1.hook_{site}" for site in ("resid_pre", "attn_out", "mlp_out")))
    expected, _ = last_logits(model, prompts, [only])
    assert torch.allclose(traced_last_logits(lm, nnsight_inputs(model, prompts), lambda: ablate(lm, d, layers=[1])), expected,
                          atol=1e-5)


def test_generation_steered_at_every_step_equals_generate(model, lm, prompts):
    d = direction(model)
    for interventions, intervene in (([Steer(d, scale=3.0)], lambda: steer(lm, d, 3.0)),
                                     ([Ablate(d)], lambda: ablate(lm, d))):
        expected = generate(model, prompts, interventions=interventions, max_new_tokens=5, stop_at_eos=False,
                            progress=False)
        inputs = nnsight_inputs(model, prompts)
        with torch.no_grad(), lm.generate(inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False) as tracer:
            for _ in tracer.iter[:5]:  # a bounded loop: the line after it runs
                intervene()
            ids = tracer.result.save()
        width = inputs["input_ids"].shape[1]
        assert model.tokenizer.batch_decode(ids[:, width:], skip_special_tokens=True) == expected


def test_wrapping_leaves_our_model_as_it_was(model, lm, prompts):
    batch = tokenize(model, prompts)
    with torch.no_grad():
        before = forward(model, batch)
    traced_last_logits(lm, nnsight_inputs(model, prompts), lambda: steer(lm, direction(model), 4.0))
    with torch.no_grad():
        assert torch.equal(forward(model, batch), before)
    assert last_logits(model, prompts, [Steer(direction(model), 4.0)])[0].shape[0] == len(prompts)


def test_a_split_model_with_blocks_on_disk(model, prompts, tmp_path):
    split = load_model(model.interp_name, device_map=split_map(3, {1, 2}), offload_folder=tmp_path / "offload")
    lm = nnsight_model(split)
    d = direction(model)
    expected, _ = last_logits(model, prompts, [Steer(d, 2.0)])
    assert torch.allclose(traced_last_logits(lm, nnsight_inputs(model, prompts), lambda: steer(lm, d, 2.0)), expected, atol=1e-5)


def test_sandwich_norm_blocks_steer_after_the_post_norms(tiny_gemma):
    assert layout(tiny_gemma).children["attn_out"] == "post_attention_layernorm"
    lm = nnsight_model(tiny_gemma)
    prompts = ["hello world", "the cat sat on the mat"]
    for site in ("attn_out", "mlp_out"):
        d = direction(tiny_gemma, site=site)
        expected, _ = last_logits(tiny_gemma, prompts, [Steer(d, 2.0)])
        logits = traced_last_logits(lm, nnsight_inputs(tiny_gemma, prompts), lambda d=d: steer(lm, d, 2.0))
        assert torch.allclose(logits, expected, atol=1e-4), site


def test_plain_tensor_primitives_and_bad_input(model, lm, prompts):
    d, r = direction(model, layer=2), direction(model, layer=0)
    plan = layout(model)
    below = tuple(f"blocks.{layer}.hook_{site}" for layer in (0, 1) for site in ("resid_pre", "attn_out", "mlp_out"))
    expected, _ = last_logits(model, prompts, [Ablate(r, hook_names=below), Steer(d, 1.5)])

    def both() -> None:  # tensors and the layout only, in the order the model runs: layers 0-1, then layer 2
        project_out(lm, plan, r.unit().vector, layers=[0, 1])
        add_vector(lm, plan, 2, "resid_pre", 1.5 * d.vector)

    assert torch.allclose(traced_last_logits(lm, nnsight_inputs(model, prompts), both), expected, atol=1e-5)
    with pytest.raises(ValueError, match="site: expected one of"):
        add_vector(lm, plan, 0, "hook_z", d.vector)
    with pytest.raises(ValueError, match="layer: layer 7 is out of range"):
        steer(lm, d, layer=7)


def readme_recipe(model, vector: torch.Tensor, r: torch.Tensor, L: int, prompts: list[str]):
    """The README's NDIF recipe with remote=False: steer at layer L and ablate r̂, with tensors only."""
    with torch.no_grad(), model.trace(nnsight_inputs(model.tokenizer, prompts), remote=False):
        for index, block in enumerate(model.model.layers):
            hidden = block.input
            hidden = hidden - (hidden @ r)[..., None] * r
            block.input = hidden + vector if index == L else hidden
            attention = block.self_attn.output
            block.self_attn.output = (attention[0] - (attention[0] @ r)[..., None] * r, *attention[1:])
            block.mlp.output = block.mlp.output - (block.mlp.output @ r)[..., None] * r
        logits = model.output.logits[:, -1].save()
    return logits


def test_the_readme_recipe_runs_as_written_locally(model, lm, prompts):
    d = direction(model, layer=1)
    ablated = direction(model, layer=2)
    expected, _ = last_logits(model, prompts, [Ablate(ablated), Steer(d, 10.0, unit=True)])
    logits = readme_recipe(lm, 10.0 * d.unit().vector, ablated.unit().vector, 1, prompts)
    assert torch.allclose(logits, expected, atol=1e-5)


def readme_means(model, positive: list[str], negative: list[str], L: int):
    """The README's NDIF recipe for a difference in means at resid_pre of layer L, last token, with remote=False."""
    with torch.no_grad(), model.trace(remote=False) as tracer:
        with tracer.invoke(nnsight_inputs(model.tokenizer, positive)):
            pos = model.model.layers[L].input[:, -1].mean(0).save()
        with tracer.invoke(nnsight_inputs(model.tokenizer, negative)):
            neg = model.model.layers[L].input[:, -1].mean(0).save()
    return pos - neg


def test_the_readme_difference_in_means_equals_ours(model, lm):
    from interp.activations import collect_residuals, mean_difference

    positive = format_chats(model, ["i love the sea", "i love the sun and the moon"])
    negative = format_chats(model, ["i hate the sea", "tell me a joke about the bad city ?", "i hate cats"])
    expected = mean_difference(collect_residuals(model, positive, [2], -1, progress=False),
                               collect_residuals(model, negative, [2], -1, progress=False))[0, 0]
    assert torch.allclose(readme_means(lm, positive, negative, 2), expected, atol=1e-5)
