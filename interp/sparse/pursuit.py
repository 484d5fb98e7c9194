"""Greedy pursuits: gradient pursuit ("ito", inference-time optimisation) and orthogonal matching pursuit."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from interp.sparse.code import SparseCode, combine_atoms, run_chunked
from interp.sparse.correlate import Correlator
from interp.sparse.inputs import check_gram, prepare_inputs
from interp.sparse.least_squares import support_solve
from interp.sparse.paths import Path, Plan, plan_correlations

__all__ = ["Correlator", "gradient_pursuit", "omp"]  # Correlator: tests switch its CPU layout


@torch.no_grad()
def gradient_pursuit(
    targets: Float[Tensor, "*batch d_model"],
    atoms: Float[Tensor, "n_atoms d_model"],
    k: int,
    *,
    nonnegative: bool = False,
    refit: bool = False,
    gram: Float[Tensor, "n_atoms n_atoms"] | None = None,
    batch_size: int | None = None,
    path: Path = "auto",
) -> SparseCode:
    """Gradient pursuit (Blumensath & Davies 2008), the inference-time optimisation used by Smith for SAEs.

    Each of k steps: pick the atom outside the support with the largest correlation with the residual
    (largest positive one if `nonnegative`, largest |·| otherwise) and add it to the support; then take
    one gradient step on all support coefficients, g = D_S r, with the exact line-search step
    ‖g‖² / ‖g D_S‖²; if `nonnegative`, clip negative coefficients to 0.

    Support decision: a clipped atom *stays in the support* with coefficient 0 (as in Smith's reference
    implementation): later gradient steps may make it positive again, and it cannot be selected twice,
    so the result always holds exactly k distinct atoms (some possibly with coefficient 0).

    One gradient step per atom leaves the coefficients short of the least-squares fit on the chosen
    support; `refit=True` finishes with that (non-negative) least-squares fit, as `omp` does at every
    step — the same support, the lowest error on it, for O(batch · k² · d) more work.

    Cost: k correlation matmuls `[batch, d] × [d, n_atoms]`; everything else is O(batch · k · d).
    `path` says how the correlations are computed (`paths.Path`; all exact, the same atoms up to fp32
    rounding): "matmul" (that cost), "gram" (one matmul, then k incremental Gram-row updates; the Gram
    is `gram` or computed once per dictionary and cached), "screen" (the matmuls in bf16 with an exact
    fp32 check of the choice) or "auto" (the fastest of these for the hardware and sizes).
    `batch_size` bounds the chunk of targets processed at once (default: `default_batch_size`).
    """
    original = atoms
    x, atoms = prepare_inputs(targets, atoms, k)
    plan = plan_correlations(original, atoms, x.shape[0], k, path, check_gram(gram, atoms))

    def solve(xs: Tensor) -> tuple[Tensor, Tensor]:
        return _gradient_pursuit_chunk(xs, atoms, k, nonnegative, refit, plan)

    return run_chunked(x, atoms, batch_size, "ito", solve)


def _gradient_pursuit_chunk(
    x: Tensor, atoms: Tensor, k: int, nonnegative: bool, refit: bool, plan: Plan
) -> tuple[Tensor, Tensor]:
    batch = x.shape[0]
    indices = torch.zeros((batch, k), dtype=torch.long, device=x.device)
    weights = x.new_zeros((batch, k))
    correlator = plan.correlator(x, atoms, k)
    tiny = torch.finfo(x.dtype).tiny
    for t in range(k):
        new, on_support, on_new = correlator.next_atom(indices[:, :t], weights[:, :t], nonnegative)
        indices[:, t] = new
        support = indices[:, : t + 1]
        gradient = torch.cat([on_support, on_new.unsqueeze(1)], dim=1)  # D_S r = −∂/∂w ½‖x − w D_S‖²
        direction = combine_atoms(support, gradient, atoms)  # the step in signal space
        curvature = (direction * direction).sum(1)
        step = (gradient * gradient).sum(1) / curvature.clamp_min(tiny)  # exact line search
        step = torch.where(curvature > 0, step, torch.zeros_like(step))  # residual already orthogonal
        updated = weights[:, : t + 1] + step[:, None] * gradient
        if nonnegative:
            updated = updated.clamp_min(0)
        correlator.update(support, updated - weights[:, : t + 1])
        weights[:, : t + 1] = updated
    if refit:
        support_atoms = atoms[indices]
        support_gram = torch.bmm(support_atoms, support_atoms.transpose(1, 2))
        rhs = torch.bmm(x.unsqueeze(1), support_atoms.transpose(1, 2)).squeeze(1)
        weights = support_solve(support_gram, rhs, nonnegative)
    return indices, weights


@torch.no_grad()
def omp(
    targets: Float[Tensor, "*batch d_model"],
    atoms: Float[Tensor, "n_atoms d_model"],
    k: int,
    *,
    nonnegative: bool = False,
    gram: Float[Tensor, "n_atoms n_atoms"] | None = None,
    batch_size: int | None = None,
    path: Path = "auto",
) -> SparseCode:
    """Orthogonal matching pursuit (Pati et al. 1993), batched over targets.

    Each of k steps: add the atom outside the support with the largest correlation with the residual
    (largest positive one if `nonnegative`, else largest |·|), then re-fit all support coefficients by
    least squares on the t×t support Gram (batched solve). With `nonnegative`, the refit is a
    non-negative least squares done approximately by accelerated projected gradient on the support
    (see `support_solve`); as in `gradient_pursuit`, an atom whose coefficient becomes 0 stays in the
    support, so the result holds k distinct atoms. `path`: as in `gradient_pursuit`.
    """
    original = atoms
    x, atoms = prepare_inputs(targets, atoms, k)
    plan = plan_correlations(original, atoms, x.shape[0], k, path, check_gram(gram, atoms))
    return run_chunked(x, atoms, batch_size, "omp", lambda xs: _omp_chunk(xs, atoms, k, nonnegative, plan))


def _omp_chunk(x: Tensor, atoms: Tensor, k: int, nonnegative: bool, plan: Plan) -> tuple[Tensor, Tensor]:
    batch, width = x.shape
    indices = torch.zeros((batch, k), dtype=torch.long, device=x.device)
    coefficients = x.new_zeros((batch, k))
    gram = plan.gram
    support_atoms = x.new_zeros((batch, k, width)) if gram is None else None
    support_gram = x.new_zeros((batch, k, k))
    rhs = x.new_zeros((batch, k))
    correlator = plan.correlator(x, atoms, k)
    for t in range(k):
        new, _, _ = correlator.next_atom(indices[:, :t], coefficients[:, :t], nonnegative)
        indices[:, t] = new
        new_atom = atoms[new]
        # The support Gram grows by one row/column per step; nothing older is recomputed.
        if support_atoms is None:
            row = gram[new.unsqueeze(1), indices[:, : t + 1]]
        else:
            support_atoms[:, t] = new_atom
            row = torch.bmm(new_atom.unsqueeze(1), support_atoms[:, : t + 1].transpose(1, 2)).squeeze(1)
        support_gram[:, t, : t + 1] = row
        support_gram[:, : t + 1, t] = row
        rhs[:, t] = (new_atom * x).sum(1)
        updated = support_solve(support_gram[:, : t + 1, : t + 1], rhs[:, : t + 1], nonnegative)
        correlator.update(indices[:, : t + 1], updated - coefficients[:, : t + 1])
        coefficients[:, : t + 1] = updated
    return indices, coefficients
