"""MELBO: unsupervised steering vectors (Mack & Turner, "Mechanistically eliciting latent behaviors").

A steering vector θ is added as a bias at a *source* layer, at every position, and learned to
maximise how much it changes the residual stream at a later *target* layer over a set of prompts:

    loss(θ) = − Σ_prompts ( Σ_tokens ‖h_tgt(θ) − h_tgt(0)‖₂^p )^(1/q),    ‖θ‖ = R.

θ lives on the sphere of radius R: each step projects the gradient onto the sphere's tangent space,
takes an AdamW step (amsgrad, betas (0.9, 0.98), no weight decay, as the original code) and
renormalises. Several vectors are learned, each orthogonal to those before.

Where θ is added (`MelboConfig.site`):

- `"resid_pre"` (default): a bias on the residual stream entering block `source_layer`
  (`blocks.{src}.hook_resid_pre`), so the source block itself already sees it.
- `"mlp_out"`: a bias on the MLP output of block `source_layer` (`blocks.{src}.hook_mlp_out`), as the
  original code (a bias on `mlp.down_proj`). Downstream this is exactly a `"resid_pre"` bias at
  `source_layer + 1` (the residual after block s is the residual before block s+1; tested).

Which axis the norm runs over (`MelboConfig.norm_axis`), for one prompt with target activations
Δ[t, j] (token t, hidden unit j):

- `"token"` (default; the formula of the paper): Σ_t ‖Δ[t, :]‖₂^p — the Euclidean norm of each
  token's change over hidden units, raised to p and summed over tokens.
- `"hidden"` (what the original code computes: `(target - unsteered).norm(dim=1)` on a
  `[1, tokens, hidden]` tensor): Σ_j ‖Δ[:, j]‖₂^p — the norm over *tokens* of each hidden unit's
  change, raised to p and summed over hidden units.

Both equal Σ_{t,j} Δ[t, j]² at p = 2 and differ otherwise. (Neither is the literal entrywise
‖Δ‖_p^p = Σ_{t,j} |Δ[t, j]|^p.) q defaults to p, as in the original.

Positions that count in the loss: every real (non-padding) token, except — by default
(`skip_first_token=True`) — each prompt's first real token. On SmolLM2 the residual there has ~100×
the norm of the others (an attention sink) and would dominate the objective.

Two ways to learn several vectors (`MelboConfig.mode`):

- `"sequential"` (the original): vector i is trained alone, with its gradient and iterate projected
  onto the orthogonal complement of vectors 0..i-1.
- `"parallel"`: all vectors in one batch (n_vectors × n_prompts rows per forward); after each step
  the vectors are re-orthonormalised by Gram–Schmidt in order and each vector's gradient is projected
  off the vectors before it. This is subspace iteration: vector i still ends orthogonal to 0..i-1 and,
  for a linear source→target map at p = 2, converges to the i-th right-singular vector, like
  sequential mode (tested).

`orthogonal=False` learns independent vectors (different random starts) instead.

Implementation: the bias is a TransformerLens hook `(name, fn)` at `blocks.{src}.hook_{site}`; the
target is read at `blocks.{tgt-1}.hook_resid_post` (= `blocks.{tgt}.hook_resid_pre`) and nothing after
it runs (`stop_at_layer=tgt`). On a bridge the same hooks run by default (`MelboConfig.fast`) as
PyTorch hooks on its plain HF module tree — the fast path `interp.steering.generate` uses — which gives
the same numbers without the bridge's per-hook overhead (a small saving on CPU, 3–20% of a step in
our noisy measurements: `benchmarks/BENCHMARKS_melbo.md`);
`fast=False`, other hook points and HookedTransformers go through `interp.hooked.hooks_on`. All prompts
(and, in "parallel" mode, all vectors: row v·B + b is prompt b under vector v) share one left-padded
forward; unsteered target activations are computed once; padding is masked out of the loss through
the attention mask. Model parameters are frozen for the duration (their `requires_grad` flags are
restored after). Seeded and deterministic on CPU.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.chat import TokenBatch, tokenize
from interp.directions import Direction
from interp.hooked import (
    d_model,
    hook_name,
    hooks_on,
    is_bridge,
    model_device,
    n_layers,
    plain_hooks,
    plain_sites_cover,
)
from interp.models import model_name

NormAxis = Literal["token", "hidden"]
Site = Literal["resid_pre", "mlp_out"]
Mode = Literal["sequential", "parallel"]
NORM_AXES: tuple[str, ...] = ("token", "hidden")
SITES: tuple[str, ...] = ("resid_pre", "mlp_out")
MODES: tuple[str, ...] = ("sequential", "parallel")

# The original code's optimiser settings.
DEFAULT_BETAS = (0.9, 0.98)
# Norms of exactly zero changes (R → 0, or a padded row) would give NaN gradients under a fractional power.
_TINY = 1e-12


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
    fast: bool = True  # on a bridge: run its plain HF module tree (same weights, same numbers; see _run_to_target)

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


# --------------------------------------------------------------------------------------------------
# The objective


def loss_mask(batch: TokenBatch, skip_first_token: bool) -> Bool[Tensor, "batch seq"]:
    """Positions that count in the loss: real tokens, optionally without each prompt's first one."""
    mask = batch.attention_mask.bool()
    if skip_first_token:
        first = batch.input_ids.shape[1] - batch.lengths  # first real column (left padding)
        columns = torch.arange(batch.input_ids.shape[1], device=mask.device)
        mask = mask & (columns[None, :] != first[:, None].to(mask.device))
    return mask


def melbo_loss(
    delta: Float[Tensor, "n_vectors batch seq d_model"],
    mask: Bool[Tensor, "batch seq"],
    p: float = 2.0,
    q: float | None = None,
    norm_axis: NormAxis = "token",
) -> Float[Tensor, "n_vectors"]:
    """−Σ_prompts (Σ ‖Δ‖₂^p)^(1/q) per vector, over the masked positions (see the module docstring).

    `norm_axis="token"`: the norm of each token's change over hidden units; `"hidden"`: the norm over
    tokens of each hidden unit's change (the original code).
    """
    if norm_axis not in NORM_AXES:
        raise ValueError(f"norm_axis: expected one of {NORM_AXES}, got {norm_axis!r}")
    q = p if q is None else q
    weights = mask.to(delta.dtype)[None, :, :, None]
    squared = delta.pow(2) * weights
    if norm_axis == "token":
        per_norm = squared.sum(-1)  # [v, batch, seq]: ‖Δ[t, :]‖² per token
    else:
        per_norm = squared.sum(-2)  # [v, batch, d]: ‖Δ[:, j]‖² per hidden unit
    # x^(p/2) of a squared norm is the norm to the p; the clamp keeps the gradient finite at 0.
    powered = per_norm.clamp_min(_TINY).pow(p / 2)
    if norm_axis == "token":
        powered = powered * mask.to(delta.dtype)[None]
    per_prompt = powered.sum(-1)  # [v, batch]
    return -per_prompt.clamp_min(_TINY).pow(1 / q).sum(-1)


# --------------------------------------------------------------------------------------------------
# Optimisation on the sphere (model-agnostic)

# Backpropagates the per-vector losses at `theta` (rows: vectors) into it and returns them, detached.
BackwardFn = Callable[[Tensor], Float[Tensor, "n_vectors"]]


def _orthonormal_rows(vectors: Float[Tensor, "k d"]) -> Float[Tensor, "k d"]:
    """Gram–Schmidt of the rows, in order, keeping each row's orientation."""
    q, r = torch.linalg.qr(vectors.T)
    signs = torch.sign(torch.diagonal(r))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (q * signs).T


def _project_out(vectors: Float[Tensor, "v d"], basis: Float[Tensor, "k d"] | None) -> Float[Tensor, "v d"]:
    """Remove the components along the orthonormal rows of `basis`."""
    if basis is None or basis.shape[0] == 0:
        return vectors
    return vectors - (vectors @ basis.T) @ basis


def _retract(
    theta: Float[Tensor, "v d"], radius: Float[Tensor, "v 1"], previous: Tensor | None, joint: bool
) -> Float[Tensor, "v d"]:
    """Back onto the constraint set: orthogonal to `previous`, rows mutually orthogonal if `joint`, norm R."""
    theta = _project_out(theta, previous)
    if joint:
        return _orthonormal_rows(theta) * radius
    return theta / theta.norm(dim=-1, keepdim=True).clamp_min(_TINY) * radius


def _riemannian_gradient(
    grad: Float[Tensor, "v d"], theta: Float[Tensor, "v d"], radius: Float[Tensor, "v 1"],
    previous: Tensor | None, joint: bool,
) -> Float[Tensor, "v d"]:
    """Project the gradient off earlier vectors and onto the tangent space of each row's sphere."""
    grad = _project_out(grad, previous)
    units = theta / radius
    along = grad @ units.T  # [v, v]: component of row i's gradient along unit j
    if joint:
        # Row i may not move towards rows before it (subspace iteration keeps earlier rows fixed points).
        grad = grad - torch.tril(along, diagonal=-1) @ units
    return grad - torch.diagonal(along)[:, None] * units


def sphere_ascent(
    backward: BackwardFn,
    init: Float[Tensor, "v d"],
    radius: float | Float[Tensor, "v"],
    *,
    steps: int,
    lr: float = 1e-3,
    betas: tuple[float, float] = DEFAULT_BETAS,
    previous: Float[Tensor, "k d"] | None = None,
    joint: bool = False,
    progress: bool = True,
    desc: str = "melbo",
) -> tuple[Float[Tensor, "v d"], Float[Tensor, "steps v"]]:
    """Minimise per-row losses over rows of norm `radius` with projected AdamW (amsgrad, as the original).

    The optimiser holds the unit rows θ/R and `backward` sees θ = R · unit: `lr` is an angular step,
    the same at every radius (Adam ignores the gradient's scale, so a step of `lr` on θ/R is a step of
    `lr · R` on θ: the original's absolute 1e-3 at radius R is `lr = 1e-3 / R` here). `radius` may
    differ per row. `previous`: orthonormal rows the iterate must stay orthogonal to. `joint`: rows
    are kept mutually orthogonal (Gram–Schmidt in row order). Returns the final rows (norm R) and the
    loss before each step.
    """
    n_rows = init.shape[0]
    radii = torch.as_tensor(radius, dtype=init.dtype, device=init.device).reshape(-1, 1).expand(n_rows, 1)
    ones = torch.ones_like(radii)
    units = torch.nn.Parameter(_retract(init.detach().clone(), ones, previous, joint))
    optimizer = torch.optim.AdamW([units], lr=lr, betas=betas, weight_decay=0.0, amsgrad=True)
    curve = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        # `backward` gets a leaf θ of its own, so it may backpropagate once per chunk of prompts.
        theta = (units.detach() * radii).requires_grad_(True)
        losses = backward(theta)
        curve.append(losses.detach().to("cpu", torch.float64))
        with torch.no_grad():
            grad = theta.grad * radii if theta.grad is not None else torch.zeros_like(units)  # chain rule
            units.grad = _riemannian_gradient(grad, units.detach(), ones, previous, joint)
        optimizer.step()
        with torch.no_grad():
            units.copy_(_retract(units, ones, previous, joint))
    return units.detach() * radii, torch.stack(curve)


def random_init(
    n_vectors: int, width: int, seed: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Float[Tensor, "n_vectors width"]:
    """Gaussian starting points from a seeded CPU generator (identical on every device)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(n_vectors, width, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def learn_on_sphere(
    backward: BackwardFn,
    width: int,
    config: MelboConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[Float[Tensor, "n_vectors width"], list[list[float]]]:
    """All `config.n_vectors` vectors for any differentiable objective (`backward` as `sphere_ascent`).

    This is MELBO's optimisation without a model: the planted tests drive it with a linear map.
    """
    init = random_init(config.n_vectors, width, config.seed, device=device)
    if config.mode == "parallel":
        vectors, curve = sphere_ascent(
            backward, init, config.radius, steps=config.steps, lr=config.lr, betas=config.betas,
            joint=config.orthogonal, progress=progress, desc=f"melbo ({config.n_vectors} vectors)",
        )
        return vectors, curve.T.tolist()
    learned: list[Tensor] = []
    curves: list[list[float]] = []
    for index in range(config.n_vectors):
        previous = torch.stack(learned) / config.radius if (learned and config.orthogonal) else None
        vector, curve = sphere_ascent(
            backward, init[index : index + 1], config.radius, steps=config.steps, lr=config.lr,
            betas=config.betas, previous=previous, progress=progress,
            desc=f"melbo vector {index + 1}/{config.n_vectors}",
        )
        learned.append(vector[0])
        curves.append(curve[:, 0].tolist())
    return torch.stack(learned), curves


# --------------------------------------------------------------------------------------------------
# The model side: steering hook, target read-out, batched forward with gradients


@dataclass(frozen=True)
class _Layers:
    source: int
    target: int
    steer_hook: str
    read_hook: str
    stop_at_layer: int | None


def resolve_layers(model: Any, source_layer: int, target_layer: int, site: str = "resid_pre") -> _Layers:
    """Validate the layers (negative ones count from the end) and name the hooks.

    The target may be `n_layers` (the final residual stream, before the last norm).
    """
    count = n_layers(model)
    if isinstance(source_layer, bool) or not isinstance(source_layer, int) or not -count <= source_layer < count:
        raise ValueError(f"source_layer: {source_layer!r} is out of range for a model with {count} layers")
    if isinstance(target_layer, bool) or not isinstance(target_layer, int) or not -count <= target_layer <= count:
        raise ValueError(f"target_layer: {target_layer!r} is out of range for a model with {count} layers")
    source, target = source_layer % count, (target_layer % count if target_layer < count else count)
    if source >= target:
        raise ValueError(
            f"source_layer: must be below target_layer, got source_layer={source} >= target_layer={target}"
        )
    if site not in SITES:
        raise ValueError(f"site: expected one of {SITES}, got {site!r}")
    # The residual entering block `target` is the output of block `target - 1`: reading it there lets
    # `stop_at_layer=target` skip block `target` (a HookedTransformer would not run its resid_pre hook).
    return _Layers(
        source=source,
        target=target,
        steer_hook=hook_name(source, site),
        read_hook=hook_name(target - 1, "resid_post"),
        stop_at_layer=target if target < count else None,
    )


@contextmanager
def frozen(model: Any) -> Iterator[None]:
    """Parameters without gradients for the block (only θ is learned); previous flags restored after."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _unmask_padding_rows(scores: Float[Tensor, "batch head q k"], hook: Any) -> Tensor:
    """Give fully masked attention rows (left-padding queries) finite scores.

    TransformerLens masks scores with -inf and zeroes the NaN pattern of a fully masked row in the
    forward, but the softmax backward still multiplies by that NaN, and θ — added at every position —
    collects it. Padding queries are never attended to by real tokens, so their (now uniform)
    attention changes nothing that counts in the loss.
    """
    finite = torch.isfinite(scores).any(dim=-1, keepdim=True)
    return torch.where(finite, scores, torch.zeros_like(scores))


class _ReachedTarget(Exception):
    """Raised by the read hook on the plain-HF path: nothing after the target layer needs to run."""


def _run_to_target(
    model: Any, batch: TokenBatch, layers: _Layers, steer: Callable[[Tensor, Any], Tensor] | None, fast: bool = True
) -> Float[Tensor, "batch seq d_model"]:
    """Target-layer residual stream of a padded batch, with the source bias `steer` if given.

    `interp.hooked.forward` runs under no_grad; this is the same call with gradients left to the caller.
    `fast`: on a bridge, run its plain HF module tree (the same weight tensors) with the same hooks as
    PyTorch hooks at the same sites, as `interp.steering.generate` does, without the bridge's ~1,700
    hook modules and re-implemented attention (a small saving on CPU). The plain forward
    is stopped by an exception once the target is read (HF owns that loop; the model keeps no state
    without a KV cache).
    """
    captured: dict[str, Tensor] = {}

    def read(activation: Tensor, hook: Any) -> None:
        captured["target"] = activation
        if plain:
            raise _ReachedTarget

    hooks = [(layers.read_hook, read)] + ([(layers.steer_hook, steer)] if steer is not None else [])
    plain = fast and is_bridge(model) and plain_sites_cover([name for name, _ in hooks], model)
    if plain:
        with plain_hooks(model, hooks) as runner:
            try:
                runner(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    use_cache=False,
                )
            except _ReachedTarget:
                pass
        return captured["target"]
    if steer is not None and bool((batch.attention_mask == 0).any()):
        hooks += [(f"blocks.{layer}.attn.hook_attn_scores", _unmask_padding_rows) for layer in range(layers.source, layers.target)]
    with hooks_on(model, hooks):
        if is_bridge(model):
            model(
                batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                stop_at_layer=layers.stop_at_layer,
            )
        else:  # HookedTransformer derives left-padding offsets from the attention mask itself
            model(batch.input_ids, attention_mask=batch.attention_mask, stop_at_layer=layers.stop_at_layer)
    return captured["target"]


def _repeat_rows(batch: TokenBatch, times: int) -> TokenBatch:
    """The batch repeated `times` times, vector-major (row v·B + b is prompt b under vector v)."""
    return TokenBatch(batch.input_ids.repeat(times, 1), batch.attention_mask.repeat(times, 1))


def _bias_hook(theta: Float[Tensor, "v d"], rows_per_vector: int) -> Callable[[Tensor, Any], Tensor]:
    """Add vector v to rows v·B … v·B + B − 1, at every position (padding is masked out of the loss)."""

    def add(activation: Tensor, hook: Any) -> Tensor:
        bias = theta.repeat_interleave(rows_per_vector, dim=0)[:, None, :]
        return activation + bias.to(activation.dtype)

    return add


@dataclass
class _Prepared:
    """Prompts split into forward-sized chunks with their unsteered targets and loss masks."""

    chunks: list[TokenBatch]
    unsteered: list[Float[Tensor, "batch seq d_model"]]
    masks: list[Bool[Tensor, "batch seq"]]
    layers: _Layers
    fast: bool


def _as_batch(model: Any, prompts: Sequence[str] | TokenBatch) -> TokenBatch:
    if isinstance(prompts, TokenBatch):
        if prompts.input_ids.shape[0] == 0:
            raise ValueError("prompts: expected at least one prompt, got an empty batch")
        return prompts.to(model_device(model))
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected a non-empty list of prompts, got an empty list")
    return tokenize(model, prompts, device=model_device(model))


@torch.no_grad()
def _prepare(model: Any, prompts: Sequence[str] | TokenBatch, layers: _Layers, config: MelboConfig) -> _Prepared:
    batch = _as_batch(model, prompts)
    size = batch.input_ids.shape[0]
    step = config.prompt_batch_size or size
    chunks = [batch[start : start + step] for start in range(0, size, step)]
    masks = [loss_mask(chunk, config.skip_first_token) for chunk in chunks]
    if not any(bool(mask.any()) for mask in masks):
        raise ValueError("prompts: no position counts in the loss (each prompt needs >= 2 tokens with skip_first_token)")
    unsteered = [_run_to_target(model, chunk, layers, None, config.fast).detach().float() for chunk in chunks]
    return _Prepared(chunks, unsteered, masks, layers, config.fast)


def _model_backward(model: Any, prepared: _Prepared, config: MelboConfig) -> BackwardFn:
    """The MELBO loss for a batch of vectors through the model; backward per chunk of prompts."""

    def backward(theta: Tensor) -> Tensor:
        total = torch.zeros(theta.shape[0], dtype=torch.float64)
        with torch.enable_grad():
            for delta, mask in _steered_deltas(model, prepared, theta):
                losses = melbo_loss(delta, mask, config.p, config.q, config.norm_axis)
                losses.sum().backward()  # vectors are independent: one backward serves all of them
                total += losses.detach().to("cpu", torch.float64)
        return total

    return backward


def _steered_deltas(
    model: Any, prepared: _Prepared, vectors: Float[Tensor, "v d"]
) -> Iterator[tuple[Float[Tensor, "v batch seq d_model"], Bool[Tensor, "batch seq"]]]:
    """Per chunk of prompts: the target-layer change caused by each vector, and the loss mask."""
    for chunk, unsteered, mask in zip(prepared.chunks, prepared.unsteered, prepared.masks):
        n_vectors, rows = vectors.shape[0], chunk.input_ids.shape[0]
        steered = _run_to_target(
            model, _repeat_rows(chunk, n_vectors), prepared.layers, _bias_hook(vectors, rows), prepared.fast
        )
        yield steered.float().reshape(n_vectors, rows, *steered.shape[1:]) - unsteered[None], mask


@torch.no_grad()
def _evaluate(model: Any, prepared: _Prepared, vectors: Tensor, config: MelboConfig) -> Float[Tensor, "v"]:
    total = torch.zeros(vectors.shape[0], dtype=torch.float64)
    for delta, mask in _steered_deltas(model, prepared, vectors):
        total += melbo_loss(delta, mask, config.p, config.q, config.norm_axis).to("cpu", torch.float64)
    return total


def evaluate_losses(
    model: Any, prompts: Sequence[str] | TokenBatch, vectors: Float[Tensor, "v d"], config: MelboConfig
) -> Float[Tensor, "v"]:
    """The MELBO loss of given vectors (e.g. random vectors of norm R, as a baseline)."""
    layers = resolve_layers(model, config.source_layer, config.target_layer, config.site)
    prepared = _prepare(model, prompts, layers, config)
    return _evaluate(model, prepared, vectors.to(model_device(model)), config)


def learn_melbo(
    model: Any, prompts: Sequence[str] | TokenBatch, config: MelboConfig, *, progress: bool = True
) -> MelboResult:
    """Learn `config.n_vectors` MELBO steering vectors on `prompts` (already formatted, e.g. `format_chats`).

    Each vector is a `Direction` at `blocks.{source_layer}.hook_{site}` with norm `radius` and source
    "melbo"; `Steer(direction, scale=s)` adds s·θ (s = 1: the trained vector).
    """
    started = time.perf_counter()
    layers = resolve_layers(model, config.source_layer, config.target_layer, config.site)
    device = model_device(model)
    with frozen(model):
        prepared = _prepare(model, prompts, layers, config)
        backward = _model_backward(model, prepared, config)
        vectors, curves = learn_on_sphere(backward, d_model(model), config, device=device, progress=progress)
        final = _evaluate(model, prepared, vectors, config)
    seconds = time.perf_counter() - started
    name = model_name(model)
    directions = tuple(
        Direction(
            vectors[index].detach().float().cpu(), layer=layers.source, model=name, source="melbo", site=config.site,
            meta={
                "index": index, "radius": float(config.radius), "target_layer": layers.target,
                "loss": float(final[index]), "p": config.p, "q": config.q_value, "norm_axis": config.norm_axis,
                "mode": config.mode, "steps": config.steps, "seed": config.seed,
            },
        )
        for index in range(config.n_vectors)
    )
    return MelboResult(
        vectors=directions,
        losses=tuple(float(value) for value in final),
        curves=tuple(tuple(curve) for curve in curves),
        config=config,
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------------------
# Choosing R


@dataclass(frozen=True)
class RadiusSweep:
    """One vector learned per radius (same start, `steps` steps): the loss and the per-token change."""

    radii: tuple[float, ...]
    losses: tuple[float, ...]
    mean_change: tuple[float, ...]  # mean ‖Δh_target‖₂ per counted token (independent of p and q)
    chosen: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pick_radius(radii: Sequence[float], mean_change: Sequence[float], threshold: float = 1.25) -> float:
    """The radius where the response changes regime: the first one reached by a superlinear step.

    While θ is a small perturbation the target change grows linearly with R (slope 1 of log ‖Δh‖
    against log R). Where the vector starts to change what the model computes, the change grows
    faster than R (slope above `threshold`); much larger radii usually fall into a degenerate regime
    (on SmolLM2, layer 7 → 22: a target change of 10× the residual norm, and gibberish generations). We return the upper end of the first segment whose slope exceeds `threshold` (the
    steepest segment's, if none does).
    """
    if len(radii) < 2 or len(radii) != len(mean_change):
        raise ValueError("radii: expected >= 2 radii, one change per radius")
    order = sorted(range(len(radii)), key=lambda i: radii[i])
    log_r = [math.log(radii[i]) for i in order]
    log_c = [math.log(max(mean_change[i], _TINY)) for i in order]
    slopes = [(log_c[i + 1] - log_c[i]) / (log_r[i + 1] - log_r[i]) for i in range(len(order) - 1)]
    for index, slope in enumerate(slopes):
        if slope >= threshold:
            return float(radii[order[index + 1]])
    steepest = max(range(len(slopes)), key=lambda i: slopes[i])
    return float(radii[order[steepest + 1]])


def radius_sweep(
    model: Any,
    prompts: Sequence[str] | TokenBatch,
    config: MelboConfig,
    radii: Sequence[float],
    *,
    steps: int = 30,
    progress: bool = True,
) -> RadiusSweep:
    """Learn one vector per radius (all radii in one batch, from the same random start) for `steps`
    steps with `config`'s objective, and report how much each changes the target layer.

    `mean_change` is the mean per-token ‖Δh_target‖₂ over counted positions (independent of p and q,
    so radii and settings compare); `chosen` is `pick_radius` of it. `config.lr` is an angular step
    (see `sphere_ascent`), so every radius is trained equally far.
    """
    radii = [float(radius) for radius in radii]
    if len(radii) < 2 or any(not math.isfinite(r) or r <= 0 for r in radii):
        raise ValueError(f"radii: expected at least two finite radii > 0, got {radii}")
    layers = resolve_layers(model, config.source_layer, config.target_layer, config.site)
    device = model_device(model)
    start = random_init(1, d_model(model), config.seed, device=device).repeat(len(radii), 1)
    radius_tensor = torch.tensor(radii, device=device)
    with frozen(model):
        prepared = _prepare(model, prompts, layers, config)
        backward = _model_backward(model, prepared, config)
        vectors, _ = sphere_ascent(
            backward, start, radius_tensor, steps=steps, lr=config.lr, betas=config.betas,
            progress=progress, desc=f"radius sweep ({len(radii)} radii)",
        )
        losses = torch.zeros(len(radii), dtype=torch.float64)
        token_norms = torch.zeros(len(radii), dtype=torch.float64)
        count = 0
        with torch.no_grad():
            for delta, mask in _steered_deltas(model, prepared, vectors):
                losses += melbo_loss(delta, mask, config.p, config.q, config.norm_axis).to("cpu", torch.float64)
                token_norms += (delta.norm(dim=-1) * mask).sum(dim=(1, 2)).to("cpu", torch.float64)
                count += int(mask.sum())
    mean_change = (token_norms / count).tolist()
    return RadiusSweep(
        radii=tuple(radii), losses=tuple(float(x) for x in losses), mean_change=tuple(mean_change),
        chosen=pick_radius(radii, mean_change),
    )


# --------------------------------------------------------------------------------------------------
# Using the vectors


def _common_hook(vectors: Sequence[Direction]) -> str:
    names = {direction.hook_name for direction in vectors}
    if len(names) != 1:
        raise ValueError(f"vectors: expected directions at one hook point, got {sorted(names)}")
    return names.pop()


def steered_generations(
    model: Any,
    prompts: Sequence[str],
    vectors: Sequence[Direction],
    scales: Sequence[float],
    *,
    max_new_tokens: int = 48,
    n_samples: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    batch_rows: int = 32,
    progress: bool = True,
) -> list[list[list[list[str]]]]:
    """Completions with `scale × vector` added at every position: `[vector][scale][prompt][sample]`.

    All (vector, scale, prompt, sample) rows are generated together in batches of `batch_rows`, each
    row with its own bias (a per-row hook), instead of one `generate` call per vector and scale.
    Scale 0 is the unsteered model. A HookedTransformer (which `generate` decodes one row at a time)
    falls back to one call per vector and scale.
    """
    from interp.steering import HookIntervention, Steer, generate

    prompts, vectors, scales = list(prompts), list(vectors), [float(s) for s in scales]
    if not prompts:
        raise ValueError("prompts: expected a non-empty list of prompts, got an empty list")
    if not vectors:
        raise ValueError("vectors: expected at least one Direction")
    if not scales:
        raise ValueError("scales: expected at least one scale")
    if n_samples < 1:
        raise ValueError(f"n_samples: expected >= 1, got {n_samples}")
    name = _common_hook(vectors)
    for direction in vectors:
        direction.check_compatible(model_name(model), d_model(model), n_layers(model))
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, seed=seed, progress=False)
    rows = [
        (v, s, p, k) for v in range(len(vectors)) for s in range(len(scales))
        for p in range(len(prompts)) for k in range(n_samples)
    ]
    texts: dict[tuple[int, int, int, int], str] = {}
    if is_bridge(model):
        device = model_device(model)
        matrix = torch.stack([direction.vector for direction in vectors]).to(device)
        starts = range(0, len(rows), batch_rows)
        for start in tqdm(starts, desc="steered generations", disable=not progress, leave=False):
            chunk = rows[start : start + batch_rows]
            biases = torch.stack([scales[s] * matrix[v] for v, s, _, _ in chunk])

            def add(activation: Tensor, hook: Any, biases: Tensor = biases) -> Tensor:
                return activation + biases[:, None, :].to(activation.dtype)

            outputs = generate(
                model, [prompts[p] for _, _, p, _ in chunk], interventions=[HookIntervention([(name, add)])],
                batch_size=len(chunk), **kwargs,
            )
            texts.update(zip(chunk, outputs))
    else:
        for v, direction in enumerate(tqdm(vectors, desc="steered generations", disable=not progress, leave=False)):
            for s, scale in enumerate(scales):
                repeated = [prompts[p] for p in range(len(prompts)) for _ in range(n_samples)]
                outputs = generate(model, repeated, interventions=[Steer(direction, scale)] if scale else [], **kwargs)
                texts.update(zip([(v, s, p, k) for p in range(len(prompts)) for k in range(n_samples)], outputs))
    return [
        [[[texts[(v, s, p, k)] for k in range(n_samples)] for p in range(len(prompts))] for s in range(len(scales))]
        for v in range(len(vectors))
    ]


@torch.no_grad()
def target_changes(
    model: Any, prompts: Sequence[str] | TokenBatch, result: MelboResult, *, scale: float = 1.0
) -> Float[Tensor, "n_vectors d_model"]:
    """Mean target-layer change Δh (over prompts and counted positions) caused by each vector."""
    config = result.config
    layers = resolve_layers(model, config.source_layer, config.target_layer, config.site)
    prepared = _prepare(model, prompts, layers, config)
    vectors = scale * result.matrix.to(model_device(model))
    total = torch.zeros(vectors.shape[0], d_model(model), dtype=torch.float64)
    count = 0
    for delta, mask in _steered_deltas(model, prepared, vectors):
        total += (delta * mask[None, :, :, None]).sum(dim=(1, 2)).to("cpu", torch.float64)
        count += int(mask.sum())
    return (total / count).float()


def target_layer_vectors(
    model: Any, prompts: Sequence[str] | TokenBatch, result: MelboResult, *, scale: float = 1.0
) -> list[Direction]:
    """The "target-layer vector" of each MELBO vector: its mean target-layer change minus the average
    change caused by the other vectors, as a `Direction` at `blocks.{target}.hook_resid_pre`.

    Subtracting the others removes the part every large source-layer bias causes (e.g. a generic
    growth of the residual norm), leaving what is specific to this vector — the vector to decompose in
    an SAE dictionary at the target layer (`sparse_reconstruction`).
    """
    if len(result.vectors) < 2:
        raise ValueError("result: the target-layer vector needs at least 2 learned vectors (one minus the others)")
    changes = target_changes(model, prompts, result, scale=scale)
    n = changes.shape[0]
    others = (changes.sum(0, keepdim=True) - changes) / (n - 1)
    specific = changes - others
    target = result.vectors[0].meta.get("target_layer", result.config.target_layer)
    return [
        Direction(
            specific[index], layer=int(target), model=result.vectors[index].model, source="melbo_target",
            meta={
                "melbo_index": index, "source_layer": result.vectors[index].layer, "scale": scale,
                "radius": float(result.config.radius), "mean_change_norm": float(changes[index].norm()),
            },
        )
        for index in range(n)
    ]


def sparse_reconstruction(
    direction: Direction, atoms: Float[Tensor, "n_atoms d_model"], k: int, method: str = "ito", **kwargs: Any
) -> Direction:
    """`direction` reconstructed from k atoms of a dictionary (e.g. SAE decoder rows at its layer),
    via `interp.sparse.sparse_code`; the returned `Direction` records features, coefficients and
    `meta["cosine_to_parent"]`. Atoms must be unit-norm rows (normalise SAE decoders first)."""
    from interp.sparse import reconstruction_direction, sparse_code

    code = sparse_code(direction.vector[None].to(atoms.device), atoms, k, method=method, **kwargs)
    return reconstruction_direction(code, direction)


# --------------------------------------------------------------------------------------------------
# Labelling completions by simple text features

REFUSAL = re.compile(
    r"\b(I can(?:'|no)t|I cannot|I'm sorry|I am sorry|I apologi[sz]e|I'm not able|I am not able|"
    r"I won't|As an AI|I'm unable|I am unable)", re.IGNORECASE,
)
LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.MULTILINE)
DIGIT_SEPARATOR = re.compile(r"(?<=\d)[,\s](?=\d)")


def text_features(text: str, *, answer: str | None = None, word: str = "First") -> dict[str, bool]:
    """Simple, explainable features of a completion, used to label and cluster vectors.

    `symbols`: over 30% of the visible characters are neither letters nor digits. `degenerate`: at
    least 40 characters that zlib compresses below 40% (loops like "the the the"). `no_digits`: no
    number at all (off topic, for an arithmetic prompt).
    `gives_product`: states a number of 6+ digits (an attempt at a large product); `correct_answer`
    (when `answer` is given): states exactly that number, digit separators ignored.
    """
    stripped = text.strip()
    raw = stripped.encode()
    numbers = re.findall(r"\d+", DIGIT_SEPARATOR.sub("", text))
    visible = [c for c in stripped if not c.isspace()]
    features = {
        "empty": not stripped,
        "starts_with_symbol": bool(stripped) and not stripped[0].isalnum(),
        f"contains_{word}": bool(re.search(rf"\b{re.escape(word)}\b", text)),
        "refuses": bool(REFUSAL.search(text)),
        "list": len(LIST_LINE.findall(text)) >= 2,
        "code": "```" in text or bool(re.search(r"^\s*(def |import |print\(|for .* in )", text, re.MULTILINE)),
        "non_ascii": bool(stripped) and sum(ord(c) > 127 for c in stripped) / len(stripped) > 0.2,
        "symbols": bool(visible) and sum(not c.isalnum() for c in visible) / len(visible) > 0.3,
        "degenerate": len(raw) >= 40 and len(zlib.compress(raw, 9)) / len(raw) < 0.4,
        "no_digits": bool(stripped) and not numbers,
        "mentions_ai": bool(re.search(r"\b(AI|assistant|language model)\b", text)),
        "has_equation": bool(re.search(r"\d\s*[×x*]\s*\d|=", text)),
        "gives_product": any(len(number) >= 6 for number in numbers),
    }
    if answer is not None:
        digits = re.sub(r"\D", "", answer)
        features["correct_answer"] = bool(digits) and digits in numbers
    return features


def label_from_features(feature_rows: Sequence[dict[str, bool]], threshold: float = 0.5) -> str:
    """A label listing the features present in at least `threshold` of the rows ("other" if none)."""
    if not feature_rows:
        return "other"
    names = list(feature_rows[0])
    present = [name for name in names if sum(row[name] for row in feature_rows) / len(feature_rows) >= threshold]
    return "+".join(present) if present else "other"


def word_token_ids(tokenizer: Any, word: str) -> list[int]:
    """First token of the word as it may start a completion: bare or after a space, as given or lower-case."""
    variants = {word, " " + word, word.lower(), " " + word.lower()}
    return sorted({tokenizer.encode(variant, add_special_tokens=False)[0] for variant in variants})


@torch.no_grad()
def next_token_probability(
    model: Any, prompts: Sequence[str], vectors: Sequence[Direction], scales: Sequence[float], token_ids: Sequence[int]
) -> Float[Tensor, "n_vectors n_scales"]:
    """P(the first completion token is one of `token_ids`) under `scale × vector` at every position,
    averaged over prompts; all (vector, scale, prompt) rows in one forward pass."""
    from interp.hooked import forward

    prompts, vectors, scales = list(prompts), list(vectors), [float(s) for s in scales]
    if not prompts or not vectors or not scales or not token_ids:
        raise ValueError("prompts, vectors, scales, token_ids: expected non-empty sequences")
    name = _common_hook(vectors)
    device = model_device(model)
    matrix = torch.stack([direction.vector for direction in vectors]).to(device)
    biases = torch.stack([scale * matrix[v] for v in range(len(vectors)) for scale in scales for _ in prompts])
    batch = tokenize(model, [prompt for _ in vectors for _ in scales for prompt in prompts], device=device)

    def add(activation: Tensor, hook: Any) -> Tensor:
        return activation + biases[:, None, :].to(activation.dtype)

    with hooks_on(model, [(name, add)]):
        logits = forward(model, batch)
    probabilities = logits[:, -1].float().softmax(-1)[:, list(token_ids)].sum(-1)
    return probabilities.reshape(len(vectors), len(scales), len(prompts)).mean(-1).cpu()
