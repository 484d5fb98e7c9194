"""The vocabulary of an experiment's headline: key numbers and the seed's claims with our verdicts.

Each experiment reads its own `result.json` into a `Headline` (registered beside its `run`); the report
renders whatever it gets. This module is a leaf with no torch, so the report imports it cheaply.
Every reader is defensive: `claim` turns a key that an older or partial result lacks into an "n/a" row
with the reason, never an exception, so one broken experiment cannot hide the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

VERDICTS = ("yes", "partly", "no", "n/a")
NOISE_FLOOR = 0.02  # A/B-score or refusal-score changes smaller than this are not read as effects


@dataclass(frozen=True)
class Claim:
    """A claim of the seed, our corresponding number (as text) and whether ours agrees."""

    claim: str
    ours: str
    agrees: str  # one of VERDICTS

    def __post_init__(self) -> None:
        if self.agrees not in VERDICTS:
            raise ValueError(f"agrees: expected one of {VERDICTS}, got {self.agrees!r}")


@dataclass
class Headline:
    """What an experiment's result says, for the report: key numbers, claims with verdicts, problems.

    Attributes:
        numbers: name → value, shown as the experiment's key numbers.
        claims: the seed's claims with our number and a verdict (yes / partly / no / n/a).
        problems: what was malformed in the result, shown flagged in the report (never fatal).
    """

    numbers: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what was malformed, shown flagged in the report


HeadlineReader = Callable[[dict[str, Any]], Headline]


def at(data: Any, *path: Any) -> Any:
    """`data[path[0]][path[1]]...`; raises KeyError naming the path when a step is missing."""
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            raise KeyError("/".join(map(str, path))) from None
    return data


def num(value: Any) -> float:
    """`value` as a float, refusing anything but an int or float (a bool too).

    Raises:
        TypeError: not a number; a headline reading such a value becomes an n/a row.

    Example:
        >>> num(3)
        3.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def format_value(value: Any, digits: int = 3) -> str:
    """A value as the report prints it.

    Args:
        value: a number, bool, short list of numbers, or anything (its `str`, cut at 120 characters).
        digits: significant digits (very large or small floats) or decimals (the rest).

    Returns:
        The text.

    Example:
        >>> format_value(0.123456), format_value(12345), format_value(True), format_value([1, 0.5])
        ('0.123', '12,345', 'yes', '[1, 0.500]')
    """
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(format_value(v, digits) for v in value) + "]"
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def claim(text: str, judge: Callable[[], tuple[str, str]]) -> Claim:
    """`judge()` returns (our number as text, verdict); a missing key or wrong type gives an n/a row."""
    try:
        ours, verdict = judge()
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        return Claim(text, f"not in result.json ({type(error).__name__}: {error})", "n/a")
    return Claim(text, ours, verdict)


def safe(read: Callable[[], Any]) -> Any:
    """`read()`, or None where the result lacks what it reads (a key number shown only when present)."""
    try:
        return read()
    except (KeyError, TypeError, ValueError):
        return None


def difference_noise(rate: float, n: int) -> float:
    """Half-width of a 95% interval for the difference of two accuracies near `rate` on `n` questions each."""
    rate = min(max(rate, 1 / (2 * n)), 1 - 1 / (2 * n))  # keep the interval non-zero at 0 or 1
    return 1.96 * math.sqrt(2 * rate * (1 - rate) / n)


def grade(value: float, yes: float, partly: float) -> str:
    """yes at ≥ `yes`, partly at ≥ `partly`, else no (NaN: n/a)."""
    if math.isnan(value):
        return "n/a"
    return "yes" if value >= yes else "partly" if value >= partly else "no"


def per_model(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-model results of multi-model experiments (`models`), else the result itself under its model."""
    models = result.get("models")
    if isinstance(models, Mapping) and models:
        return {str(name): value for name, value in models.items() if isinstance(value, Mapping)}
    return {str(result.get("model", "model")): dict(result)}


def skipped_claims(result: Mapping[str, Any]) -> list[Claim]:
    """One n/a row for each part (model, target) the run skipped, saying why."""
    return [Claim(f"[{name}] every claim", f"skipped: {why}", "n/a") for name, why in (result.get("skipped") or {}).items()]
