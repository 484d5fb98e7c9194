"""Screened atom selection: a bf16 correlation matmul narrows the choice, fp32 makes it.

Exact greedy selection needs `argmax_a ⟨r, d_a⟩` over the whole dictionary every step, and that
matmul is nearly the whole cost of a pursuit. Where bf16 matmuls are fast (Intel AMX: 4–8x the fp32
rate of the same core) the screen computes every correlation in bf16, then:

1. the maximum of each block of `_BLOCK` atoms (one pass over the screened values, vectorised over
   targets), and the best screened value v̂ per target;
2. the "hot" blocks, whose maximum is at least v̂ − 2·bound, and in them the atoms that are too;
3. the exact fp32 correlations of those few atoms (typically one to three per target), and the best.

Every screened value is within `bound = tol · ‖r‖` of the exact one (`screen_tolerance`, a rounding
error bound, not an estimate). The atom that screens best has an exact value ≥ v̂ − bound, so an atom
whose screened value is below v̂ − 2·bound has an exact value below it and cannot be the argmax (nor
tie with it): the exact winner is always among the atoms of step 3, and the selection equals the
fp32 path's (up to fp32 rounding of near-exact ties). Targets with more than a few blocks or atoms
within reach (a zero residual, duplicated atoms) are decided by the fp32 matmul instead.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.sparse.code import combine_atoms
from interp.sparse.correlate import Correlator

_BLOCK = 32  # atoms per block of the block-max pass
# Beyond these many blocks or atoms within reach of the best one, a target takes the fp32 matmul: they
# bound the candidates' memory (the gathered atoms) at a few MB per 1,024 targets.
_MAX_HOT_BLOCKS = 16
_MAX_CANDIDATES = 32
_SCREEN_DTYPE = torch.bfloat16
_UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}


def screen_tolerance(d_model: int, max_atom_norm: float, device_type: str) -> float:
    """`bound / ‖r‖`: how far a screened correlation can be from the exact one.

    With unit roundoff u = 2⁻⁸ (bf16) and ρ, a the rounded residual and atom: |⟨r,d⟩ − ⟨ρ,a⟩| ≤
    u‖r‖‖d‖ + u‖ρ‖‖d‖(1+u) (input rounding), plus d·2⁻²⁴‖ρ‖‖a‖ (fp32 accumulation in any order),
    plus u|⟨ρ,a⟩| (the bf16 output). cuBLAS may also reduce split-K partial sums in bf16
    (`allow_bf16_reduced_precision_reduction`), so on a GPU a few more roundings of the same size are
    allowed for. A 10% margin covers the (1+u)² factors.
    """
    u, u32 = _UNIT_ROUNDOFF[_SCREEN_DTYPE], _UNIT_ROUNDOFF[torch.float32]
    roundings = 3 if device_type == "cpu" else 3 + 16
    return 1.1 * max_atom_norm * (roundings * u + d_model * u32)


class ScreenedCorrelator:
    """Selection and support correlations for one chunk of targets, by the bf16 screen (module docstring).

    The interface of `Correlator`: `next_atom` returns the selected atom and the exact fp32
    correlations of the residual with the support and with the new atom; `update` is a no-op, since the
    residual is rebuilt from the weights every step (O(batch · t · d), from the gathered support atoms).
    Every buffer larger than a few rows per target is allocated once per chunk: a fresh multi-MB
    tensor per step costs page faults comparable to the step's arithmetic.
    """

    def __init__(
        self, x: Float[Tensor, "batch d"], atoms: Float[Tensor, "n_atoms d"], screen: ScreenAtoms, k: int
    ) -> None:
        self.x, self.atoms, self.screen = x, atoms, screen
        batch, width = x.shape
        n_padded = screen.atoms.shape[0]
        # [padded atoms, batch]: the block-max pass then reduces a middle dimension, vectorised over
        # targets; on a CPU this layout is also the faster bf16 matmul (as in `Correlator`).
        self.screened = x.new_empty((n_padded, batch), dtype=_SCREEN_DTYPE)
        self.block_max = x.new_empty((n_padded // _BLOCK, batch), dtype=_SCREEN_DTYPE)
        self.hot_blocks = x.new_empty((n_padded // _BLOCK, batch), dtype=torch.bool)
        self.residual = x.new_empty((batch, width))
        self.residual_low = x.new_empty((batch, width), dtype=_SCREEN_DTYPE)
        self.support_atoms = x.new_empty((batch, k, width))
        self.column = torch.arange(batch, device=x.device)
        self.offsets = torch.arange(_BLOCK, device=x.device)
        self.exact_fallbacks = 0  # targets whose choice needed the fp32 matmul (for tests, diagnostics)

    def next_atom(
        self, support: Int[Tensor, "batch t"], weights: Float[Tensor, "batch t"], nonnegative: bool
    ) -> tuple[Int[Tensor, "batch"], Float[Tensor, "batch t"], Float[Tensor, "batch"]]:
        t = support.shape[1]
        residual = self.x
        if t:
            residual = torch.sub(self.x, combine_atoms(support, weights, self.atoms), out=self.residual)
        new = self._select(residual, support, nonnegative)
        torch.index_select(self.atoms, 0, new, out=self.support_atoms[:, t])
        on_support = _dots(self.support_atoms[:, : t + 1], residual)
        return new, on_support[:, :t], on_support[:, t]

    def update(self, support: Tensor, delta: Tensor) -> None:
        """Nothing to do: the next step rebuilds the residual from the weights."""

    def _select(
        self, residual: Float[Tensor, "batch d"], support: Int[Tensor, "batch t"], nonnegative: bool
    ) -> Int[Tensor, "batch"]:
        n_atoms, (n_padded, batch) = self.atoms.shape[0], self.screened.shape
        screened, column = self.screened, self.column
        self.residual_low.copy_(residual)
        torch.matmul(self.screen.atoms, self.residual_low.T, out=screened)
        if not nonnegative:
            screened.abs_()  # the exact step below recovers the signs
        screened[n_atoms:] = -math.inf  # padding rows never win
        flat = screened.view(-1)  # element (atom a, target b) is flat[a · batch + b]
        if support.shape[1]:
            flat.index_fill_(0, (support * batch + column[:, None]).flatten(), -math.inf)
        # Both reductions run along dimension 0 or a middle one: vectorised over targets.
        block_max = torch.amax(screened.view(n_padded // _BLOCK, _BLOCK, batch), dim=1, out=self.block_max)
        # Any atom that can be the exact argmax screens within 2·bound of the best screened value.
        threshold = block_max.amax(dim=0).float() - 2 * self.screen.tolerance * _norm(residual)
        hot = torch.ge(block_max, threshold, out=self.hot_blocks)  # [n_blocks, batch]
        block, target = _uncrowded(*hot.nonzero().unbind(1), batch, _MAX_HOT_BLOCKS)
        atom = (block[:, None] * _BLOCK + self.offsets).flatten()
        target = target.repeat_interleave(_BLOCK)
        keep = flat.take(atom * batch + target) >= threshold[target]
        atom, target = _uncrowded(atom[keep], target[keep], batch, _MAX_CANDIDATES)
        exact = torch.linalg.vecdot(self.atoms.index_select(0, atom), residual.index_select(0, target))
        chosen = _best_per_target(exact, atom, target, batch, n_atoms, nonnegative)
        undecided = chosen == n_atoms  # crowded targets: no candidates left
        if bool(undecided.any()):
            rows = undecided.nonzero().flatten()
            self.exact_fallbacks += rows.numel()
            chosen[rows] = _exact_select(residual[rows], self.atoms, support[rows], nonnegative)
        return chosen


def _uncrowded(
    item: Int[Tensor, "m"], target: Int[Tensor, "m"], batch: int, limit: int
) -> tuple[Int[Tensor, "m2"], Int[Tensor, "m2"]]:
    """(item, target) pairs without those of targets that have more than `limit` items."""
    crowded = torch.bincount(target, minlength=batch) > limit
    if not bool(crowded.any()):
        return item, target
    keep = ~crowded[target]
    return item[keep], target[keep]


def _norm(vectors: Float[Tensor, "batch d"]) -> Float[Tensor, "batch"]:
    return torch.linalg.vector_norm(vectors, dim=1)


def _best_per_target(
    exact: Float[Tensor, "m"], atom: Int[Tensor, "m"], target: Int[Tensor, "m"], batch: int, n_atoms: int,
    nonnegative: bool,
) -> Int[Tensor, "batch"]:
    """Per target, the candidate `Correlator.select` would pick: the largest value (the largest |value|
    with a positive one winning a tie if not `nonnegative`), ties to the lowest atom index; `n_atoms`
    for a target without candidates."""
    best_atom, best_value = _extreme_per_target(exact, atom, target, batch, n_atoms, "amax")
    if nonnegative:
        return best_atom
    worst_atom, worst_value = _extreme_per_target(exact, atom, target, batch, n_atoms, "amin")
    return torch.where(-worst_value > best_value, worst_atom, best_atom)


def _extreme_per_target(
    exact: Tensor, atom: Tensor, target: Tensor, batch: int, n_atoms: int, reduce: str
) -> tuple[Int[Tensor, "batch"], Float[Tensor, "batch"]]:
    start = -math.inf if reduce == "amax" else math.inf
    value = exact.new_full((batch,), start).scatter_reduce(0, target, exact, reduce)
    winners = exact == value[target]
    first = torch.full((batch,), n_atoms, dtype=atom.dtype, device=atom.device)
    return first.scatter_reduce(0, target[winners], atom[winners], "amin"), value


def _dots(rows: Float[Tensor, "batch m d"], vectors: Float[Tensor, "batch d"]) -> Float[Tensor, "batch m"]:
    """⟨rows[b, i], vectors[b]⟩ as `[b, 1, d] × [b, d, m]`: ~2x faster on a CPU than `[b, m, d] × [b, d, 1]`."""
    return torch.matmul(vectors.unsqueeze(1), rows.transpose(1, 2)).squeeze(1)


def _exact_select(
    residual: Float[Tensor, "rows d"], atoms: Tensor, support: Int[Tensor, "rows t"], nonnegative: bool
) -> Int[Tensor, "rows"]:
    return Correlator(residual, atoms, None).select(support, nonnegative)


class ScreenAtoms:
    """The bf16 copy of a dictionary used by the screen, padded with zero rows to whole blocks."""

    def __init__(self, atoms: Float[Tensor, "n_atoms d"], max_atom_norm: float) -> None:
        n_atoms, width = atoms.shape
        n_padded = -(-n_atoms // _BLOCK) * _BLOCK
        self.atoms = atoms.new_zeros((n_padded, width), dtype=_SCREEN_DTYPE)
        self.atoms[:n_atoms] = atoms
        self.tolerance = screen_tolerance(width, max_atom_norm, atoms.device.type)
