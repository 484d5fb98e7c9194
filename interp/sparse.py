"""Sparse reconstruction of residual-stream vectors from an SAE dictionary.

Given dictionary atoms `D` (rows = unit-norm SAE decoder directions, `[n_atoms, d_model]`) and
targets `x` (`[batch, d_model]`), find for each target k atoms and coefficients `w` so that
`x ≈ w @ D[indices]`. Three solvers, all batched over targets (no Python loop over targets or atoms;
only over the k greedy steps / the optimiser's iterations):

- `gradient_pursuit` ("ito", inference-time optimisation): Blumensath & Davies' gradient pursuit, as
  used by Smith to replace an SAE encoder at inference time.
- `fista_k`: the lasso `min ½‖x − wD‖² + λ‖w‖₁` solved by FISTA, with a per-target bisection on λ
  to reach k features, then a least-squares refit on that support (`fista`: the plain lasso solver).
- `omp`: orthogonal matching pursuit.

Conventions shared by every function here:

- A 1-D target is treated as a batch of one; results always carry the batch dimension.
- Work happens on `atoms.device` (targets are moved there) in `promote(targets, atoms, float32)`:
  half-precision inputs are computed and returned in fp32, float64 stays float64.
- The dominant cost of the greedy methods is one `[batch, d] × [d, n_atoms]` correlation matmul per
  step. With a precomputed `gram = atom_gram(atoms)` (`[n_atoms, n_atoms]`, only sensible for small
  dictionaries: 4,608 atoms → 85 MB) the correlations are instead updated incrementally
  ("Batch-OMP", Rubinstein, Zibulevsky & Elad 2008): `corr ← corr − Δw · G[support]`, which reads t
  rows of G per target instead of multiplying by the whole dictionary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from interp.directions import Direction

Method = Literal["ito", "fista", "omp"]
METHODS: tuple[str, ...] = ("ito", "fista", "omp")

# Targets per chunk: a correlation buffer of at most this many elements (256 MB in fp32; 1,024 targets
# at 65,536 atoms) and at most _MAX_BATCH targets. Measured on a CPU: larger chunks keep the matmul
# efficient up to ~1,024 targets; beyond that the [batch, n_atoms] buffer falls out of cache.
_CORRELATION_BUDGET = 2**26
_MAX_BATCH = 1024
_UNIT_NORM_TOLERANCE = 1e-2  # loose enough for bf16 decoders, tight enough to catch unnormalised ones
_RIDGE_EPS = 10  # relative ridge on support Grams, in machine epsilons: keeps duplicate atoms solvable
_NNLS_ITERATIONS = 200
_POWER_ITERATIONS = 300
_LIPSCHITZ_SAFETY = 1.02  # power iteration approaches λ_max from below; 1/L must not overshoot 1/λ_max
_ARGMAX_BLOCK = 256
_KKT_ROUNDS = 4
_KKT_SLACK = 1e-2  # FISTA stops at a finite tolerance; only clearly violated optimality conditions count


@dataclass(frozen=True)
class SparseCode:
    """k-sparse codes of a batch of targets.

    `indices[b]` are atom (feature) indices and `coefficients[b]` their weights, sorted by decreasing
    |coefficient|; `reconstruction[b] = coefficients[b] @ atoms[indices[b]]`. A coefficient can be 0
    (a clipped non-negative atom, or a target that needs fewer than k atoms). `relative_error` is
    ‖x − x̂‖/‖x‖ and `cosine` is cos(x, x̂) (0 for an all-zero reconstruction). `lam` is the lasso
    penalty λ that `fista_k` settled on per target (None for the greedy methods).
    """

    indices: Int[Tensor, "batch k"]
    coefficients: Float[Tensor, "batch k"]
    reconstruction: Float[Tensor, "batch d_model"]
    cosine: Float[Tensor, "batch"]
    relative_error: Float[Tensor, "batch"]
    method: str
    lam: Float[Tensor, "batch"] | None = None

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    @property
    def batch(self) -> int:
        return self.indices.shape[0]

    @property
    def source(self) -> str:
        """Provenance tag, e.g. "ito(k=4)"."""
        return f"{self.method}(k={self.k})"

    def dense(self, n_atoms: int) -> Float[Tensor, "batch n_atoms"]:
        """The codes as dense `[batch, n_atoms]` coefficient vectors."""
        out = self.coefficients.new_zeros((self.batch, n_atoms))
        return out.scatter_(1, self.indices, self.coefficients)


# --------------------------------------------------------------------------------------------------
# Validation


def _check_atoms(atoms: Tensor) -> None:
    if not isinstance(atoms, Tensor):
        raise ValueError(f"atoms: expected a torch.Tensor [n_atoms, d_model], got {type(atoms).__name__}")
    if atoms.ndim != 2:
        raise ValueError(f"atoms: expected a 2-D tensor [n_atoms, d_model], got shape {tuple(atoms.shape)}")
    if atoms.shape[0] == 0 or atoms.shape[1] == 0:
        raise ValueError(f"atoms: expected a non-empty [n_atoms, d_model] tensor, got {tuple(atoms.shape)}")
    if not atoms.is_floating_point():
        raise ValueError(f"atoms: expected a floating-point tensor, got {atoms.dtype}")
    # One pass over the atoms: a NaN or inf anywhere in a row makes its norm non-finite
    # (torch.isfinite(atoms).all() is ~20x slower at 65,536 atoms on a CPU).
    norms = torch.linalg.vector_norm(atoms, dim=1, dtype=_compute_dtype(atoms))
    if not torch.isfinite(norms).all():
        raise ValueError("atoms: contains NaN or inf")
    worst = float((norms - 1).abs().max())
    if worst > _UNIT_NORM_TOLERANCE:
        raise ValueError(
            f"atoms: expected unit-norm rows (the largest |‖row‖ − 1| is {worst:.3g}); "
            "normalise them first, e.g. atoms / atoms.norm(dim=1, keepdim=True)"
        )


def _check_k(k: int, n_atoms: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    if k > n_atoms:
        raise ValueError(f"k: expected k <= n_atoms = {n_atoms}, got k = {k}")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _prepare(
    targets: Tensor, atoms: Tensor, k: int | None = None
) -> tuple[Float[Tensor, "batch d_model"], Float[Tensor, "n_atoms d_model"]]:
    """Validate; return targets as `[batch, d_model]` and atoms, on `atoms.device` in the compute dtype."""
    _check_atoms(atoms)
    n_atoms, width = atoms.shape
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets: expected a torch.Tensor [batch, d_model], got {type(targets).__name__}")
    if targets.ndim not in (1, 2):
        raise ValueError(f"targets: expected shape [d_model] or [batch, d_model], got {tuple(targets.shape)}")
    if not targets.is_floating_point():
        raise ValueError(f"targets: expected a floating-point tensor, got {targets.dtype}")
    x = targets.detach().reshape(-1, targets.shape[-1])
    if x.shape[1] != width:
        raise ValueError(f"targets: expected width d_model = {width} (atoms.shape[1]), got {x.shape[1]}")
    if x.shape[0] == 0:
        raise ValueError("targets: expected at least one target vector, got an empty batch")
    norms = torch.linalg.vector_norm(x, dim=1, dtype=_compute_dtype(x))
    if not torch.isfinite(norms).all():
        raise ValueError("targets: contains NaN or inf")
    zero_rows = (norms == 0).nonzero().flatten()
    if zero_rows.numel():
        raise ValueError(f"targets: row(s) {zero_rows[:5].tolist()} are zero vectors: nothing to reconstruct")
    if k is not None:
        _check_k(k, n_atoms)
    dtype = _compute_dtype(targets, atoms)
    return x.to(device=atoms.device, dtype=dtype), atoms.detach().to(dtype=dtype)


def _check_gram(gram: Tensor | None, atoms: Tensor) -> Tensor | None:
    if gram is None:
        return None
    n_atoms = atoms.shape[0]
    if not isinstance(gram, Tensor) or tuple(gram.shape) != (n_atoms, n_atoms):
        shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
        raise ValueError(f"gram: expected atom_gram(atoms) of shape ({n_atoms}, {n_atoms}), got {shape}")
    return gram.detach().to(device=atoms.device, dtype=atoms.dtype)


def default_batch_size(n_atoms: int) -> int:
    """Targets per chunk when `batch_size` is None: a ≤ 256 MB fp32 correlation buffer, at most 1,024."""
    return max(1, min(_MAX_BATCH, _CORRELATION_BUDGET // n_atoms))


def _chunks(batch: int, n_atoms: int, batch_size: int | None) -> list[slice]:
    if batch_size is None:
        batch_size = default_batch_size(n_atoms)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
    return [slice(start, min(start + batch_size, batch)) for start in range(0, batch, batch_size)]


# --------------------------------------------------------------------------------------------------
# Shared pieces


@torch.no_grad()
def atom_gram(atoms: Float[Tensor, "n_atoms d_model"]) -> Float[Tensor, "n_atoms n_atoms"]:
    """`atoms @ atoms.T` in the compute dtype: the `gram=` of `gradient_pursuit`, `omp` and `fista_k`.

    Needs n_atoms² × 4 bytes (85 MB at 4,608 atoms, 17 GB at 65,536: use it for small dictionaries only).
    """
    _check_atoms(atoms)
    atoms = atoms.detach().to(dtype=_compute_dtype(atoms))
    return atoms @ atoms.T


def _extreme(corr: Tensor, dim: int, largest: bool) -> tuple[Float[Tensor, "batch"], Int[Tensor, "batch"]]:
    """(value, first index) of the max or min of a 2-D tensor along `dim`.

    On a CPU, in two passes: a block-wise `amax` (a vectorised reduction), then an argmax inside each
    target's winning block. torch's `max(dim)` with indices is ~5x slower than `amax` along rows and
    ~15x slower along columns, which would otherwise cost a sizeable share of a gradient-pursuit step.
    """
    block = _ARGMAX_BLOCK
    n = corr.shape[dim]
    if corr.device.type != "cpu" or n < 2 * block:
        return corr.max(dim=dim) if largest else corr.min(dim=dim)
    full = n - n % block
    blocks = corr.narrow(dim, 0, full).unflatten(dim, (full // block, block))
    # [n_blocks, block, batch] or [batch, n_blocks, block]: reduce within blocks, then pick a block.
    within = torch.amax(blocks, dim=dim + 1) if largest else torch.amin(blocks, dim=dim + 1)
    value, best_block = within.max(dim=dim) if largest else within.min(dim=dim)
    batch = torch.arange(value.shape[0], device=corr.device)
    inside = blocks[best_block, :, batch] if dim == 0 else blocks[batch, best_block]  # [batch, block]
    index = best_block * block + (inside.argmax(dim=1) if largest else inside.argmin(dim=1))
    if full < n:  # the last, partial block; it only wins when strictly better (first-index ties)
        tail = corr.narrow(dim, full, n - full)
        tail_value, tail_index = tail.max(dim=dim) if largest else tail.min(dim=dim)
        better = tail_value > value if largest else tail_value < value
        value, index = torch.where(better, tail_value, value), torch.where(better, tail_index + full, index)
    return value, index


def _symmetric_matvec(
    matrix: Float[Tensor, "*batch m m"], vector: Float[Tensor, "*batch m"]
) -> Float[Tensor, "*batch m"]:
    """matrix @ vector for symmetric matrices, computed as vector @ matrix: batched row-times-matrix
    products are ~8x faster than matrix-times-column ones on a CPU for small m."""
    if matrix.ndim == 2:
        return vector @ matrix
    return torch.bmm(vector.unsqueeze(1), matrix).squeeze(1)


def _support_solve(
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
    gradient = _symmetric_matvec(gram, exact) - rhs
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
        gradient = _symmetric_matvec(gram, y) - rhs
        w_next = (y - step[:, None] * gradient).clamp_min(0)
        momentum_next = (1 + math.sqrt(1 + 4 * momentum * momentum)) / 2
        change = w_next - w
        y = w_next + ((momentum - 1) / momentum_next) * change
        w, momentum = w_next, momentum_next
        converged = change.abs() <= 4 * torch.finfo(w.dtype).eps * w.abs().amax()
        if iteration % 10 == 9 and bool(converged.all()):
            break
    return w


def _finish(
    x: Float[Tensor, "batch d_model"],
    atoms: Float[Tensor, "n_atoms d_model"],
    indices: Int[Tensor, "batch k"],
    coefficients: Float[Tensor, "batch k"],
    lam: Tensor | None = None,
    *,
    method: str,
) -> SparseCode:
    order = coefficients.abs().argsort(dim=1, descending=True, stable=True)
    indices, coefficients = indices.gather(1, order), coefficients.gather(1, order)
    reconstruction = torch.einsum("bk,bkd->bd", coefficients, atoms[indices])
    x_norm = torch.linalg.vector_norm(x, dim=1)
    relative_error = torch.linalg.vector_norm(x - reconstruction, dim=1) / x_norm
    recon_norm = torch.linalg.vector_norm(reconstruction, dim=1)
    cosine = (x * reconstruction).sum(1) / (x_norm * recon_norm).clamp_min(torch.finfo(x.dtype).tiny)
    return SparseCode(indices, coefficients, reconstruction, cosine, relative_error, method, lam)


def _concat(codes: list[SparseCode]) -> SparseCode:
    if len(codes) == 1:
        return codes[0]
    return SparseCode(
        indices=torch.cat([c.indices for c in codes]),
        coefficients=torch.cat([c.coefficients for c in codes]),
        reconstruction=torch.cat([c.reconstruction for c in codes]),
        cosine=torch.cat([c.cosine for c in codes]),
        relative_error=torch.cat([c.relative_error for c in codes]),
        method=codes[0].method,
        lam=None if codes[0].lam is None else torch.cat([c.lam for c in codes if c.lam is not None]),
    )


def _run_chunked(x: Tensor, atoms: Tensor, batch_size: int | None, method: str, solve: Any) -> SparseCode:
    """`solve(x_chunk)` returns (indices, coefficients) or (indices, coefficients, lam)."""
    codes = []
    for rows in _chunks(x.shape[0], atoms.shape[0], batch_size):
        codes.append(_finish(x[rows], atoms, *solve(x[rows]), method=method))
    return _concat(codes)


def _combine(
    support: Int[Tensor, "batch t"], weights: Float[Tensor, "batch t"], atoms: Tensor
) -> Float[Tensor, "batch d"]:
    """Σ_j weights[:, j] · atoms[support[:, j]]: an embedding-bag, never materialising [batch, t, d]."""
    return F.embedding_bag(support, atoms, per_sample_weights=weights, mode="sum")


class _Correlator:
    """Correlations of the current residuals `x − w · atoms[support]` with every atom, for one chunk.

    Both paths start from the correlations of `x` in a reused buffer (re-allocating a 256 MB buffer
    every step costs page faults). Without a Gram matrix, each later call rebuilds the residual and
    does one matmul. With one, `update(support, Δw)` subtracts Δw · G[support] instead (an
    embedding-bag read of t Gram rows per target) — exact, because corr(x − w D_S) = corr(x) − w G[S]
    is linear in w, so a non-negative clip is just another Δw.

    Layout: on a CPU without a Gram matrix the buffer is `[n_atoms, batch]` (`atoms @ residual.T`):
    at 65,536 atoms MKL runs that product ~20% faster than `residual @ atoms.T` (and no slower at
    4,608), and `_extreme` reduces along it quickly. Elsewhere it is `[batch, n_atoms]` (the Gram
    update produces that layout). `atom_dim` says which.
    """

    transpose_on_cpu = True

    def __init__(self, x: Tensor, atoms: Tensor, gram: Tensor | None) -> None:
        self.x, self.atoms, self.gram = x, atoms, gram
        transpose = self.transpose_on_cpu and x.device.type == "cpu" and gram is None
        self.atom_dim = 0 if transpose else 1
        shape = (atoms.shape[0], x.shape[0]) if transpose else (x.shape[0], atoms.shape[0])
        self.buffer = x.new_empty(shape)
        self._correlate(x)

    def _correlate(self, residual: Float[Tensor, "batch d"]) -> None:
        if self.atom_dim == 0:
            torch.matmul(self.atoms, residual.T, out=self.buffer)
        else:
            torch.matmul(residual, self.atoms.T, out=self.buffer)

    def refresh(self, support: Int[Tensor, "batch t"], weights: Float[Tensor, "batch t"]) -> None:
        """Bring the buffer up to date with the residual of `weights` on `support` (Gram path: no-op)."""
        if self.gram is None and support.shape[1] > 0:
            self._correlate(self.x - _combine(support, weights, self.atoms))

    def update(self, support: Int[Tensor, "batch t"], delta: Float[Tensor, "batch t"]) -> None:
        if self.gram is not None:
            self.buffer -= _combine(support, delta, self.gram)

    def gather(self, index: Int[Tensor, "batch t"]) -> Float[Tensor, "batch t"]:
        if self.atom_dim == 0:
            return self.buffer.gather(0, index.T).T
        return self.buffer.gather(1, index)

    def fill(self, index: Int[Tensor, "batch t"], values: Tensor | float) -> None:
        if self.atom_dim == 0:
            values = values.T if isinstance(values, Tensor) else values
            self.buffer.scatter_(0, index.T, values)
        else:
            self.buffer.scatter_(1, index, values)

    def select(self, support: Int[Tensor, "batch t"], nonnegative: bool) -> Int[Tensor, "batch"]:
        """The atom outside `support` with the largest correlation (or |correlation|); buffer left intact."""
        saved = self.gather(support)
        self.fill(support, -math.inf)
        best_value, best = _extreme(self.buffer, self.atom_dim, largest=True)
        if not nonnegative:
            # A second pass with a +inf mask rather than |corr|: no second buffer, and a support atom
            # never wins a tie when every correlation is 0 (an exactly reconstructed target).
            self.fill(support, math.inf)
            worst_value, worst = _extreme(self.buffer, self.atom_dim, largest=False)
            best = torch.where(-worst_value > best_value, worst, best)
        self.fill(support, saved)  # the Gram path keeps updating this buffer
        return best


def _select_outside(
    correlator: _Correlator, support: Tensor, weights: Tensor, nonnegative: bool
) -> tuple[Int[Tensor, "batch"], Float[Tensor, "batch t"], Float[Tensor, "batch"]]:
    """The next atom, plus the residual's correlations with the support and with the new atom."""
    correlator.refresh(support, weights)
    new = correlator.select(support, nonnegative)
    on_support = correlator.gather(support)
    return new, on_support, correlator.gather(new.unsqueeze(1)).squeeze(1)


# --------------------------------------------------------------------------------------------------
# Gradient pursuit ("ito")


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

    Cost: k correlation matmuls `[batch, d] × [d, n_atoms]` (or, with `gram`, one plus k incremental
    Gram-row updates); everything else is O(batch · k · d). `batch_size` bounds the chunk of targets
    processed at once (default: `default_batch_size`, 1,024 targets up to 65,536 atoms).
    """
    x, atoms = _prepare(targets, atoms, k)
    gram = _check_gram(gram, atoms)
    def solve(xs: Tensor) -> tuple[Tensor, Tensor]:
        return _gradient_pursuit_chunk(xs, atoms, k, nonnegative, refit, gram)

    return _run_chunked(x, atoms, batch_size, "ito", solve)


def _gradient_pursuit_chunk(
    x: Tensor, atoms: Tensor, k: int, nonnegative: bool, refit: bool, gram: Tensor | None
) -> tuple[Tensor, Tensor]:
    batch = x.shape[0]
    indices = torch.zeros((batch, k), dtype=torch.long, device=x.device)
    weights = x.new_zeros((batch, k))
    correlator = _Correlator(x, atoms, gram)
    tiny = torch.finfo(x.dtype).tiny
    for t in range(k):
        new, on_support, on_new = _select_outside(correlator, indices[:, :t], weights[:, :t], nonnegative)
        indices[:, t] = new
        support = indices[:, : t + 1]
        gradient = torch.cat([on_support, on_new.unsqueeze(1)], dim=1)  # D_S r = −∂/∂w ½‖x − w D_S‖²
        direction = _combine(support, gradient, atoms)  # the step in signal space
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
        weights = _support_solve(support_gram, rhs, nonnegative)
    return indices, weights


# --------------------------------------------------------------------------------------------------
# Orthogonal matching pursuit


@torch.no_grad()
def omp(
    targets: Float[Tensor, "*batch d_model"],
    atoms: Float[Tensor, "n_atoms d_model"],
    k: int,
    *,
    nonnegative: bool = False,
    gram: Float[Tensor, "n_atoms n_atoms"] | None = None,
    batch_size: int | None = None,
) -> SparseCode:
    """Orthogonal matching pursuit (Pati et al. 1993), batched over targets.

    Each of k steps: add the atom outside the support with the largest correlation with the residual
    (largest positive one if `nonnegative`, else largest |·|), then re-fit all support coefficients by
    least squares on the t×t support Gram (batched solve). With `nonnegative`, the refit is a
    non-negative least squares done approximately by accelerated projected gradient on the support
    (see `_support_solve`); as in `gradient_pursuit`, an atom whose coefficient becomes 0 stays in the
    support, so the result holds k distinct atoms.
    """
    x, atoms = _prepare(targets, atoms, k)
    gram = _check_gram(gram, atoms)
    return _run_chunked(x, atoms, batch_size, "omp", lambda xs: _omp_chunk(xs, atoms, k, nonnegative, gram))


def _omp_chunk(
    x: Tensor, atoms: Tensor, k: int, nonnegative: bool, gram: Tensor | None
) -> tuple[Tensor, Tensor]:
    batch, width = x.shape
    indices = torch.zeros((batch, k), dtype=torch.long, device=x.device)
    coefficients = x.new_zeros((batch, k))
    support_atoms = x.new_zeros((batch, k, width)) if gram is None else None
    support_gram = x.new_zeros((batch, k, k))
    rhs = x.new_zeros((batch, k))
    correlator = _Correlator(x, atoms, gram)
    for t in range(k):
        new, _, _ = _select_outside(correlator, indices[:, :t], coefficients[:, :t], nonnegative)
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
        updated = _support_solve(support_gram[:, : t + 1, : t + 1], rhs[:, : t + 1], nonnegative)
        correlator.update(indices[:, : t + 1], updated - coefficients[:, : t + 1])
        coefficients[:, : t + 1] = updated
    return indices, coefficients


# --------------------------------------------------------------------------------------------------
# FISTA (lasso) and FISTA with a target number of features


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
        product = _symmetric_matvec(gram, vector)
        estimate = (vector * product).sum(-1)
        vector = product
    return estimate.clamp_min(1e-30) * _LIPSCHITZ_SAFETY


def lipschitz_constant(atoms: Float[Tensor, "n_atoms d_model"]) -> float:
    """L = λ_max(D Dᵀ), the Lipschitz constant of the lasso gradient, by power iteration.

    λ_max(D Dᵀ) = λ_max(Dᵀ D), so the iteration runs on whichever of the two is smaller — d×d for any
    real SAE (576² floats), never the 65,536² Gram — formed with one matmul, which is far cheaper on a
    CPU than hundreds of memory-bound matrix-vector products with D itself.
    """
    _check_atoms(atoms)
    atoms = atoms.detach().to(dtype=_compute_dtype(atoms))
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
    x, atoms = _prepare(targets, atoms)
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
    for rows in _chunks(batch, n_atoms, batch_size):
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
    x, atoms = _prepare(targets, atoms, k)
    gram = _check_gram(gram, atoms)
    if isinstance(working_set, bool) or not isinstance(working_set, int) or working_set < 1:
        raise ValueError(f"working_set: expected a positive int, got {working_set!r}")
    size = min(atoms.shape[0], max(working_set, 2 * k))

    def solve(xs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _fista_k_chunk(xs, atoms, k, nonnegative, max_iter, tol, bisection_steps, size, gram)

    return _run_chunked(x, atoms, batch_size, "fista", solve)


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
        violation = torch.matmul(x - _combine(working, w, atoms), atoms.T, out=correlations)
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
    return indices, _support_solve(support_gram, rhs.gather(1, chosen), nonnegative), lam


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
        return _symmetric_matvec(gram, y) - rhs

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


# --------------------------------------------------------------------------------------------------
# Dispatcher, provenance, encodings


def sparse_code(
    targets: Float[Tensor, "*batch d_model"],
    atoms: Float[Tensor, "n_atoms d_model"],
    k: int,
    method: Method = "ito",
    *,
    nonnegative: bool = True,
    refit: bool = False,
    gram: Float[Tensor, "n_atoms n_atoms"] | None = None,
    batch_size: int | None = None,
) -> SparseCode:
    """k-sparse codes of `targets` in the dictionary `atoms` with one of "ito" (gradient pursuit),
    "fista" (`fista_k`) or "omp". Non-negative by default, like SAE feature activations. `refit` applies
    to "ito" only (the other two always end with a least-squares fit on their support)."""
    if method == "ito":
        return gradient_pursuit(
            targets, atoms, k, nonnegative=nonnegative, refit=refit, gram=gram, batch_size=batch_size
        )
    if method == "fista":
        return fista_k(targets, atoms, k, nonnegative=nonnegative, gram=gram, batch_size=batch_size)
    if method == "omp":
        return omp(targets, atoms, k, nonnegative=nonnegative, gram=gram, batch_size=batch_size)
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


def reconstruction_direction(code: SparseCode, parent: Direction, row: int = 0) -> Direction:
    """The sparse reconstruction of `parent` (row `row` of `code`) as a `Direction` that records its parent.

    Same layer/model/site as the parent, in the parent's dtype and device; `source` is e.g. "ito(k=4)";
    `meta` holds the parent's provenance and norm, the feature indices and coefficients (largest first)
    and the cosine between the reconstruction and the parent.
    """
    if not isinstance(parent, Direction):
        raise ValueError(f"parent: expected a Direction, got {type(parent).__name__}")
    if isinstance(row, bool) or not isinstance(row, int) or not -code.batch <= row < code.batch:
        raise ValueError(f"row: expected an int index into the {code.batch} codes, got {row!r}")
    vector = code.reconstruction[row]
    if vector.shape[0] != parent.d_model:
        raise ValueError(f"parent: width {parent.d_model} does not match the code's width {vector.shape[0]}")
    vector = vector.to(device=parent.vector.device, dtype=parent.vector.dtype)
    meta = {
        "parent": {
            "source": parent.source,
            "layer": parent.layer,
            "model": parent.model,
            "site": parent.site,
            "norm": parent.norm,
        },
        "method": code.method,
        "k": code.k,
        "features": code.indices[row].tolist(),
        "coefficients": code.coefficients[row].tolist(),
        "cosine_to_parent": parent.cosine(vector),
        "relative_error": float(code.relative_error[row]),
    }
    return parent.with_vector(vector, source=code.source, meta=meta)


@torch.no_grad()
def encoding_difference(
    pos_codes: Float[Tensor, "n_pos n_atoms"],
    neg_codes: Float[Tensor, "n_neg n_atoms"],
    k: int,
) -> tuple[Int[Tensor, "k"], Float[Tensor, "k"]]:
    """The k features whose mean SAE encoding rises most from the negative set to the positive set.

    Returns `(indices, values)`, values = mean(pos) − mean(neg) at those features, largest first
    (a feature more active on the negative set has a negative value and is only returned when
    fewer than k features rise).
    """
    for name, codes in (("pos_codes", pos_codes), ("neg_codes", neg_codes)):
        if not isinstance(codes, Tensor) or codes.ndim != 2:
            shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(f"{name}: expected a 2-D tensor [n, n_atoms] of SAE encodings, got {shape}")
        if codes.shape[0] == 0:
            raise ValueError(f"{name}: expected at least one encoding, got none")
        if not codes.is_floating_point() or not torch.isfinite(codes).all():
            raise ValueError(f"{name}: expected finite floating-point encodings")
    if pos_codes.shape[1] != neg_codes.shape[1]:
        raise ValueError(
            f"neg_codes: expected n_atoms = {pos_codes.shape[1]} (as pos_codes), got {neg_codes.shape[1]}"
        )
    _check_k(k, pos_codes.shape[1])
    dtype = _compute_dtype(pos_codes, neg_codes)
    difference = pos_codes.to(dtype).mean(0) - neg_codes.to(device=pos_codes.device, dtype=dtype).mean(0)
    values, indices = difference.topk(k)
    return indices, values
