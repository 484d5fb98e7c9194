"""Least squares on a small support, batched over targets: ridge-stabilised solves and non-negative LS."""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

_RIDGE_EPS = 10  # relative ridge on support Grams, in machine epsilons: keeps duplicate atoms solvable
_NNLS_ITERATIONS = 200


def symmetric_matvec(
    matrix: Float[Tensor, "*batch m m"], vector: Float[Tensor, "*batch m"]
) -> Float[Tensor, "*batch m"]:
    """matrix @ vector for symmetric matrices, computed as vector @ matrix: batched row-times-matrix
    products are ~8x faster than matrix-times-column ones on a CPU for small m."""
    if matrix.ndim == 2:
        return vector @ matrix
    return torch.bmm(vector.unsqueeze(1), matrix).squeeze(1)


def support_solve(
    gram: Float[Tensor, "batch t t"],
    rhs: Float[Tensor, "batch t"],
    nonnegative: bool,
) -> Float[Tensor, "batch t"]:
    """argmin_c ½‖x − c D_S‖² given G = D_S D_Sᵀ and rhs = D_S x, for every target at once.

    Unconstrained: a batched solve of the small t×t system (with a tiny relative ridge, so duplicate
    atoms do not make it singular). Non-negative: the unconstrained solution when it is already
    non-negative; for the other rows, up to `_NNLS_ITERATIONS` accelerated projected-gradient steps
    from the clipped unconstrained solution (step 1/L, L = the Gershgorin bound on λ_max(G), an upper
    bound, so every step is safe), then an exact least-squares solve on the atoms left positive, kept
    where it passes the KKT check. So NNLS is exact whenever projected gradient found the right
    active set, and a converging approximation otherwise.
    """
    solution = _ridge_solve(gram, rhs)
    if not nonnegative:
        return solution
    # Only rows whose least-squares solution has a negative coefficient need the iterations.
    rows = (solution < 0).any(dim=1).nonzero().flatten()
    if rows.numel() == 0:
        return solution
    solution = solution.clone()
    solution[rows] = _nnls(gram[rows], rhs[rows], solution[rows].clamp_min(0))
    return solution


def _ridge_solve(gram: Float[Tensor, "batch t t"], rhs: Float[Tensor, "batch t"]) -> Float[Tensor, "batch t"]:
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
    ridge = _RIDGE_EPS * torch.finfo(gram.dtype).eps
    return torch.linalg.solve(gram + (ridge * scale)[:, None, None] * eye, rhs)


def _nnls(
    gram: Float[Tensor, "batch t t"], rhs: Float[Tensor, "batch t"], start: Float[Tensor, "batch t"]
) -> Float[Tensor, "batch t"]:
    """min_{c ≥ 0} ½ cᵀGc − cᵀrhs: projected gradient finds the active set, then an exact solve on it.

    The exact solve (least squares on the atoms projected gradient left positive) is kept for the rows
    where it satisfies the KKT conditions — which makes the result exact NNLS there — and the
    projected-gradient iterate is kept elsewhere.
    """
    w = _projected_gradient_nnls(gram, rhs, start)
    free = w > 0
    eye = torch.eye(gram.shape[-1], dtype=torch.bool, device=gram.device)
    # Least squares on the free atoms only: pinned atoms get identity rows and a zero right-hand side.
    restricted = torch.where(free.unsqueeze(2) & free.unsqueeze(1), gram, eye.to(gram.dtype))
    exact = _ridge_solve(restricted, torch.where(free, rhs, torch.zeros_like(rhs)))
    gradient = symmetric_matvec(gram, exact) - rhs
    slack = 1e3 * torch.finfo(gram.dtype).eps * rhs.abs().amax(1, keepdim=True).clamp_min(1e-30)
    optimal = ((exact >= 0) & (free | (gradient >= -slack))).all(dim=1)
    return torch.where(optimal.unsqueeze(1), exact.clamp_min(0), w)


def _projected_gradient_nnls(
    gram: Float[Tensor, "batch t t"], rhs: Float[Tensor, "batch t"], start: Float[Tensor, "batch t"]
) -> Float[Tensor, "batch t"]:
    """Accelerated projected gradient for min_{c ≥ 0} ½ cᵀGc − cᵀrhs, from `start`."""
    step = 1.0 / gram.abs().sum(-1).amax(-1).clamp_min(1e-30)  # [batch]
    w = y = start
    momentum = 1.0
    for iteration in range(_NNLS_ITERATIONS):
        gradient = symmetric_matvec(gram, y) - rhs
        w_next = (y - step[:, None] * gradient).clamp_min(0)
        momentum_next = (1 + math.sqrt(1 + 4 * momentum * momentum)) / 2
        change = w_next - w
        y = w_next + ((momentum - 1) / momentum_next) * change
        w, momentum = w_next, momentum_next
        converged = change.abs() <= 4 * torch.finfo(w.dtype).eps * w.abs().amax()
        if iteration % 10 == 9 and bool(converged.all()):
            break
    return w
