"""Learning MELBO vectors through the model: the source-layer bias, the target read-out, the radius."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from interp.chat import TokenBatch, tokenize
from interp.directions import Direction, hook_name
from interp.hooked import HookedModel, d_model, model_device, n_layers
from interp.melbo.config import SITES, TINY, MelboConfig, MelboResult
from interp.melbo.sphere import BackwardFn, learn_on_sphere, loss_mask, melbo_loss, random_init, sphere_ascent
from interp.models import model_name
from interp.runner import frozen, run_to_layer

# --------------------------------------------------------------------------------------------------
# The model side: steering hook, target read-out, batched forward with gradients


@dataclass(frozen=True)
class _Layers:
    source: int
    target: int
    steer_hook: str
    read_hook: str
    stop_at_layer: int | None


def resolve_layers(model: HookedModel, source_layer: int, target_layer: int, site: str = "resid_pre") -> _Layers:
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


def run_to_target(
    model: HookedModel, batch: TokenBatch, layers: _Layers, steer: Callable[[Tensor, Any], Tensor] | None, fast: bool = True
) -> Float[Tensor, "batch seq d_model"]:
    """Target-layer residual stream of a padded batch, with the source bias `steer` if given."""
    hook = (layers.steer_hook, steer) if steer is not None else None
    return run_to_layer(model, batch, layers.read_hook, stop_at_layer=layers.stop_at_layer, steer=hook, fast=fast)


def repeat_rows(batch: TokenBatch, times: int) -> TokenBatch:
    """The batch repeated `times` times, vector-major (row v·B + b is prompt b under vector v)."""
    return TokenBatch(batch.input_ids.repeat(times, 1), batch.attention_mask.repeat(times, 1))


def bias_hook(theta: Float[Tensor, "v d"], rows_per_vector: int) -> Callable[[Tensor, Any], Tensor]:
    """Add vector v to rows v·B … v·B + B − 1, at every position (padding is masked out of the loss)."""

    def add(activation: Tensor, hook: Any) -> Tensor:
        bias = theta.repeat_interleave(rows_per_vector, dim=0)[:, None, :]
        return activation + bias.to(activation.device, activation.dtype)

    return add


@dataclass
class _Prepared:
    """Prompts split into forward-sized chunks with their unsteered targets and loss masks."""

    chunks: list[TokenBatch]
    unsteered: list[Float[Tensor, "batch seq d_model"]]
    masks: list[Bool[Tensor, "batch seq"]]
    layers: _Layers
    fast: bool


def _as_batch(model: HookedModel, prompts: Sequence[str] | TokenBatch) -> TokenBatch:
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
def _prepare(model: HookedModel, prompts: Sequence[str] | TokenBatch, layers: _Layers, config: MelboConfig) -> _Prepared:
    batch = _as_batch(model, prompts)
    size = batch.input_ids.shape[0]
    step = config.prompt_batch_size or size
    chunks = [batch[start : start + step] for start in range(0, size, step)]
    masks = [loss_mask(chunk, config.skip_first_token) for chunk in chunks]
    if not any(bool(mask.any()) for mask in masks):
        raise ValueError("prompts: no position counts in the loss (each prompt needs >= 2 tokens with skip_first_token)")
    unsteered = [run_to_target(model, chunk, layers, None, config.fast).detach().float() for chunk in chunks]
    masks = [mask.to(target.device) for mask, target in zip(masks, unsteered)]  # a split model: the target's device
    return _Prepared(chunks, unsteered, masks, layers, config.fast)


def _model_backward(model: HookedModel, prepared: _Prepared, config: MelboConfig) -> BackwardFn:
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
    model: HookedModel, prepared: _Prepared, vectors: Float[Tensor, "v d"]
) -> Iterator[tuple[Float[Tensor, "v batch seq d_model"], Bool[Tensor, "batch seq"]]]:
    """Per chunk of prompts: the target-layer change caused by each vector, and the loss mask."""
    for chunk, unsteered, mask in zip(prepared.chunks, prepared.unsteered, prepared.masks):
        n_vectors, rows = vectors.shape[0], chunk.input_ids.shape[0]
        steered = run_to_target(
            model, repeat_rows(chunk, n_vectors), prepared.layers, bias_hook(vectors, rows), prepared.fast
        )
        yield rearrange(steered.float(), "(v b) s d -> v b s d", v=n_vectors) - unsteered[None], mask


@torch.no_grad()
def _evaluate(model: HookedModel, prepared: _Prepared, vectors: Tensor, config: MelboConfig) -> Float[Tensor, "v"]:
    total = torch.zeros(vectors.shape[0], dtype=torch.float64)
    for delta, mask in _steered_deltas(model, prepared, vectors):
        total += melbo_loss(delta, mask, config.p, config.q, config.norm_axis).to("cpu", torch.float64)
    return total


def evaluate_losses(
    model: HookedModel, prompts: Sequence[str] | TokenBatch, vectors: Float[Tensor, "v d"], config: MelboConfig
) -> Float[Tensor, "v"]:
    """The MELBO loss of given vectors (e.g. random vectors of norm R, as a baseline)."""
    layers = resolve_layers(model, config.source_layer, config.target_layer, config.site)
    prepared = _prepare(model, prompts, layers, config)
    return _evaluate(model, prepared, vectors.to(model_device(model)), config)


def learn_melbo(
    model: HookedModel, prompts: Sequence[str] | TokenBatch, config: MelboConfig, *, progress: bool = True
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
    (a target change many times the residual norm, and gibberish generations). We return the upper end
    of the first segment whose slope exceeds `threshold` (the steepest segment's, if none does).
    """
    if len(radii) < 2 or len(radii) != len(mean_change):
        raise ValueError("radii: expected >= 2 radii, one change per radius")
    order = sorted(range(len(radii)), key=lambda i: radii[i])
    log_r = [math.log(radii[i]) for i in order]
    log_c = [math.log(max(mean_change[i], TINY)) for i in order]
    slopes = [(log_c[i + 1] - log_c[i]) / (log_r[i + 1] - log_r[i]) for i in range(len(order) - 1)]
    for index, slope in enumerate(slopes):
        if slope >= threshold:
            return float(radii[order[index + 1]])
    steepest = max(range(len(slopes)), key=lambda i: slopes[i])
    return float(radii[order[steepest + 1]])


def radius_sweep(
    model: HookedModel,
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

@torch.no_grad()
def target_changes(
    model: HookedModel, prompts: Sequence[str] | TokenBatch, result: MelboResult, *, scale: float = 1.0
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
    model: HookedModel, prompts: Sequence[str] | TokenBatch, result: MelboResult, *, scale: float = 1.0
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


