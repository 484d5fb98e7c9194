"""Figures of the refusal experiment: the candidates' heatmaps, held-out refusal rates, SVD spectra."""

from __future__ import annotations

from pathlib import Path

import torch

from interp.metrics import wilson_interval
from interp.plots import save_figure
from interp.refusal import CandidateTable, SelectionConfig
from interp.weight_diff import WeightDiff


def candidates_heatmap(table: CandidateTable, config: SelectionConfig, title: str, path: Path) -> Path:
    """Heatmaps of the refusal candidates' scores over layers × positions, the chosen one and the filtered ones marked.

    Returns:
        `path`, written.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    panels = [("ablated refusal score (harmful)", table.ablation_score, "coolwarm")]
    if not torch.isnan(table.screen_score).all():
        panels.append((f"screening score ({config.screen_prompts} prompts)", table.screen_score, "coolwarm"))
    panels += [
        ("KL on harmless (ablated)", table.kl, "viridis"),
        ("refusal score, harmless + direction", table.addition_score, "coolwarm"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 0.22 * len(table.layers) + 2.2), sharey=True)
    cutoff = int(len(table.layers) * (1 - config.prune_layer_fraction))
    for axis, (label, values, colours) in zip(axes, panels):
        cmap = plt.get_cmap(colours).with_extremes(bad="#dddddd")
        image = axis.imshow(values.numpy(), aspect="auto", cmap=cmap, origin="lower")
        figure.colorbar(image, ax=axis, fraction=0.05)
        axis.axhline(cutoff - 0.5, color="black", linestyle="--", linewidth=0.8)
        axis.set_xticks(range(len(table.positions)), [repr(t)[1:-1] for t in table.position_labels], rotation=60, fontsize=7)
        axis.set_title(label, fontsize=8)
        if table.chosen is not None:
            layer, j = table.chosen
            axis.add_patch(Rectangle((j - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    axes[0].set_ylabel("layer (resid_pre); dashed: pruned above")
    figure.suptitle(title + " (grey: not scored)", fontsize=9)
    return save_figure(figure, path)


def refusal_rate_bars(rates: dict[str, dict[str, float]], counts: dict[str, int], title: str, path: Path) -> Path:
    """Held-out refusal rates per condition, harmful and harmless side by side, each with its 95% Wilson interval
    over the `counts[kind]` prompts judged."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    conditions = list(rates["harmful"])
    width = 0.38
    for offset, kind in ((-width / 2, "harmful"), (width / 2, "harmless")):
        values = [rates[kind].get(c, float("nan")) for c in conditions]
        intervals = [wilson_interval(v * counts[kind], counts[kind]) if v == v else (v, v) for v in values]
        errors = [[v - low for v, (low, _) in zip(values, intervals)], [high - v for v, (_, high) in zip(values, intervals)]]
        axis.bar([i + offset for i in range(len(conditions))], values, width, yerr=errors, capsize=3,
                 label=f"held-out {kind} (n={counts[kind]})")
    axis.set_xticks(range(len(conditions)), conditions)
    axis.set_ylabel("refusal rate (phrase judge, 95% Wilson CI)")
    axis.set_ylim(0, 1.05)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def svd_spectra(spectra: dict[str, tuple[WeightDiff, int]], title: str, path: Path, top: int = 16) -> Path:
    """The singular values of each weight difference (the top `top`), the chosen singular vector marked.

    Returns:
        `path`, written.
    """
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for label, (result, chosen) in spectra.items():
        values = result.singular_values[:top].clamp_min(1e-12).numpy()
        line = axis.semilogy(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)[0]
        axis.semilogy([chosen + 1], [values[chosen]], marker="*", markersize=13, color=line.get_color())
    axis.set_xlabel("singular value rank (★ chosen)")
    axis.set_ylabel("singular value of Δ weights")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)
