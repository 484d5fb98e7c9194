"""Scores as classifiers: ranks, AUROC, ROC curves, accuracy-maximising thresholds, calibration error, and
a percentile bootstrap.

A leaf: torch only. Everything is vectorised over leading axes, so thousands of features (or bootstrap
resamples) are measured in one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp._checks import binary_labels

Statistic = TypeVar("Statistic", Tensor, dict[str, Tensor])


def average_ranks(values: Float[Tensor, "... n"]) -> Float[Tensor, "... n"]:
    """1-based ranks along the last axis; tied values share the mean of their ranks."""
    ordered, order = values.sort(dim=-1)
    n = values.shape[-1]
    index = torch.arange(n, device=values.device).expand_as(values)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    # The last index of each tie group: a running minimum from the right over group ends.
    last = torch.where(ends, index, torch.full_like(index, n)).flip(-1).cummin(dim=-1).values.flip(-1)
    mean_rank = (first + last).double() / 2 + 1
    return torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)


def auroc(scores: Float[Tensor, "... n"], labels: Bool[Tensor, "... n"]) -> Float[Tensor, "..."]:
    """Area under the ROC curve (Mann–Whitney U, ties count half), for every leading index at once.

    `labels` broadcasts against `scores` (e.g. [n] for [n_features, n]). NaN where a row has one class.

    Args:
        scores: `[..., n]` scores, higher meaning "positive".
        labels: `[n]` or `[..., n]` booleans (or 0/1).

    Returns:
        `[...]` AUROCs, float64.

    Raises:
        ValueError: NaN or inf in `scores`, labels that are not binary, or a different number of labels.

    Example:
        >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True]))
        tensor(0.7500, dtype=torch.float64)
    """
    if not torch.isfinite(scores).all():
        raise ValueError("scores: contains NaN or inf")
    labels = binary_labels(labels, device=scores.device)
    if labels.shape[-1] != scores.shape[-1]:
        raise ValueError(f"labels: expected {scores.shape[-1]} labels along the last axis, got {labels.shape[-1]}")
    labels = labels.expand(scores.shape)
    ranks = average_ranks(scores.double())
    n_pos = labels.sum(-1).double()
    n_neg = labels.shape[-1] - n_pos
    u = (ranks * labels).sum(-1) - n_pos * (n_pos + 1) / 2
    return torch.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg).clamp_min(1), torch.full_like(u, float("nan")))


def roc_curve(scores: Float[Tensor, "n"], labels: Bool[Tensor, "n"]) -> tuple[Float[Tensor, "m"], Float[Tensor, "m"]]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    ordered, order = scores.double().sort(descending=True)
    hits = binary_labels(labels, device=scores.device)[order].double()
    tp, fp = hits.cumsum(0), (1 - hits).cumsum(0)
    keep = torch.ones_like(ordered, dtype=torch.bool)
    keep[:-1] = ordered[1:] != ordered[:-1]  # the last position of each tie group
    zero = torch.zeros(1, dtype=torch.float64, device=scores.device)
    return torch.cat([zero, fp[keep] / fp[-1].clamp_min(1)]), torch.cat([zero, tp[keep] / tp[-1].clamp_min(1)])


def best_thresholds(scores: Float[Tensor, "s n"], labels: Bool[Tensor, "n"]) -> Float[Tensor, "s"]:
    """Per score, the threshold (predict correct when score > t) with the highest accuracy on these rows."""
    device = scores.device
    ordered, order = scores.double().sort(dim=-1, descending=True)
    labels = labels.to(device).bool()
    hits = labels[order].double()
    n = scores.shape[-1]
    n_neg = n - labels.sum()
    # Cut after the top k (k = 0..n): accuracy = (true positives + true negatives) / n.
    tp = torch.cat([torch.zeros(scores.shape[0], 1, dtype=torch.float64, device=device), hits.cumsum(-1)], dim=-1)
    fp = torch.arange(n + 1, dtype=torch.float64, device=device) - tp
    accuracy = (tp + n_neg - fp) / n
    valid = torch.ones_like(accuracy, dtype=torch.bool)
    valid[:, 1:-1] = ordered[:, :-1] > ordered[:, 1:]  # a cut cannot split tied scores
    k = torch.where(valid, accuracy, torch.full_like(accuracy, -1.0)).argmax(-1)
    upper = torch.cat([torch.full((scores.shape[0], 1), float("inf"), dtype=torch.float64, device=device), ordered], -1)
    lower = torch.cat([ordered, torch.full((scores.shape[0], 1), float("-inf"), dtype=torch.float64, device=device)], -1)
    rows = torch.arange(scores.shape[0], device=device)
    above, below = upper[rows, k], lower[rows, k]
    middle = (above + below) / 2
    return torch.where(torch.isfinite(middle), middle, torch.where(torch.isinf(above), below + 1e-9, above - 1e-9))


def expected_calibration_error(
    probabilities: Float[Tensor, "n"], labels: Float[Tensor, "n"] | Bool[Tensor, "n"], n_bins: int = 10
) -> float:
    """ECE: the |mean confidence − accuracy| of equal-width probability bins, weighted by their counts.

    Confidence and accuracy are those of the positive class (a binary reliability diagram).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins: expected >= 1, got {n_bins}")
    p = probabilities.detach().double().flatten()
    y = labels.detach().double().flatten()
    if p.shape != y.shape or p.numel() == 0:
        raise ValueError(f"labels: expected {p.numel()} labels matching the probabilities, got {y.numel()}")
    bins = (p * n_bins).long().clamp(0, n_bins - 1)
    counts = torch.bincount(bins, minlength=n_bins).double()
    confidence = torch.bincount(bins, weights=p, minlength=n_bins)
    accuracy = torch.bincount(bins, weights=y, minlength=n_bins)
    return float((confidence - accuracy).abs().sum() / p.numel()) if counts.sum() else float("nan")


def logit_measures(logits: Float[Tensor, "n"], labels: Float[Tensor, "n"] | Bool[Tensor, "n"]) -> dict[str, float]:
    """Accuracy (logit > 0), AUROC, mean negative log-likelihood and ECE of a binary classifier's logits."""
    return {
        "accuracy": float(((logits > 0) == labels.bool()).double().mean()),
        "auroc": float(auroc(logits, labels.bool())),
        "nll": float(torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double())),
        "ece": expected_calibration_error(logits.sigmoid(), labels),
    }


def bootstrap(
    statistic: Callable[[Int[Tensor, "b n"]], Statistic],
    n: int,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    batch: int | None = None,
) -> Statistic:
    """Percentile interval of `statistic` over `n_bootstrap` resamples of `n` rows with replacement.

    `statistic(rows)` gets the row indices of `b` resamples ([b, n]) and returns a value per resample
    ([b, ...], or a dict of them); the answer is the (low, high) quantiles in a last axis of 2, in the
    same shape. `batch` resamples go to each call, so memory stays bounded. Resamples whose value is
    NaN are left out (a resample holding one class has no AUROC).
    """
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap: expected >= 2, got {n_bootstrap}")
    # All draws come first, from one seeded generator: the resamples do not depend on `batch`.
    draws = torch.randint(0, n, (n_bootstrap, n), generator=torch.Generator().manual_seed(seed))
    step = batch or n_bootstrap
    parts = [statistic(draws[start : start + step]) for start in range(0, n_bootstrap, step)]
    tail = (1 - level) / 2

    def interval(values: list[Tensor]) -> Tensor:
        q = torch.tensor([tail, 1 - tail], dtype=torch.float64, device=values[0].device)
        return torch.nanquantile(torch.cat(values), q, dim=0).movedim(0, -1)

    if isinstance(parts[0], dict):
        return {key: interval([part[key] for part in parts]) for key in parts[0]}
    return interval(parts)


def bootstrap_mean_ci(values: Float[Tensor, "n"], n_bootstrap: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean."""
    v = values.double().flatten()
    if v.numel() == 0:
        return float("nan"), float("nan")
    low, high = bootstrap(lambda rows: v[rows].mean(-1), v.numel(), n_bootstrap=n_bootstrap, seed=seed, level=level).tolist()
    return low, high


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion `successes / n` (NaN for n = 0); sound at 0 and 1, unlike the normal one."""
    if n <= 0:
        return float("nan"), float("nan")
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)))
    p = min(max(successes / n, 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def kl_divergence(
    reference_logits: Float[Tensor, "n d_vocab"], logits: Float[Tensor, "n d_vocab"]
) -> Float[Tensor, "n"]:
    """KL(P_reference ‖ P) per row, of the next-token distributions."""
    if reference_logits.shape != logits.shape:
        raise ValueError(f"logits: shape {tuple(logits.shape)} differs from the reference {tuple(reference_logits.shape)}")
    reference = reference_logits.double().log_softmax(-1)
    other = logits.double().log_softmax(-1)
    return (reference.exp() * (reference - other)).sum(-1).clamp_min(0).float()


__all__ = [
    "auroc", "average_ranks", "best_thresholds", "bootstrap", "bootstrap_mean_ci", "expected_calibration_error",
    "kl_divergence", "logit_measures", "roc_curve", "wilson_interval",
]
