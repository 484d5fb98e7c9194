"""What a MELBO run is asked to do (`MelboConfig`) and what it found (`MelboResult`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from interp.directions import Direction

NormAxis = Literal["token", "hidden"]
Site = Literal["resid_pre", "mlp_out"]
Mode = Literal["sequential", "parallel"]
NORM_AXES: tuple[str, ...] = ("token", "hidden")
SITES: tuple[str, ...] = ("resid_pre", "mlp_out")
MODES: tuple[str, ...] = ("sequential", "parallel")

# The original code's optimiser settings.
DEFAULT_BETAS = (0.9, 0.98)
# Norms of exactly zero changes (R → 0, or a padded row) would give NaN gradients under a fractional power.
TINY = 1e-12


@dataclass(frozen=True)
class MelboConfig:
    """Hyper-parameters of a MELBO run (see the module docstring for what each choice means).

    `radius` is R, the norm of every learned vector; `steps` optimiser steps per vector (per run in
    `"parallel"` mode); `lr` the AdamW step on θ/R (an angle: see `sphere_ascent`); `prompt_batch_size`
    prompts per forward (None: all at once; gradients are accumulated over chunks, which gives the
    same result up to float rounding).
    """

    source_layer: int
    target_layer: int
    radius: float
    n_vectors: int = 8
    steps: int = 300
    p: float = 2.0
    q: float | None = None  # None: q = p, as the original
    norm_axis: NormAxis = "token"
    site: Site = "resid_pre"
    mode: Mode = "sequential"
    orthogonal: bool = True
    lr: float = 1e-3
    betas: tuple[float, float] = DEFAULT_BETAS
    skip_first_token: bool = True
    prompt_batch_size: int | None = None
    seed: int = 0
    fast: bool = True  # on a bridge: run its plain HF module tree (same numbers; interp.runner.run_to_layer)

    def __post_init__(self) -> None:
        for name in ("source_layer", "target_layer", "n_vectors", "steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: expected an int, got {value!r}")
        if not isinstance(self.radius, (int, float)) or not math.isfinite(self.radius) or self.radius <= 0:
            raise ValueError(f"radius: expected a finite number > 0, got {self.radius!r}")
        if self.source_layer >= 0 and self.target_layer >= 0 and self.source_layer >= self.target_layer:
            raise ValueError(
                f"source_layer: must be below target_layer, got source_layer={self.source_layer} "
                f">= target_layer={self.target_layer}"
            )
        if self.n_vectors < 1:
            raise ValueError(f"n_vectors: expected >= 1, got {self.n_vectors}")
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if not self.p > 0:
            raise ValueError(f"p: expected > 0, got {self.p!r}")
        if self.q is not None and not self.q > 0:
            raise ValueError(f"q: expected > 0 or None, got {self.q!r}")
        if self.norm_axis not in NORM_AXES:
            raise ValueError(f"norm_axis: expected one of {NORM_AXES}, got {self.norm_axis!r}")
        if self.site not in SITES:
            raise ValueError(f"site: expected one of {SITES}, got {self.site!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr!r}")
        if self.prompt_batch_size is not None and (
            isinstance(self.prompt_batch_size, bool) or not isinstance(self.prompt_batch_size, int)
            or self.prompt_batch_size < 1
        ):
            raise ValueError(f"prompt_batch_size: expected a positive int or None, got {self.prompt_batch_size!r}")

    @property
    def q_value(self) -> float:
        return float(self.p if self.q is None else self.q)


@dataclass(frozen=True)
class MelboResult:
    """Learned vectors (norm R, as `Direction`s with source "melbo"), their final losses and curves."""

    vectors: tuple[Direction, ...]
    losses: tuple[float, ...]  # final loss of each vector (lower = larger change at the target)
    curves: tuple[tuple[float, ...], ...]  # loss before each optimiser step, per vector
    config: MelboConfig
    seconds: float

    @property
    def matrix(self) -> Float[Tensor, "n_vectors d_model"]:
        return torch.stack([direction.vector for direction in self.vectors])

    def to_json(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "losses": list(self.losses), "seconds": self.seconds}

