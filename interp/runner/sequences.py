"""Logits at every position of a batch of texts, with interventions active, chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.chat import TokenBatch, tokenize
from interp.hooked import HookedModel, forward, model_device, plain_model
from interp.steering import Intervention, apply_all


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
