"""What an intervention costs the model: loss on ordinary text (next-token KL: `interp.metrics.kl_divergence`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interp.hooked import HookedModel
from interp.runner import sequence_logits
from interp.steering import Intervention


@torch.no_grad()
def completion_loss(
    model: HookedModel,
    texts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 8,
) -> float:
    """Mean next-token cross-entropy (nats/token) over every real token after the first of each text."""
    total, count = 0.0, 0
    for chunk, logits in sequence_logits(model, texts, interventions, batch_size=batch_size):
        log_probs = logits[:, :-1].float().log_softmax(-1)
        targets = chunk.input_ids[:, 1:]
        mask = (chunk.attention_mask[:, :-1] * chunk.attention_mask[:, 1:]).bool()
        picked = log_probs.gather(-1, targets[..., None])[..., 0]
        total += float(-(picked * mask).sum())
        count += int(mask.sum())
    return total / max(count, 1)
