"""Quantized loading through bitsandbytes (`load_model(..., quantization="8bit" | "4bit")`).

On a machine with CUDA and bitsandbytes: hooks read activations, `Steer` and `Ablate` act (the plain-HF fast path
and the bridge agree, and the steering effect follows the float model's), and weight editing refuses clearly.
Elsewhere those tests are skipped with the reason, and the error a user gets is checked instead.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from interp.activations import collect_residuals
from interp.chat import format_chats, tokenize
from interp.directions import Direction
from interp.hooked import forward, plain_model, quantization_method
from interp.models import load_model, model_name
from interp.runner import generate, last_logits
from interp.steering import Ablate, Steer, projection
from interp.weight_edit import orthogonalize_weights, quantize_weights_

from tiny_letters import make_letter_model_folder

HAS_CUDA = torch.cuda.is_available()
HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None
needs_gpu = pytest.mark.skipif(
    not (HAS_CUDA and HAS_BITSANDBYTES),
    reason="quantized loading needs CUDA and bitsandbytes: "
    + ("this torch sees no CUDA device" if not HAS_CUDA else "bitsandbytes is not installed (pip install bitsandbytes)"),
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_letter_model_folder(tmp_path_factory.mktemp("quantized-letters"))


@pytest.mark.skipif(HAS_CUDA and HAS_BITSANDBYTES, reason="checks the error a machine without CUDA or bitsandbytes gives")
def test_quantization_without_cuda_or_bitsandbytes_is_a_clear_error(folder):
    with pytest.raises(ValueError, match=r"quantization: needs CUDA and bitsandbytes"):
        load_model(folder, quantization="8bit")
    with pytest.raises(ValueError, match=r"quantization: expected one of \('8bit', '4bit'\)"):
        load_model(folder, quantization="int4")


@pytest.fixture(scope="module", params=["8bit", "4bit"])
def quantized(request, folder):
    if not (HAS_CUDA and HAS_BITSANDBYTES):
        pytest.skip(needs_gpu.kwargs["reason"])
    return request.param, load_model(folder, quantization=request.param, dtype=torch.float16)


@pytest.fixture(scope="module")
def reference(folder):
    if not HAS_CUDA:
        pytest.skip("needs CUDA")
    return load_model(folder, device="cuda", dtype=torch.float16)


def direction(model, layer: int = 1) -> Direction:
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 4
    return Direction(vector, layer=layer, model=model_name(model), source="test")


@needs_gpu
def test_the_model_is_quantized_and_hooks_read_activations(quantized, reference):
    bits, model = quantized
    assert quantization_method(plain_model(model)) == f"bitsandbytes {bits}"
    prompts = format_chats(model, ["hello world", "tell me a joke about the sky"])
    acts = collect_residuals(model, prompts, [0, 1, 2], -1, progress=False)
    expected = collect_residuals(reference, prompts, [0, 1, 2], -1, progress=False)
    assert acts.shape == expected.shape and torch.isfinite(acts).all()
    cosine = torch.nn.functional.cosine_similarity(acts.flatten(1), expected.flatten(1), dim=-1)
    assert (cosine > 0.9).all()  # quantization error, not a different computation


@needs_gpu
def test_steering_and_ablation_act_on_a_quantized_model(quantized, reference):
    _, model = quantized
    prompts = format_chats(model, ["hello world", "tell me a joke about the sky", "i love the sea"])
    d = direction(model)
    base, _ = last_logits(model, prompts)
    steered, _ = last_logits(model, prompts, [Steer(d, scale=2.0)])
    with Steer(d, scale=2.0).apply(model), torch.no_grad():  # the bridge's hook points agree with the fast path
        batch_logits = forward(model, tokenize(model, prompts))[:, -1].float()
    assert torch.allclose(batch_logits, steered, atol=5e-2, rtol=0)
    float_base, _ = last_logits(reference, prompts)
    float_steered, _ = last_logits(reference, prompts, [Steer(d, scale=2.0)])
    change, float_change = (steered - base).flatten(), (float_steered - float_base).flatten()
    assert torch.nn.functional.cosine_similarity(change, float_change, dim=0) > 0.5
    # Ablation removes the direction at every site it hooks.
    with Ablate(d).apply(model):
        acts = collect_residuals(model, prompts, [1, 2], -1, site="resid_pre", progress=False)
    assert projection(acts, d).abs().max() < 1e-2 * acts.norm(dim=-1).max()
    texts = generate(model, prompts, interventions=[Steer(d, scale=2.0, positions="new")], max_new_tokens=4, progress=False)
    assert len(texts) == len(prompts)


@needs_gpu
def test_weight_editing_refuses_quantized_weights(quantized):
    bits, model = quantized
    with pytest.raises(ValueError, match=rf"model: its weights are quantized \(bitsandbytes {bits}\).*abliterate"):
        orthogonalize_weights(model, direction(model))
    with pytest.raises(ValueError, match=r"model: its weights are quantized"):
        quantize_weights_(model, ["mlp_out"], bits=4)
