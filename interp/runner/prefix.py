"""Last-position logits of a batch of prompts, with their shared token prefix run once into a KV cache.

A chat model's prompts share the template's opening (system prompt and role markers): per chunk of
length-sorted prompts, that prefix is run once (batch 1) and its cache repeated for every row, so only
each prompt's own tokens are recomputed. Residuals can be recorded at the last positions on the way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.chat import TokenBatch, tokenize, tokenizer_of
from interp.directions import hook_name
from interp.hooked import HookedModel, accepts, cache_kwargs, forward, model_device, output_cache, plain_model
from interp.steering import HookIntervention, Intervention, apply_all


def shared_prefix_length(batch: TokenBatch, keep: int = 1) -> int:
    """Number of leading real tokens every prompt shares, leaving at least `keep` tokens per prompt."""
    lengths = batch.lengths
    shortest = int(lengths.min())
    starts = batch.input_ids.shape[1] - lengths
    columns = starts[:, None] + torch.arange(shortest, device=lengths.device)[None]
    aligned = batch.input_ids.gather(1, columns)
    differs = (~(aligned == aligned[:1]).all(0)).nonzero()
    prefix = int(differs[0]) if len(differs) else shortest
    return max(0, min(prefix, shortest - keep))


@dataclass
class _Recorder:
    """Keeps the last `keep` positions of resid_pre at `layers` during the suffix pass only."""

    layers: list[int]
    keep: int
    active: bool = False
    store: dict[int, list[Tensor]] = field(default_factory=dict)

    def intervention(self) -> HookIntervention:
        def make(layer: int) -> Callable[[Tensor, Any], None]:
            def record(activation: Tensor, hook: Any) -> None:
                if self.active:
                    self.store.setdefault(layer, []).append(activation[:, -self.keep :].detach().float().cpu())

            return record

        return HookIntervention([(hook_name(layer, "resid_pre"), make(layer)) for layer in self.layers])

    def stacked(self) -> Float[Tensor, "n n_layers keep d_model"]:
        return torch.stack([torch.cat(self.store[layer]) for layer in self.layers], dim=1)


def prefix_cache(
    model: HookedModel, runner: torch.nn.Module, chunk: TokenBatch, prefix: int, copies: int = 1
) -> tuple[Any, Int[Tensor, "n s"], Int[Tensor, "n p_plus_s"], Int[Tensor, "n s"]]:
    """Run the shared prefix once (batch 1, hooks active) into a KV cache repeated for every row.

    `copies > 1`: the chunk's rows are `copies` consecutive blocks whose hooks differ (e.g. one candidate
    direction per block), so the prefix runs once per block (batch `copies`) and each block's cache is
    repeated for its own rows.

    Returns the cache, the suffixes (still left-padded: padding now sits between the prefix and each
    suffix), the attention mask over prefix + suffix, and the suffixes' position ids.
    """
    rows, lengths = chunk.input_ids.shape[0], chunk.lengths
    if copies < 1 or rows % copies:
        raise ValueError(f"copies: expected a divisor of the chunk's {rows} rows, got {copies}")
    first = chunk.input_ids.shape[1] - int(lengths[0])
    prefix_ids = chunk.input_ids[:1, first : first + prefix].expand(copies, -1)
    positions = torch.arange(prefix, device=prefix_ids.device)[None].expand(copies, -1)
    extra = {"logits_to_keep": 1} if accepts(runner, "logits_to_keep") else {}
    cache = output_cache(runner(input_ids=prefix_ids, position_ids=positions, use_cache=True, **extra))
    cache.batch_repeat_interleave(rows // copies)
    width = int(lengths.max()) - prefix
    suffix_ids = chunk.input_ids[:, -width:]
    columns = torch.arange(width, device=suffix_ids.device)[None]
    suffix_mask = (columns >= (width - (lengths - prefix))[:, None]).long()
    pad = tokenizer_of(model).pad_token_id or 0
    suffix_ids = torch.where(suffix_mask.bool(), suffix_ids, torch.full_like(suffix_ids, pad))
    attention = torch.cat([torch.ones(rows, prefix, dtype=torch.long, device=suffix_ids.device), suffix_mask], 1)
    suffix_positions = prefix + (suffix_mask.cumsum(1) - 1).clamp_min(0)
    return cache, suffix_ids, attention, suffix_positions


def row_groups(lengths: Int[Tensor, " n"], min_positions: int = 256) -> list[tuple[int, int]]:
    """Consecutive row ranges of length-sorted rows, each closed once it holds `min_positions` padded positions.

    A group is padded to its own longest row only, so similar lengths waste little; `min_positions` keeps each
    group's matrix products large enough to run at full speed on a CPU (about 128 rows of activations and up).
    """
    groups, start = [], 0
    for row, length in enumerate(lengths.tolist()):
        if (row + 1 - start) * length >= min_positions:
            groups.append((start, row + 1))
            start = row + 1
    if start < len(lengths):
        groups.append((start, len(lengths)))
    return groups


def widen_after_prefix(tensor: Tensor, prefix: int, extra: int, value: float, dim: int) -> Tensor:
    """`tensor` with `extra` entries of `value` inserted along `dim` after its first `prefix`: a batch laid out as
    shared prefix, padding, own tokens (token ids, attention mask, or a layer's keys and values) made wider."""
    if extra == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = extra
    filler = torch.full(shape, value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor.narrow(dim, 0, prefix), filler, tensor.narrow(dim, prefix, tensor.shape[dim] - prefix)], dim)


def _layer_tensors(cache: Any) -> list[tuple[Tensor, Tensor]] | None:
    """Each layer's (keys, values) of a cache whose every layer is a plain full-attention `DynamicLayer`, else None
    (sliding windows, static or quantised caches keep their own layouts)."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" or getattr(layer, "keys", None) is None for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def _cache_of(tensors: Sequence[tuple[Tensor, Tensor]], like: Any) -> Any:
    cache = type(like)()
    for layer, (keys, values) in enumerate(tensors):
        cache.update(keys, values, layer)
    return cache


@torch.no_grad()
def fill_prompt_cache(
    runner: torch.nn.Module, cache: Any, suffix_ids: Int[Tensor, "n s"], attention: Int[Tensor, "n p_plus_s"],
    positions: Int[Tensor, "n s"], min_positions: int = 256,
) -> Any | None:
    """The KV cache of every prompt column but the last, run in groups of rows of similar length (`row_groups`).

    `cache` holds the shared prefix for every row, and `suffix_ids`, `attention`, `positions` are `prefix_cache`'s
    (rows sorted by length). One padded pass over the suffixes computes every row at the longest row's width; here
    each group runs at its own width, and its cache is widened to the full layout by masked zero columns between
    the prefix and its suffixes (where the padding already sits), then the groups' caches are stacked. `generate`
    then runs only the last column.
    Returns None when there is nothing to gain or the cache is not plain full attention.
    """
    prefix_tensors = _layer_tensors(cache)
    width = suffix_ids.shape[1]
    if prefix_tensors is None or width < 2:
        return None
    prefix = attention.shape[1] - width
    own = attention[:, prefix:].sum(1)
    groups = row_groups(own, min_positions)
    if len(groups) < 2:
        return None
    extra = {"logits_to_keep": 1} if accepts(runner, "logits_to_keep") else {}
    filled: list[list[tuple[Tensor, Tensor]]] = []
    for start, stop in groups:
        group_width = int(own[start:stop].max())
        gap = width - group_width
        group_cache = _cache_of([(keys[start:stop], values[start:stop]) for keys, values in prefix_tensors], cache)
        if group_width > 1:
            columns = slice(width - group_width, width - 1)
            mask = torch.cat([attention[start:stop, :prefix], attention[start:stop, prefix + gap : prefix + width - 1]], 1)
            runner(input_ids=suffix_ids[start:stop, columns], attention_mask=mask, position_ids=positions[start:stop, columns],
                   use_cache=True, **cache_kwargs(runner, group_cache), **extra)
        filled.append([(widen_after_prefix(layer.keys, prefix, gap, 0.0, 2), widen_after_prefix(layer.values, prefix, gap, 0.0, 2))
                       for layer in group_cache.layers])
    # Per layer, every group's keys and values stacked along the rows (the groups are in the chunk's row order)
    return _cache_of([tuple(torch.cat(parts) for parts in zip(*groups)) for groups in zip(*filled)], cache)


@torch.no_grad()
def last_logits_chunk(
    model: HookedModel, runner: torch.nn.Module | None, chunk: TokenBatch, recorder: _Recorder | None, keep: int,
    copies: int = 1,
) -> Float[Tensor, "n d_vocab"]:
    """Last-position logits of one chunk; `runner` is the hooked plain HF tree (or None: a full forward).
    `copies`: see `prefix_cache`."""
    if runner is None:  # a HookedTransformer or a bridge without a plain clone: one padded forward
        if recorder is not None:
            recorder.active = True
        logits = forward(model, chunk)[:, -1]
        if recorder is not None:
            recorder.active = False
        return logits.float()
    extra = {"logits_to_keep": 1} if accepts(runner, "logits_to_keep") else {}
    prefix = shared_prefix_length(chunk, keep=keep)
    if prefix > 0:
        cache, suffix_ids, attention, suffix_positions = prefix_cache(model, runner, chunk, prefix, copies)
        if recorder is not None:
            recorder.active = True
        output = runner(
            input_ids=suffix_ids, attention_mask=attention, position_ids=suffix_positions,
            use_cache=True, **cache_kwargs(runner, cache), **extra,
        )
    else:
        if recorder is not None:
            recorder.active = True
        output = runner(
            input_ids=chunk.input_ids, attention_mask=chunk.attention_mask, position_ids=chunk.position_ids,
            use_cache=False, **extra,
        )
    if recorder is not None:
        recorder.active = False
    return output.logits[:, -1].float()


@torch.no_grad()
def last_logits(
    model: HookedModel,
    prompts: Sequence[str] | TokenBatch,
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 32,
    record_layers: Sequence[int] | None = None,
    record_positions: int = 1,
    progress: bool = False,
    desc: str = "forward",
) -> tuple[Float[Tensor, "n d_vocab"], Float[Tensor, "n n_layers n_positions d_model"] | None]:
    """Next-token logits at the last position of each prompt, with `interventions` active.

    Optionally also records resid_pre at `record_layers` for the last `record_positions` tokens.
    On a bridge loaded by `load_model` this runs the plain HF tree with the shared-prefix KV cache;
    otherwise it falls back to full padded forwards through the hooked model (same numbers, slower).
    """
    batch = prompts if isinstance(prompts, TokenBatch) else tokenize(model, list(prompts))
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if int(batch.lengths.min()) < record_positions:
        raise ValueError(f"record_positions: {record_positions} exceeds the shortest prompt")
    recorder = _Recorder(list(record_layers), record_positions) if record_layers is not None else None
    extra = [recorder.intervention()] if recorder is not None else []
    chunks = []
    rows = batch.input_ids.shape[0]
    # Length-sorted chunks: a chunk is padded to its longest prompt, so similar lengths waste less.
    order = torch.argsort(batch.lengths.cpu(), stable=True)  # on CPU: it also reorders CPU results
    device_order = order.to(batch.input_ids.device)
    sorted_batch = TokenBatch(batch.input_ids[device_order], batch.attention_mask[device_order])
    with apply_all(model, *interventions, *extra, plain=True) as state:
        runner = state.runner if state.runner is plain_model(model) and plain_model(model) is not None else None
        for start in tqdm(range(0, rows, batch_size), desc=desc, disable=not progress, leave=False):
            chunk = sorted_batch[start : start + batch_size].to(model_device(model))
            chunks.append(last_logits_chunk(model, runner, chunk, recorder, record_positions).cpu())
    inverse = torch.argsort(order)
    acts = recorder.stacked()[inverse] if recorder is not None else None
    return torch.cat(chunks)[inverse], acts
