"""The one shape of a bad-argument error: the argument's name, what was expected, what came."""

from __future__ import annotations

import math
from typing import Any

import torch


def whole_number(value: Any, argument: str, *, minimum: int | None = None) -> int:
    """`value` if it is an int (not a bool) of at least `minimum`; else a ValueError naming `argument`."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{argument}: expected a whole number{bound}, got {value!r}")
    return value


def finite_number(value: Any, argument: str) -> float:
    """`value` as a float if it is a finite real number (not a bool or a string); else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{argument}: expected a finite number, got {value!r}")
    return float(value)


def float_tensor(value: Any, argument: str) -> torch.Tensor:
    """`value` if it is a floating-point tensor; else a TypeError (integer tensors would truncate)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        what = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{argument}: expected a floating-point tensor, got {what}")
    return value


def binary_labels(labels: Any, device: torch.device | str | None = None, argument: str = "labels") -> torch.Tensor:
    """`labels` as a bool tensor; anything but 0/1 (or False/True) is an error, not silently 1."""
    tensor = torch.as_tensor(labels, device=device)
    if tensor.dtype != torch.bool:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{argument}: contains NaN or inf; expected 0/1")
        bad = (tensor != 0) & (tensor != 1)
        if bad.any():
            raise ValueError(f"{argument}: expected 0/1 (or bools), got {tensor[bad].unique()[:5].tolist()}")
    return tensor.bool()
