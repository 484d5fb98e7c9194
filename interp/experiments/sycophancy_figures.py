"""Figures of the sycophancy experiment: held-out A/B sweeps, letter mass, per-layer effect, agreement, accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from interp.caa import NORMALISATION_LABELS
from interp.plots import line_plot, save_figure

if TYPE_CHECKING:
    from interp.experiments.sycophancy import Steps, SycophancyConfig


def draw_figures(label: str, steps: Steps, config: SycophancyConfig, out: Path) -> None:
    """The sycophancy experiment's figures for one model (A/B sweep, agreement, accuracy)."""
    ab, layers, best = steps.held_out.ab, steps.layers, steps.best
    xlabel = f"multiplier ({NORMALISATION_LABELS[config.normalisation]})"  # every figure says which normalisation
    line_plot(
        ab.multipliers, {f"layer {layer}": ab.row(layer) for layer in layers}, xlabel=xlabel,
        ylabel="P(sycophantic letter) / (P(A) + P(B))",
        title=f"{label}: CAA sycophancy vector, held-out A/B ({len(steps.pairs.test)} pairs)",
        path=out / "ab_score_vs_multiplier.png", baseline=steps.held_out.baseline.score,
    )
    line_plot(
        ab.multipliers, {f"layer {layer}": ab.mass[i].tolist() for i, layer in enumerate(layers)}, xlabel=xlabel,
        ylabel="P(A) + P(B) at the answer position", title=f"{label}: letter mass under steering",
        path=out / "letter_mass_vs_multiplier.png",
    )
    _layer_effect_figure(label, steps, config, out / "layer_effect.png")
    _agreement_figures(label, steps, xlabel, out)
    accuracy = steps.accuracy
    tradeoff_plot(
        {"A/B sycophancy score (held-out)": (ab.multipliers, ab.row(best)),
         "factual accuracy, letters A-D": (ab.multipliers, accuracy.accuracy),
         "factual accuracy, choice text": (accuracy.cloze_multipliers, accuracy.cloze_accuracy)},
        (accuracy.cloze_ab, accuracy.cloze_accuracy, accuracy.cloze_multipliers), xlabel=xlabel,
        title=f"{label}: sycophancy vs factual accuracy, layer {best}", path=out / "accuracy_tradeoff.png",
    )


def _layer_effect_figure(label: str, steps: Steps, config: SycophancyConfig, path: Path) -> None:
    ab, layers, s = steps.held_out.ab, steps.layers, config.select_multiplier
    effect = {"train (+m) − (−m)": [steps.train_swing[layer] for layer in layers]}
    if s in ab.multipliers and -s in ab.multipliers:
        plus, minus = ab.multipliers.index(s), ab.multipliers.index(-s)
        effect["held-out (+m) − (−m)"] = [ab.row(layer)[plus] - ab.row(layer)[minus] for layer in layers]
    effect["open-ended agreement, false claims (+m) − (−m)"] = [steps.agreement.effect[layer] for layer in layers]
    line_plot(
        layers, effect, xlabel="layer (resid_pre)",
        ylabel=f"value at +m − value at −m, m = {s:g} ({NORMALISATION_LABELS[config.normalisation]})",
        title=f"{label}: per-layer effect of the CAA vector", path=path, baseline=0.0,
    )


def _agreement_figures(label: str, steps: Steps, xlabel: str, out: Path) -> None:
    ab, agreement = steps.held_out.ab, steps.agreement
    rows = agreement.rows
    line_plot(
        ab.multipliers, {f"layer {layer}": rows[layer]["false_claims"] for layer in steps.layers}, xlabel=xlabel,
        ylabel="P(agree-like first token) / (agree + disagree)",
        title=f"{label}: agreement with {sum(agreement.false_rows)} false claims", path=out / "agreement_vs_multiplier.png",
        baseline=agreement.unsteered.mean(agreement.false_rows),
    )
    shown = dict.fromkeys([steps.best, agreement.layer])
    line_plot(
        ab.multipliers,
        {
            **{f"false claims, layer {layer}": rows[layer]["false_claims"] for layer in shown},
            **{f"true claims, layer {layer}": rows[layer]["true_claims"] for layer in shown},
            **{f"agree+disagree token mass, layer {layer}": rows[layer]["mass"] for layer in shown},
        },
        xlabel=xlabel, ylabel="agreement share / token mass",
        title=f"{label}: false vs true claims", path=out / "agreement_false_vs_true.png",
    )


def tradeoff_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    scatter: tuple[Sequence[float], Sequence[float], Sequence[float]],
    *, xlabel: str, title: str, path: Path,
) -> Path:
    """Left: behaviour and accuracies vs multiplier (each on its own multipliers). Right: accuracy against
    the A/B score, one point per multiplier."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, (x, y) in series.items():
        left.plot(list(x), list(y), marker="o", markersize=3.5, label=label)
    left.axhline(0.25, color="grey", linestyle=":", linewidth=1)
    left.set_xlabel(xlabel)
    left.set_ylabel("score / accuracy (dotted: chance for 4 choices)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    ab_score, accuracy, multipliers = scatter
    right.plot(list(ab_score), list(accuracy), marker="o", color="tab:green")
    for x, y, m in zip(ab_score, accuracy, multipliers):
        right.annotate(f"{m:+g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    right.set_xlabel("held-out A/B sycophancy score")
    right.set_ylabel("factual accuracy, choice text")
    right.grid(alpha=0.3)
    figure.suptitle(title)
    return save_figure(figure, path)
