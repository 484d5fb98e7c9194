"""Prompt heads run once, a short continuation run on top of them many times (`PromptCache`).

Scoring an answer letter, a choice's likelihood or an agreement token under a sweep of interventions
re-runs only the continuation's tokens: each head's KV cache is kept, the chat template's shared
opening is run once for all prompts, and layers below every intervention are skipped.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.chat import TokenBatch, left_pad, tokenizer_of
from interp.directions import hook_name
from interp.hooked import (
    SITE_PATTERN,
    HookedModel,
    cache_kwargs,
    d_model,
    forward,
    is_bridge,
    model_device,
    n_layers,
    output_cache,
    plain_model,
)
from interp.runner.layers import can_start_at_layer, layers_from
from interp.runner.prefix import widen_after_prefix
from interp.steering import HookIntervention, Intervention, StepState, apply_all


@dataclass
class _HeadBatch:
    rows: Int[Tensor, "batch"]  # indices into the caller's prompt order
    tokens: TokenBatch  # the heads, left-padded (or: shared prefix, padding, rest; see PromptCache)
    cache: Any = None  # HF KV cache of the heads (None when every call re-runs the head)


@dataclass(frozen=True)
class ContinuationOutput:
    """What `PromptCache.run` reads, in the caller's prompt order.

    `log_probs` and `resid` are read at each row's last continuation token; `sequence_log_prob` sums
    log P(token) over the continuation tokens from `score_from` on, `sequence_length` counts them.
    """

    log_probs: Float[Tensor, "n_prompts n_tokens"] | None  # log-softmax over the vocabulary, at token_ids
    resid: Float[Tensor, "n_prompts n_layers d_model"] | None  # recorded residuals, layers as requested
    sequence_log_prob: Float[Tensor, "n_prompts"] | None = None
    sequence_length: Int[Tensor, "n_prompts"] | None = None


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    shortest = min(len(row) for row in rows)
    first = rows[0]
    length = 0
    while length < shortest and all(row[length] == first[length] for row in rows):
        length += 1
    return length


def _merge_batches(batches: list[_HeadBatch], shared: int, pad_id: int) -> list[_HeadBatch]:
    """One batch holding every row: heads are run in length-sorted batches (little padding), but a
    continuation of a token or two is cheapest as one wide forward (the weights are read once).

    Each batch is laid out as shared prefix, padding, rest; the merged batch pads every row's rest to the
    widest, in the tokens and in each layer's keys and values (masked, so the zeros are never attended).
    Returns `batches` unchanged for a cache type without per-layer `keys` / `values` tensors.
    """
    layers_of = [getattr(batch.cache, "layers", None) for batch in batches]
    if any(layers is None or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers)
           for layers in layers_of):
        return batches
    width = max(batch.tokens.input_ids.shape[1] for batch in batches)
    ids, mask = [], []
    for batch in batches:
        extra = width - batch.tokens.input_ids.shape[1]
        ids.append(widen_after_prefix(batch.tokens.input_ids, shared, extra, pad_id, 1))
        mask.append(widen_after_prefix(batch.tokens.attention_mask, shared, extra, 0, 1))
        for layer in batch.cache.layers:  # keys/values: [batch, kv_heads, seq, head_dim]
            layer.keys = widen_after_prefix(layer.keys, shared, extra, 0.0, 2)
            layer.values = widen_after_prefix(layer.values, shared, extra, 0.0, 2)
    merged = batches[0].cache
    for index, layer in enumerate(merged.layers):
        layer.keys = torch.cat([batch.cache.layers[index].keys for batch in batches])
        layer.values = torch.cat([batch.cache.layers[index].values for batch in batches])
    rows = torch.cat([batch.rows for batch in batches])
    return [_HeadBatch(rows, TokenBatch(torch.cat(ids), torch.cat(mask)), merged)]


def _truncate_cache(cache: Any, length: int) -> None:
    """Drop what a continuation appended to an HF cache, so the next condition sees the heads only.

    Layer by layer: a continuation that skipped the lower layers (see `PromptCache.run`) appended to
    the upper layers only.
    """
    for layer in getattr(cache, "layers", None) or [cache]:
        extra = int(layer.get_seq_length()) - length
        if extra > 0:
            layer.crop(-extra)  # negative: "remove this many" (transformers 4.4x and 5.x alike)
        if int(layer.get_seq_length()) not in (0, length):
            raise RuntimeError("PromptCache: could not truncate the KV cache back to the prompt heads")


class _LastTokenRecorder:
    """Keeps the residual at each row's last continuation token, at `layers`, during a `PromptCache.run`."""

    def __init__(self, layers: list[int], site: str) -> None:
        self.layers, self.site = layers, site
        self.recorded: dict[int, Tensor] = {}
        self.last_index: Tensor | None = None  # each row's last continuation index, set per batch
        self.width = 0  # the padded continuation width

    def intervention(self) -> HookIntervention:
        def recorder(layer: int) -> Callable[[Tensor, Any], None]:
            def keep(activation: Tensor, hook: Any) -> None:
                rows = torch.arange(activation.shape[0], device=activation.device)
                # The continuation is the last `width` columns (after the head when it is re-run too).
                columns = activation.shape[1] - self.width + self.last_index
                self.recorded[layer] = activation[rows, columns.to(activation.device)].detach().float().cpu()

            return keep

        return HookIntervention([(hook_name(layer, self.site), recorder(layer)) for layer in self.layers])

    def stacked(self) -> Tensor | None:
        return torch.stack([self.recorded[layer] for layer in self.layers], dim=1) if self.layers else None


class _Reads:
    """What `PromptCache.run` reads from each batch's logits, gathered in the caller's prompt order."""

    def __init__(self, n_prompts: int, token_ids: Sequence[int] | None, n_layers: int, width: int,
                 score_from: int | None) -> None:
        self.ids = torch.tensor(list(token_ids), dtype=torch.long) if token_ids is not None else None
        self.score_from = score_from
        self.log_probs = torch.empty(n_prompts, len(self.ids)) if self.ids is not None else None
        self.resid = torch.empty(n_prompts, n_layers, width) if n_layers else None
        self.sequence = torch.zeros(n_prompts) if score_from is not None else None
        self.lengths = torch.zeros(n_prompts, dtype=torch.long) if score_from is not None else None

    def fill(
        self, rows: Int[Tensor, "batch"], logits: Float[Tensor, "batch keep d_vocab"], suffix: Tensor,
        suffix_mask: Tensor, last_index: Int[Tensor, "batch"], resid: Tensor | None,
    ) -> None:
        keep = logits.shape[1]
        last_logits = logits[torch.arange(len(rows)), last_index.to(logits.device) - (suffix.shape[1] - keep)]
        if self.ids is not None:
            self.log_probs[rows] = last_logits.float().log_softmax(-1)[:, self.ids.to(logits.device)].cpu()
        if resid is not None:
            self.resid[rows] = resid
        if self.score_from is not None:
            # Position j's logits predict token j + 1; score tokens score_from.. of each row.
            token_lp = logits[:, :-1].float().log_softmax(-1).gather(2, suffix[:, 1:, None].to(logits.device))[..., 0]
            wanted = suffix_mask[:, 1:].bool().cpu() & (torch.arange(1, suffix.shape[1]) >= self.score_from)[None, :]
            self.sequence[rows] = (token_lp.cpu() * wanted).sum(1)
            self.lengths[rows] = wanted.sum(1)

    def output(self) -> ContinuationOutput:
        return ContinuationOutput(self.log_probs, self.resid, self.sequence, self.lengths)


class PromptCache:
    """Prompt heads run once; a short continuation shared by all prompts run on top, many times.

    With a bridge (or any model with an HF module underneath) each head's KV cache is kept and a call
    to `run` costs only the continuation's tokens; interventions passed to `run` then see only the
    continuation. The tokens every head starts with (the chat template's system prompt) are run once
    for all prompts: a batch is laid out as shared prefix, padding, rest, with explicit positions.
    `kv_cache=False` (and a HookedTransformer, always) re-runs head + continuation on every call;
    `Steer(positions="new")` still starts at the continuation there (the two paths are tested equal),
    while `positions="all"` would also steer the head. `interventions` given here apply to every pass.
    """

    def __init__(
        self,
        model: HookedModel,
        heads: Sequence[Sequence[int]],
        *,
        batch_size: int = 16,
        kv_cache: bool | None = None,
        interventions: Sequence[Intervention] = (),
        progress: bool = True,
    ) -> None:
        if len(heads) == 0:
            raise ValueError("heads: expected at least one prompt")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if kv_cache and not is_bridge(model):
            raise ValueError("kv_cache: the KV-cache path needs a TransformerBridge (load_model)")
        self.model = model
        self.kv_cache = is_bridge(model) if kv_cache is None else kv_cache
        self.interventions = tuple(interventions)
        self.n_prompts = len(heads)
        self.heads = [list(head) for head in heads]
        self._skip_inputs: dict[tuple, list[Tensor]] = {}  # unsteered resid_pre of a continuation, every layer
        pad_id = tokenizer_of(model).pad_token_id
        pad_id = 0 if pad_id is None else int(pad_id)
        # Every row keeps at least one token of its own, so each batch has something to run.
        shared = min(_common_prefix_length(heads), min(len(h) for h in heads) - 1) if self.kv_cache else 0
        self.shared_prefix = list(heads[0][:shared])
        prefix_cache = self._run_prefix() if shared else None
        # Sorted by length so a batch pads little; results are put back in the caller's order.
        order = sorted(range(len(heads)), key=lambda i: len(heads[i]))
        starts = range(0, len(order), batch_size)
        self.batches: list[_HeadBatch] = []
        for start in tqdm(starts, desc="prompt heads", disable=not progress or len(starts) < 2, leave=False):
            rows = order[start : start + batch_size]
            tokens = left_pad([heads[i][shared:] for i in rows], pad_id, self.shared_prefix)
            batch = _HeadBatch(torch.tensor(rows), tokens)
            if self.kv_cache:
                batch.cache = self._run_heads(tokens, prefix_cache)
            self.batches.append(batch)
        if self.kv_cache and len(self.batches) > 1:
            self.batches = _merge_batches(self.batches, len(self.shared_prefix), pad_id)

    @torch.no_grad()
    def _run_prefix(self) -> Any:
        ids = torch.tensor([self.shared_prefix], device=model_device(self.model))
        return self._run_heads(TokenBatch(ids, torch.ones_like(ids)), None)

    @torch.no_grad()
    def _run_heads(self, tokens: TokenBatch, prefix_cache: Any) -> Any:
        tokens = tokens.to(model_device(self.model))
        start, cache = 0, None
        if prefix_cache is not None:
            start = len(self.shared_prefix)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(tokens.input_ids.shape[0])
        with apply_all(self.model, *self.interventions, plain=True) as state:
            state.prompt_length = tokens.input_ids.shape[1] + 1  # "new" steering starts after the head
            output = state.runner(
                input_ids=tokens.input_ids[:, start:], attention_mask=tokens.attention_mask,
                position_ids=tokens.position_ids[:, start:], use_cache=True, logits_to_keep=1,
                **cache_kwargs(state.runner, cache),
            )
        return output_cache(output)

    @torch.no_grad()
    def run(
        self,
        continuation: Sequence[int] | Sequence[Sequence[int]],
        *,
        interventions: Sequence[Intervention] = (),
        token_ids: Sequence[int] | None = None,
        record_layers: Sequence[int] | None = None,
        site: str = "resid_pre",
        steer_from: int = 0,
        score_from: int | None = None,
    ) -> ContinuationOutput:
        """Run `continuation` after every head and read what is asked for at its end.

        `continuation` is one token list for every prompt, or one list per prompt (caller's order; they
        may differ in length). `token_ids`: log-probs at the last continuation token. `record_layers`:
        residuals there. `score_from`: also sum log P(continuation[j]) for j >= score_from (a choice's
        likelihood). `Steer(positions="new")` interventions start at continuation index `steer_from`.

        On the KV-cache path, when every intervention acts at layer L or above, the layers below L are
        not re-run: their output for the continuation is unsteered, so it is computed once (per
        continuation) and fed to layer L directly.
        """
        suffixes = self._suffixes(continuation)
        if not 0 <= steer_from < min(len(s) for s in suffixes):
            raise ValueError(f"steer_from: {steer_from} is outside the continuation")
        if score_from is not None and not 1 <= score_from < min(len(s) for s in suffixes) + 1:
            raise ValueError(f"score_from: expected 1 <= score_from <= the continuation length, got {score_from}")
        recorder = _LastTokenRecorder(list(record_layers) if record_layers is not None else [], site)
        reads = _Reads(self.n_prompts, token_ids, len(recorder.layers), d_model(self.model), score_from)
        start = self._start_layer([*interventions, recorder.intervention()]) if self.kv_cache else 0
        padded = [self._pad_suffixes([suffixes[i] for i in batch.rows.tolist()]) for batch in self.batches]
        # Unsteered inputs of the first re-run layer: computed before any intervention is active.
        skip_inputs = [
            self._unsteered_input(index, batch, *padded[index], start) if start else None
            for index, batch in enumerate(self.batches)
        ]
        every = (*self.interventions, *interventions, recorder.intervention())
        with apply_all(self.model, *every, plain=self.kv_cache) as state:
            if start and state.runner is not plain_model(self.model):
                raise RuntimeError("PromptCache: the layer skip needs the plain HF clone as the runner")
            for index, batch in enumerate(self.batches):
                heads = batch.tokens.to(model_device(self.model))
                suffix, suffix_mask = padded[index]
                last_index = suffix_mask.sum(1) - 1
                recorder.last_index, recorder.width = last_index, suffix.shape[1]
                state.prompt_length = heads.input_ids.shape[1] + 1 + steer_from  # where Steer("new") starts
                keep = suffix.shape[1] if score_from is not None or bool((last_index != last_index[0]).any()) else 1
                logits = self._continue(
                    state.runner, heads, batch.cache, suffix, suffix_mask, keep, start, skip_inputs[index]
                )
                reads.fill(batch.rows, logits, suffix, suffix_mask, last_index, recorder.stacked())
        return reads.output()

    def _suffixes(self, continuation: Sequence[int] | Sequence[Sequence[int]]) -> list[list[int]]:
        if len(continuation) == 0:
            raise ValueError("continuation: expected at least one token")
        if isinstance(continuation[0], (int, torch.SymInt)) or (isinstance(continuation[0], Tensor) and continuation[0].ndim == 0):
            return [list(map(int, continuation))] * self.n_prompts
        if len(continuation) != self.n_prompts:
            raise ValueError(f"continuation: expected one token list per prompt ({self.n_prompts}), got {len(continuation)}")
        if any(len(row) == 0 for row in continuation):
            raise ValueError("continuation: every prompt needs at least one token")
        return [list(map(int, row)) for row in continuation]

    def _pad_suffixes(self, rows: list[list[int]]) -> tuple[Int[Tensor, "batch m"], Int[Tensor, "batch m"]]:
        """Continuations right-padded: each starts right after its head; padding at the end is never attended."""
        width = max(len(row) for row in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):  # a loop over prompts, not tokens
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        device = model_device(self.model)
        return ids.to(device), mask.to(device)

    def _start_layer(self, interventions: Sequence[Intervention]) -> int:
        """The lowest layer any intervention touches, when all of them are residual-site hooks; else 0."""
        if self.interventions or not can_start_at_layer(self.model):
            return 0
        names = [name for intervention in interventions for name, _ in intervention.hooks(self.model, StepState())]
        matches = [SITE_PATTERN.match(name) for name in names]
        if not names or not all(matches):
            return 0
        return min(int(match.group(1)) for match in matches)

    def _unsteered_input(
        self, index: int, batch: _HeadBatch, suffix: Tensor, suffix_mask: Tensor, start: int
    ) -> Float[Tensor, "batch m d_model"]:
        """resid_pre of every layer for this continuation without interventions, computed once and kept."""
        key = (index, tuple(suffix.flatten().tolist()), tuple(suffix_mask.flatten().tolist()))
        if key not in self._skip_inputs:
            kept: dict[int, Tensor] = {}

            def keeper(layer: int) -> Callable[[Tensor, Any], None]:
                def keep(activation: Tensor, hook: Any) -> None:
                    kept[layer] = activation.detach().clone()

                return keep

            count = n_layers(self.model)
            hooks = HookIntervention([(hook_name(layer), keeper(layer)) for layer in range(count)])
            with apply_all(self.model, hooks, plain=True) as state:
                self._continue(state.runner, batch.tokens.to(suffix.device), batch.cache, suffix, suffix_mask, 1, 0, None)
            self._skip_inputs[key] = [kept[layer] for layer in range(count)]  # a split model: one device per layer
        return self._skip_inputs[key][start]

    def _continue(
        self, runner: Any, heads: TokenBatch, cache: Any, suffix: Tensor, suffix_mask: Tensor, keep: int,
        start: int, skip_input: Tensor | None,
    ) -> Float[Tensor, "batch keep d_vocab"]:
        ids = torch.cat([heads.input_ids, suffix], dim=1)
        mask = torch.cat([heads.attention_mask, suffix_mask], dim=1)
        full = TokenBatch(ids, mask)
        if not is_bridge(self.model):
            return forward(self.model, full)[:, -keep:]
        if cache is None:
            output = runner(input_ids=ids, attention_mask=mask, position_ids=full.position_ids, logits_to_keep=keep)
            return output.logits
        head_width = heads.input_ids.shape[1]
        inputs = {"input_ids": ids[:, head_width:]} if skip_input is None else {"inputs_embeds": skip_input}
        with layers_from(runner, start):
            output = runner(
                **inputs, attention_mask=mask, position_ids=full.position_ids[:, head_width:],
                use_cache=True, logits_to_keep=keep, **cache_kwargs(runner, cache),
            )
        _truncate_cache(cache, head_width)
        return output.logits
