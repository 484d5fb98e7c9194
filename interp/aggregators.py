"""Aggregators: activations of the two sides of a contrast in, one vector per layer out.

Every aggregator has one signature,

    aggregator(positive: [n_pos, n_layers, d_model], negative: [n_neg, n_layers, d_model]) -> [n_layers, d_model]

(the layout `interp.caa.caa_activations` returns), works on all layers at once (the layer axis is a batch
axis of one tensor op, never a Python loop), and is registered under a name with one line:

    @aggregator("my_way", paired=True)
    def my_way(positive, negative): ...

`paired=True` ones need row i of `positive` and of `negative` to be the two sides of one pair (the same
question answered both ways); the others take any two sets. Mean difference returns the vector as found
(its norm means something: the mean shift between the sides); the others return unit vectors (their norms
mean nothing), oriented so that the positive side projects higher on average. `benchmarks/bench_peers.py` checks
each against the peer's of the same name on the same weights and strings (BENCHMARKS.md: cosine ≥ 0.9998 at every
layer, except `linear`, where steering-vectors' float32 least squares keeps rounding noise; ours is float64).

| name | what | from |
|---|---|---|
| `mean_difference` | mean(positive) − mean(negative) | CAA; steering-vectors `mean_aggregator` |
| `pca_diff` | top principal component of the paired differences (centred) | repeng `method="pca_diff"` |
| `pca_center` | top principal component of each pair centred on its midpoint | repeng `method="pca_center"`; equals steering-vectors `pca_aggregator` |
| `logistic` | logistic regression (no intercept, C=1) on the pair-centred rows | steering-vectors `logistic_aggregator` |
| `linear` | least-squares (minimum-norm) regression onto ±1 of the pair-centred rows | steering-vectors `linear_aggregator` (no longer exported by 0.12.2, whose regression helper still computes it) |
| `probe` | `interp.probes`' standardised logistic probe, its raw-space weight | `interp.probes.train_probe` |
| `lda` | mean difference whitened by the shrunk within-class covariance | Fisher's linear discriminant |

Why the two PCAs differ: centring the differences removes their mean, so `pca_diff` finds the direction in
which pairs *differ from each other* most. When the difference carries a term whose sign flips between pairs
(which answer letter is the matching one, in A/B data), that term has the largest variance and `pca_diff`
returns it instead of the behaviour (tests/test_aggregators.py plants exactly that). `pca_center` does not
centre the differences, so the mean shift counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp._checks import finite_number, finite_tensor
from interp.probes import fit_logistic, standardisation
from interp.vectors import SteeringVectors

Aggregator = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AggregatorSpec:
    """A registered aggregator: activations of two sides → one vector per layer.

    Attributes:
        name: the name it is registered and chosen by (`"mean_difference"`, `"logistic"`, ...).
        function: the aggregator itself (positive and negative activations `[n, n_layers, d_model]` →
            `[n_layers, d_model]`).
        paired: whether row i of both sides must be one pair (so both sides need the same length).
        unit: whether it returns unit vectors (their norms carry no meaning).
    """

    name: str
    function: Aggregator
    paired: bool  # needs row i of both sides to be one pair
    unit: bool  # returns unit vectors (its norms mean nothing)

    def __repr__(self) -> str:
        return f"AggregatorSpec({self.name!r}, paired={self.paired}, unit={self.unit})"


AGGREGATORS: dict[str, AggregatorSpec] = {}


def aggregator(name: str, *, paired: bool, unit: bool = True) -> Callable[[Aggregator], Aggregator]:
    """Register `function` as the aggregator `name` (a new one is this decorator on one function)."""
    def register(function: Aggregator) -> Aggregator:
        if name in AGGREGATORS:
            raise ValueError(f"aggregator: {name!r} is already registered")
        AGGREGATORS[name] = AggregatorSpec(name, function, paired, unit)
        return function

    return register


def aggregate(
    name: str | Aggregator,
    positive: Float[Tensor, "n_pos n_layers d_model"],
    negative: Float[Tensor, "n_neg n_layers d_model"],
    **options: Any,
) -> Float[Tensor, "n_layers d_model"]:
    """The registered aggregator `name` (or any function of the same signature) applied after the input checks:
    finite floating-point tensors of shape [n, n_layers, d_model] that agree beyond the first axis, and the
    same number of rows when the aggregator pairs them. `options` go to the aggregator (`c=` for logistic,
    `l2=` for probe, `shrinkage=` for lda). Returned in the inputs' dtype."""
    spec = AGGREGATORS.get(name) if isinstance(name, str) else None
    if isinstance(name, str) and spec is None:
        raise ValueError(f"aggregator: expected one of {sorted(AGGREGATORS)}, got {name!r}")
    if not isinstance(name, str) and not callable(name):
        raise TypeError(f"aggregator: expected a registered name or a function, got {type(name).__name__}")
    for argument, value in (("positive", positive), ("negative", negative)):
        finite_tensor(value, argument)
        if value.ndim != 3 or value.shape[0] == 0:
            raise ValueError(f"{argument}: expected [n >= 1, n_layers, d_model], got {tuple(value.shape)}")
    if positive.shape[1:] != negative.shape[1:]:
        raise ValueError(f"negative: shape {tuple(negative.shape)} does not match positive's {tuple(positive.shape)} "
                         "beyond the first (row) axis")
    if spec is not None and spec.paired and positive.shape[0] != negative.shape[0]:
        raise ValueError(f"aggregator: {spec.name!r} pairs row i of positive with row i of negative, but they have "
                         f"{positive.shape[0]} and {negative.shape[0]} rows")
    vectors = (spec.function if spec is not None else name)(positive, negative, **options)
    expected = positive.shape[1:]
    if not isinstance(vectors, Tensor) or vectors.shape != expected or not bool(torch.isfinite(vectors).all()):
        what = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise ValueError(f"aggregator: {getattr(spec, 'name', name)!r} returned {what}; expected finite {tuple(expected)}")
    return vectors.to(positive.dtype)


def aggregate_vectors(
    name: str | Aggregator,
    positive: Float[Tensor, "n_pos n_layers d_model"],
    negative: Float[Tensor, "n_neg n_layers d_model"],
    layers: Sequence[int],
    model: str,
    *,
    site: str = "resid_pre",
    meta: dict[str, Any] | None = None,
    **options: Any,
) -> SteeringVectors:
    """`aggregate` on activations read at `layers` (axis 1) of `model`, as `SteeringVectors` named after the aggregator."""
    vectors = aggregate(name, positive, negative, **options)
    label = name if isinstance(name, str) else getattr(name, "__name__", "aggregator")
    return SteeringVectors(vectors, tuple(layers), model, label, site,
                           {"aggregator": label, "n_positive": positive.shape[0], "n_negative": negative.shape[0],
                            **(meta or {})})


# ---------------------------------------------------------------------------------------------
# Shared pieces (float64, layer axis first)
# ---------------------------------------------------------------------------------------------


def _mean_difference(positive: Tensor, negative: Tensor) -> Float[Tensor, "n_layers d_model"]:
    # not interp.activations.mean_difference: that module imports the runner, which imports this one
    return positive.double().mean(0) - negative.double().mean(0)


def _layer_first(x: Tensor) -> Float[Tensor, "n_layers n d_model"]:
    return x.detach().double().transpose(0, 1)


def _differences(positive: Tensor, negative: Tensor) -> Float[Tensor, "n_layers n_pairs d_model"]:
    return _layer_first(positive) - _layer_first(negative)


def _oriented_unit(vectors: Float[Tensor, "n_layers d_model"], positive: Tensor, negative: Tensor) -> Tensor:
    """Unit vectors, each signed so the positive side's mean projects above the negative side's (PCA and
    regression weights come with an arbitrary or fitted sign; this makes every aggregator agree on it)."""
    norms = vectors.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        layer = int((norms[:, 0] == 0).nonzero()[0])
        raise ValueError(f"aggregator: the vector at layer index {layer} is zero (the two sides do not differ there)")
    shift = _mean_difference(positive, negative)
    sign = torch.where((shift * vectors).sum(-1, keepdim=True) < 0, -1.0, 1.0).double()
    return sign * vectors / norms


def _top_component(rows: Float[Tensor, "n_layers n d_model"]) -> Float[Tensor, "n_layers d_model"]:
    """The top right singular vector of each layer's rows (uncentred PCA; centre first for the usual one)."""
    if rows.shape[1] < 1:
        raise ValueError("aggregator: PCA needs at least one row")
    flat = rows.abs().amax(dim=(1, 2)) == 0
    if bool(flat.any()):
        raise ValueError(f"aggregator: at layer index {int(flat.nonzero()[0])} the rows are all zero (the two sides do "
                         "not differ there), so they have no principal component")
    return torch.linalg.svd(rows, full_matrices=False).Vh[:, 0]


def _pair_centred(positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
    """Each pair centred on its midpoint (rows ±δ/2), layer first, and labels 1 / 0 for the two halves."""
    half = _differences(positive, negative) / 2
    rows = torch.cat([half, -half], dim=1)
    labels = torch.cat([torch.ones(half.shape[1]), torch.zeros(half.shape[1])]).double()
    return rows, labels


# ---------------------------------------------------------------------------------------------
# The aggregators
# ---------------------------------------------------------------------------------------------


@aggregator("mean_difference", paired=False, unit=False)
def mean_difference(positive: Tensor, negative: Tensor) -> Float[Tensor, "n_layers d_model"]:
    """mean(positive) − mean(negative): the CAA vector (as found, not normalised)."""
    return _mean_difference(positive, negative)


@aggregator("pca_diff", paired=True)
def pca_diff(positive: Tensor, negative: Tensor) -> Float[Tensor, "n_layers d_model"]:
    """Top principal component of the paired differences, centred (repeng's default)."""
    if positive.shape[0] < 2:
        raise ValueError("aggregator: 'pca_diff' needs at least two pairs (it centres the differences)")
    differences = _differences(positive, negative)
    top = _top_component(differences - differences.mean(dim=1, keepdim=True))
    return _oriented_unit(top, positive, negative)


@aggregator("pca_center", paired=True)
def pca_center(positive: Tensor, negative: Tensor) -> Float[Tensor, "n_layers d_model"]:
    """Top principal component of the pairs centred on their midpoints, i.e. the uncentred top component of
    the differences (repeng's `pca_center`; the same direction as steering-vectors' `pca_aggregator`)."""
    return _oriented_unit(_top_component(_differences(positive, negative)), positive, negative)


def _logistic_weights(rows: Float[Tensor, "n_layers n d_model"], signs: Float[Tensor, "n"], c: float, *,
                      max_iter: int = 100) -> Float[Tensor, "n_layers d_model"]:
    """argmin ½‖w‖² + C·Σ log(1 + exp(−sᵢ w·xᵢ)) per layer, no intercept (scikit-learn's LogisticRegression with
    fit_intercept=False), by damped Newton steps on all layers at once. Newton's steps do not depend on the scale
    of the rows, which differs between layers by 100×; one L-BFGS on the summed objectives stopped far from some
    layers' optima (cosine 0.94 to scikit-learn's on SmolLM2's A/B pairs at 30 layers)."""
    n, d = rows.shape[1], rows.shape[2]
    l2 = 1.0 / (c * n)  # the objective divided by C·n: mean loss + l2/2·‖w‖²
    eye = torch.eye(d, dtype=torch.float64)

    def objective(w: Tensor) -> Tensor:
        margins = signs * (rows @ w[..., None])[..., 0]
        return torch.nn.functional.softplus(-margins).mean(-1) + 0.5 * l2 * (w * w).sum(-1)

    weight = torch.zeros(rows.shape[0], d, dtype=torch.float64)
    for _ in range(max_iter):
        p = torch.sigmoid(-signs * (rows @ weight[..., None])[..., 0])  # [n_layers, n]
        gradient = -(rows * (signs * p)[..., None]).mean(1) + l2 * weight
        hessian = (rows * (p * (1 - p))[..., None] / n).transpose(1, 2) @ rows + l2 * eye
        factor, info = torch.linalg.cholesky_ex(hessian)  # positive definite (l2 > 0); Cholesky, as lda explains
        if bool((info != 0).any()):
            raise ValueError("aggregator: 'logistic' met a singular Hessian (rows too large for float64?)")
        step = torch.cholesky_solve(gradient[..., None], factor)[..., 0]
        decrement = (gradient * step).sum(-1)  # Newton decrement²: the objective's remaining gap, about half of it
        if bool((decrement <= 1e-20 * (1 + objective(weight).abs())).all()):
            break
        t, before = torch.ones(rows.shape[0], dtype=torch.float64), objective(weight)
        for _ in range(40):  # backtracking per layer (Armijo)
            ok = objective(weight - t[:, None] * step) <= before - 1e-4 * t * decrement
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t / 2)
        weight = weight - t[:, None] * step
    return weight


@aggregator("logistic", paired=True)
def logistic(positive: Tensor, negative: Tensor, *, c: float = 1.0) -> Float[Tensor, "n_layers d_model"]:
    """Logistic regression of the pair-centred rows (+δ/2 positive, −δ/2 negative) without intercept, L2
    strength as scikit-learn's C (steering-vectors' `logistic_aggregator`, at its optimum: scikit-learn stops
    after 100 iterations or a gradient of 1e-4, which leaves cosines of 0.9996–0.9999 to the optimum on real
    activations); the symmetric rows make the optimal intercept exactly 0, so fitting one would change nothing."""
    if finite_number(c, "c") <= 0:
        raise ValueError(f"c: expected > 0, got {c!r}")
    rows, labels = _pair_centred(positive, negative)
    return _oriented_unit(_logistic_weights(rows, 2 * labels - 1, c), positive, negative)


@aggregator("linear", paired=True)
def linear(positive: Tensor, negative: Tensor) -> Float[Tensor, "n_layers d_model"]:
    """Least-squares regression of the pair-centred rows onto +1 / −1, minimum-norm when underdetermined
    (steering-vectors' `linear_aggregator`). The ±δ/2 rows make it argmin ‖δ w − 1‖, i.e. pinv(δ) · 1."""
    differences = _differences(positive, negative)
    weight = torch.linalg.pinv(differences) @ torch.ones(differences.shape[:2] + (1,), dtype=torch.float64)
    return _oriented_unit(weight[..., 0], positive, negative)


@aggregator("probe", paired=False)
def probe(positive: Tensor, negative: Tensor, *, l2: float = 1e-2) -> Float[Tensor, "n_layers d_model"]:
    """`interp.probes`' probe, one per layer fitted at once: standardised inputs, logistic loss + L2 (`l2` as in
    `train_probe`), with intercept; the raw-space weight (weight / scale), unit norm."""
    rows = torch.cat([_layer_first(positive), _layer_first(negative)], dim=1)
    labels = torch.cat([torch.ones(positive.shape[0]), torch.zeros(negative.shape[0])]).double()
    mean, scale = standardisation(rows)
    weight, _ = fit_logistic((rows - mean[:, None]) / scale[:, None], labels, l2=finite_number(l2, "l2"))
    return _oriented_unit(weight / scale, positive, negative)


@aggregator("lda", paired=False)
def lda(positive: Tensor, negative: Tensor, *, shrinkage: float = 0.1) -> Float[Tensor, "n_layers d_model"]:
    """Fisher's discriminant: the mean difference times the inverse within-class covariance, shrunk towards
    its mean variance (`shrinkage` in [0, 1]; some is needed when rows are fewer than dimensions)."""
    if not 0 <= finite_number(shrinkage, "shrinkage") <= 1:
        raise ValueError(f"shrinkage: expected a number in [0, 1], got {shrinkage!r}")
    pos, neg = _layer_first(positive), _layer_first(negative)
    centred = torch.cat([pos - pos.mean(1, keepdim=True), neg - neg.mean(1, keepdim=True)], dim=1)
    within = centred.transpose(1, 2) @ centred / max(centred.shape[1] - 2, 1)
    d = within.shape[-1]
    average = within.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)[:, None, None]
    shrunk = (1 - shrinkage) * within + shrinkage * average * torch.eye(d, dtype=torch.float64)
    shift = pos.mean(1) - neg.mean(1)
    # Cholesky, not torch.linalg.solve: the matrix is symmetric positive definite, and batched LU in MKL fails
    # here (DLASWP parameter errors, then a hang) for [n_layers, 576, 576] float64.
    factor, info = torch.linalg.cholesky_ex(shrunk)
    if bool((info != 0).any()):
        raise ValueError("shrinkage: the within-class covariance is singular; use shrinkage > 0")
    return _oriented_unit(torch.cholesky_solve(shift[..., None], factor)[..., 0], positive, negative)
