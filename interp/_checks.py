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


def check_direction(
    direction: Any,
    model_name: str | None,
    d_model: int,
    n_layers: int | None = None,
    *,
    layer: int | None = None,
    argument: str = "direction",
    layer_argument: str = "layer",
) -> Any:
    """The checks every use of a `Direction` makes before any work (Steer, Ablate, exports, the nnsight
    adapter, self-explanation, the optimiser): a Direction, finite, the model's width, the model it was
    found in (`model_name`; None skips that, for `allow_other_model=True`), and its layer (or `layer`, the
    layer it will be used at instead, which may count from the end) in range for `n_layers` blocks."""
    from interp.directions import Direction  # interp.directions imports this module

    if not isinstance(direction, Direction):
        raise TypeError(f"{argument}: expected a Direction, got {type(direction).__name__}")
    finite_tensor(direction.vector, f"{argument}: vector")
    try:
        direction.check_compatible(model_name, d_model)
    except ValueError as error:  # its messages say "direction: ..."; name the argument the caller took
        raise ValueError(f"{argument}:{str(error).removeprefix('direction:')}") from None
    if n_layers is not None:
        if layer is None:
            layer_index(direction.layer, n_layers, argument, from_end=False)
        else:
            layer_index(layer, n_layers, layer_argument)
    return direction


def model_dimensions(model: Any, argument: str = "model") -> tuple[str | None, int | None, int | None]:
    """(name, d_model, n_layers) of a model without loading its weights: a loaded model (hooked or HF), a
    registry name, a local HF folder (its config.json) or a .gguf file (its metadata); None where unknown
    (a hub name). The name is the one `Direction`s record (None for files: a path can be spelled many ways).
    A folder or file that cannot be read is an error naming `argument`."""
    import json
    import os
    from pathlib import Path

    if hasattr(model, "cfg") and hasattr(model.cfg, "n_layers"):  # a bridge or HookedTransformer
        from interp.models import model_name

        return model_name(model), int(model.cfg.d_model), int(model.cfg.n_layers)
    if hasattr(model, "config") and hasattr(model, "named_parameters"):  # an HF model
        config = getattr(model.config, "text_config", None) or model.config
        return getattr(model, "interp_name", None), config.hidden_size, config.num_hidden_layers
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"{argument}: expected a model name, a folder, a .gguf file or a loaded model, got "
                        f"{type(model).__name__}")
    from interp.models import REGISTRY

    if str(model) in REGISTRY:
        spec = REGISTRY[str(model)]
        return spec.name, spec.d_model, spec.n_layers
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        from interp.export.files import gguf_dimensions

        return (None, *gguf_dimensions(path, argument))
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{argument}: {path} is not an HF model folder (config.json: {error})") from None
        config = config.get("text_config") or config if isinstance(config, dict) else {}
        width = next((config[key] for key in ("hidden_size", "n_embd", "d_model") if key in config), None)
        depth = next((config[key] for key in ("num_hidden_layers", "n_layer", "num_layers") if key in config), None)
        return (None, width if isinstance(width, int) else None, depth if isinstance(depth, int) else None)
    return None, None, None


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
