"""An optimised steering vector (the seed's "skyline"): a bias at one layer trained by gradient descent.

The vector θ is added to the residual stream at `blocks.{layer}.hook_{site}`, at every position, and trained
to minimise the mean negative log-likelihood of given target completions after their prompts (teacher
forcing: the model reads prompt + completion, and only the completion's tokens count). It is what the
best single vector at that layer can do for that behaviour, the ceiling a difference-in-means direction
or a sparse reconstruction is compared against. `max_norm` keeps θ inside a ball after every step, so a
vector cannot win by sheer size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from interp._checks import finite_number, finite_tensor, whole_number
from interp.ab_prompts import encode_text
from interp.chat import TokenBatch, left_pad, prompt_list, tokenizer_of
from interp.directions import RESID_SITES, Direction, check_direction, hook_name
from interp.hooked import HookedModel, check_layers, d_model, model_device, n_layers
from interp.models import model_name
from interp.runner import differentiable_logits, frozen, run_to_layer
from interp.runner.layers import can_start_at_layer, logits_from_layer


@dataclass(frozen=True)
class OptimiseConfig:
    """How the vector is trained: Adam on θ (full-batch gradient, accumulated over chunks of prompts)."""

    layer: int
    site: str = "resid_pre"
    steps: int = 100
    lr: float = 0.05
    max_norm: float | None = None  # after each step θ is scaled back into the ball of this radius
    batch_size: int = 16  # prompts per forward; the gradient of a step covers all of them
    fast: bool = True  # on a bridge, run the plain HF module tree (interp.runner.differentiable_logits)

    def check(self, model: HookedModel) -> int:
        """Raise unless this config fits `model`; the layer as a block index (a negative one counts from the end)."""
        layer = check_layers(model, self.layer, "layer")[0]
        if self.site not in RESID_SITES:
            raise ValueError(f"site: expected one of {RESID_SITES}, got {self.site!r}")
        whole_number(self.steps, "steps", minimum=1)
        whole_number(self.batch_size, "batch_size", minimum=1)
        if not 0 < finite_number(self.lr, "lr") <= torch.finfo(torch.float32).max:
            raise ValueError(f"lr: expected a number > 0 (that fits float32), got {self.lr!r}")
        if self.max_norm is not None and finite_number(self.max_norm, "max_norm") <= 0:
            raise ValueError(f"max_norm: expected a number > 0 or None, got {self.max_norm!r}")
        return layer


@dataclass(frozen=True)
class OptimisedVector:
    """An optimised ("skyline") steering vector and how its training went.

    Attributes:
        direction: θ as trained (not normalised): `Steer(direction, scale=1)` adds θ.
        losses: the mean NLL per completion token before each step, then after the last.
    """

    direction: Direction  # θ as trained (not normalised): Steer(direction, scale=1) adds θ
    losses: tuple[float, ...]  # mean NLL per completion token before each step, then after the last


def completion_batch(
    model: HookedModel, prompts: Sequence[str], completions: Sequence[str]
) -> tuple[TokenBatch, Bool[Tensor, "batch seq"]]:
    """Prompt + completion token ids, left-padded, and the mask of the positions whose *next* token is a
    completion token (the logits there are scored).

    The prompt is tokenized as `interp.chat.tokenize` would (special tokens unless it starts with BOS),
    the completion without special tokens, so the boundary is exactly where the prompt ends.
    """
    prompts = prompt_list(prompts)
    completions = prompt_list(completions, "completions")
    if len(completions) != len(prompts):
        raise ValueError(f"completions: expected one per prompt ({len(prompts)}), got {len(completions)}")
    tokenizer = tokenizer_of(model)
    heads = [encode_text(tokenizer, prompt) for prompt in prompts]
    tails = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    if any(len(tail) == 0 for tail in tails):
        raise ValueError("completions: every completion must have at least one token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = left_pad([list(head) + list(tail) for head, tail in zip(heads, tails)], int(pad))
    width = batch.input_ids.shape[1]
    columns = torch.arange(width)[None, :]
    tail_lengths = torch.tensor([len(tail) for tail in tails])[:, None]
    scored = (columns >= width - tail_lengths - 1) & (columns < width - 1)  # logits at t predict token t + 1
    return batch, scored


def completion_nll(
    model: HookedModel, batch: TokenBatch, scored: Bool[Tensor, "batch seq"], vector: Float[Tensor, "d_model"] | None,
    hook: str, *, fast: bool = True, resid_pre: Float[Tensor, "batch seq d_model"] | None = None,
) -> tuple[Tensor, int]:
    """Summed NLL of the scored next tokens with `vector` added at `hook` (all positions), and their count.

    `resid_pre`: the batch's unsteered resid_pre at the hook's layer (`hook` must be that resid_pre), so
    the layers below it are not run again (`interp.runner.logits_from_layer`).
    """
    # Only positions from the first scored one on are unembedded (completions sit at the right edge).
    columns = scored.any(0).nonzero()
    keep = max(int(scored.shape[1] - columns[0]) if len(columns) else 0, 2)
    if resid_pre is not None:
        layer = int(hook.split(".")[1])
        steered = resid_pre if vector is None else resid_pre + vector.to(resid_pre.dtype)
        logits = logits_from_layer(model, batch, layer, steered, keep_last=keep)
    else:
        hooks = [] if vector is None else [
            (hook, lambda activation, _: activation + vector.to(activation.device, activation.dtype))
        ]
        logits = differentiable_logits(model, batch, hooks, fast=fast, keep_last=keep)
    log_probs = logits[:, :-1].float().log_softmax(-1)
    targets = batch.input_ids[:, -keep + 1 :]
    picked = log_probs.gather(-1, targets[..., None])[..., 0]
    weights = scored[:, -keep:-1].to(picked.device)
    return -(picked * weights).sum(), int(weights.sum())


def optimise_vector(
    model: HookedModel,
    prompts: Sequence[str],
    completions: Sequence[str],
    config: OptimiseConfig,
    *,
    init: Direction | Tensor | None = None,
    progress: bool = True,
    allow_other_model: bool = False,
) -> OptimisedVector:
    """Train θ at `config.layer` so the model, steered by θ, assigns the target completions high probability.

    `prompts` are already formatted (e.g. `format_chats`); `completions` are the texts to make likely
    (e.g. the model's own refusals). `init` starts from a vector (default zero): a `Direction` is checked as
    `Steer` checks one (of this model unless `allow_other_model`), a tensor for width and finite values.
    Deterministic on CPU.
    """
    layer = config.check(model)
    start = _initial_vector(model, init, layer, allow_other_model)
    batch, scored = completion_batch(model, prompts, completions)
    device = model_device(model)
    theta = torch.zeros(d_model(model), device=device) if start is None else start.detach().float().to(device).clone()
    theta.requires_grad_(True)
    optimiser = torch.optim.Adam([theta], lr=config.lr)
    hook = hook_name(layer, config.site)
    chunks = [
        (batch[start : start + config.batch_size].to(device), _rows(scored, batch, start, config.batch_size))
        for start in range(0, batch.input_ids.shape[0], config.batch_size)
    ]
    # θ enters at resid_pre of its layer and the model is frozen, so everything below is the same every
    # step: run it once per chunk and start each step's forward and backward there.
    skip = config.fast and config.site == "resid_pre" and can_start_at_layer(model)
    bases = [_resid_pre(model, chunk, hook) if skip else None for chunk, _ in chunks]
    losses: list[float] = []
    with frozen(model), torch.enable_grad():
        for _ in tqdm(range(config.steps), desc="optimise vector", disable=not progress, leave=False):
            optimiser.zero_grad()
            losses.append(_accumulate(model, chunks, bases, theta, hook, config.fast))
            if not math.isfinite(losses[-1]):
                raise ValueError(f"lr: the loss became {losses[-1]} at step {len(losses)} (lr {config.lr:g}); try a smaller lr")
            optimiser.step()
            if config.max_norm is not None:
                with torch.no_grad():
                    theta.mul_((config.max_norm / theta.norm().clamp_min(1e-12)).clamp(max=1.0))
        with torch.no_grad():
            losses.append(_mean_nll(model, chunks, bases, theta, hook, config.fast))
    direction = Direction(
        theta.detach().float().cpu(), layer=layer, model=model_name(model), source="optimised", site=config.site,
        meta={
            "steps": config.steps, "lr": config.lr, "max_norm": config.max_norm,
            "n_prompts": int(batch.input_ids.shape[0]), "initial_nll": losses[0], "final_nll": losses[-1],
        },
    )
    return OptimisedVector(direction, tuple(losses))


def _initial_vector(model: HookedModel, init: Direction | Tensor | None, layer: int, allow_other_model: bool) -> Tensor | None:
    if init is None:
        return None
    if isinstance(init, Direction):
        check_direction(init, None if allow_other_model else model_name(model), d_model(model), n_layers(model),
                        layer=layer, argument="init")
        return init.vector
    finite_tensor(init, "init")
    if init.shape != (d_model(model),):
        raise ValueError(f"init: expected a vector of width d_model={d_model(model)}, got shape {tuple(init.shape)}")
    return init


Chunks = list[tuple[TokenBatch, Tensor]]  # (prompts on the device, their scored-position mask)


def _rows(scored: Tensor, batch: TokenBatch, start: int, size: int) -> Tensor:
    """The scored mask of rows start.. start + size, trimmed to the columns `batch[...]` keeps."""
    kept = batch.attention_mask[start : start + size].sum(0) > 0
    return scored[start : start + size][:, kept]


def _resid_pre(model: HookedModel, batch: TokenBatch, hook: str) -> Float[Tensor, "batch seq d_model"]:
    with torch.no_grad():
        return run_to_layer(model, batch, hook, stop_at_layer=int(hook.split(".")[1]) + 1).detach()


def _accumulate(
    model: HookedModel, chunks: Chunks, bases: list[Tensor | None], theta: Tensor, hook: str, fast: bool
) -> float:
    """Backpropagate the mean NLL over every scored token of every chunk into θ; return that mean."""
    count = sum(int(scored[:, :-1].sum()) for _, scored in chunks)
    total = 0.0
    for (batch, scored), base in zip(chunks, bases):
        nll, _ = completion_nll(model, batch, scored, theta, hook, fast=fast, resid_pre=base)
        (nll / count).backward()
        total += float(nll.detach())
    return total / count


def _mean_nll(model: HookedModel, chunks: Chunks, bases: list[Tensor | None], theta: Tensor, hook: str, fast: bool) -> float:
    sums = [completion_nll(model, batch, scored, theta, hook, fast=fast, resid_pre=base)
            for (batch, scored), base in zip(chunks, bases)]
    return float(sum(float(s) for s, _ in sums) / sum(n for _, n in sums))
