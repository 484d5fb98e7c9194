"""Figures, drawn from result values passed in (never from globals) and saved atomically as PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from interp._io import atomic_file  # noqa: E402


def save_figure(figure: plt.Figure, path: str | Path) -> Path:
    try:
        with atomic_file(Path(path)) as tmp:
            figure.savefig(tmp, dpi=130, bbox_inches="tight", format="png")
    finally:
        plt.close(figure)
    return Path(path)


def line_plot(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    path: str | Path,
    baseline: float | None = None,
) -> Path:
    """One line per series over shared x values (e.g. behaviour vs multiplier, one line per layer)."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for label, values in series.items():
        axes.plot(list(x), list(values), marker="o", markersize=3.5, label=label)
    if baseline is not None:
        axes.axhline(baseline, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend(fontsize=8, ncol=2 if len(series) > 6 else 1)
    return save_figure(figure, path)
