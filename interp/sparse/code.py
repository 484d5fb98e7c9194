"""The `SparseCode` result type, and how a solver's per-chunk output becomes one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from interp.sparse.inputs import chunk_slices


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


def finish_code(
    x: Float[Tensor, "batch d_model"],
    atoms: Float[Tensor, "n_atoms d_model"],
    indices: Int[Tensor, "batch k"],
    coefficients: Float[Tensor, "batch k"],
    lam: Tensor | None = None,
    *,
    method: str,
) -> SparseCode:
    """Build a `SparseCode` from a solver's support and coefficients: sorted largest first, with reconstructions and errors.

    Args:
        x: `[batch, d_model]` targets.
        atoms: `[n_atoms, d_model]` dictionary atoms.
        indices: `[batch, k]` chosen atoms.
        coefficients: `[batch, k]` their weights.
        lam: `[batch]` the lasso penalties reached (FISTA), or None.
        method: the solver's name, recorded in the code.

    Returns:
        The code: indices and coefficients ordered by |coefficient|, the reconstruction `[batch, d_model]`,
        relative error and cosine to the target per row.
    """
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


def run_chunked(x: Tensor, atoms: Tensor, batch_size: int | None, method: str, solve: Any) -> SparseCode:
    """`solve(x_chunk)` returns (indices, coefficients) or (indices, coefficients, lam)."""
    codes = []
    for rows in chunk_slices(x.shape[0], atoms.shape[0], batch_size, atoms.device):
        codes.append(finish_code(x[rows], atoms, *solve(x[rows]), method=method))
    return _concat(codes)


def combine_atoms(
    support: Int[Tensor, "batch t"], weights: Float[Tensor, "batch t"], atoms: Tensor
) -> Float[Tensor, "batch d"]:
    """Σ_j weights[:, j] · atoms[support[:, j]]: an embedding-bag, never materialising [batch, t, d]."""
    return F.embedding_bag(support, atoms, per_sample_weights=weights, mode="sum")
