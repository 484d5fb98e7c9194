"""The layer over the solvers: pick one by name, turn a code into a `Direction`, rank features by encoding."""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.dictionaries import Dictionary
from interp.directions import Direction
from interp.sparse.code import SparseCode
from interp.sparse.inputs import check_k, compute_dtype
from interp.sparse.lasso import fista_k
from interp.sparse.paths import Path
from interp.sparse.pursuit import gradient_pursuit, omp

Method = Literal["ito", "fista", "omp"]
METHODS: tuple[str, ...] = ("ito", "fista", "omp")


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
    path: Path = "auto",
) -> SparseCode:
    """k-sparse codes of `targets` in the dictionary `atoms` with one of "ito" (gradient pursuit),
    "fista" (`fista_k`) or "omp". Non-negative by default, like SAE feature activations. `refit` applies
    to "ito" only (the other two always end with a least-squares fit on their support); `path` (how
    correlations are computed, see `gradient_pursuit`) to "ito" and "omp"."""
    if method == "ito":
        return gradient_pursuit(
            targets, atoms, k, nonnegative=nonnegative, refit=refit, gram=gram, batch_size=batch_size, path=path
        )
    if method == "fista":
        return fista_k(targets, atoms, k, nonnegative=nonnegative, gram=gram, batch_size=batch_size)
    if method == "omp":
        return omp(targets, atoms, k, nonnegative=nonnegative, gram=gram, batch_size=batch_size, path=path)
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
    check_k(k, pos_codes.shape[1])
    dtype = compute_dtype(pos_codes, neg_codes)
    difference = pos_codes.to(dtype).mean(0) - neg_codes.to(device=pos_codes.device, dtype=dtype).mean(0)
    values, indices = difference.topk(k)
    return indices, values


def code_direction(
    direction: Direction,
    dictionary: Dictionary,
    k: int,
    method: Method = "ito",
    *,
    allow_other_layer: bool = False,
    nonnegative: bool = True,
    **options: Any,
) -> Direction:
    """`direction` coded with k of `dictionary`'s atoms, as a Direction that records its parent.

    The direction must live where the atoms do (an SAE's hook, a transcoder's output site; resid_post of L
    counts as resid_pre of L + 1): a vector from another layer or site is refused unless `allow_other_layer`
    (a deliberate cross-layer study). `options` go to `sparse_code`.
    """
    if not isinstance(dictionary, Dictionary):
        raise ValueError(f"dictionary: expected an interp.dictionaries.Dictionary, got {type(dictionary).__name__}")
    if not isinstance(direction, Direction):
        raise ValueError(f"direction: expected a Direction, got {type(direction).__name__}")
    dictionary.check_direction(direction, allow_other_layer=allow_other_layer)
    target = direction.vector.to(dictionary.atoms.device)[None]
    code = sparse_code(target, dictionary.atoms, k, method, nonnegative=nonnegative, **options)
    return reconstruction_direction(code, direction)
