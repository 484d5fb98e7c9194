"""Logits of token batches with interventions active: every position of a batch of texts, chunk by chunk, or the
last position of one batch under raw hooks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

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


def batch_last_logits(model: HookedModel, batch: TokenBatch, hooks: HookList) -> Float[Tensor, "batch d_vocab"]:
    """Last-position logits of one batch already on the device, with raw `hooks` active (e.g. per-row patches
    of a batch of copies of one prompt): a bridge's plain HF tree when every hook sits on a residual site,
    unembedding only the last position; else the model itself."""
    with apply_all(model, HookIntervention(hooks), plain=True) as state:
        runner = plain_model(model)
        if runner is not None and state.runner is runner:
            extra = {"logits_to_keep": 1} if accepts(runner, "logits_to_keep") else {}
            output = runner(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids, use_cache=False, **extra)
            return output.logits[:, -1].float()
        return forward(model, batch)[:, -1].float()
