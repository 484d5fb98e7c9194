"""The MELBO objective, and gradient ascent on the sphere of radius R (model-agnostic)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.chat import TokenBatch
from interp.melbo.config import DEFAULT_BETAS, NORM_AXES, TINY, MelboConfig, NormAxis

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
    powered = per_norm.clamp_min(TINY).pow(p / 2)
    if norm_axis == "token":
        powered = powered * mask.to(delta.dtype)[None]
    per_prompt = powered.sum(-1)  # [v, batch]
    return -per_prompt.clamp_min(TINY).pow(1 / q).sum(-1)


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
    return theta / theta.norm(dim=-1, keepdim=True).clamp_min(TINY) * radius


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

