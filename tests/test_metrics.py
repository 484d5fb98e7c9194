"""Metrics: AUROC vs sklearn, ranks vs scipy, the ROC area, thresholds, ECE by hand, and the bootstrap
(the resamples both of its callers drew before it existed, batch-invariance, NaN resamples left out)."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from interp.metrics import (
    auroc,
    average_ranks,
    best_thresholds,
    bootstrap,
    bootstrap_mean_ci,
    expected_calibration_error,
    logit_measures,
    roc_curve,
)

# ---------------------------------------------------------------------------------------------
# AUROC, ranks, ROC, thresholds


def test_auroc_matches_sklearn_with_ties_for_many_features_at_once():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40, 90), generator=generator).float()  # many ties
    scores[:5] = torch.randn(5, 90, generator=generator)  # and some without
    labels = torch.rand(90, generator=generator) > 0.7
    ours = auroc(scores, labels)
    expected = torch.tensor([roc_auc_score(labels.numpy(), row.numpy()) for row in scores], dtype=torch.float64)
    assert torch.allclose(ours, expected, atol=1e-12)
    # Per-row labels (as bootstrap resamples use) and a one-class row (undefined).
    per_row = torch.stack([labels, ~labels])
    both = auroc(scores[:2], per_row)
    assert torch.allclose(both[1], torch.tensor(1 - roc_auc_score(labels.numpy(), scores[1].numpy()), dtype=torch.float64))
    assert auroc(scores[:1], torch.zeros(90, dtype=torch.bool)).isnan().all()
    with pytest.raises(ValueError, match="labels"):
        auroc(scores, labels[:10])


def test_average_ranks_and_roc_area():
    from scipy.stats import rankdata

    values = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0, 1.0]])
    assert average_ranks(values).tolist() == [rankdata(values[0].numpy()).tolist()]
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 8, (200,), generator=generator).float()
    labels = torch.rand(200, generator=generator) > 0.5
    fpr, tpr = roc_curve(scores, labels)
    assert fpr[0] == 0 and tpr[-1] == 1
    area = float(torch.trapezoid(tpr, fpr))  # trapezoids over tie groups = ties counted half
    assert area == pytest.approx(float(auroc(scores, labels)), abs=1e-9)


def test_best_threshold_maximises_train_accuracy():
    scores = torch.tensor([[0.1, 0.2, 0.8, 0.9, 0.4], [5.0, 5.0, 5.0, 5.0, 5.0]])
    labels = torch.tensor([False, False, True, True, False])
    thresholds = best_thresholds(scores, labels)
    assert 0.4 <= float(thresholds[0]) < 0.8
    assert ((scores[1] > thresholds[1]) == False).all()  # constant score: predict the majority class


def test_expected_calibration_error_by_hand():
    probabilities = torch.tensor([0.05, 0.05, 0.95, 0.95, 0.55])
    labels = torch.tensor([0, 1, 1, 1, 0])
    # bins: [0, .1): conf .05, acc .5 (2 rows); [.9, 1]: conf .95, acc 1 (2 rows); [.5, .6): conf .55, acc 0.
    expected = (2 * 0.45 + 2 * 0.05 + 0.55) / 5
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# The bootstrap


def _percentile_interval(values: torch.Tensor, level: float = 0.95) -> list[float]:
    tail = (1 - level) / 2
    return torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()


def test_bootstrap_mean_ci_draws_the_resamples_a_plain_seeded_randint_draws():
    values = torch.randn(37, generator=torch.Generator().manual_seed(3)).double()
    draws = torch.randint(0, 37, (500, 37), generator=torch.Generator().manual_seed(7))
    assert list(bootstrap_mean_ci(values, n_bootstrap=500, seed=7, level=0.9)) == _percentile_interval(values[draws].mean(-1), 0.9)
    assert all(v != v for v in bootstrap_mean_ci(torch.zeros(0)))


def test_bootstrap_is_batch_invariant_and_keeps_dicts_and_shapes():
    values = torch.randn(20, 3, generator=torch.Generator().manual_seed(0)).double()

    def statistic(rows):
        return {"mean": values[rows].mean(1), "max": values[rows].amax(1)}

    whole = bootstrap(statistic, 20, n_bootstrap=64, seed=1)
    chunked = bootstrap(statistic, 20, n_bootstrap=64, seed=1, batch=5)
    assert set(whole) == {"mean", "max"} and whole["mean"].shape == (3, 2)
    assert all(torch.equal(whole[key], chunked[key]) for key in whole)
    plain = bootstrap(lambda rows: values[rows].mean(1), 20, n_bootstrap=64, seed=1, batch=7)
    assert torch.equal(plain, whole["mean"]) and bool((plain[:, 0] <= plain[:, 1]).all())
    with pytest.raises(ValueError, match="n_bootstrap"):
        bootstrap(statistic, 20, n_bootstrap=1)


def test_bootstrap_leaves_out_nan_resamples():
    labels = torch.tensor([True, False, False, False])
    scores = torch.tensor([2.0, 1.0, 0.0, -1.0])
    # Resamples without the one positive have no AUROC; the others all give 1.
    interval = bootstrap(lambda rows: auroc(scores[rows], labels[rows]), 4, n_bootstrap=200, seed=0)
    assert interval.tolist() == [1.0, 1.0]


def test_logit_measures():
    logits = torch.tensor([-2.0, -1.0, 1.0, 3.0], dtype=torch.float64)
    labels = torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    measures = logit_measures(logits, labels)
    assert measures["accuracy"] == 0.75 and measures["auroc"] == 1.0
    expected_nll = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))
    assert measures["nll"] == pytest.approx(expected_nll)
    assert measures["ece"] == pytest.approx(expected_calibration_error(logits.sigmoid(), labels))
