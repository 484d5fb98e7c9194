"""Sparse reconstruction: planted ground truth on random SAE-sized dictionaries, plus the contracts.

Planted targets are non-negative combinations of k distinct random unit atoms with coefficients
uniform in [1, 3], so an exact support exists and every method is checked against it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp.directions import Direction
from interp.sparse import (
    SparseCode,
    atom_gram,
    encoding_difference,
    fista,
    fista_k,
    gradient_pursuit,
    lipschitz_constant,
    omp,
    reconstruction_direction,
    sparse_code,
)

D_MODEL = 576
METHODS = ("ito", "fista", "omp")


def unit_dictionary(n_atoms: int, d_model: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_model, generator=generator)
    return atoms / atoms.norm(dim=1, keepdim=True)


def planted_targets(
    atoms: torch.Tensor, n_targets: int, k: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets that each combine k distinct atoms, coefficients in [1, 3]; returns (targets, sorted supports)."""
    generator = torch.Generator().manual_seed(seed)
    # k distinct atoms per target without an [n_targets, n_atoms] permutation: drop duplicates from a pool.
    support = torch.randint(0, atoms.shape[0], (n_targets, 4 * k), generator=generator)
    distinct = []
    for row in support:  # test-data construction only
        seen = list(dict.fromkeys(row.tolist()))[:k]
        assert len(seen) == k
        distinct.append(seen)
    support = torch.tensor(distinct)
    coefficients = 1 + 2 * torch.rand(n_targets, k, generator=generator)
    targets = torch.einsum("bk,bkd->bd", coefficients, atoms[support])
    return targets, support.sort(dim=1).values


def support_recovery(code: SparseCode, truth: torch.Tensor) -> float:
    return float((code.indices.sort(dim=1).values == truth).all(dim=1).float().mean())


@pytest.fixture(scope="module")
def atoms_4608() -> torch.Tensor:
    return unit_dictionary(4608, D_MODEL, seed=0)


@pytest.fixture(scope="module")
def atoms_65536() -> torch.Tensor:
    return unit_dictionary(65536, D_MODEL, seed=1)


@pytest.fixture(scope="module")
def small_atoms() -> torch.Tensor:
    return unit_dictionary(96, 24, seed=2)


@pytest.fixture(scope="module")
def coherent_atoms() -> torch.Tensor:
    """Atoms sharing a common direction, as SAE decoders do: here non-negative gradient steps do clip
    (on incoherent random atoms they essentially never do)."""
    generator = torch.Generator().manual_seed(4)
    atoms = torch.randn(96, 24, generator=generator, dtype=torch.float64)
    shared = torch.randn(1, 24, generator=generator, dtype=torch.float64)
    atoms = atoms + 3 * shared * torch.rand(96, 1, generator=generator, dtype=torch.float64)
    return atoms / atoms.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------------
# Planted ground truth


@pytest.mark.parametrize("method", METHODS)
def test_recovers_planted_support_4608_atoms(atoms_4608, method, record_property):
    rates = {}
    for k in (1, 2, 4, 8):
        targets, truth = planted_targets(atoms_4608, 200 if k <= 4 else 100, k, seed=10 + k)
        code = sparse_code(targets, atoms_4608, k, method=method, nonnegative=True)
        rates[k] = support_recovery(code, truth)
        assert (code.coefficients >= 0).all()
    print(f"\n4,608 atoms, {method}: exact-support recovery by k = {rates}")
    record_property(f"recovery_4608_{method}", rates)
    assert all(rates[k] >= 0.95 for k in (1, 2, 4)), rates
    assert rates[8] >= 0.5, rates


@pytest.mark.parametrize("method", METHODS)
def test_recovers_planted_support_65536_atoms(atoms_65536, method, record_property):
    rates = {}
    for k in (4, 8):
        targets, truth = planted_targets(atoms_65536, 40 if k <= 4 else 24, k, seed=20 + k)
        code = sparse_code(targets, atoms_65536, k, method=method, nonnegative=True)
        rates[k] = support_recovery(code, truth)
    print(f"\n65,536 atoms, {method}: exact-support recovery by k = {rates}")
    record_property(f"recovery_65536_{method}", rates)
    assert rates[4] >= 0.95, rates
    assert rates[8] >= 0.5, rates


@pytest.mark.parametrize("method", METHODS)
def test_signed_mode_recovers_signed_targets(atoms_4608, method):
    _, truth = planted_targets(atoms_4608, 100, 4, seed=30)
    # Every other planted atom enters with a negative coefficient: a non-negative code cannot express these.
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
    coefficients = (1 + 2 * torch.rand(100, 4, generator=torch.Generator().manual_seed(31))) * signs
    targets = torch.einsum("bk,bkd->bd", coefficients, atoms_4608[truth])
    code = sparse_code(targets, atoms_4608, 4, method=method, nonnegative=False)
    assert support_recovery(code, truth) >= 0.95
    assert (code.coefficients < 0).sum() >= 190


def test_exact_reconstruction_for_omp_and_fista(atoms_4608):
    """OMP and FISTA(k) end with a least-squares fit: on a recovered planted support the error is ~0."""
    targets, _ = planted_targets(atoms_4608, 50, 4, seed=40)
    for method in ("omp", "fista"):
        code = sparse_code(targets, atoms_4608, 4, method=method)
        assert float(code.relative_error.median()) < 1e-4, method
        assert float(code.cosine.median()) > 1 - 1e-6, method
    # Plain gradient pursuit takes one step per atom and is not exact; the refit makes it so.
    plain = gradient_pursuit(targets, atoms_4608, 4, nonnegative=True)
    refit = gradient_pursuit(targets, atoms_4608, 4, nonnegative=True, refit=True)
    assert torch.equal(plain.indices.sort(1).values, refit.indices.sort(1).values)
    assert float(refit.relative_error.median()) < 1e-4 < float(plain.relative_error.median())


def test_fista_k_fills_up_when_the_target_needs_fewer_atoms(atoms_4608):
    targets, truth = planted_targets(atoms_4608, 20, 2, seed=41)
    code = fista_k(targets, atoms_4608, 4)
    assert code.indices.shape == (20, 4)
    top_two = code.indices[:, :2].sort(dim=1).values  # largest coefficients come first
    assert float((top_two == truth).all(dim=1).float().mean()) >= 0.95
    assert all(len(set(row)) == 4 for row in code.indices.tolist())
    assert float(code.relative_error.max()) < 1e-3


# --------------------------------------------------------------------------------------------------
# Agreement with references


def reference_gradient_pursuit(
    x: np.ndarray, atoms: np.ndarray, k: int, nonnegative: bool
) -> tuple[list[int], np.ndarray]:
    """One target, float64, written for clarity: the documented algorithm and support decision."""
    support: list[int] = []
    weights = np.zeros(0)
    residual = x.copy()
    for _ in range(k):
        corr = atoms @ residual
        corr[support] = -np.inf if nonnegative else 0
        new = int(np.argmax(corr if nonnegative else np.abs(corr)))
        support.append(new)  # a clipped atom stays: it is never removed, never re-selected
        weights = np.append(weights, 0.0)
        gradient = atoms[support] @ residual
        direction = gradient @ atoms[support]
        step = gradient @ gradient / (direction @ direction) if direction @ direction > 0 else 0.0
        weights = weights + step * gradient
        if nonnegative:
            weights = np.maximum(weights, 0)
        residual = x - weights @ atoms[support]
    return support, weights


@pytest.mark.parametrize("nonnegative", [True, False])
def test_gradient_pursuit_matches_reference_including_clipping(coherent_atoms, nonnegative):
    generator = torch.Generator().manual_seed(50)
    atoms = coherent_atoms
    targets = torch.randn(64, atoms.shape[1], generator=generator, dtype=torch.float64)
    k = 10
    code = gradient_pursuit(targets, atoms, k, nonnegative=nonnegative)
    clipped_rows = 0
    for row in range(targets.shape[0]):
        support, weights = reference_gradient_pursuit(targets[row].numpy(), atoms.numpy(), k, nonnegative)
        ours = dict(zip(code.indices[row].tolist(), code.coefficients[row].tolist()))
        assert sorted(ours) == sorted(support)
        np.testing.assert_allclose([ours[i] for i in support], weights, atol=1e-9)
        clipped_rows += int((weights == 0).any())
    if nonnegative:
        # The support decision is exercised: clipped atoms (coefficient exactly 0) are still listed,
        # the k indices stay distinct, and the reconstruction is what the coefficients say.
        assert clipped_rows >= 5
        assert (code.coefficients == 0).any() and (code.coefficients >= 0).all()
        assert all(len(set(row)) == k for row in code.indices.tolist())
        torch.testing.assert_close(
            code.reconstruction, torch.einsum("bk,bkd->bd", code.coefficients, atoms[code.indices])
        )


def test_a_clipped_atom_can_recover(coherent_atoms):
    """Clipped atoms stay in the support and later gradient steps may make them positive again."""
    generator = torch.Generator().manual_seed(51)
    atoms = coherent_atoms
    targets = torch.randn(256, atoms.shape[1], generator=generator, dtype=torch.float64)
    # Gradient pursuit with k steps is the first k steps of a longer run, so runs with growing k
    # show the coefficients step by step.
    was_clipped = torch.zeros(256, atoms.shape[0], dtype=torch.bool)
    for k in range(1, 12):
        code = gradient_pursuit(targets, atoms, k, nonnegative=True)
        dense = code.dense(atoms.shape[0])
        in_support = torch.zeros_like(was_clipped).scatter_(1, code.indices, True)
        assert (in_support >= was_clipped).all()  # a clipped atom never leaves the support
        if (was_clipped & (dense > 0)).any():
            return
        was_clipped |= in_support & (dense == 0)
    pytest.fail("no clipped atom ever came back: the support decision is not exercised")


def test_nonnegative_refits_are_exact_nnls(coherent_atoms):
    """The non-negative least-squares fits (omp's steps, ito's refit) agree with scipy's active-set NNLS."""
    from scipy.optimize import nnls

    generator = torch.Generator().manual_seed(58)
    targets = torch.randn(128, coherent_atoms.shape[1], generator=generator, dtype=torch.float64)
    clipped = 0
    for code in (
        omp(targets, coherent_atoms, 8, nonnegative=True),
        gradient_pursuit(targets, coherent_atoms, 8, nonnegative=True, refit=True),
    ):
        for row in range(targets.shape[0]):
            support = coherent_atoms[code.indices[row]]
            expected, _ = nnls(support.T.numpy(), targets[row].numpy())
            np.testing.assert_allclose(code.coefficients[row].numpy(), expected, atol=1e-9)
            clipped += int((expected == 0).any())
    assert clipped >= 20  # the constraint is active in many rows, so this is not plain least squares


@pytest.mark.parametrize("use_gram", [False, True])
def test_omp_matches_scikit_learn(small_atoms, use_gram):
    from sklearn.linear_model import orthogonal_mp

    generator = torch.Generator().manual_seed(52)
    targets = torch.randn(32, small_atoms.shape[1], generator=generator, dtype=torch.float64)
    atoms = small_atoms.double()
    k = 6
    code = omp(targets, atoms, k, gram=atom_gram(atoms) if use_gram else None)
    expected = orthogonal_mp(atoms.T.numpy(), targets.T.numpy(), n_nonzero_coefs=k).T  # [batch, n_atoms]
    np.testing.assert_allclose(code.dense(atoms.shape[0]).numpy(), expected, atol=1e-8)


def test_gram_path_matches_matmul_path(atoms_4608):
    targets, _ = planted_targets(atoms_4608, 64, 6, seed=53)
    targets = targets + 0.3 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(54))
    gram = atom_gram(atoms_4608)
    for solver in (gradient_pursuit, omp):
        for nonnegative in (True, False):
            plain = solver(targets, atoms_4608, 6, nonnegative=nonnegative, path="matmul")
            fast = solver(targets, atoms_4608, 6, nonnegative=nonnegative, gram=gram)
            assert torch.equal(plain.indices, fast.indices)
            torch.testing.assert_close(plain.coefficients, fast.coefficients, rtol=1e-4, atol=1e-4)


def test_both_matmul_layouts_agree(atoms_4608, monkeypatch):
    """CPUs use the transposed correlation matmul, other devices the direct one: same codes."""
    from interp.sparse import pursuit

    targets = torch.randn(24, D_MODEL, generator=torch.Generator().manual_seed(59))
    transposed = {method: sparse_code(targets, atoms_4608, 5, method=method, path="matmul") for method in METHODS}
    monkeypatch.setattr(pursuit.Correlator, "transpose_on_cpu", False)
    for method in METHODS:
        direct = sparse_code(targets, atoms_4608, 5, method=method, path="matmul")
        assert torch.equal(direct.indices, transposed[method].indices), method
        torch.testing.assert_close(direct.coefficients, transposed[method].coefficients, rtol=1e-4, atol=1e-5)


def test_fista_matches_scikit_learn_lasso(small_atoms):
    from sklearn.linear_model import Lasso

    generator = torch.Generator().manual_seed(55)
    targets = torch.randn(8, small_atoms.shape[1], generator=generator, dtype=torch.float64)
    atoms = small_atoms.double()
    lam = 0.3
    ours = fista(targets, atoms, lam=lam, nonnegative=True, max_iter=5000, tol=1e-10)
    for row in range(targets.shape[0]):
        # sklearn minimises 1/(2 n_samples) ‖y − Xw‖² + α‖w‖₁ with n_samples = d_model: α = λ / d_model.
        alpha = lam / atoms.shape[1]
        lasso = Lasso(alpha=alpha, positive=True, fit_intercept=False, tol=1e-12, max_iter=100000)
        lasso.fit(atoms.T.numpy(), targets[row].numpy())
        np.testing.assert_allclose(ours[row].numpy(), lasso.coef_, atol=1e-6)
    assert (ours >= 0).all() and (ours == 0).any()


def test_fista_k_support_is_the_full_dictionary_lasso_support():
    """The working set is only a speed-up: with a tiny one, KKT rounds must still find the lasso's support."""
    atoms = unit_dictionary(512, 32, seed=3)
    targets, _ = planted_targets(atoms, 16, 3, seed=56)
    targets = targets + 0.2 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(57))
    code = fista_k(targets, atoms, 3, working_set=1, tol=1e-7, max_iter=3000)
    full = fista(targets, atoms, lam=code.lam, max_iter=20000, tol=1e-9)
    matches = 0
    for row in range(targets.shape[0]):
        lasso_support = set(full[row].nonzero().flatten().tolist())
        if len(lasso_support) == 3:
            matches += int(lasso_support == set(code.indices[row].tolist()))
        else:
            matches += int(set(code.indices[row].tolist()) <= lasso_support)
    assert matches >= 15


def test_lipschitz_constant_bounds_the_top_eigenvalue(atoms_4608):
    exact = float(torch.linalg.eigvalsh(atoms_4608.double().T @ atoms_4608.double())[-1])
    estimate = lipschitz_constant(atoms_4608)
    assert exact <= estimate <= 1.05 * exact


# --------------------------------------------------------------------------------------------------
# Contracts


@pytest.mark.parametrize("method", METHODS)
def test_nonnegativity_holds_when_asked(small_atoms, method):
    targets = torch.randn(16, small_atoms.shape[1], generator=torch.Generator().manual_seed(60))
    signed = sparse_code(targets, small_atoms, 6, method=method, nonnegative=False)
    nonneg = sparse_code(targets, small_atoms, 6, method=method, nonnegative=True)
    assert (signed.coefficients < 0).any()  # Gaussian targets need negative coefficients...
    assert (nonneg.coefficients >= 0).all()  # ...which the non-negative mode never produces


@pytest.mark.parametrize("method", METHODS)
def test_one_dimensional_target(atoms_4608, method):
    targets, truth = planted_targets(atoms_4608, 3, 3, seed=61)
    single = sparse_code(targets[1], atoms_4608, 3, method=method)
    batch = sparse_code(targets, atoms_4608, 3, method=method)
    assert single.indices.shape == (1, 3) and single.reconstruction.shape == (1, D_MODEL)
    assert torch.equal(single.indices.sort(1).values, truth[1:2])
    torch.testing.assert_close(single.reconstruction[0], batch.reconstruction[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(atoms_4608, method):
    targets = torch.randn(16, D_MODEL, generator=torch.Generator().manual_seed(62))
    first = sparse_code(targets, atoms_4608, 5, method=method)
    second = sparse_code(targets, atoms_4608, 5, method=method)
    assert torch.equal(first.indices, second.indices)
    assert torch.equal(first.coefficients, second.coefficients)


def test_chunking_does_not_change_results(atoms_4608):
    targets = torch.randn(20, D_MODEL, generator=torch.Generator().manual_seed(63))
    for method in METHODS:
        whole = sparse_code(targets, atoms_4608, 4, method=method)
        chunked = sparse_code(targets, atoms_4608, 4, method=method, batch_size=7)
        assert torch.equal(whole.indices, chunked.indices), method
        torch.testing.assert_close(whole.coefficients, chunked.coefficients)


def test_dtypes(small_atoms):
    targets = torch.randn(4, small_atoms.shape[1], generator=torch.Generator().manual_seed(64))
    half = gradient_pursuit(targets.half(), small_atoms.half(), 3)
    assert half.coefficients.dtype == torch.float32  # computed in fp32 at least
    double = gradient_pursuit(targets.double(), small_atoms.double(), 3)
    assert double.coefficients.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_device_of_the_atoms(atoms_4608):
    targets, truth = planted_targets(atoms_4608, 32, 4, seed=65)
    for method in METHODS:
        code = sparse_code(targets, atoms_4608.cuda(), 4, method=method)
        assert code.indices.device.type == "cuda"
        assert support_recovery(code, truth.cuda()) >= 0.95


def test_reconstruction_direction_links_to_parent(atoms_4608, tmp_path):
    targets, truth = planted_targets(atoms_4608, 1, 4, seed=66)
    vector = targets[0] + 0.01 * atoms_4608[7]
    parent = Direction(vector, layer=3, model="tiny", source="caa", meta={"dataset": "x"})
    for method in METHODS:
        code = sparse_code(parent.vector, atoms_4608, 4, method=method)
        child = reconstruction_direction(code, parent)
        assert child.source == f"{method}(k=4)"
        assert (child.layer, child.model, child.site) == (parent.layer, parent.model, parent.site)
        expected_parent = {"source": "caa", "layer": 3, "model": "tiny", "site": "resid_pre"}
        assert child.meta["parent"] == {**expected_parent, "norm": pytest.approx(parent.norm)}
        assert sorted(child.meta["features"]) == truth[0].tolist()
        assert len(child.meta["coefficients"]) == 4
        assert child.meta["cosine_to_parent"] == pytest.approx(float(code.cosine[0]), abs=1e-5)
        assert child.meta["cosine_to_parent"] > 0.99
        torch.testing.assert_close(child.vector, code.reconstruction[0])
    loaded = Direction.load(child.save(tmp_path / "child"))
    assert loaded.meta["parent"]["source"] == "caa" and loaded.source == "omp(k=4)"
    with pytest.raises(ValueError, match="^row:"):
        reconstruction_direction(code, parent, row=1)
    with pytest.raises(ValueError, match="^parent:"):
        reconstruction_direction(code, Direction(torch.ones(8), layer=0, model="tiny", source="caa"))


def test_encoding_difference():
    generator = torch.Generator().manual_seed(67)
    negatives = torch.rand(30, 1000, generator=generator)
    positives = torch.rand(20, 1000, generator=generator)
    positives[:, 3] += 2.0
    positives[:, 700] += 1.0
    negatives[:, 5] += 3.0  # more active on the negatives: must not be returned
    indices, values = encoding_difference(positives, negatives, 2)
    assert indices.tolist() == [3, 700]
    torch.testing.assert_close(values, positives.mean(0)[[3, 700]] - negatives.mean(0)[[3, 700]])
    with pytest.raises(ValueError, match="^neg_codes:"):
        encoding_difference(positives, negatives[:, :10], 2)
    with pytest.raises(ValueError, match="^pos_codes:"):
        encoding_difference(positives[0], negatives, 2)
    with pytest.raises(ValueError, match="^k:"):
        encoding_difference(positives, negatives, 1001)


# --------------------------------------------------------------------------------------------------
# Bad inputs: each a ValueError that names the argument


def _solvers():
    return {
        "ito": lambda x, d, k: gradient_pursuit(x, d, k),
        "omp": lambda x, d, k: omp(x, d, k),
        "fista_k": lambda x, d, k: fista_k(x, d, k),
        "sparse_code": lambda x, d, k: sparse_code(x, d, k, method="fista"),
        "fista": lambda x, d, k: fista(x, d, lam=0.1),
    }


def _bad_inputs(atoms: torch.Tensor) -> dict[str, tuple[str, torch.Tensor, torch.Tensor, int]]:
    x = torch.randn(3, atoms.shape[1], generator=torch.Generator().manual_seed(70))
    nan_atoms, inf_atoms = atoms.clone(), atoms.clone()
    nan_atoms[5, 2] = math.nan
    inf_atoms[0, 0] = math.inf
    nan_x, inf_x, zero_x = x.clone(), x.clone(), x.clone()
    nan_x[1, 3] = math.nan
    inf_x[2, 0] = -math.inf
    zero_x[1] = 0
    return {
        "wrong width": ("targets", torch.randn(3, atoms.shape[1] + 1), atoms, 2),
        "zero vector": ("targets", zero_x, atoms, 2),
        "zero 1-D vector": ("targets", torch.zeros(atoms.shape[1]), atoms, 2),
        "NaN target": ("targets", nan_x, atoms, 2),
        "inf target": ("targets", inf_x, atoms, 2),
        "3-D targets": ("targets", x[None], atoms, 2),
        "NaN atoms": ("atoms", x, nan_atoms, 2),
        "inf atoms": ("atoms", x, inf_atoms, 2),
        "1-D atoms": ("atoms", x, atoms[0], 2),
        "3-D atoms": ("atoms", x, atoms[None], 2),
        "non-unit atoms": ("atoms", x, 2 * atoms, 2),
        "k > n_atoms": ("k", x, atoms, atoms.shape[0] + 1),
        "k = 0": ("k", x, atoms, 0),
    }


@pytest.mark.parametrize("solver", list(_solvers()))
@pytest.mark.parametrize("case", list(_bad_inputs(unit_dictionary(96, 24, seed=2))))
def test_bad_inputs_raise_value_error_naming_the_argument(small_atoms, solver, case):
    argument, targets, atoms, k = _bad_inputs(small_atoms)[case]
    if solver == "fista" and argument == "k":
        pytest.skip("fista takes lam, not k")
    with pytest.raises(ValueError, match=f"^{argument}:"):
        _solvers()[solver](targets, atoms, k)


def test_other_bad_arguments(small_atoms):
    x = torch.randn(3, small_atoms.shape[1])
    with pytest.raises(ValueError, match="^method:"):
        sparse_code(x, small_atoms, 2, method="lars")
    with pytest.raises(ValueError, match="^lam:"):
        fista(x, small_atoms, lam=-1.0)
    with pytest.raises(ValueError, match="^lam:"):
        fista(x, small_atoms, lam=torch.ones(4))
    with pytest.raises(ValueError, match="^warm_start:"):
        fista(x, small_atoms, lam=0.1, warm_start=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="^gram:"):
        omp(x, small_atoms, 2, gram=torch.eye(5))
    with pytest.raises(ValueError, match="^batch_size:"):
        omp(x, small_atoms, 2, batch_size=0)
    with pytest.raises(ValueError, match="^working_set:"):
        fista_k(x, small_atoms, 2, working_set=0)
