"""A behaviour measured over layers × multipliers of a steering vector, and how a curve moves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.caa import CAAVectors, Normalisation
from interp.display import clip, details, frame, html_table, span
from interp.evaluators import ABEvaluator
from interp.hooked import HookedModel
from interp.steering import Intervention


@dataclass(frozen=True)
class Sweep:
    """A behaviour measured over layers × multipliers (`values[i, j]` at layers[i], multipliers[j])."""

    layers: list[int]
    multipliers: list[float]
    values: Float[Tensor, "n_layers n_multipliers"]
    mass: Float[Tensor, "n_layers n_multipliers"]
    normalisation: str

    def row(self, layer: int) -> list[float]:
        return self.values[self.layers.index(layer)].tolist()

    def __repr__(self) -> str:
        return clip(f"Sweep({len(self.layers)} layers × {len(self.multipliers)} multipliers, normalisation "
                    f"{self.normalisation!r}, values {span(self.values.flatten().tolist())}, layers {self.layers[:8]}"
                    + ("…" if len(self.layers) > 8 else "") + ")")

    def _repr_html_(self) -> str:
        rows = [(layer, *self.row(layer)) for layer in self.layers]
        return details(f"Sweep: {len(self.layers)} layers × {len(self.multipliers)} multipliers ({self.normalisation})",
                       html_table(("layer \\ multiplier", *[f"{m:g}" for m in self.multipliers]), rows))

    def to_frame(self) -> Any:
        """Long format: one row per layer × multiplier with its value and letter mass (a pandas DataFrame)."""
        return frame([{"layer": layer, "multiplier": multiplier, "value": float(self.values[i, j]),
                       "mass": float(self.mass[i, j])}
                      for i, layer in enumerate(self.layers) for j, multiplier in enumerate(self.multipliers)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers, "multipliers": self.multipliers, "normalisation": self.normalisation,
            "values": {str(layer): self.row(layer) for layer in self.layers},
            "mass": {str(layer): self.mass[i].tolist() for i, layer in enumerate(self.layers)},
        }


def sweep(
    measure: Callable[[Sequence[Intervention]], tuple[float, float]],
    vectors: CAAVectors,
    layers: Sequence[int],
    multipliers: Sequence[float],
    *,
    normalisation: Normalisation = "resid",
    model: HookedModel = None,
    progress: bool = True,
    desc: str = "sweep",
) -> Sweep:
    """`measure(interventions) -> (value, mass)` under the vector at each layer × multiplier (0 run once)."""
    if model is not None:
        vectors.check_model(model)
    layers, multipliers = list(layers), [float(m) for m in multipliers]
    if not layers or not multipliers:
        raise ValueError("layers/multipliers: expected at least one of each")
    baseline = measure(()) if 0.0 in multipliers else None
    values = torch.empty(len(layers), len(multipliers))
    mass = torch.empty_like(values)
    conditions = [(i, j) for i in range(len(layers)) for j in range(len(multipliers))]
    for i, j in tqdm(conditions, desc=desc, disable=not progress, leave=False):
        if multipliers[j] == 0.0:
            values[i, j], mass[i, j] = baseline
        else:
            values[i, j], mass[i, j] = measure([vectors.steer(layers[i], multipliers[j], normalisation)])
    return Sweep(layers, multipliers, values, mass, normalisation)


def ab_sweep(
    evaluator: ABEvaluator, vectors: CAAVectors, layers: Sequence[int], multipliers: Sequence[float], *,
    normalisation: Normalisation = "resid", progress: bool = True,
) -> Sweep:
    """The CAA figure's data: held-out A/B score (and letter mass) over layers × multipliers."""

    def measure(interventions: Sequence[Intervention]) -> tuple[float, float]:
        result = evaluator.score(interventions)
        return result.score, result.letter_mass

    return sweep(measure, vectors, layers, multipliers, normalisation=normalisation, progress=progress, desc="A/B sweep")


@dataclass(frozen=True)
class CurveSummary:
    """How a behaviour moves with the multiplier at one layer."""

    monotonic: bool  # non-decreasing over the whole multiplier range
    swing: float  # value at the largest multiplier − at the smallest
    spearman: float  # rank correlation of value with multiplier
    window: tuple[float, float]  # the widest multiplier range around 0 where the curve is non-decreasing
    window_swing: float  # value change across that window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ranks(values: Tensor) -> Tensor:
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=values.dtype)
    return ranks


def summarise_curve(multipliers: Sequence[float], values: Sequence[float], tolerance: float = 1e-4) -> CurveSummary:
    """Monotonicity, swing and rank correlation of `values` over sorted `multipliers`."""
    x = torch.tensor([float(m) for m in multipliers], dtype=torch.float64)
    y = torch.tensor([float(v) for v in values], dtype=torch.float64)
    order = x.argsort()
    x, y = x[order], y[order]
    steps_up = (y[1:] - y[:-1]) >= -tolerance
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    spearman = float((rx @ ry) / (rx.norm() * ry.norm()).clamp_min(1e-12))
    # Widest run of non-decreasing steps that contains the multiplier closest to 0.
    centre = int(x.abs().argmin())
    low = centre
    while low > 0 and bool(steps_up[low - 1]):
        low -= 1
    high = centre
    while high < len(x) - 1 and bool(steps_up[high]):
        high += 1
    return CurveSummary(
        bool(steps_up.all()), float(y[-1] - y[0]), spearman, (float(x[low]), float(x[high])), float(y[high] - y[low])
    )
