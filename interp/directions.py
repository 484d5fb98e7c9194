"""The `Direction`: one vector in one model's residual stream, with its provenance.

Everything that finds a vector returns a `Direction`; everything that uses one takes it.
The vector is kept as found (never silently normalised): call `unit()` for the unit vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Hashable, Mapping
from typing import Any, TypeVar

import torch
from jaxtyping import Float
from torch import Tensor

from interp._checks import finite_tensor, float_tensor, layer_index
from interp._io import load_tensor_folder, save_tensor_folder
from interp.display import clip, details, html_fields

VECTOR_KEY = "vector"
RESID_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
METADATA_FILE = "direction.json"
TENSOR_FILE = "direction.safetensors"


def hook_name(layer: int, site: str = "resid_pre") -> str:
    """TransformerLens hook point name of the residual stream at `layer` (`blocks.{layer}.hook_{site}`).

    Raises:
        ValueError: `site` is not one of `RESID_SITES`.

    Example:
        >>> hook_name(12), hook_name(3, "mlp_out")
        ('blocks.12.hook_resid_pre', 'blocks.3.hook_mlp_out')
    """
    if site not in RESID_SITES:
        raise ValueError(f"site: expected one of {RESID_SITES}, got {site!r}")
    return f"blocks.{layer}.hook_{site}"


@dataclass(frozen=True)
class Direction:
    """A vector in the residual stream of `model` at `blocks.{layer}.hook_{site}`.

    `source` says how it was found ("caa", "diff_in_means", "weight_svd", "ito(k=2)", "melbo", ...);
    `meta` carries JSON-serialisable provenance (dataset, position, singular value, parent, ...).
    """

    vector: Float[Tensor, "d_model"]
    layer: int
    model: str
    source: str
    site: str = "resid_pre"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, Tensor):
            raise TypeError(f"Direction.vector: expected a torch.Tensor, got {type(self.vector).__name__}")
        if self.vector.ndim != 1 or self.vector.numel() == 0:
            raise ValueError(f"Direction.vector: expected shape [d_model] with d_model >= 1, got {tuple(self.vector.shape)}")
        float_tensor(self.vector, "Direction.vector")
        if not torch.isfinite(self.vector).all():
            raise ValueError("Direction.vector: contains NaN or inf")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"Direction.layer: expected a non-negative int, got {self.layer!r}")
        if self.site not in RESID_SITES:
            raise ValueError(f"Direction.site: expected one of {RESID_SITES}, got {self.site!r}")

    @property
    def d_model(self) -> int:
        return self.vector.shape[0]

    @property
    def hook_name(self) -> str:
        return hook_name(self.layer, self.site)

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    def unit(self) -> Direction:
        norm = self.vector.norm()
        if norm == 0:
            raise ValueError("Direction.unit: the vector is zero and has no direction")
        return replace(self, vector=self.vector / norm, meta={**self.meta, "unit_of_norm": float(norm)})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Direction:
        return replace(self, vector=self.vector.to(device=device, dtype=dtype))

    def with_vector(self, vector: Float[Tensor, "d_model"], **changes: Any) -> Direction:
        return replace(self, vector=vector, **changes)

    def cosine(self, other: Direction | Tensor) -> float:
        other_vector = other.vector if isinstance(other, Direction) else other
        if other_vector.shape != self.vector.shape:
            raise ValueError(
                f"cosine: widths differ ({self.vector.shape[0]} vs {other_vector.shape[-1]})"
            )
        a, b = self.vector.double(), other_vector.to(self.vector.device).double()
        return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))

    def check_compatible(self, model_name: str | None, d_model: int, n_layers: int | None = None) -> None:
        """Raise a clear error if this direction cannot be used in a model of that name and width."""
        if self.d_model != d_model:
            raise ValueError(
                f"direction: width {self.d_model} does not match the model's d_model {d_model} "
                f"(direction from {self.model!r})"
            )
        if model_name is not None and self.model and model_name != self.model:
            raise ValueError(
                f"direction: it belongs to model {self.model!r}, not {model_name!r}; "
                "pass allow_other_model=True if this is intended"
            )
        if n_layers is not None and self.layer >= n_layers:
            raise ValueError(f"direction: layer {self.layer} is out of range for a model with {n_layers} layers")

    def __repr__(self) -> str:
        keys = ", ".join(list(map(str, self.meta))[:4]) + (", …" if len(self.meta) > 4 else "")
        return clip(f"Direction({self.source!r}, model={self.model!r}, {self.hook_name}, d_model={self.d_model}, "
                    f"norm {self.norm:.4g}" + (f", meta: {keys}" if self.meta else "") + ")")

    def _repr_html_(self) -> str:
        fields = {"source": self.source, "model": self.model, "hook": self.hook_name, "d_model": self.d_model,
                  "norm": self.norm, **{f"meta.{key}": value for key, value in self.meta.items()}}
        return details(f"Direction {self.source!r} · {self.model} · {self.hook_name}", html_fields(fields))

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write `direction.safetensors` + `direction.json` into the folder `path`, atomically.

        `path` must be new or empty, or hold a saved direction (replaced only with `overwrite=True`).
        """
        metadata = {
            "layer": self.layer, "model": self.model, "source": self.source, "site": self.site, "d_model": self.d_model,
            "dtype": str(self.vector.dtype).removeprefix("torch."), "meta": self.meta,
        }
        return save_tensor_folder(path, {VECTOR_KEY: self.vector}, metadata, kind="direction", tensors_file=TENSOR_FILE,
                                  json_file=METADATA_FILE, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Direction:
        """The direction saved in the folder `path`; any damage is an error naming the file.

        The files must match the SHA-256 recorded when it was saved; `verify=False` reads a direction
        edited on purpose (its values are then checked as any new input's are).
        """
        path = Path(path)
        tensors, metadata = load_tensor_folder(path, kind="direction", tensors_file=TENSOR_FILE, json_file=METADATA_FILE,
                                               tensors=(VECTOR_KEY,), keys=("layer", "model", "source"),
                                               argument="Direction.load", verify=verify)
        metadata_path, vector = path / METADATA_FILE, tensors[VECTOR_KEY]
        layer = metadata["layer"]
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"{metadata_path}: layer: expected a whole number, got {layer!r}")
        for key in ("model", "source", "site"):
            if not isinstance(metadata.get(key, "resid_pre"), str):
                raise ValueError(f"{metadata_path}: {key}: expected a string, got {metadata[key]!r}")
        if not isinstance(metadata.get("meta", {}), dict):
            raise ValueError(f"{metadata_path}: meta: expected an object, got {metadata['meta']!r}")
        if "d_model" in metadata and metadata["d_model"] != vector.shape[-1]:
            raise ValueError(
                f"{metadata_path}: d_model {metadata['d_model']!r} does not match the saved vector's width "
                f"{tuple(vector.shape)}"
            )
        if "dtype" in metadata and metadata["dtype"] != str(vector.dtype).removeprefix("torch."):
            raise ValueError(f"{metadata_path}: dtype {metadata['dtype']!r} does not match the saved vector's {vector.dtype}")
        try:
            return cls(
                vector=vector, layer=layer, model=metadata["model"], source=metadata["source"],
                site=metadata.get("site", "resid_pre"), meta=metadata.get("meta", {}),
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None


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


K = TypeVar("K", bound=Hashable)


def first_with_same_vector(directions: Mapping[K, Direction | None], tolerance: float = 1e-6) -> dict[K, K]:
    """Each key → the first key whose direction is the same, so that what the two measure is measured once.

    Args:
        directions: named directions; `None` (e.g. the unsteered condition) is only ever itself.
        tolerance: relative: the same layer, norms within `tolerance`, cosine ≥ 1 − `tolerance`.

    Returns:
        A dict over the same keys: a key maps to itself when it is the first with its direction.

    Example:
        >>> a = Direction(torch.tensor([3.0, 4.0]), layer=2, model="m", source="example")
        >>> first_with_same_vector({"x": a, "y": a.with_vector(torch.tensor([3.0, 4.0 + 1e-7])), "z": None})
        {'x': 'x', 'y': 'x', 'z': 'z'}
    """
    same_as: dict[K, K] = {}
    for key, direction in directions.items():
        same_as[key] = next((earlier for earlier, kept in directions.items()
                             if same_as.get(earlier) == earlier and _same_direction(kept, direction, tolerance)), key)
    return same_as


def _same_direction(a: Direction | None, b: Direction | None, tolerance: float) -> bool:
    if a is None or b is None or a.layer != b.layer or a.vector.shape != b.vector.shape:
        return False
    return a.norm > 0 and abs(a.norm - b.norm) <= tolerance * max(a.norm, b.norm) and a.cosine(b) >= 1 - tolerance
