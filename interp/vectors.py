"""`SteeringVectors`: one vector per layer, at one site of one model, as one object.

What steering-vectors' `SteeringVector` and repeng's `ControlVector` are to their users: built over any set of
layers in one pass (`interp.caa.build_steering_vectors`, or `interp.aggregators.aggregate_vectors` on any
activations), applied with one intervention (`Steer(vectors, scale)`, `Ablate(vectors)`,
`Clamp(vectors, value)` from `interp.steering`, each the same as its single-layer form at every layer together),
combined by arithmetic (`happy - 0.5 * sad`), measured per layer (`norms`, `cosine`, `project_out`), saved
atomically, and read from the peers' files and objects (`interp.export.load_control_vector`, `from_peer`).

Arithmetic works on the union of the layers (a layer one side lacks counts as zero there, as repeng does), so
applying `v + w` adds what applying `v` and `w` together adds. Geometry is per layer and needs the same layers on
both sides. Both refuse vectors of another model, site or width with an error naming what differs.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp._checks import finite_number, finite_tensor, whole_number
from interp._io import load_tensor_folder, save_tensor_folder
from interp.directions import RESID_SITES, Direction, hook_name
from interp.display import clip, details, frame, html_table

VECTORS_TENSORS, VECTORS_JSON = "vectors.safetensors", "vectors.json"
KIND = "steering vectors"


@dataclass(frozen=True)
class SteeringVectors:
    """`vectors[i]` lives at `blocks.{layers[i]}.hook_{site}` of `model`; layers are kept sorted and distinct.

    `source` says how they were found ("caa", "pca_diff", "repeng", ...); `meta` carries JSON-serialisable
    provenance. The vectors are kept as found (never silently normalised): `unit()` gives unit vectors.
    """

    vectors: Float[Tensor, "n_layers d_model"]
    layers: tuple[int, ...]
    model: str
    source: str
    site: str = "resid_pre"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        finite_tensor(self.vectors, "SteeringVectors.vectors")
        layers = (self.layers,) if isinstance(self.layers, int) else tuple(self.layers)
        for layer in layers:
            whole_number(layer, "SteeringVectors.layers", minimum=0)
        if self.vectors.ndim != 2 or self.vectors.shape[1] == 0 or self.vectors.shape[0] != len(layers) or not layers:
            raise ValueError(f"SteeringVectors: expected vectors [n_layers >= 1, d_model >= 1] with one layer each, got "
                             f"{tuple(self.vectors.shape)} for layers {list(layers)}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"SteeringVectors.layers: each layer at most once, got {list(layers)}")
        if self.site not in RESID_SITES:
            raise ValueError(f"SteeringVectors.site: expected one of {RESID_SITES}, got {self.site!r}")
        for key in ("model", "source"):
            if not isinstance(getattr(self, key), str):
                raise TypeError(f"SteeringVectors.{key}: expected a string, got {type(getattr(self, key)).__name__}")
        order = sorted(range(len(layers)), key=layers.__getitem__)
        if order != list(range(len(layers))):  # kept sorted, so equal sets of layers line up row for row
            object.__setattr__(self, "vectors", self.vectors[torch.tensor(order, device=self.vectors.device)])
        object.__setattr__(self, "layers", tuple(layers[i] for i in order))

    # -----------------------------------------------------------------------------------------
    # Building and taking apart
    # -----------------------------------------------------------------------------------------

    @classmethod
    def from_directions(cls, directions: Sequence[Direction] | Direction, *, source: str | None = None,
                        meta: dict[str, Any] | None = None) -> SteeringVectors:
        """Directions at distinct layers of one model and site, as one object (their `meta` is not kept)."""
        directions = [directions] if isinstance(directions, Direction) else list(directions)
        if not directions or not all(isinstance(d, Direction) for d in directions):
            raise TypeError("directions: expected one or more Directions")
        for attribute in ("model", "site", "d_model"):
            values = {getattr(d, attribute) for d in directions}
            if len(values) != 1:
                raise ValueError(f"directions: they differ in {attribute} ({sorted(map(str, values))}); "
                                 "one SteeringVectors holds one model's vectors at one site")
        sources = {d.source for d in directions}
        return cls(torch.stack([d.vector for d in directions]), tuple(d.layer for d in directions), directions[0].model,
                   source if source is not None else (sources.pop() if len(sources) == 1 else "mixed"),
                   directions[0].site, dict(meta or {}))

    def direction(self, layer: int) -> Direction:
        """The vector at `layer` as a `Direction`."""
        if layer not in self.layers:
            raise ValueError(f"layer: {layer!r} is not one of these vectors' layers {list(self.layers)}")
        return Direction(self.vectors[self.layers.index(layer)], layer=layer, model=self.model, source=self.source,
                         site=self.site, meta=dict(self.meta))

    def __iter__(self) -> Iterator[Direction]:
        """The per-layer `Direction`s, in layer order."""
        return (self.direction(layer) for layer in self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def select(self, layers: Sequence[int] | int) -> SteeringVectors:
        """Only `layers` (each one of these vectors' layers)."""
        wanted = [layers] if isinstance(layers, int) else list(layers)
        missing = [layer for layer in wanted if layer not in self.layers]
        if missing or not wanted:
            raise ValueError(f"layers: {missing or wanted} not among these vectors' layers {list(self.layers)}")
        rows = torch.tensor([self.layers.index(layer) for layer in wanted], device=self.vectors.device)
        return replace(self, vectors=self.vectors[rows], layers=tuple(wanted))

    @property
    def d_model(self) -> int:
        return self.vectors.shape[1]

    @property
    def hook_names(self) -> list[str]:
        return [hook_name(layer, self.site) for layer in self.layers]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SteeringVectors:
        return replace(self, vectors=self.vectors.to(device=device, dtype=dtype))

    def as_site(self, site: str) -> SteeringVectors:
        """The same vectors named at the other end of a block: resid_pre of L + 1 is resid_post of L (one tensor
        of the residual stream), so this moves layers by one. Other sites are different tensors: refused."""
        if site == self.site:
            return self
        shift = {("resid_pre", "resid_post"): -1, ("resid_post", "resid_pre"): 1}.get((self.site, site))
        if shift is None:
            raise ValueError(f"site: only resid_pre (layer L + 1) and resid_post (layer L) name the same tensor; "
                             f"{self.site!r} cannot become {site!r}")
        if shift < 0 and 0 in self.layers:
            raise ValueError("site: resid_pre of layer 0 is the embedding output, which no block's resid_post names")
        return replace(self, layers=tuple(layer + shift for layer in self.layers), site=site)

    # -----------------------------------------------------------------------------------------
    # Arithmetic (union of layers) and geometry (per layer)
    # -----------------------------------------------------------------------------------------

    def _same_space(self, other: Any, operation: str) -> SteeringVectors:
        """`other` (SteeringVectors or a Direction) as SteeringVectors, refused unless model, site and width match."""
        if isinstance(other, Direction):
            other = SteeringVectors.from_directions(other)
        if not isinstance(other, SteeringVectors):
            raise TypeError(f"{operation}: expected SteeringVectors or a Direction, got {type(other).__name__}")
        for attribute, mine, theirs in (("models", self.model, other.model), ("sites", self.site, other.site),
                                        ("widths", self.d_model, other.d_model)):
            if mine != theirs:
                raise ValueError(f"{operation}: refused across {attribute} ({mine!r} vs {theirs!r}); vectors combine "
                                 "only within one model's residual stream at one site")
        return other

    def _scaled(self, factor: Any, operation: str) -> SteeringVectors:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            raise TypeError(f"{operation}: expected a number, got {type(factor).__name__} (for per-layer products of "
                            "two vectors use cosine() or project_out())")
        factor = finite_number(float(factor), operation)
        product = self.vectors * factor
        if not bool(torch.isfinite(product).all()):
            raise ValueError(f"{operation}: {factor:g} × these vectors overflows {self.vectors.dtype}")
        return replace(self, vectors=product)

    def __add__(self, other: Any) -> SteeringVectors:
        other = self._same_space(other, "+")
        layers = tuple(sorted(set(self.layers) | set(other.layers)))
        dtype = torch.promote_types(self.vectors.dtype, other.vectors.dtype)
        total = torch.zeros(len(layers), self.d_model, dtype=dtype, device=self.vectors.device)
        for side in (self, other):
            rows = torch.tensor([layers.index(layer) for layer in side.layers], device=total.device)
            total.index_add_(0, rows, side.vectors.to(total.device, dtype))
        sources = self.source if self.source == other.source else f"({self.source}) + ({other.source})"
        return replace(self, vectors=total, layers=layers, source=sources)

    def __radd__(self, other: Any) -> SteeringVectors:
        return self if isinstance(other, int) and other == 0 else self.__add__(other)  # sum([...]) starts at 0

    def __neg__(self) -> SteeringVectors:
        return replace(self, vectors=-self.vectors)

    def __sub__(self, other: Any) -> SteeringVectors:
        return self + (-self._same_space(other, "-"))

    def __mul__(self, factor: Any) -> SteeringVectors:
        return self._scaled(factor, "*")

    __rmul__ = __mul__

    def __truediv__(self, divisor: Any) -> SteeringVectors:
        if isinstance(divisor, numbers.Real) and not isinstance(divisor, bool) and divisor == 0:
            raise ZeroDivisionError("/: division of steering vectors by zero")
        return self._scaled(1.0 / divisor if isinstance(divisor, numbers.Real) else divisor, "/")

    def norms(self) -> Float[Tensor, "n_layers"]:
        """The L2 norm at each layer."""
        return self.vectors.double().norm(dim=-1).to(self.vectors.dtype)

    def unit(self) -> SteeringVectors:
        """Unit vectors at every layer (a zero vector has no direction: an error naming its layer)."""
        return replace(self, vectors=self.vectors / self._nonzero_norms("unit")[:, None],
                       meta={**self.meta, "unit_of_norms": self.norms().tolist()})

    def with_norms(self, norms: Float[Tensor, "n_layers"] | float) -> SteeringVectors:
        """The same directions rescaled to `norms` (one per layer, or one for all): e.g. the mean residual norm at
        each layer, so that a multiplier means the same at every layer and for every aggregator."""
        target = torch.as_tensor(norms, dtype=self.vectors.dtype, device=self.vectors.device).expand(len(self))
        finite_tensor(target, "norms")
        return replace(self.unit(), vectors=self.unit().vectors * target[:, None])

    def _nonzero_norms(self, operation: str) -> Tensor:
        norms = self.vectors.norm(dim=-1)
        if bool((norms == 0).any()):
            raise ValueError(f"{operation}: the vector at layer {self.layers[int((norms == 0).nonzero()[0])]} is zero and "
                             "has no direction")
        return norms

    def _aligned(self, other: Any, operation: str) -> Float[Tensor, "n_layers d_model"]:
        """`other`'s vectors row for row with these: SteeringVectors (or a Direction) at the same layers, or a
        tensor [d_model] (the same direction at every layer) or [n_layers, d_model]."""
        if isinstance(other, Tensor):
            finite_tensor(other, operation)
            if other.shape not in ((self.d_model,), (len(self), self.d_model)):
                raise ValueError(f"{operation}: expected a tensor [{self.d_model}] or [{len(self)}, {self.d_model}], "
                                 f"got {tuple(other.shape)}")
            return other.to(self.vectors.device, self.vectors.dtype).expand(len(self), -1)
        other = self._same_space(other, operation)
        if other.layers != self.layers:
            raise ValueError(f"{operation}: per layer, so both need the same layers ({list(self.layers)} vs "
                             f"{list(other.layers)}); use select()")
        return other.vectors.to(self.vectors.device, self.vectors.dtype)

    def cosine(self, other: SteeringVectors | Direction | Tensor) -> Float[Tensor, "n_layers"]:
        """Cosine similarity with `other` at each layer (float64 accumulation)."""
        a, b = self.vectors.double(), self._aligned(other, "cosine").double()
        return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)).to(self.vectors.dtype)

    def component_along(self, other: SteeringVectors | Direction | Tensor) -> SteeringVectors:
        """At each layer, the part of these vectors along `other`: (v · ô) ô."""
        along = self._aligned(other, "component_along")
        unit = along / replace(self, vectors=along)._nonzero_norms("component_along")[:, None]
        return replace(self, vectors=(self.vectors * unit).sum(-1, keepdim=True) * unit)

    def project_out(self, other: SteeringVectors | Direction | Tensor) -> SteeringVectors:
        """At each layer, these vectors with their component along `other` removed: v − (v · ô) ô."""
        return replace(self, vectors=self.vectors - self.component_along(other).vectors)

    # -----------------------------------------------------------------------------------------
    # Saving, loading, showing
    # -----------------------------------------------------------------------------------------

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """`vectors.safetensors` + `vectors.json` in the folder `path`, atomically (as `Direction.save`).

        `path` must be new or empty, or hold saved steering vectors (replaced only with `overwrite=True`).
        """
        metadata = {"layers": list(self.layers), "model": self.model, "source": self.source, "site": self.site,
                    "d_model": self.d_model, "dtype": str(self.vectors.dtype).removeprefix("torch."), "meta": self.meta}
        return save_tensor_folder(path, {"vectors": self.vectors}, metadata, kind=KIND, tensors_file=VECTORS_TENSORS,
                                  json_file=VECTORS_JSON, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> SteeringVectors:
        """Steering vectors saved in the folder `path`; any damage is an error naming the file.

        The files must match the SHA-256 recorded when they were saved; `verify=False` reads vectors edited on
        purpose (their values are then checked as any new input's are).
        """
        path = Path(path)
        tensors, metadata = load_tensor_folder(path, kind=KIND, tensors_file=VECTORS_TENSORS, json_file=VECTORS_JSON,
                                               tensors=("vectors",), keys=("layers", "model", "source"),
                                               argument="SteeringVectors.load", verify=verify)
        vectors, json_path = tensors["vectors"], path / VECTORS_JSON
        if not isinstance(metadata["layers"], list):
            raise ValueError(f"{json_path}: layers: expected a list of whole numbers, got {metadata['layers']!r}")
        if not isinstance(metadata.get("meta", {}), dict):
            raise ValueError(f"{json_path}: meta: expected an object, got {metadata['meta']!r}")
        for key, actual in (("d_model", vectors.shape[-1]), ("dtype", str(vectors.dtype).removeprefix("torch."))):
            if key in metadata and metadata[key] != actual:
                raise ValueError(f"{json_path}: {key} {metadata[key]!r} does not match the saved vectors' {actual!r}")
        try:
            return cls(vectors, tuple(metadata["layers"]), metadata["model"], metadata["source"],
                       metadata.get("site", "resid_pre"), metadata.get("meta", {}))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None

    def _layer_text(self) -> str:
        layers = self.layers
        if len(layers) > 2 and layers == tuple(range(layers[0], layers[-1] + 1)):
            return f"{layers[0]}–{layers[-1]}"
        return ", ".join(map(str, layers[:8])) + (f", … ({len(layers)})" if len(layers) > 8 else "")

    def __repr__(self) -> str:
        norms = self.norms()
        spread = f"{float(norms.min()):.3g}" + (f"–{float(norms.max()):.3g}" if len(self) > 1 else "")
        return clip(f"SteeringVectors({self.source!r}, model={self.model!r}, {self.site} layers [{self._layer_text()}], "
                    f"d_model={self.d_model}, norm {spread})")

    def _repr_html_(self) -> str:
        rows = [(layer, hook_name(layer, self.site), norm) for layer, norm in zip(self.layers, self.norms().tolist())]
        return details(f"SteeringVectors {self.source!r} · {self.model} · d_model {self.d_model} · {len(self)} layers",
                       html_table(("layer", "hook", "norm"), rows))

    def to_frame(self) -> Any:
        """One row per layer: layer, hook, norm (a pandas DataFrame)."""
        return frame([{"layer": layer, "hook": hook_name(layer, self.site), "norm": norm}
                      for layer, norm in zip(self.layers, self.norms().tolist())])


def block_output_vectors(
    by_block: dict[int, Any], model: str, *, source: str, n_layers: int | None = None, site: str | None = None,
    meta: dict[str, Any] | None = None,
) -> SteeringVectors:
    """Vectors keyed by the index k of the block whose *output* they are added to (llama.cpp control vectors,
    repeng's `ControlVector.directions`, steering-vectors' "decoder_block" layers), as `SteeringVectors`.

    The output of block k is our resid_pre of k + 1 (as `interp.caa` vectors are named) or resid_post of k.
    `site=None` takes resid_pre unless a vector sits on the model's last block (`n_layers` − 1), which only
    resid_post names; then every layer is named at resid_post. `meta["blocks"]` keeps the original indices.
    """
    blocks = sorted(by_block)
    if not blocks:
        raise ValueError("vectors: expected at least one layer's vector")
    for k in blocks:
        whole_number(k, "block", minimum=0)
    if n_layers is not None and blocks[-1] >= n_layers:
        raise ValueError(f"block: {blocks[-1]} is past the last block ({n_layers - 1}) of a {n_layers}-block model")
    if site is None:
        site = "resid_post" if n_layers is not None and blocks[-1] == n_layers - 1 else "resid_pre"
    if site not in ("resid_pre", "resid_post"):
        raise ValueError(f"site: a block's output is resid_pre of the next layer or resid_post, not {site!r}")
    shift = 1 if site == "resid_pre" else 0
    if n_layers is not None and shift and blocks[-1] + 1 >= n_layers:
        raise ValueError(f"site: the output of the last block ({blocks[-1]}) has no resid_pre; use site='resid_post'")
    vectors = torch.stack([torch.as_tensor(by_block[k]).detach().to("cpu", torch.float32).reshape(-1) for k in blocks])
    return SteeringVectors(vectors, tuple(k + shift for k in blocks), model, source, site,
                           {**(meta or {}), "blocks": blocks})


def from_peer(vector: Any, model: str, *, n_layers: int | None = None, site: str | None = None) -> SteeringVectors:
    """A steering-vectors `SteeringVector` or a repeng `ControlVector`, read by duck typing (neither is imported).

    steering-vectors: `layer_activations` {layer: tensor} with `layer_type` "decoder_block" (the block's output);
    other layer types (attention, MLP, norms) name other tensors and are refused. repeng: `directions`
    {layer: array}, each read at the output of that decoder layer, except its last id (its default -1), which
    repeng reads after the final norm: that vector is taken as the last block's output all the same. Layers
    become ours as `block_output_vectors` says.
    """
    if isinstance(getattr(vector, "layer_activations", None), dict):
        layer_type = getattr(vector, "layer_type", "decoder_block")
        if layer_type != "decoder_block":
            raise ValueError(f"vector: a steering-vectors layer_type {layer_type!r}; only 'decoder_block' (a block's "
                             "output) maps to one of our residual sites")
        return block_output_vectors(vector.layer_activations, model, source="steering-vectors", n_layers=n_layers,
                                    site=site, meta={"peer": "steering-vectors"})
    if isinstance(getattr(vector, "directions", None), dict):
        return block_output_vectors(vector.directions, model, source="repeng", n_layers=n_layers, site=site,
                                    meta={"peer": "repeng", "model_type": str(getattr(vector, "model_type", ""))})
    raise TypeError(f"vector: expected a steering-vectors SteeringVector (layer_activations) or a repeng ControlVector "
                    f"(directions), got {type(vector).__name__}")
