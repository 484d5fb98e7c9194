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


def finite_tensor(value: Any, argument: str) -> torch.Tensor:
    """`value` if it is a floating-point tensor with no NaN or inf; else an error naming `argument`."""
    float_tensor(value, argument)
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{argument}: contains NaN or inf")
    return value


def layer_index(layer: Any, n_layers: int, argument: str = "layer", *, from_end: bool = True) -> int:
    """`layer` as a block index of a model with `n_layers` blocks (negative ones count from the end when
    `from_end`); else a ValueError naming `argument` (the message `interp.hooked.check_layers` gives)."""
    lowest = -n_layers if from_end else 0
    if isinstance(layer, bool) or not isinstance(layer, int) or not lowest <= layer < n_layers:
        raise ValueError(f"{argument}: layer {layer!r} is out of range for a model with {n_layers} layers")
    return layer % n_layers


# Folders an output must never go into (or be): the system's own, and the roots of other people's files.
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
                  "/sys", "/usr", "/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/mail", "/snap",
                  "/System", "/Library", "/Applications")
SYSTEM_ROOTS = ("/", "/var", "/home", "/Users", "/opt", "/srv", "/mnt", "/media")


def output_folder(path: Any, argument: str) -> Any:
    """`path` as a Path if results may be written there: not a file (nor under one), not a system folder or
    the root of others' folders, and writable by this user where it would be created; else a ValueError."""
    import os
    from pathlib import Path

    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{argument}: expected a folder path, got {path!r}")
    folder = Path(path).expanduser()
    resolved = folder.resolve()
    for system in SYSTEM_FOLDERS:
        system_path = Path(system).resolve()
        if resolved == system_path or system_path in resolved.parents:
            raise ValueError(f"{argument}: {folder} is a system folder ({system}); choose a folder of your own")
    if any(resolved == Path(root).resolve() for root in SYSTEM_ROOTS):
        raise ValueError(f"{argument}: {folder} is the root of other folders, not a place for results; choose a "
                         "folder inside it")
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            where = "a file" if parent == folder else f"under {parent}, which is a file"
            raise ValueError(f"{argument}: {folder} is {where}; expected a folder")
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{argument}: {existing} is not writable by this user")
    return folder


def scaled(vector: torch.Tensor, scale: float, argument: str = "scale") -> torch.Tensor:
    """`scale * vector`, refused when it overflows the vector's dtype (a finite scale can: 1e39 in float32)."""
    product = scale * vector
    if not bool(torch.isfinite(product).all()):
        largest = float(vector.abs().max())
        raise ValueError(f"{argument}: {scale:g} × a vector of largest value {largest:.3g} overflows {vector.dtype}")
    return product
