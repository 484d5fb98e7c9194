"""Batched, padding-aware collection of residual-stream activations.

Positions are explicit and counted on each prompt's real tokens, never on padding:
an int `p >= 0` is the p-th real token, `p < 0` counts back from the last real token (-1 = last),
a list of ints takes several, `LastK(k)` takes the last k tokens, and a `[n_prompts, n_positions]`
tensor gives per-prompt indices into the unpadded prompts (e.g. each prompt's answer-letter token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp._checks import whole_number
from interp.chat import TokenBatch, tokenize
from interp.directions import hook_name
from interp.hooked import HookedModel, check_layers, d_model
from interp.runner import read_activations


@dataclass(frozen=True)
class LastK:
    """The last `k` real tokens of every prompt, in order."""

    k: int


Positions = Union[int, Sequence[int], LastK, Int[Tensor, "n_prompts n_positions"]]


def _relative_positions(positions: Positions) -> list[int] | None:
    if isinstance(positions, LastK):
        if positions.k < 1:
            raise ValueError(f"positions: LastK.k must be >= 1, got {positions.k}")
        return list(range(-positions.k, 0))
    if isinstance(positions, bool):
        raise ValueError(f"positions: expected an int, a list of ints, LastK(k) or an index tensor, got {positions!r}")
    if isinstance(positions, int):
        return [positions]
    if isinstance(positions, Tensor):
        if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
            raise ValueError(f"positions: an index tensor must hold integers, got {positions.dtype}")
        return None
    listed = list(positions)
    if not listed or not all(isinstance(p, int) and not isinstance(p, bool) for p in listed):
        raise ValueError("positions: expected an int, a non-empty list of ints, LastK(k) or an index tensor")
    return listed


def position_index(
    batch: TokenBatch, positions: Positions, row_offset: int = 0
) -> Int[Tensor, "batch n_positions"]:
    """Column indices into the left-padded batch for the requested positions of every row."""
    lengths = batch.lengths
    seq = batch.input_ids.shape[1]
    n_rows = batch.input_ids.shape[0]
    relative = _relative_positions(positions)
    if relative is None:
        per_prompt = positions[row_offset : row_offset + n_rows].to(lengths.device).long()
        if per_prompt.ndim != 2 or per_prompt.shape[0] != n_rows:
            raise ValueError("positions: an index tensor must have shape [n_prompts, n_positions]")
        relative_tensor = per_prompt
    else:
        relative_tensor = torch.tensor(relative, device=lengths.device).expand(n_rows, -1)
    lengths_column = lengths[:, None]
    out_of_range = (relative_tensor >= lengths_column) | (relative_tensor < -lengths_column)
    if out_of_range.any():
        row = int(out_of_range.any(dim=1).nonzero()[0]) + row_offset
        raise ValueError(
            f"positions: {relative_tensor[row - row_offset].tolist()} out of range for prompt {row} "
            f"with {int(lengths[row - row_offset])} tokens"
        )
    start = seq - lengths_column  # first real column of each row (left padding)
    return torch.where(relative_tensor >= 0, start + relative_tensor, seq + relative_tensor)


@torch.no_grad()
def collect_residuals(
    model: HookedModel,
    prompts: list[str] | TokenBatch,
    layers: Sequence[int] | int,
    positions: Positions = -1,
    *,
    site: str = "resid_pre",
    batch_size: int = 16,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
    fast: bool = True,
) -> Float[Tensor, "n_prompts n_layers n_positions d_model"]:
    """Residual activations at `blocks.{layer}.hook_{site}` for each layer, at the chosen positions.

    One forward per batch reads every layer and stops after the last read; only the requested positions
    are kept, so memory is `n_prompts × n_layers × n_positions × d_model`. On a bridge from `load_model`, the
    residual sites (resid_pre, attn_out, mlp_out, resid_post) are read from its plain HF clone, at HF speed
    (`interp.runner.read_activations`; `fast=False` reads the bridge's own hook points, the same numbers).
    """
    layer_list = check_layers(model, list(layers) if not isinstance(layers, int) else layers)
    whole_number(batch_size, "batch_size", minimum=1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    batch_all = prompts if isinstance(prompts, TokenBatch) else tokenize(model, prompts)
    n_prompts = batch_all.input_ids.shape[0]
    if n_prompts == 0:
        raise ValueError("prompts: expected at least one prompt")
    names = [hook_name(layer, site) for layer in layer_list]
    slot = {name: i for i, name in enumerate(names)}
    # Written in place as each layer is read: no per-batch stack and no final concatenation (each would copy
    # the whole result once more and double its peak memory).
    out: Tensor | None = None
    starts = range(0, n_prompts, batch_size)
    for start in tqdm(starts, desc="activations", disable=not progress or len(starts) < 4, leave=False):
        batch = batch_all[start : start + batch_size]
        index = position_index(batch, positions, row_offset=start)
        if out is None:
            out = torch.empty((n_prompts, len(names), index.shape[1], d_model(model)), dtype=dtype)
        rows_out = out[start : start + index.shape[0]]
        columns = _shared_columns(index)

        def keep(activation: Tensor, name: str, index: Tensor = index, rows_out: Tensor = rows_out,
                 columns: slice | None = columns) -> Tensor:
            target = rows_out[:, slot[name]]
            if columns is not None:  # e.g. -1 or LastK(k): a view, copied once (and converted, moved) into `out`
                return target.copy_(activation[:, columns])
            here = index.to(activation.device)  # a model split over devices: this layer's device
            rows = torch.arange(activation.shape[0], device=activation.device)[:, None]
            return target.copy_(activation[rows, here])

        read_activations(model, batch, names, keep, fast=fast)
    for i, name in enumerate(names):  # a layer asked for twice was read once
        if slot[name] != i:
            out[:, i] = out[:, slot[name]]
    return out


def _shared_columns(index: Int[Tensor, "batch n_positions"]) -> slice | None:
    """The columns as one slice when every row reads the same run of consecutive columns (any position counted
    back from the end of left-padded prompts: -1, LastK(k)); None otherwise."""
    first = index[0]
    if not bool((index == first).all()) or not bool((first.diff() == 1).all()):
        return None
    return slice(int(first[0]), int(first[-1]) + 1)


def mean_difference(
    positive: Float[Tensor, "n_pos ..."], negative: Float[Tensor, "n_neg ..."]
) -> Float[Tensor, "..."]:
    """mean(positive) − mean(negative) over the first (prompt) axis, in float64 for stability."""
    if positive.shape[0] == 0 or negative.shape[0] == 0:
        raise ValueError("mean_difference: both activation sets must hold at least one prompt")
    if positive.shape[1:] != negative.shape[1:]:
        raise ValueError(
            f"mean_difference: shapes differ beyond the prompt axis: {tuple(positive.shape)} vs "
            f"{tuple(negative.shape)}"
        )
    return (positive.double().mean(0) - negative.double().mean(0)).to(positive.dtype)


def mean_residual_norm(
    activations: Float[Tensor, "n_prompts n_layers n_positions d_model"],
) -> Float[Tensor, "n_layers"]:
    """Mean L2 norm per layer, the natural unit for steering multipliers."""
    return activations.norm(dim=-1).mean(dim=(0, 2))
