"""Figures, drawn from result values passed in (never from globals), laid out so that no text leaves the canvas
or runs past the side it labels, and saved atomically as PNG when given a path.

`finish_figure(figure, path)` is the last step of every figure: it wraps labels and titles longer than their
axes, lays the figure out, saves it if `path` is given, and hands it back detached from pyplot (so a notebook
shows it once, as the returned value). `text_problems(figure)` lists any text that still does not fit.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from interp._io import atomic_file  # noqa: E402

TOLERANCE_PX = 1.0  # rounding of text extents


def renderer_of(figure: Figure) -> Any:
    """The figure's Agg renderer (a figure pyplot has closed is given an Agg canvas again)."""
    if not hasattr(figure.canvas, "get_renderer"):
        FigureCanvasAgg(figure)
    return figure.canvas.get_renderer()


def _layout(figure: Figure) -> None:
    if figure.get_layout_engine() is None:
        with warnings.catch_warnings():  # "not compatible with tight_layout" for odd axes: the wrap still helps
            warnings.simplefilter("ignore", UserWarning)
            figure.tight_layout()
    figure.canvas.draw()


def _wrapped(text: str, available: float, extent: float) -> str | None:
    """`text` re-wrapped so that its longest line takes `available` of the `extent` it takes now (None: fits)."""
    if extent <= available + TOLERANCE_PX or not text.strip():
        return None
    lines = text.split("\n")
    longest = max(len(line) for line in lines)
    width = max(8, int(longest * available / extent * 0.95))
    if width >= longest:
        return None
    return "\n".join(textwrap.fill(line, width) if len(line) > width else line for line in lines)


def _wrap_long_text(figure: Figure) -> bool:
    """Wrap axis labels and titles longer than their axes, the suptitle longer than the figure; True if any changed."""
    renderer = renderer_of(figure)
    changed = False
    pairs: list[tuple[Text, float, bool]] = []  # text, room, vertical
    for axes in figure.axes:
        if not axes.get_visible():
            continue
        box = axes.get_window_extent(renderer)
        pairs += [(axes.xaxis.label, box.width, False), (axes.yaxis.label, box.height, True)]
        pairs += [(title, box.width, False) for title in (axes.title, axes._left_title, axes._right_title)]
    if figure._suptitle is not None:
        pairs.append((figure._suptitle, figure.bbox.width, False))
    for text, room, vertical in pairs:
        extent = text.get_window_extent(renderer)
        new = _wrapped(text.get_text(), room, extent.height if vertical else extent.width)
        if new is not None:
            text.set_text(new)
            changed = True
    return changed


def fit_text(figure: Figure) -> Figure:
    """Wrap what is longer than the side it labels and lay the figure out (tight layout unless it has its own)."""
    _layout(figure)
    for _ in range(3):
        if not _wrap_long_text(figure):
            break
        _layout(figure)
    return figure


def drawn_texts(figure: Figure) -> list[Text]:
    """Every text artist the renderer actually draws (hidden tick labels and empty texts are not drawn)."""
    renderer = renderer_of(figure)
    figure.canvas.draw()
    seen: list[Text] = []
    original = renderer.draw_text

    def record(gc: Any, x: float, y: float, s: str, prop: Any, angle: float, ismath: Any = False,
               mtext: Text | None = None) -> Any:
        if mtext is not None and s.strip():
            seen.append(mtext)
        return original(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)

    renderer.draw_text = record
    try:
        figure.draw(renderer)
    finally:
        del renderer.draw_text
    return list(dict.fromkeys(seen))


def text_problems(figure: Figure) -> list[str]:
    """What does not fit: each drawn text (with its box) leaving the canvas, each axis label longer than its axis."""
    renderer = renderer_of(figure)
    canvas = figure.bbox
    problems = []
    for text in drawn_texts(figure):
        box = text.get_window_extent(renderer)
        patch = text.get_bbox_patch()
        if patch is not None:
            box = type(box).union([box, patch.get_window_extent(renderer)])
        if (box.x0 < canvas.x0 - TOLERANCE_PX or box.y0 < canvas.y0 - TOLERANCE_PX
                or box.x1 > canvas.x1 + TOLERANCE_PX or box.y1 > canvas.y1 + TOLERANCE_PX):
            problems.append(f"text {text.get_text()!r} at {_rounded(box.bounds)} leaves the canvas {_rounded(canvas.bounds)}")
    for axes in figure.axes:
        if not axes.get_visible() or not axes.axison:
            continue
        box = axes.get_window_extent(renderer)
        for label, room, vertical in ((axes.xaxis.label, box.width, False), (axes.yaxis.label, box.height, True)):
            extent = label.get_window_extent(renderer)
            if label.get_text().strip() and (extent.height if vertical else extent.width) > room + TOLERANCE_PX:
                problems.append(f"axis label {label.get_text()!r} is longer than its axis")
    return problems


def _rounded(bounds: Sequence[float]) -> tuple[int, ...]:
    return tuple(round(float(value)) for value in bounds)


def finish_figure(figure: Figure, path: str | Path | None = None, *, layout: bool = True) -> Figure:
    """Fit the text (`layout=False`: a figure placed by hand is kept as it is), save as PNG (atomically) when
    `path` is given, detach from pyplot, and return the figure."""
    try:
        if layout:
            fit_text(figure)
        if path is not None:
            with atomic_file(Path(path)) as tmp:
                figure.savefig(tmp, dpi=130, format="png")
    finally:
        plt.close(figure)
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """`finish_figure` for callers that want the path written."""
    finish_figure(figure, path)
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
