"""Logistic-regression probes on residual activations, their calibration, and probe-penalised rewards.

A probe is fitted in torch, full batch, by L-BFGS (or Adam) on the mean logistic loss plus an L2 penalty;
several independent probes (e.g. one per layer) fit at once along a leading axis. Inputs are
optionally standardised (per-dimension mean and scale of the training rows) so one L2 strength suits
every layer's norm. After fitting on the training rows, a held-out validation split calibrates the
probe (a temperature, or Platt's affine map of the logit) and reports its expected calibration error
(ECE) before and after. `LinearProbe.direction()` gives the probe's weight in the raw residual space as
a `Direction`.

Probe-penalised reward ("Linear Probe Penalties Reduce LLM Sycophancy"): for any reward
`reward(prompt, response) -> float` and a probe reading the model's activation on the response,
`reward'(prompt, response) = reward(prompt, response) − λ · probe_score(prompt, response)`.
`best_of_n` picks, per prompt, the candidate with the highest reward (the classifier experiment's
`probe_penalty_demo` runs the comparison with and without the penalty on sycophancy A/B pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp._checks import binary_labels, finite_number, float_tensor, whole_number
from interp._io import load_tensor_folder, save_tensor_folder
from interp.directions import RESID_SITES, Direction
from interp.hooked import HookedModel
from interp.metrics import logit_measures

Calibration = Literal["temperature", "platt", "none"]
Reward = Callable[[str, str], float]  # (prompt, response) -> reward
PROBE_TENSORS = "probe.safetensors"
PROBE_JSON = "probe.json"


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------


def _check_xy(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or x.ndim not in (2, 3):
        raise ValueError(f"x: expected [n, d] or [n_probes, n, d], got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    float_tensor(x, "x")
    y = torch.as_tensor(y)
    if y.shape[-1] != x.shape[-2] or y.ndim > x.ndim - 1:
        raise ValueError(f"y: expected {x.shape[-2]} labels (one per row of x), got shape {tuple(y.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x: contains NaN or inf")
    unique = torch.unique(binary_labels(y, argument="y"))
    if unique.numel() < 2:
        raise ValueError("y: both classes are needed to fit a probe")
    return x, y


def standardisation(x: Float[Tensor, "... n d"]) -> tuple[Float[Tensor, "... d"], Float[Tensor, "... d"]]:
    """Per-dimension mean and standard deviation over the rows (a constant dimension gets scale 1)."""
    mean = x.mean(dim=-2)
    scale = x.std(dim=-2, unbiased=False)
    return mean, torch.where(scale > 1e-8 * scale.max().clamp_min(1e-30), scale, torch.ones_like(scale))


def fit_logistic(
    x: Float[Tensor, "... n d"],
    y: Float[Tensor, "... n"] | Bool[Tensor, "... n"],
    *,
    l2: float = 1e-2,
    optimizer: Literal["lbfgs", "adam"] = "lbfgs",
    max_iter: int = 200,
    lr: float = 0.05,
) -> tuple[Float[Tensor, "... d"], Float[Tensor, "..."]]:
    """Weights and biases minimising mean logistic loss + l2/2·‖w‖², full batch, for every leading index.

    The problems along the leading axes are independent; their losses are summed so one optimiser
    fits them all at once (their gradients do not interact). Runs in float64 for a clean optimum.
    """
    if l2 < 0:
        raise ValueError(f"l2: expected >= 0, got {l2}")
    x64 = x.detach().double()
    target = y.detach().to(x64.device).double().expand(x64.shape[:-1])
    weight = torch.zeros(x64.shape[:-2] + x64.shape[-1:], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(x64.shape[:-2], dtype=torch.float64, requires_grad=True)

    def objective() -> Tensor:
        logits = (x64 @ weight.unsqueeze(-1)).squeeze(-1) + bias.unsqueeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
        return (loss + 0.5 * l2 * (weight**2).sum(-1)).sum()

    if optimizer == "lbfgs":
        solver = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                   tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            solver.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        solver.step(closure)
    elif optimizer == "adam":
        solver = torch.optim.Adam([weight, bias], lr=lr)
        for _ in range(max_iter):
            solver.zero_grad()
            objective().backward()
            solver.step()
    else:
        raise ValueError(f"optimizer: expected 'lbfgs' or 'adam', got {optimizer!r}")
    return weight.detach().to(x.dtype), bias.detach().to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


def fit_temperature(logits: Float[Tensor, "n"], labels: Float[Tensor, "n"]) -> float:
    """The temperature T > 0 minimising the NLL of sigmoid(logit / T) (fitted as log T: always positive)."""
    z, y = logits.detach().double(), labels.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    solver = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        solver.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()
        return loss

    solver.step(closure)
    return float(log_t.detach().exp())


def fit_platt(logits: Float[Tensor, "n"], labels: Float[Tensor, "n"]) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising the NLL of sigmoid(a·logit + b)."""
    weight, bias = fit_logistic(logits.detach()[:, None], labels, l2=0.0)
    return float(weight[0]), float(bias)


# ---------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearProbe:
    """logit(x) = ((x − mean) / scale) · weight + bias, then a calibration map (temperature or Platt).

    `mean` and `scale` are the training rows' standardisation (zeros and ones without it). `layer`,
    `site` and `model` say where the probe reads; `meta` carries provenance.
    """

    weight: Float[Tensor, "d_model"]
    bias: float
    mean: Float[Tensor, "d_model"]
    scale: Float[Tensor, "d_model"]
    temperature: float = 1.0
    platt: tuple[float, float] | None = None
    layer: int | None = None
    site: str = "resid_pre"
    model: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim != 1 or self.mean.shape != self.weight.shape or self.scale.shape != self.weight.shape:
            raise ValueError(
                f"weight, mean, scale: expected three [d_model] vectors, got {tuple(self.weight.shape)}, "
                f"{tuple(self.mean.shape)}, {tuple(self.scale.shape)}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")

    @property
    def d_model(self) -> int:
        return self.weight.shape[0]

    def _check(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected last dimension {self.d_model} (the probe's width), got {x.shape[-1]}")

    def raw_logits(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """The fitted logit, before calibration."""
        self._check(x)
        return ((x - self.mean.to(x)) / self.scale.to(x)) @ self.weight.to(x) + self.bias

    def logits(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """The calibrated logit."""
        raw = self.raw_logits(x)
        if self.platt is not None:
            return self.platt[0] * raw + self.platt[1]
        return raw / self.temperature

    def predict_proba(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        return self.logits(x).sigmoid()

    @property
    def effective_weight(self) -> Float[Tensor, "d_model"]:
        """The weight on the raw (unstandardised) residual: the raw logit is x · this + `effective_bias`."""
        return self.weight / self.scale

    @property
    def effective_bias(self) -> float:
        return float(self.bias - (self.mean / self.scale) @ self.weight)

    def direction(self, layer: int | None = None, model: str | None = None) -> Direction:
        """The probe's raw-space weight as a `Direction` (x · direction.vector is the raw logit less a constant)."""
        at = layer if layer is not None else self.layer
        if at is None:
            raise ValueError("layer: this probe names no layer; pass layer=")
        return Direction(
            self.effective_weight.detach().float().cpu(), layer=at, model=model or self.model or "unknown",
            source="probe", site=self.site, meta={**self.meta, "bias": self.effective_bias},
        )

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """`probe.safetensors` + `probe.json` in the folder `path`, atomically.

        `path` must be new or empty, or hold a saved probe (replaced only with `overwrite=True`).
        """
        metadata = {
            "bias": self.bias, "temperature": self.temperature, "platt": self.platt, "layer": self.layer,
            "site": self.site, "model": self.model, "meta": self.meta,
        }
        tensors = {"weight": self.weight.float(), "mean": self.mean.float(), "scale": self.scale.float()}
        return save_tensor_folder(path, tensors, metadata, kind="probe", tensors_file=PROBE_TENSORS, json_file=PROBE_JSON,
                                  overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> LinearProbe:
        """The probe saved in the folder `path`; any damage is an error naming the file.

        The files must match the SHA-256 recorded when it was saved; `verify=False` reads a probe edited on
        purpose (its values are then checked as any new input's are).
        """
        path = Path(path)
        tensors, meta = load_tensor_folder(path, kind="probe", tensors_file=PROBE_TENSORS, json_file=PROBE_JSON,
                                           tensors=("weight", "mean", "scale"), keys=("bias", "temperature"),
                                           argument="LinearProbe.load", verify=verify)
        for key in ("weight", "mean", "scale"):
            if not tensors[key].is_floating_point() or not torch.isfinite(tensors[key]).all():
                raise ValueError(f"{path / PROBE_TENSORS}: {key}: expected finite floating-point values")
        if not (tensors["scale"] > 0).all():
            raise ValueError(f"{path / PROBE_TENSORS}: scale: expected positive values (it divides the input)")
        try:
            platt = meta.get("platt")
            if platt is not None:
                if not isinstance(platt, list) or len(platt) != 2:
                    raise ValueError(f"platt: expected null or [slope, intercept], got {platt!r}")
                platt = (finite_number(platt[0], "platt"), finite_number(platt[1], "platt"))
            layer = meta.get("layer")
            if layer is not None:
                whole_number(layer, "layer", minimum=0)
            site, model, extra = meta.get("site", "resid_pre"), meta.get("model"), meta.get("meta", {})
            if site not in RESID_SITES:
                raise ValueError(f"site: expected one of {RESID_SITES}, got {site!r}")
            if not isinstance(model, (str, type(None))) or not isinstance(extra, dict):
                raise ValueError(f"model, meta: expected a string (or null) and an object, got {model!r}, {extra!r}")
            bias, temperature = finite_number(meta["bias"], "bias"), finite_number(meta["temperature"], "temperature")
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path / PROBE_JSON}: {error}") from None
        try:
            return cls(tensors["weight"], bias, tensors["mean"], tensors["scale"], temperature, platt, layer, site, model,
                       extra)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None


@dataclass(frozen=True)
class ProbeFit:
    """A fitted, calibrated probe and how it did on its training and validation rows."""

    probe: LinearProbe
    train: dict[str, float]
    validation: dict[str, float]  # before ("ece_raw", "nll_raw") and after calibration ("ece", "nll")
    n_train: int
    n_validation: int

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train, "validation": self.validation, "n_train": self.n_train,
                "n_validation": self.n_validation, "temperature": self.probe.temperature, "platt": self.probe.platt}


def split_rows(
    n: int, validation_fraction: float, seed: int, groups: Int[Tensor, "n"] | None = None
) -> tuple[Int[Tensor, "n_train"], Int[Tensor, "n_val"]]:
    """A seeded (train, validation) split of row indices; rows sharing a `groups` id stay together."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction: expected in [0, 1), got {validation_fraction}")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) if groups is None else torch.as_tensor(groups)
    unique = torch.unique(ids)
    order = unique[torch.randperm(len(unique), generator=generator)]
    held = order[: round(validation_fraction * len(unique))]
    in_val = torch.isin(ids, held)
    return (~in_val).nonzero()[:, 0], in_val.nonzero()[:, 0]


def train_probe(
    x: Float[Tensor, "n d_model"],
    y: Bool[Tensor, "n"] | Float[Tensor, "n"],
    *,
    validation_fraction: float = 0.25,
    groups: Int[Tensor, "n"] | None = None,
    l2: float = 1e-2,
    standardize: bool = True,
    calibration: Calibration = "temperature",
    optimizer: Literal["lbfgs", "adam"] = "lbfgs",
    max_iter: int = 200,
    seed: int = 0,
    layer: int | None = None,
    site: str = "resid_pre",
    model: str | None = None,
) -> ProbeFit:
    """Fit a logistic probe on a training split of the rows, calibrate it on the validation split.

    `groups` keeps related rows (e.g. the options of one question) on the same side of the split.
    With `validation_fraction=0` nothing is held out and no calibration is fitted; a validation split of
    one class is an error unless `calibration="none"`.
    """
    x, y = _check_xy(x, y)
    if x.ndim != 2:
        raise ValueError(f"x: train_probe fits one probe on [n, d_model] rows, got {tuple(x.shape)}")
    if calibration not in ("temperature", "platt", "none"):
        raise ValueError(f"calibration: expected 'temperature', 'platt' or 'none', got {calibration!r}")
    labels = y.double()
    train, val = split_rows(x.shape[0], validation_fraction, seed, groups)
    if labels[train].min() == labels[train].max():
        raise ValueError("y: the training split holds one class only; use more rows or another seed")
    if len(val) and labels[val].min() == labels[val].max() and calibration != "none":
        raise ValueError(
            f"y: the validation split holds one class only ({len(val)} of {x.shape[0]} rows), so the probe cannot be "
            "calibrated or measured; use more rows, another seed or validation_fraction, or calibration='none'"
        )
    x_train = x[train]
    mean, scale = standardisation(x_train) if standardize else (torch.zeros(x.shape[1]), torch.ones(x.shape[1]))
    weight, bias = fit_logistic((x_train - mean) / scale, labels[train], l2=l2, optimizer=optimizer, max_iter=max_iter)
    probe = LinearProbe(weight.float(), float(bias), mean.float(), scale.float(), layer=layer, site=site, model=model,
                        meta={"l2": l2, "standardize": standardize, "n_train": len(train)})
    train_measures = logit_measures(probe.raw_logits(x_train.float()).double(), labels[train])
    validation: dict[str, float] = {}
    if len(val) and labels[val].min() != labels[val].max():
        raw = probe.raw_logits(x[val].float()).double()
        before = logit_measures(raw, labels[val])
        if calibration == "temperature":
            probe = replace(probe, temperature=fit_temperature(raw, labels[val]))
        elif calibration == "platt":
            probe = replace(probe, platt=fit_platt(raw, labels[val]))
        after = logit_measures(probe.logits(x[val].float()).double(), labels[val])
        validation = {**after, "ece_raw": before["ece"], "nll_raw": before["nll"]}
    return ProbeFit(probe, train_measures, validation, len(train), len(val))


# ---------------------------------------------------------------------------------------------
# Probe-penalised reward and best-of-n
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbePenalisedReward:
    """reward'(prompt, response) = reward(prompt, response) − λ · probe_score(prompt, response)."""

    reward: Reward
    probe_score: Callable[[str, str], float]
    lam: float = 1.0

    def __call__(self, prompt: str, response: str) -> float:
        return float(self.reward(prompt, response)) - self.lam * float(self.probe_score(prompt, response))


def best_of_n(prompts: Sequence[str], candidates: Sequence[Sequence[str]], reward: Reward) -> list[int]:
    """For each prompt, the index of the candidate response with the highest reward (the first, on ties)."""
    if len(prompts) != len(candidates):
        raise ValueError(f"candidates: expected one list per prompt ({len(prompts)}), got {len(candidates)}")
    chosen = []
    for prompt, responses in zip(prompts, candidates):  # rewards are arbitrary Python callables
        if not responses:
            raise ValueError("candidates: every prompt needs at least one candidate response")
        values = [float(reward(prompt, response)) for response in responses]
        chosen.append(max(range(len(values)), key=values.__getitem__))
    return chosen


class ProbeScorer:
    """probe_score(prompt, response): the probe on the model's activation at the response's last token.

    Activations are computed in batches by `score_many` (prompt + response, one forward each, stopping
    after the probe's layer) and memoised; `prefill` seeds them from a pass already made.
    `output="probability"` scores in [0, 1] (calibrated), so λ is in the reward's own units.
    """

    def __init__(self, model: HookedModel, probe: LinearProbe, *, output: Literal["probability", "logit"] = "probability",
                 batch_size: int = 16) -> None:
        if probe.layer is None:
            raise ValueError("probe: it names no layer to read")
        if output not in ("probability", "logit"):
            raise ValueError(f"output: expected 'probability' or 'logit', got {output!r}")
        self.model, self.probe, self.output, self.batch_size = model, probe, output, batch_size
        self._cache: dict[tuple[str, str], float] = {}

    def _value(self, activations: Float[Tensor, "n d_model"]) -> list[float]:
        values = self.probe.predict_proba(activations) if self.output == "probability" else self.probe.logits(activations)
        return values.tolist()

    def prefill(self, prompts: Sequence[str], responses: Sequence[str], activations: Float[Tensor, "n d_model"]) -> None:
        if not len(prompts) == len(responses) == activations.shape[0]:
            raise ValueError("activations: expected one row per (prompt, response)")
        self._cache.update(zip(zip(prompts, responses), self._value(activations.float())))

    def score_many(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        from interp.activations import collect_residuals

        keys = list(zip(prompts, responses))
        missing = list(dict.fromkeys(key for key in keys if key not in self._cache))
        if missing:
            acts = collect_residuals(self.model, [p + r for p, r in missing], [self.probe.layer], positions=-1,
                                     site=self.probe.site, batch_size=self.batch_size, progress=False)
            self._cache.update(zip(missing, self._value(acts[:, 0, 0])))
        return [self._cache[key] for key in keys]

    def __call__(self, prompt: str, response: str) -> float:
        return self.score_many([prompt], [response])[0]


__all__ = [
    "LinearProbe", "ProbeFit", "ProbePenalisedReward", "ProbeScorer", "Reward", "best_of_n", "fit_logistic",
    "fit_platt", "fit_temperature", "split_rows", "standardisation", "train_probe",
]
