"""Our fast SAE trainer on in-memory activations: TopK (with AuxK), ReLU + L1, or gated; SAE-Lens's parametrisation.

- Training runs on activations scaled to mean norm sqrt(d_model) (so one learning rate suits every
  model and layer); the scale is folded back into the weights, which read raw activations.
- TopK and gated decoder rows stay unit norm (renormalised after each step, with the gradient
  component along each row removed), so activations are directly comparable across features. For a
  gated SAE this also removes a degeneracy: its magnitude path could otherwise grow (r_mag, b_mag) while
  the decoder rows shrink, cheapening the L1 without changing the reconstruction.
- Standard and gated SAEs pay an L1 penalty weighted by decoder norms (on ReLU(π_gate) for gated, as in
  SAE-Lens; with unit rows it is the paper's plain L1), warmed up over the first `l1_warmup_fraction`
  of training. Standard decoder rows are free (the norm weighting keeps them from shrinking).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from interp._checks import finite_number, whole_number
from interp.sae_training.gated import GatedSparseAutoencoder, gated_auxiliary_loss

ARCHITECTURES = ("topk", "standard", "gated")
UNIT_DECODER_ARCHITECTURES = ("topk", "gated")  # decoder rows kept at unit norm during training


@dataclass(frozen=True)
class SAETrainingConfig:
    """Hyperparameters; the defaults train a 4,608-feature TopK SAE (8x d_model for SmolLM2)."""

    architecture: str = "topk"  # "topk", "standard" (ReLU + L1) or "gated" (gate + magnitude paths, L1 on the gate)
    d_sae: int = 4608
    k: int = 32  # topk
    l1_coefficient: float = 2.0  # standard, gated: weight of sum_i a_i * ||W_dec[i]|| on scaled activations
    l1_warmup_fraction: float = 0.05
    lr: float = 4e-4
    batch_size: int = 4096
    epochs: float = 1.0
    aux_k: int | None = None  # topk: dead features used by the AuxK loss (None: d_model // 2)
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 500_000  # a feature silent this long counts as dead for AuxK
    lr_decay_fraction: float = 0.2  # linear decay to 0 over the last part of training
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {self.architecture!r}")
        for name in ("d_sae", "k", "batch_size", "dead_after_tokens", *(("aux_k",) if self.aux_k is not None else ())):
            whole_number(getattr(self, name), name, minimum=1)
        whole_number(self.seed, "seed", minimum=0)
        if self.architecture == "topk" and self.k > self.d_sae:
            raise ValueError(f"k: expected <= d_sae ({self.d_sae}), got {self.k}")
        for name in ("epochs", "lr"):
            if finite_number(getattr(self, name), name) <= 0:
                raise ValueError(f"{name}: expected a number > 0, got {getattr(self, name)!r}")
        for name in ("l1_coefficient", "aux_coefficient"):
            if finite_number(getattr(self, name), name) < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)!r}")
        for name in ("l1_warmup_fraction", "lr_decay_fraction"):
            if not 0 <= finite_number(getattr(self, name), name) <= 1:
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {getattr(self, name)!r}")


class SparseAutoencoder(nn.Module):
    """x̂ = act((x − b_dec) W_enc + b_enc) W_dec + b_dec, SAE-Lens's parametrisation."""

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int = 32) -> None:
        super().__init__()
        if architecture not in ("topk", "standard"):
            raise ValueError(f"architecture: expected 'topk' or 'standard' (a gated SAE is a GatedSparseAutoencoder), "
                             f"got {architecture!r}")
        self.architecture, self.k = architecture, k
        decoder = torch.randn(d_sae, d_in)
        decoder = decoder / decoder.norm(dim=-1, keepdim=True)
        if architecture == "standard":
            decoder = decoder * 0.1
        self.W_dec = nn.Parameter(decoder)
        self.W_enc = nn.Parameter(decoder.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre_activation(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        if self.architecture == "topk":
            values, indices = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        return pre.relu()

    def decode(self, acts: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_in"]:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "batch d_in"]) -> tuple[Tensor, Tensor, Tensor]:
        pre = self.pre_activation(x)
        acts = self.activate(pre)
        return self.decode(acts), acts, pre


AnySAE = SparseAutoencoder | GatedSparseAutoencoder


@dataclass
class TrainingLog:
    """What a training run did.

    Attributes:
        steps: optimiser steps taken.
        tokens: activation rows trained on.
        seconds: wall-clock time.
        scale: the factor activations were multiplied by during training.
        history: per logged step: loss, variance explained, L0, dead fraction, ...
    """

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    scale: float = 1.0  # activations were multiplied by this during training
    history: list[dict[str, float]] = field(default_factory=list)


def _geometric_median(points: Tensor, iterations: int = 50) -> Tensor:
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1 / (points - median).norm(dim=-1).clamp_min(1e-6)
        median = (weights[:, None] * points).sum(0) / weights.sum()
    return median


@dataclass(frozen=True)
class _Schedule:
    """The fixed numbers of one training run, worked out once before the first step."""

    total_steps: int
    decay_start: int  # the learning rate decays linearly to 0 from this step on
    steps_to_dead: int  # a feature silent for this many steps counts as dead for AuxK
    aux_k: int
    variance: float  # of the scaled activations: dividing the MSE by it makes the loss an FVU


MIN_STEPS, MIN_VARIANCE_EXPLAINED = 200, 0.5  # below either, an SAE is too short-trained to read features from


class UndertrainedSAEWarning(UserWarning):
    """An SAE trained for too few steps, or explaining too little variance, to mean much."""


def warn_if_undertrained(hook: str, steps: int | None, variance_explained: float | None = None) -> None:
    """Warn when `steps` (if given) < MIN_STEPS or the held-out `variance_explained` < MIN_VARIANCE_EXPLAINED."""
    problems = ([f"only {steps:,} training steps (< {MIN_STEPS})"] if steps is not None and steps < MIN_STEPS else []) + (
        [f"variance explained {variance_explained:.2f} on held-out text (< {MIN_VARIANCE_EXPLAINED})"]
        if variance_explained is not None and variance_explained < MIN_VARIANCE_EXPLAINED else [])
    if problems:
        warnings.warn(f"{hook}: {' and '.join(problems)}: too short a training run to read features from; train on "
                      "more tokens, for more epochs or with a smaller batch size",
                      UndertrainedSAEWarning, stacklevel=3)


def train_sae(
    activations: Float[Tensor, "n_tokens d_in"],
    config: SAETrainingConfig = SAETrainingConfig(),
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[AnySAE, TrainingLog]:
    """Train on in-memory activations (any dtype; each batch is cast to float32 on `device`).

    `activations` may also be anything indexable like a [n_tokens, d_in] tensor (`shape`, `ndim`, `device`,
    indexing by slices and index tensors), such as `interp.activation_shards.ResidualShards.tokens(layer)`:
    a harvest on disk, read batch by batch.

    Returns the SAE with the training scale already folded in (it reads raw activations).
    """
    _check_activations(activations, config)
    device = torch.device(device) if device is not None else activations.device
    generator = torch.Generator().manual_seed(config.seed)  # the sample and the batch order
    torch.manual_seed(config.seed)  # the SAE's initial weights
    n_tokens, d_in = activations.shape
    sample = _random_sample(activations, generator, device)
    scale = math.sqrt(d_in) / float(sample.norm(dim=-1).mean())
    scaled_sample = sample * scale
    sae = _initial_sae(d_in, config, scaled_sample, device)
    optimiser = torch.optim.Adam(sae.parameters(), lr=config.lr, betas=(0.9, 0.999))
    schedule = _make_schedule(config, n_tokens, scaled_sample)
    warn_if_undertrained("train_sae", schedule.total_steps)  # before the run: steps = epochs × n_tokens / batch_size
    last_fired = torch.zeros(config.d_sae, dtype=torch.long, device=device)
    log = TrainingLog(scale=scale)
    started = time.perf_counter()
    batches = _batch_indices(n_tokens, config.batch_size, generator)
    bar = tqdm(range(schedule.total_steps), desc=f"train {config.architecture} SAE", disable=not progress)
    for step, index in zip(bar, batches):
        x = activations[index].to(device, non_blocking=True).float() * scale
        recon, acts, pre = sae(x)
        fired = (acts > 0).any(0)
        last_fired = torch.where(fired, torch.zeros_like(last_fired), last_fired + 1)
        mse, aux, loss = _losses(sae, config, schedule, step, x, recon, acts, pre, last_fired)
        _optimiser_step(sae, optimiser, loss, _learning_rate(config, schedule, step), config.architecture)
        if step % 50 == 0 or step == schedule.total_steps - 1:
            _record(log, bar, step, mse, aux, acts, last_fired >= schedule.steps_to_dead)
    log.steps, log.tokens = schedule.total_steps, schedule.total_steps * config.batch_size
    log.seconds = time.perf_counter() - started
    fold_scale(sae, scale)
    return sae, log


def _check_activations(activations: Tensor, config: SAETrainingConfig) -> None:
    if activations.ndim != 2 or activations.shape[0] < config.batch_size // 8:
        raise ValueError(f"activations: expected [n_tokens, d_model] with n_tokens >= {config.batch_size // 8}, "
                         f"got {tuple(activations.shape)}")
    if not torch.isfinite(activations[: 65_536].float()).all():
        raise ValueError("activations: contain NaN or inf")


def _random_sample(
    activations: Float[Tensor, "n_tokens d_in"], generator: torch.Generator, device: torch.device
) -> Float[Tensor, "n_sample d_in"]:
    # Up to 32k tokens are enough to set the scale, the decoder bias and the FVU normaliser.
    n_tokens = activations.shape[0]
    return activations[torch.randperm(n_tokens, generator=generator)[: min(n_tokens, 32_768)]].float().to(device)


def _initial_sae(
    d_in: int, config: SAETrainingConfig, scaled_sample: Float[Tensor, "n_sample d_in"], device: torch.device
) -> AnySAE:
    if config.architecture == "gated":
        sae: AnySAE = GatedSparseAutoencoder(d_in, config.d_sae).to(device)
    else:
        sae = SparseAutoencoder(d_in, config.d_sae, config.architecture, config.k).to(device)
    with torch.no_grad():
        # Starting b_dec at the data's centre means the first steps learn directions, not the offset.
        sae.b_dec.copy_(_geometric_median(scaled_sample))
    return sae


def _make_schedule(
    config: SAETrainingConfig, n_tokens: int, scaled_sample: Float[Tensor, "n_sample d_in"]
) -> _Schedule:
    total_steps = max(1, int(config.epochs * n_tokens / config.batch_size))
    return _Schedule(
        total_steps=total_steps,
        decay_start=int(total_steps * (1 - config.lr_decay_fraction)),
        steps_to_dead=max(1, config.dead_after_tokens // config.batch_size),
        aux_k=config.aux_k or scaled_sample.shape[1] // 2,
        variance=float((scaled_sample - scaled_sample.mean(0)).pow(2).sum(-1).mean()),
    )


def _batch_indices(n_tokens: int, batch_size: int, generator: torch.Generator) -> Iterator[Int[Tensor, "batch"]]:
    """Token indices of each batch, endlessly: a fresh permutation whenever the current one runs short."""
    order, position = torch.randperm(n_tokens, generator=generator), 0
    while True:
        if position + batch_size > n_tokens:
            order, position = torch.randperm(n_tokens, generator=generator), 0
        yield order[position : position + batch_size]
        position += batch_size


def _losses(
    sae: AnySAE,
    config: SAETrainingConfig,
    schedule: _Schedule,
    step: int,
    x: Float[Tensor, "batch d_in"],
    recon: Float[Tensor, "batch d_in"],
    acts: Float[Tensor, "batch d_sae"],
    pre: Float[Tensor, "batch d_sae"],
    last_fired: Int[Tensor, "d_sae"],
) -> tuple[Tensor, Tensor, Tensor]:
    """(FVU, auxiliary loss (TopK: AuxK, 0 without dead features; gated: the gate's FVU), the total loss)."""
    error = x - recon
    mse = error.pow(2).sum(-1).mean() / schedule.variance
    loss = mse
    aux = torch.zeros((), device=x.device)
    if config.architecture == "topk":
        dead = last_fired >= schedule.steps_to_dead
        n_dead = int(dead.sum())
        if n_dead:
            aux = _aux_k_loss(sae, pre, error, dead, min(schedule.aux_k, n_dead), schedule.variance)
            loss = loss + config.aux_coefficient * aux
    else:
        warmup = min(1.0, (step + 1) / max(1, int(schedule.total_steps * config.l1_warmup_fraction)))
        # Gated: the penalty acts on the gate's ReLU(π_gate) (`pre`), never on the magnitudes it lets through.
        penalised = pre.relu() if isinstance(sae, GatedSparseAutoencoder) else acts
        sparsity = (penalised * sae.W_dec.norm(dim=-1)).sum(-1).mean() / math.sqrt(x.shape[-1])
        loss = loss + warmup * config.l1_coefficient * sparsity
        if isinstance(sae, GatedSparseAutoencoder):
            aux = gated_auxiliary_loss(sae, x, pre, schedule.variance)  # an FVU, weighted 1 like the main one
            loss = loss + aux
    return mse, aux, loss


def _aux_k_loss(
    sae: SparseAutoencoder,
    pre: Float[Tensor, "batch d_sae"],
    error: Float[Tensor, "batch d_in"],
    dead: Bool[Tensor, "d_sae"],
    aux_k: int,
    variance: float,
) -> Tensor:
    # AuxK: the dead features' top pre-activations try to explain the main model's error.
    dead_pre = pre.masked_fill(~dead, float("-inf"))
    values, indices = dead_pre.topk(aux_k, dim=-1)
    aux_acts = torch.zeros_like(pre).scatter_(-1, indices, values.relu())
    aux_recon = aux_acts @ sae.W_dec
    return (error.detach() - aux_recon).pow(2).sum(-1).mean() / variance


def _learning_rate(config: SAETrainingConfig, schedule: _Schedule, step: int) -> float:
    if step < schedule.decay_start:
        return config.lr
    return config.lr * (schedule.total_steps - step) / max(1, schedule.total_steps - schedule.decay_start)


def _optimiser_step(
    sae: AnySAE, optimiser: torch.optim.Optimizer, loss: Tensor, lr: float, architecture: str
) -> None:
    for group in optimiser.param_groups:
        group["lr"] = lr
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    unit_rows = architecture in UNIT_DECODER_ARCHITECTURES
    if unit_rows:
        _remove_parallel_gradient(sae.W_dec)
    optimiser.step()
    if unit_rows:
        _normalise_rows(sae.W_dec)


@torch.no_grad()
def _normalise_rows(decoder: Float[Tensor, "d_sae d_in"]) -> None:
    decoder.div_(decoder.norm(dim=-1, keepdim=True).clamp_min(1e-8))


@torch.no_grad()
def _remove_parallel_gradient(decoder: Float[Tensor, "d_sae d_in"]) -> None:
    # Keeps unit-norm decoder rows on the sphere: only the tangential part of the gradient moves them.
    if decoder.grad is not None:
        rows = decoder / decoder.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        decoder.grad -= (decoder.grad * rows).sum(-1, keepdim=True) * rows


def _record(
    log: TrainingLog,
    bar: tqdm,
    step: int,
    mse: Tensor,
    aux: Tensor,
    acts: Float[Tensor, "batch d_sae"],
    dead: Bool[Tensor, "d_sae"],
) -> None:
    entry = {"step": step, "fvu": mse.item(), "aux": aux.item(), "l0": float((acts > 0).sum(-1).float().mean()),
             "dead_fraction": float(dead.float().mean())}
    log.history.append(entry)
    bar.set_postfix(fvu=f"{entry['fvu']:.3f}", l0=f"{entry['l0']:.0f}", dead=f"{entry['dead_fraction']:.2f}")


@torch.no_grad()
def fold_scale(sae: AnySAE, scale: float) -> None:
    """Make an SAE trained on `scale`·x read raw x: same codes, reconstruction divided by `scale`."""
    # Trained on s·x: pre = (s·x − b)W + c = (x − b/s)(sW) + c; x̂ = (aW_dec + b)/s = a(W_dec/s) + b/s.
    # Gated: both paths are (x − b/s)(sW ⊙ ·) + bias, so W_enc·s covers them; b_gate, r_mag, b_mag stay.
    sae.W_enc.mul_(scale)
    sae.W_dec.div_(scale)
    sae.b_dec.div_(scale)
