"""Editing weights in place: orthogonalisation ("abliteration"), its export, and simulated quantisation.

**Abliteration.** Directional ablation of a unit direction r̂ at every residual read and write
(`interp.steering.Ablate`) equals editing every weight that *writes* into the residual stream —
token (and position) embeddings, each attention output projection, each MLP output projection, and
their biases — to W ← (I − r̂r̂ᵀ)W: then no write carries r̂, so every resid_pre, attn_out and mlp_out
is already r̂-free. The unembedding is left alone (the hooks leave it alone too); a model that ties
its unembedding to the embedding is untied first, or editing the embedding would silently edit the
unembedding as well. Norms after a block's output (Gemma's sandwich norms) would undo the edit, so
such models are refused with a clear error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from interp._io import atomic_write_dir, check_target
from interp.directions import Direction
from interp.hf_weights import hidden_size, residual_writers, weight_refs
from interp.hooked import hf_tree, is_bridge, offloaded_weights, quantization_method
from interp.models import is_hf_save, load_hf, model_name


def _untie_unembedding(model: Any, hf: nn.Module) -> bool:
    """Give the unembedding its own copy of a tied embedding matrix (in every tree that holds it)."""
    embedding, unembedding = hf.get_input_embeddings(), hf.get_output_embeddings()
    if unembedding is None or unembedding.weight is not embedding.weight:
        return False
    shared = embedding.weight
    own = nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)
    trees = [hf] + ([model] if model is not hf and isinstance(model, nn.Module) else [])
    for tree in trees:
        for module in tree.modules():
            if not isinstance(module, nn.Embedding) and module._parameters.get("weight") is shared:
                module._parameters["weight"] = own
    for config in (hf.config, getattr(hf.config, "text_config", None)):
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
    return True


def _project_out_(view: Float[Tensor, "d_model n"], unit: Float[Tensor, "d_model"], chunk: int = 16384) -> None:
    """view ← (I − r̂r̂ᵀ) view in place, in float64 column chunks (an embedding has ~10⁵ columns)."""
    r = unit.to(view.device, torch.float64)
    for start in range(0, view.shape[1], chunk):
        part = view[:, start : start + chunk]
        part.sub_((r[:, None] * (r @ part.double())[None, :]).to(part.dtype))


def editable_tree(model: Any, argument: str = "model") -> nn.Module:
    """The HF module tree of `model` when its weights can be edited in place; a clear error when not.

    A model split over several GPUs is edited tensor by tensor where each weight lives. Quantized weights
    (bitsandbytes) are integer codes, and offloaded weights (accelerate puts a meta placeholder in the module
    and reads the real tensor from its store, often the checkpoint file itself, on every call): neither can
    be edited in place.
    """
    hf = hf_tree(model, argument)
    method = quantization_method(hf)
    if method is not None:
        raise ValueError(
            f"{argument}: its weights are quantized ({method}), so they cannot be edited in place; load it in floating "
            "point (load_model(name, dtype=torch.bfloat16, device_map='auto')), or use abliterate(source, direction, "
            "folder), which edits a fresh floating-point copy"
        )
    offloaded = offloaded_weights(hf)
    if offloaded:
        raise ValueError(
            f"{argument}: {len(offloaded)} weights ({offloaded[0]}, ...) are offloaded by accelerate (device_map "
            "'disk', or 'cpu' beside GPUs) and re-read from their store on every call, so an edit in place would be "
            "lost; use abliterate(source, direction, folder), which edits a fresh copy, or a device_map over GPUs only"
        )
    return hf


@torch.no_grad()
def orthogonalize_weights(model: Any, direction: Direction, *, allow_other_model: bool = False) -> dict[str, Any]:
    """Fold the ablation of `direction` into the weights, in place: W ← (I − r̂r̂ᵀ)W for every residual write.

    `model` is an HF model (`load_hf`) or a bridge from `load_model` (its HF weights are edited, so the
    bridge itself becomes the orthogonalised model). Returns what was edited and whether the
    unembedding had to be untied from the embedding.
    """
    hf = editable_tree(model)
    width = hidden_size(hf)
    label = model_name(model) if is_bridge(model) else None
    direction.check_compatible(None if allow_other_model else label, width)
    unit = direction.unit().vector.double()  # a zero vector fails here, before anything is changed
    untied = _untie_unembedding(model, hf)
    edited = []
    for ref in residual_writers(hf):
        _project_out_(ref.residual_view(), unit)
        edited.append(ref.name)
        bias = getattr(ref.module, "bias", None)
        if ref.writes and isinstance(bias, Tensor) and bias.shape == (width,):
            _project_out_(bias[:, None], unit)
            edited.append(ref.name.removesuffix("weight") + "bias")
    return {"edited": edited, "untied_unembedding": untied}


def save_hf_model(
    model: Any, folder: str | Path, tokenizer: Any = None, info: dict[str, Any] | None = None, *, overwrite: bool = False
) -> Path:
    """`save_pretrained` of the HF weights + tokenizer into `folder`, atomically; `load_model` reads it.

    `folder` must be new or empty, or hold a saved HF model (replaced only with `overwrite=True`).
    """
    hf = hf_tree(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("tokenizer: an HF model has no tokenizer attached; pass the one from load_hf")
    folder = Path(folder)
    with atomic_write_dir(folder, "HF model", overwrite=overwrite, argument="folder", legacy=is_hf_save) as tmp:
        hf.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if info is not None:
            (tmp / "abliteration.json").write_text(json.dumps(info, indent=2, default=str))
    return folder


def abliterate(
    source: str | Path, direction: Direction, folder: str | Path, *, device: str | torch.device = "cpu",
    allow_other_model: bool = True, overwrite: bool = False,
) -> Path:
    """Load `source` fresh (`load_hf`), orthogonalise it against `direction`, save it to `folder`."""
    check_target(Path(folder), "HF model", overwrite=overwrite, argument="folder", legacy=is_hf_save)
    hf, tokenizer = load_hf(source, device=device)
    report = orthogonalize_weights(hf, direction, allow_other_model=allow_other_model)
    info = {"source": str(source), "direction": {"layer": direction.layer, "model": direction.model,
            "source": direction.source, "meta": direction.meta}, **report}
    return save_hf_model(hf, folder, tokenizer, info, overwrite=overwrite)


@torch.no_grad()
def quantize_blocks(weight: Float[Tensor, "rows cols"], bits: int = 4, block: int = 32) -> Float[Tensor, "rows cols"]:
    """Round-trip through symmetric absmax block quantisation along the last axis (GGML Q4_0/Q8_0-like).

    GGML stores a matrix row by row in blocks of 32 with one scale each; so does this. Returns the
    dequantised weight in the input's dtype.
    """
    if bits not in (2, 3, 4, 5, 6, 8):
        raise ValueError(f"bits: expected one of 2, 3, 4, 5, 6, 8, got {bits}")
    if weight.ndim != 2:
        raise ValueError(f"weight: expected a matrix, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    padded = torch.nn.functional.pad(weight.float(), (0, (-cols) % block))
    blocks = rearrange(padded, "r (n k) -> r n k", k=block)
    levels = 2 ** (bits - 1) - 1
    scale = blocks.abs().amax(-1, keepdim=True).clamp_min(1e-30) / levels
    restored = (blocks / scale).round().clamp(-levels - 1, levels) * scale
    return rearrange(restored, "r n k -> r (n k)")[:, :cols].to(weight.dtype)


@torch.no_grad()
def quantize_weights_(model: Any, kinds: Sequence[str], bits: int = 4, layers: Sequence[int] | None = None,
                      block: int = 32, rows_per_chunk: int = 8192) -> list[str]:
    """Quantise the selected matrices in place (in their stored layout); returns their names."""
    refs = weight_refs(editable_tree(model), kinds, layers)
    for ref in refs:
        weight = ref.module.weight
        for start in range(0, weight.shape[0], rows_per_chunk):
            weight[start : start + rows_per_chunk] = quantize_blocks(weight[start : start + rows_per_chunk], bits, block)
    return [ref.name for ref in refs]
