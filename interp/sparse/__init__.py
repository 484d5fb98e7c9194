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

`sparse_code` picks one by name; `reconstruction_direction` turns a code into a `Direction` that
records its parent; `code_direction` codes a `Direction` in a `Dictionary`'s atoms, refusing one from another
layer or site (a transcoder's atoms live at its output site) unless `allow_other_layer=True`; `encoding_difference` ranks features by how much their mean encoding rises.

Conventions shared by every function here:

- A 1-D target is treated as a batch of one; results always carry the batch dimension.
- Work happens on `atoms.device` (targets are moved there) in `promote(targets, atoms, float32)`:
  half-precision inputs are computed and returned in fp32, float64 stays float64.
- The dominant cost of the greedy methods is one `[batch, d] × [d, n_atoms]` correlation matmul per
  step. `path=` (`paths.Path`, default "auto") picks how it is paid, every choice exact: the fp32
  matmul; a Gram matrix (`[n_atoms, n_atoms]`, only sensible for small dictionaries: 4,608 atoms →
  85 MB), with which the correlations are updated incrementally ("Batch-OMP", Rubinstein, Zibulevsky
  & Elad 2008: `corr ← corr − Δw · G[support]`, t rows of G per target instead of the whole
  dictionary), computed once per dictionary and cached (`clear_gram_cache`) or passed as `gram=`;
  or a bf16 "screen" matmul whose few near-best atoms are then decided in fp32, where bf16 matmuls
  are fast (AMX).
"""

from interp.sparse.code import SparseCode
from interp.sparse.inputs import atom_gram, default_batch_size
from interp.sparse.lasso import fista, fista_k, lipschitz_constant
from interp.sparse.paths import PATHS, Path, clear_gram_cache
from interp.sparse.pursuit import gradient_pursuit, omp
from interp.sparse.reconstruct import (
    METHODS,
    Method,
    code_direction,
    encoding_difference,
    reconstruction_direction,
    sparse_code,
)

__all__ = [
    "METHODS",
    "PATHS",
    "Method",
    "Path",
    "SparseCode",
    "atom_gram",
    "clear_gram_cache",
    "code_direction",
    "default_batch_size",
    "encoding_difference",
    "fista",
    "fista_k",
    "gradient_pursuit",
    "lipschitz_constant",
    "omp",
    "reconstruction_direction",
    "sparse_code",
]
