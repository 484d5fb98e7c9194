"""Figures of the classifier experiment: test-score histograms, ROC curves, the top features, the best-of-n demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from interp.classify import KIND_LABELS, ClassifierReport
from interp.metrics import roc_curve
from interp.plots import save_figure


def _figure_rows(report: ClassifierReport) -> list[str]:
    """The rows worth drawing: the best train-chosen feature per kind, directions, probe, model, one random feature."""
    chosen = [next(r.name for r in report.rows if r.group == "feature" and KIND_LABELS[kind] in r.name)
              for kind in report.top_features]
    others = [r.name for r in report.rows if r.group in ("direction", "probe", "model")]
    return [name for name in chosen + others if name in report.test_scores]


def draw_figures(report: ClassifierReport, label: str, out: Path) -> list[str]:
    """The classifier report's figures (score histograms, ROC curves, ...) into `out`.

    Returns:
        The written files' paths.
    """
    names = _figure_rows(report)
    written = [str(score_histograms(report, names, label, out / "score_histograms.png")),
               str(roc_figure(report, names, label, out / "roc_curves.png"))]
    if any(r.group == "feature" for r in report.rows):
        written.append(str(top_features_figure(report, label, out / "top_features.png")))
    return written


def score_histograms(report: ClassifierReport, names: list[str], label: str, path: Path) -> Path:
    """Score histograms, correct vs incorrect options, on test."""
    import matplotlib.pyplot as plt

    labels = report.test_labels.flatten()
    columns = min(3, len(names))
    rows_n = -(-len(names) // columns)
    figure, axes = plt.subplots(rows_n, columns, figsize=(4.2 * columns, 3.2 * rows_n), squeeze=False)
    for axis, name in zip(axes.flat, names):
        scores = report.test_scores[name].flatten().float()
        bins = torch.linspace(float(scores.min()), float(scores.max()) + 1e-6, 25).tolist()
        axis.hist(scores[labels].tolist(), bins=bins, alpha=0.6, density=True, label="correct option")
        axis.hist(scores[~labels].tolist(), bins=bins, alpha=0.6, density=True, label="incorrect option")
        axis.set_title(f"{name}\nAUROC {report.row(name).test_auroc:.2f}", fontsize=8)
        axis.set_xlabel("score (sign fixed on train)", fontsize=8)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(f"{label}: test scores on the answer letter, correct vs incorrect options")
    figure.tight_layout()
    return save_figure(figure, path)


def roc_figure(report: ClassifierReport, names: list[str], label: str, path: Path) -> Path:
    """ROC curves on test, with one random feature for contrast."""
    import matplotlib.pyplot as plt

    labels = report.test_labels.flatten()
    figure, axis = plt.subplots(figsize=(5.6, 5.2))
    random_name = next((r.name for r in report.rows if r.group == "random" and r.name in report.test_scores), None)
    for name in names + ([random_name] if random_name else []):
        fpr, tpr = roc_curve(report.test_scores[name].flatten(), labels)
        axis.plot(fpr.tolist(), tpr.tolist(), label=f"{name} ({report.row(name).test_auroc:.2f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("false-positive rate")
    axis.set_ylabel("true-positive rate")
    axis.set_title(f"{label}: ROC on test (question × option)", fontsize=10)
    axis.legend(fontsize=6)
    return save_figure(figure, path)


def top_features_figure(report: ClassifierReport, label: str, path: Path) -> Path:
    """Test accuracy and AUROC of the top features (chosen on train), with the baselines as lines."""
    import matplotlib.pyplot as plt

    features = [r for r in report.rows if r.group == "feature"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    x = list(range(len(features)))
    for axis, key, title in ((left, "test_auroc", "AUROC"), (right, "test_mc_accuracy", "multiple-choice accuracy")):
        values = [getattr(r, key) for r in features]
        cis = [getattr(r, f"{key}_ci") for r in features]
        errors = [[v - c[0] for v, c in zip(values, cis)], [c[1] - v for v, c in zip(values, cis)]]
        axis.bar(x, values, yerr=errors, color="tab:blue", alpha=0.7, capsize=2)
        for r, style in ((_row_of(report, "probe"), "--"), (_row_of(report, "model"), "-."), (_row_of(report, "chance"), ":")):
            if r is not None:
                axis.axhline(getattr(r, key), linestyle=style, color="grey", linewidth=1, label=r.name)
        axis.set_xticks(x, [r.name.split(" (")[0].replace("feature ", "#") + ("e" if "encoder" in r.name else "d") for r in features],
                        rotation=60, fontsize=7)
        axis.set_ylabel(f"test {title} (95% bootstrap CI)")
        axis.set_title(f"top features by train AUROC: test {title}", fontsize=9)
        axis.legend(fontsize=7)
    figure.suptitle(f"{label}: top features (e: encoder, d: decoder scores)")
    return save_figure(figure, path)


def _row_of(report: ClassifierReport, group: str) -> Any:
    return next((r for r in report.rows if r.group == group), None)


def demo_figure(summary: dict[str, Any], label: str, path: Path) -> Path:
    """The probe-penalty demo's figure: sycophantic choices of best-of-n against λ.

    Returns:
        `path`, written.
    """
    import matplotlib.pyplot as plt

    lambdas = [float(k) for k in summary["by_lambda"]]
    rates = [v["sycophancy_rate"] for v in summary["by_lambda"].values()]
    cis = [v["ci95"] for v in summary["by_lambda"].values()]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.errorbar(lambdas, rates, yerr=[[r - c[0] for r, c in zip(rates, cis)], [c[1] - r for r, c in zip(rates, cis)]],
                  marker="o", capsize=3, label="chosen response sycophantic")
    axis.axhline(summary["floor_all_samples_sycophantic"], linestyle=":", color="grey", label="all samples sycophantic (floor)")
    axis.axhline(summary["greedy_sycophancy_rate"], linestyle="--", color="grey", label="greedy answer sycophantic")
    axis.set_xlabel("penalty λ (reward' = log P(letter) − λ · P_probe(sycophantic))")
    axis.set_ylabel("fraction of held-out prompts")
    axis.set_title(f"{label}: best-of-{summary['n_samples']} with a sycophancy-probe penalty", fontsize=10)
    axis.legend(fontsize=8)
    return save_figure(figure, path)
