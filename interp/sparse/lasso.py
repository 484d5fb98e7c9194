"""FISTA for the lasso, and `fista_k`: a bisection on λ to reach k features, then a least-squares refit."""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.sparse.code import SparseCode, combine_atoms, run_chunked
from interp.sparse.inputs import (
    check_atoms,
    check_gram,
    chunk_slices,
    compute_dtype,
    default_batch_size,
    prepare_inputs,
)
from interp.sparse.least_squares import support_solve, symmetric_matvec

_POWER_ITERATIONS = 300
_LIPSCHITZ_SAFETY = 1.02  # power iteration approaches λ_max from below; 1/L must not overshoot 1/λ_max
_KKT_ROUNDS = 4
_KKT_SLACK = 1e-2  # FISTA stops at a finite tolerance; only clearly violated optimality conditions count


def _top_eigenvalue(
    gram: Float[Tensor, "*batch m m"], iterations: int = _POWER_ITERATIONS
) -> Float[Tensor, "*batch"]:
    """λ_max of symmetric PSD matrices by power iteration (batched), times a small safety factor.

    Starts from the all-ones vector (deterministic, and never orthogonal to the top eigenvector of a
    Gram matrix with non-negative entries, which ones-like dictionaries are close to).
    """
    vector = torch.ones(gram.shape[:-1], dtype=gram.dtype, device=gram.device)
    vector = vector + torch.linspace(0, 1, gram.shape[-1], dtype=gram.dtype, device=gram.device)
    estimate = torch.zeros(gram.shape[:-2], dtype=gram.dtype, device=gram.device)
    for _ in range(iterations):
        vector = vector / torch.linalg.vector_norm(vector, dim=-1, keepdim=True).clamp_min(1e-30)
        product = symmetric_matvec(gram, vector)
        estimate = (vector * product).sum(-1)
        vector = product
    return estimate.clamp_min(1e-30) * _LIPSCHITZ_SAFETY


def lipschitz_constant(atoms: Float[Tensor, "n_atoms d_model"]) -> float:
    """L = λ_max(D Dᵀ), the Lipschitz constant of the lasso gradient, by power iteration.

    λ_max(D Dᵀ) = λ_max(Dᵀ D), so the iteration runs on whichever of the two is smaller — d×d for any
    real SAE (576² floats), never the 65,536² Gram — formed with one matmul, which is far cheaper on a
    CPU than hundreds of memory-bound matrix-vector products with D itself.
    """
    check_atoms(atoms)
    atoms = atoms.detach().to(dtype=compute_dtype(atoms))
    small = atoms.T @ atoms if atoms.shape[1] <= atoms.shape[0] else atoms @ atoms.T
    return float(_top_eigenvalue(small))


def _soft_threshold(z: Tensor, threshold: Tensor, nonnegative: bool) -> Tensor:
    if nonnegative:
        return (z - threshold).clamp_min(0)
    return z.sign() * (z.abs() - threshold).clamp_min(0)


def _fista_iterations(
    gradient_of: Any,
    start: Float[Tensor, "batch m"],
    lam: Float[Tensor, "batch"],
    lipschitz: Float[Tensor, "batch"],
    nonnegative: bool,
    max_iter: int,
    tol: float,
) -> Float[Tensor, "batch m"]:
    """FISTA (Beck & Teboulle 2009) with gradient-based adaptive restart (O'Donoghue & Candès 2015).

    `gradient_of(y)` returns the gradient of ½‖x − yD‖² at y. Stops when, in every row, the largest
    coefficient change is ≤ tol × the largest coefficient (checked every few iterations: on a GPU each
    check is a synchronisation).
    """
    step = (1.0 / lipschitz)[:, None]
    threshold = lam[:, None] * step
    w = start
    y = start
    momentum = torch.ones_like(lam)
    for iteration in range(max_iter):
        w_next = _soft_threshold(y - step * gradient_of(y), threshold, nonnegative)
        change = w_next - w
        # Momentum that points uphill (along the last step, against the prox-gradient) is dropped.
        restart = ((y - w_next) * change).sum(1) > 0
        momentum_next = (1 + torch.sqrt(1 + 4 * momentum * momentum)) / 2
        beta = torch.where(restart, torch.zeros_like(momentum), (momentum - 1) / momentum_next)
        momentum = torch.where(restart, torch.ones_like(momentum), momentum_next)
        y = w_next + beta[:, None] * change
        w = w_next
        if iteration % 10 == 9:
            scale = w.abs().amax(1).clamp_min(torch.finfo(w.dtype).tiny)
            if bool((change.abs().amax(1) <= tol * scale).all()):
                break
    return w


def _as_lambda(lam: float | Tensor, batch: int, like: Tensor) -> Tensor:
    lam_tensor = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    if lam_tensor.ndim == 0:
        lam_tensor = lam_tensor.expand(batch)
    if lam_tensor.shape != (batch,):
        shape = tuple(lam_tensor.shape)
        raise ValueError(f"lam: expected a float or a [batch] tensor with batch = {batch}, got shape {shape}")
    if not (torch.isfinite(lam_tensor).all() and (lam_tensor > 0).all()):
        raise ValueError("lam: expected positive, finite values")
    return lam_tensor


@torch.no_grad()
def fista(
    targets: Float[Tensor, "*batch d_model"],
    atoms: Float[Tensor, "n_atoms d_model"],
    *,
    lam: float | Float[Tensor, "batch"],
    nonnegative: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-5,
    warm_start: Float[Tensor, "batch n_atoms"] | None = None,
    lipschitz: float | None = None,
    batch_size: int | None = None,
) -> Float[Tensor, "batch n_atoms"]:
    """The lasso min_w ½‖x − w D‖² + λ‖w‖₁ (w ≥ 0 if `nonnegative`), for each target, by FISTA.

    Returns dense coefficients `[batch, n_atoms]` (exact zeros off the support). Step 1/L with
    L = λ_max(D Dᵀ) from `lipschitz_constant` (pass `lipschitz` to reuse one); `lam` is a float or one
    value per target; `warm_start` (e.g. the solution at a nearby λ) is clipped to ≥ 0 if `nonnegative`.
    Each iteration costs two `[batch, n_atoms] × [n_atoms, d]`-sized matmuls: on a large dictionary
    prefer `fista_k`, which solves the same problems on a KKT-checked working set.
    """
    x, atoms = prepare_inputs(targets, atoms)
    batch, n_atoms = x.shape[0], atoms.shape[0]
    lam_all = _as_lambda(lam, batch, x)
    if warm_start is not None:
        if not isinstance(warm_start, Tensor) or tuple(warm_start.shape) != (batch, n_atoms):
            shape = tuple(warm_start.shape) if isinstance(warm_start, Tensor) else type(warm_start).__name__
            raise ValueError(f"warm_start: expected shape ({batch}, {n_atoms}), got {shape}")
        if not torch.isfinite(warm_start).all():
            raise ValueError("warm_start: contains NaN or inf")
        warm_start = warm_start.detach().to(device=x.device, dtype=x.dtype)
        if nonnegative:
            warm_start = warm_start.clamp_min(0)
    if lipschitz is None:
        lipschitz = lipschitz_constant(atoms)
    elif not (isinstance(lipschitz, (int, float)) and math.isfinite(lipschitz) and lipschitz > 0):
        raise ValueError(f"lipschitz: expected a positive finite float, got {lipschitz!r}")
    solutions = []
    for rows in chunk_slices(batch, n_atoms, batch_size):
        xs = x[rows]
        start = warm_start[rows] if warm_start is not None else x.new_zeros((xs.shape[0], n_atoms))
        lipschitz_rows = x.new_full((xs.shape[0],), float(lipschitz))

        def gradient_of(y: Tensor, xs: Tensor = xs) -> Tensor:
            return (y @ atoms - xs) @ atoms.T

        solutions.append(
            _fista_iterations(gradient_of, start, lam_all[rows], lipschitz_rows, nonnegative, max_iter, tol)
        )
    return torch.cat(solutions)


@torch.no_grad()
def fista_k(
    targets: Float[Tensor, "*batch d_model"],
    atoms: Float[Tensor, "n_atoms d_model"],
    k: int,
    *,
    nonnegative: bool = True,
    max_iter: int = 300,
    tol: float = 1e-4,
    bisection_steps: int = 30,
    working_set: int = 32,
    gram: Float[Tensor, "n_atoms n_atoms"] | None = None,
    batch_size: int | None = None,
) -> SparseCode:
    """k features per target from the lasso path, then a least-squares refit on that support ("debiasing").

    For each target, bisection on log λ in [λ_max·1e-4, λ_max] (λ_max = the largest (positive)
    correlation, where the solution becomes 0), warm-starting each FISTA solve from the previous one;
    a target stops as soon as its solution has exactly k nonzeros. If no λ gives exactly k (the support
    can jump by two), it keeps the smallest solution seen with more than k nonzeros and its k largest
    coefficients; if it never reaches k (a target made of fewer atoms), the remaining slots are filled
    with the atoms most correlated with the target. The support is then refit by (non-negative) least
    squares, as in `omp`.

    Speed: the lasso problems are solved on a per-target working set — the `working_set` atoms most
    correlated with the target, at least 2k — in Gram form (`[m, m]` per target, step 1/L with L its
    exact top eigenvalue), then the KKT condition |corr_j(r)| ≤ λ is checked against the *whole* dictionary
    (one matmul); violating atoms join the working set and the search is redone (the working-set /
    strong-rules strategy of Tibshirani et al. 2012), so the support is the lasso's on all atoms.
    """
    x, atoms = prepare_inputs(targets, atoms, k)
    gram = check_gram(gram, atoms)
    if isinstance(working_set, bool) or not isinstance(working_set, int) or working_set < 1:
        raise ValueError(f"working_set: expected a positive int, got {working_set!r}")
    size = min(atoms.shape[0], max(working_set, 2 * k))

    def solve(xs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _fista_k_chunk(xs, atoms, k, nonnegative, max_iter, tol, bisection_steps, size, gram)

    # Its per-target working sets ([batch, m, d] atoms) would not fit the GPU chunks the pursuits use.
    batch_size = default_batch_size(atoms.shape[0]) if batch_size is None else batch_size
    return run_chunked(x, atoms, batch_size, "fista", solve)


def _fista_k_chunk(
    x: Tensor,
    atoms: Tensor,
    k: int,
    nonnegative: bool,
    max_iter: int,
    tol: float,
    bisection_steps: int,
    size: int,
    gram: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    correlations = x @ atoms.T  # the buffer is reused below for the KKT checks
    score = correlations if nonnegative else correlations.abs()
    lam_max = score.amax(1).clamp_min(torch.finfo(x.dtype).tiny)
    working = score.topk(size, dim=1).indices  # sorted: the fill order for targets short of k atoms
    rhs = correlations.gather(1, working)  # D_W x; the buffer is reused for the KKT checks below
    w = x.new_zeros(working.shape)
    lam = lam_max
    for _ in range(_KKT_ROUNDS):
        if gram is not None:
            working_gram = gram[working.unsqueeze(2), working.unsqueeze(1)]
        else:
            working_atoms = atoms[working]
            working_gram = torch.bmm(working_atoms, working_atoms.transpose(1, 2))
        w, lam = _bisect_lambda(working_gram, rhs, lam_max, w, k, nonnegative, max_iter, tol, bisection_steps)
        n_new = min(size, atoms.shape[0] - working.shape[1])
        if n_new == 0:
            break
        violation = torch.matmul(x - combine_atoms(working, w, atoms), atoms.T, out=correlations)
        if not nonnegative:
            violation.abs_()
        violation.scatter_(1, working, -math.inf)
        top_value, top_index = violation.topk(n_new, dim=1)
        if not bool((top_value[:, 0] > lam * (1 + _KKT_SLACK)).any()):
            break
        # Every row gets n_new more atoms (batched shapes); for rows without violations they stay at 0.
        new_rhs = torch.bmm(x.unsqueeze(1), atoms[top_index].transpose(1, 2)).squeeze(1)
        working, rhs = torch.cat([working, top_index], dim=1), torch.cat([rhs, new_rhs], dim=1)
        w = torch.cat([w, w.new_zeros(top_index.shape)], dim=1)
    # Nonzero coefficients first (largest first), then zeros in working-set order (most correlated first).
    position = torch.arange(working.shape[1], device=x.device, dtype=x.dtype) / working.shape[1]
    priority = torch.where(w != 0, 2 + w.abs() / w.abs().amax(1, keepdim=True).clamp_min(1e-30), 1 - position)
    chosen = priority.topk(k, dim=1).indices
    indices = working.gather(1, chosen)
    support_atoms = atoms[indices]
    support_gram = torch.bmm(support_atoms, support_atoms.transpose(1, 2))
    return indices, support_solve(support_gram, rhs.gather(1, chosen), nonnegative), lam


def _bisect_lambda(
    gram: Float[Tensor, "batch m m"],
    rhs: Float[Tensor, "batch m"],
    lam_max: Float[Tensor, "batch"],
    start: Float[Tensor, "batch m"],
    k: int,
    nonnegative: bool,
    max_iter: int,
    tol: float,
    steps: int,
) -> tuple[Float[Tensor, "batch m"], Float[Tensor, "batch"]]:
    """Per-target bisection on log λ for a lasso solution with k nonzeros (see `fista_k`).

    Returns the chosen solution per target (exactly k nonzeros when found) and its λ.
    """
    # Exact and cheap for [batch, m, m] with m ~ 32 (faster than power iteration, which converges
    # slowly on the near-degenerate top of a random Gram spectrum).
    lipschitz = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(torch.finfo(gram.dtype).tiny)
    low, high = torch.log(lam_max * 1e-4), torch.log(lam_max)
    best_w, best_lam = start, lam_max.clone()
    best_nnz = torch.full_like(lam_max, -1, dtype=torch.long)
    done = torch.zeros_like(lam_max, dtype=torch.bool)
    w = start

    def gradient_of(y: Tensor) -> Tensor:
        return symmetric_matvec(gram, y) - rhs

    for _ in range(steps):
        lam = torch.where(done, best_lam, torch.exp((low + high) / 2))
        w = _fista_iterations(gradient_of, w, lam, lipschitz, nonnegative, max_iter, tol)
        nnz = (w != 0).sum(1)
        # Better = exactly k; else the fewest nonzeros above k; else the most below k.
        better = ~done & (
            (nnz == k)
            | ((nnz > k) & ((best_nnz < k) | (nnz < best_nnz)))
            | ((nnz < k) & (best_nnz < k) & (nnz > best_nnz))
        )
        best_w = torch.where(better[:, None], w, best_w)
        best_lam = torch.where(better, lam, best_lam)
        best_nnz = torch.where(better, nnz, best_nnz)
        low = torch.where(~done & (nnz > k), torch.log(lam), low)
        high = torch.where(~done & (nnz < k), torch.log(lam), high)
        # Exactly k, or λ pinned to 0.1% without reaching k (the support jumps over k there).
        done = done | (nnz == k) | (high - low < 1e-3)
        if bool(done.all()):
            break
        w = torch.where(done[:, None], best_w, w)
    return best_w, best_lam
