"""How objects show themselves in a terminal and a notebook: one-line reprs, small HTML tables, DataFrames.

Every result object keeps its `repr` to one line of at most `REPR_LIMIT` characters and gives Jupyter a
collapsed HTML summary (`_repr_html_`) of at most `HTML_ROWS` rows; tabular objects also have `to_frame()`.
pandas is not a dependency of interp: `frame` imports it when asked and says how to install it otherwise.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REPR_LIMIT = 240  # characters of a one-line repr
HTML_ROWS = 50  # rows of an HTML table before "… n more"
CELL_LIMIT = 120  # characters of one HTML cell


def clip(text: str, limit: int = REPR_LIMIT) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: Any) -> str:
    """A number for a table cell: 4 significant digits, intervals as [low, high], None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{number(float(value[0]))}, {number(float(value[1]))}]"
    return str(value)


def span(values: Iterable[float]) -> str:
    """`low–high` of finite values (`low` when all are equal; `none` when there are none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return "none"
    low, high = min(finite), max(finite)
    return f"{low:.3g}" if low == high else f"{low:.3g}–{high:.3g}"


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], limit: int = HTML_ROWS) -> str:
    """An escaped HTML table of the first `limit` rows, saying how many more there are."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(clip(number(cell), CELL_LIMIT))}</td>" for cell in row) + "</tr>"
                   for row in rows[:limit])
    more = (f"<tr><td colspan=\"{len(columns)}\">… {len(rows) - limit} more rows</td></tr>"
            if len(rows) > limit else "")
    return f"<table><tr>{head}</tr>{body}{more}</table>"


def html_fields(fields: Mapping[str, Any]) -> str:
    """A two-column table of name → value (the first `HTML_ROWS`)."""
    return html_table(("", ""), [(name, value) for name, value in fields.items()])


def details(summary: str, body: str) -> str:
    """A collapsed block: `summary` (plain text, escaped) opens to `body` (HTML)."""
    return f"<details><summary>{html.escape(clip(summary))}</summary>{body}</details>"


def frame(records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """A pandas DataFrame of `records` (one dict per row); pandas is imported here, not by interp."""
    try:
        import pandas
    except ImportError:
        raise ImportError("to_frame needs pandas, which interp does not install: pip install pandas") from None
    return pandas.DataFrame.from_records(list(records), columns=list(columns) if columns is not None else None)
