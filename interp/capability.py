"""What an intervention costs the model: multiple-choice accuracy and loss on ordinary text.

Next-token KL on harmless prompts is `interp.metrics.kl_divergence`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from interp.ab_prompts import MC_FORMAT, ABFormat
from interp.datasets import MultipleChoice, load_bundled_multiple_choice, load_multiple_choice
from interp.evaluators import MultipleChoiceEvaluator
from interp.hooked import HookedModel
from interp.metrics import bootstrap_mean_ci
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


@dataclass(frozen=True)
class CapabilityRow:
    """One condition's capability: accuracy (with a bootstrap 95% interval) and, given texts, the loss on them."""

    condition: str
    accuracy: float
    accuracy_ci95: tuple[float, float]
    letter_mass: float  # mean P(any answer letter): accuracy read where this is small is noise
    n_questions: int
    text_loss: float | None = None  # nats per token

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def capability_under(
    model: HookedModel,
    conditions: Mapping[str, Sequence[Intervention]],
    *,
    questions: Sequence[MultipleChoice] | None = None,
    mmlu_dir: str | Path | None = None,
    texts: Sequence[str] | None = None,
    fmt: ABFormat = MC_FORMAT,
    batch_size: int = 16,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> list[CapabilityRow]:
    """Multiple-choice accuracy (and loss on `texts`) under each condition, e.g. `{"baseline": [],
    "ablated": [Ablate(direction)], "added": [Steer(direction, 4.0)]}`.

    Questions: `questions`, or the MMLU CSVs under `mmlu_dir`, or the bundled set. Each condition's
    interventions act on the whole prompt; each condition runs its prompts once, KV-cached and batched.
    """
    if not conditions:
        raise ValueError("conditions: expected at least one condition, e.g. {'baseline': []}")
    if questions is not None and mmlu_dir is not None:
        raise ValueError("questions, mmlu_dir: give one of them, not both")
    if questions is None:
        questions = load_multiple_choice(mmlu_dir) if mmlu_dir is not None else load_bundled_multiple_choice()
    rows = []
    for name, interventions in conditions.items():
        evaluator = MultipleChoiceEvaluator(
            model, questions, fmt, batch_size=batch_size, interventions=list(interventions), progress=progress
        )
        score = evaluator.score()
        low, high = bootstrap_mean_ci(score.correct.double(), n_bootstrap=n_bootstrap, seed=seed)
        loss = completion_loss(model, texts, list(interventions), batch_size=batch_size) if texts else None
        rows.append(CapabilityRow(str(name), score.accuracy, (low, high), score.letter_mass, len(questions), loss))
    return rows
