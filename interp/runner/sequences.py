"""Logits of token batches with interventions active: one padded batch (the hooked forward every caller uses), every
position of a batch of texts chunk by chunk, or the last position of one batch under raw hooks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp._checks import whole_number
from interp.chat import TokenBatch, tokenize
from interp.hooked import HookedModel, HookList, accepts, forward, model_device, plain_model
from interp.steering import HookIntervention, Intervention, apply_all


@torch.no_grad()
def sequence_logits(
    model: HookedModel, texts: Sequence[str], interventions: Sequence[Intervention] = (), *, batch_size: int = 8
) -> Iterator[tuple[TokenBatch, Float[Tensor, "batch seq d_vocab"]]]:
    """Per chunk of `batch_size` texts (left-padded, on the model's device): the tokens and their logits.

    A bridge runs its plain HF clone when every hook sits on a residual site; otherwise the hooked model.
    """
    batch = tokenize(model, list(texts))
    with apply_all(model, *interventions, plain=True) as state:
        plain = plain_model(model)
        for start in range(0, batch.input_ids.shape[0], batch_size):
            chunk = batch[start : start + batch_size].to(model_device(model))
            if plain is not None and state.runner is plain:
                logits = state.runner(
                    input_ids=chunk.input_ids, attention_mask=chunk.attention_mask,
                    position_ids=chunk.position_ids, use_cache=False,
                ).logits
            else:
                logits = forward(model, chunk)
            yield chunk, logits


@torch.no_grad()
def batch_logits(
    model: HookedModel, batch: TokenBatch, interventions: Sequence[Intervention] = (), *, keep_last: int = 0,
    fast: bool = True, prompt_length: int | None = None,
) -> Float[Tensor, "batch keep d_vocab"]:
    """Logits of one padded batch with `interventions` active: the forward with hooks that everything else calls.

    A bridge runs its plain HF clone (the same weights, without the bridge's hook-point modules) when every
    hook sits on a residual site and none is already on the bridge (`interp.hooked.plain_sites_cover`);
    otherwise the hooked model itself (`fast=False` always does). `keep_last`:
    only the last positions' logits (0: all); on the plain path only those positions are unembedded.
    `prompt_length`: the batch's columns that are prompt, so `Steer(positions="new")` acts from column
    `prompt_length - 1` on, as in `generate` (default: such a Steer is refused).
    """
    whole_number(keep_last, "keep_last", minimum=0)
    if prompt_length is not None:
        whole_number(prompt_length, "prompt_length", minimum=1)
    batch = batch.to(model_device(model))
    with apply_all(model, *interventions, plain=fast) as state:
        state.prompt_length = prompt_length
        runner = plain_model(model)
        if runner is not None and state.runner is runner:
            extra = {"logits_to_keep": keep_last} if keep_last and accepts(runner, "logits_to_keep") else {}
            logits = runner(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids, use_cache=False, **extra).logits
        else:
            logits = forward(model, batch)
    return logits[:, -keep_last:] if keep_last else logits


def batch_last_logits(model: HookedModel, batch: TokenBatch, hooks: HookList) -> Float[Tensor, "batch d_vocab"]:
    """Last-position logits of one batch with raw `hooks` active (e.g. per-row patches of a batch of copies of
    one prompt), as `batch_logits` runs them."""
    return batch_logits(model, batch, [HookIntervention(hooks)], keep_last=1)[:, -1].float()
