"""How the greedy pursuits compute correlations: the bf16 screen, the per-dictionary Gram cache, the choice.

Every path must select the same atoms as the plain fp32 matmul path (planted ground truth plus noise,
signed and non-negative, gradient pursuit and OMP); the screen's rounding bound must hold; the cache
must be reused while a dictionary is unchanged and dropped when it changes, however it is changed.
"""

from __future__ import annotations

import pytest
import torch

from interp.sparse import PATHS, clear_gram_cache, default_batch_size, gradient_pursuit, omp, paths, screen, sparse_code
from interp.sparse.inputs import UNIT_NORM_TOLERANCE

D_MODEL = 576


def unit_dictionary(n_atoms: int, d_model: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_model, generator=generator)
    return atoms / atoms.norm(dim=1, keepdim=True)


def noisy_planted(atoms: torch.Tensor, n_targets: int, k: int, seed: int) -> torch.Tensor:
    """Sums of k random atoms (coefficients in [1, 3], distinct atoms not enforced) plus 20% noise."""
    generator = torch.Generator().manual_seed(seed)
    support = torch.randint(0, atoms.shape[0], (n_targets, k), generator=generator)
    coefficients = 1 + 2 * torch.rand(n_targets, k, generator=generator)
    clean = torch.einsum("bk,bkd->bd", coefficients, atoms[support])
    noise = torch.randn(clean.shape, generator=generator)
    return clean + 0.2 * noise * clean.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)


@pytest.fixture(autouse=True)
def empty_gram_cache():
    clear_gram_cache()
    yield
    clear_gram_cache()


def assert_same_codes(a, b) -> None:
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.coefficients, b.coefficients, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# The bf16 screen


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_screened_correlations_stay_within_the_bound(scale):
    atoms = unit_dictionary(3001, D_MODEL, seed=80)  # not a whole number of blocks: padded
    residual = scale * torch.randn(64, D_MODEL, generator=torch.Generator().manual_seed(81))
    residual[:8] *= torch.rand(8, D_MODEL, generator=torch.Generator().manual_seed(82)) ** 8  # spiky rows
    screen_atoms = screen.ScreenAtoms(atoms, 1 + UNIT_NORM_TOLERANCE)
    screened = (screen_atoms.atoms @ residual.bfloat16().T)[: atoms.shape[0]].double()
    exact = atoms.double() @ residual.double().T
    bound = screen_atoms.tolerance * residual.double().norm(dim=1)
    assert ((screened - exact).abs() <= bound).all()
    assert (screened[atoms.shape[0]:] == 0).all() if screened.shape[0] > atoms.shape[0] else True


@pytest.mark.parametrize("n_atoms", [3001, 4608])
@pytest.mark.parametrize("nonnegative", [True, False])
@pytest.mark.parametrize("solver", [gradient_pursuit, omp])
def test_screen_path_selects_what_the_matmul_path_selects(n_atoms, nonnegative, solver):
    atoms = unit_dictionary(n_atoms, D_MODEL, seed=83)
    targets = noisy_planted(atoms, 96, 6, seed=84)
    if not nonnegative:
        targets[::2] *= -1
    exact = solver(targets, atoms, 8, nonnegative=nonnegative, path="matmul")
    screened = solver(targets, atoms, 8, nonnegative=nonnegative, path="screen")
    assert_same_codes(exact, screened)


def test_crowded_targets_are_decided_by_the_fp32_matmul(monkeypatch):
    atoms = unit_dictionary(2048, D_MODEL, seed=85)
    targets = noisy_planted(atoms, 40, 4, seed=86)
    decided = []

    def exact_select(residual, *args):
        decided.append(residual.shape[0])
        return original(residual, *args)

    original = screen._exact_select
    monkeypatch.setattr(screen, "_exact_select", exact_select)
    monkeypatch.setattr(screen, "_MAX_CANDIDATES", 0)  # every target counts as crowded
    for nonnegative in (True, False):
        decided.clear()
        crowded = gradient_pursuit(targets, atoms, 5, nonnegative=nonnegative, path="screen")
        assert decided == [40] * 5
        assert_same_codes(crowded, gradient_pursuit(targets, atoms, 5, nonnegative=nonnegative, path="matmul"))


def test_screen_handles_a_target_it_reconstructs_exactly():
    """A zero residual ties every atom at 0: the fp32 path's choice (a crowded target) keeps working."""
    atoms = unit_dictionary(2048, D_MODEL, seed=87)
    targets = torch.stack([atoms[5], 2 * atoms[7] + atoms[9]])
    code = gradient_pursuit(targets, atoms, 4, nonnegative=True, path="screen", refit=True)
    torch.testing.assert_close(code.reconstruction, targets, rtol=1e-5, atol=1e-5)
    assert code.indices[0, 0] == 5 and set(code.indices[1, :2].tolist()) == {7, 9}


# --------------------------------------------------------------------------------------------------
# The Gram cache


def test_cached_gram_is_reused_and_matches_the_matmul_path():
    atoms = unit_dictionary(1024, D_MODEL, seed=88)
    targets = noisy_planted(atoms, 64, 5, seed=89)
    first = paths.cached_gram(atoms, atoms)
    assert paths.cached_gram(atoms, atoms) is first
    torch.testing.assert_close(first, atoms @ atoms.T)
    for solver in (gradient_pursuit, omp):
        for nonnegative in (True, False):
            via_gram = solver(targets, atoms, 6, nonnegative=nonnegative, path="gram")
            assert_same_codes(via_gram, solver(targets, atoms, 6, nonnegative=nonnegative, path="matmul"))
    assert paths.cached_gram(atoms, atoms) is first and len(paths._gram_cache) == 1


@pytest.mark.parametrize("edit", ["in place", "through .data", "new tensor at the same address"])
def test_cached_gram_is_dropped_when_the_dictionary_changes(edit):
    atoms = unit_dictionary(512, D_MODEL, seed=90)
    stale = paths.cached_gram(atoms, atoms)
    if edit == "in place":
        atoms[[0, 1]] = atoms[[1, 0]].clone()
    elif edit == "through .data":  # bypasses the version counter
        alias = atoms.data
        alias[3].neg_()
    else:
        atoms.copy_(unit_dictionary(512, D_MODEL, seed=91))
    fresh = paths.cached_gram(atoms, atoms)
    assert fresh is not stale
    torch.testing.assert_close(fresh, atoms @ atoms.T)
    targets = noisy_planted(atoms, 32, 4, seed=92)
    assert_same_codes(gradient_pursuit(targets, atoms, 4, path="gram"), gradient_pursuit(targets, atoms, 4, path="matmul"))


def test_a_different_dictionary_gets_its_own_gram():
    one, other = unit_dictionary(512, D_MODEL, seed=93), unit_dictionary(512, D_MODEL, seed=94)
    gram_one, gram_other = paths.cached_gram(one, one), paths.cached_gram(other, other)
    torch.testing.assert_close(gram_other, other @ other.T)
    assert paths.cached_gram(one, one) is gram_one and gram_one is not gram_other


def test_the_cache_is_memory_bounded(monkeypatch):
    monkeypatch.setattr(paths, "_GRAM_CACHE_BYTES", 512 * 512 * 4)  # room for one 512-atom fp32 Gram
    one, other = unit_dictionary(512, D_MODEL, seed=95), unit_dictionary(512, D_MODEL, seed=96)
    paths.cached_gram(one, one)
    paths.cached_gram(other, other)
    assert len(paths._gram_cache) == 1  # the least recently used one was dropped
    too_big = unit_dictionary(600, D_MODEL, seed=97)
    torch.testing.assert_close(paths.cached_gram(too_big, too_big), too_big @ too_big.T)
    assert paths._cached_bytes() <= paths._GRAM_CACHE_BYTES
    assert not paths.gram_fits(65536, torch.float32)  # 17 GB: never cached, never chosen automatically


# --------------------------------------------------------------------------------------------------
# The automatic choice


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_auto_path_choice(monkeypatch, fast_bf16):
    monkeypatch.setattr(paths, "fast_bf16_matmul", lambda device: fast_bf16)

    def chosen(atoms: torch.Tensor, batch: int, k: int = 8) -> str:
        return paths.plan_correlations(atoms, atoms, batch, k, "auto", None).path

    medium, small, tiny = (unit_dictionary(n, 16, seed=98) for n in (4608, 1024, 256))
    fallback = "screen" if fast_bf16 else "matmul"
    assert chosen(medium, 16) == fallback  # a Gram would not pay for itself
    assert chosen(medium, 1024) == ("screen" if fast_bf16 else "gram")  # the screen beats a Gram here
    assert chosen(medium.double(), 1024) == "gram"  # the screen is for fp32 only
    assert chosen(unit_dictionary(65536, 4, seed=100), 100_000) == fallback  # never a 17 GB Gram
    assert chosen(small, 1024) == "gram"
    assert chosen(small, 4) == fallback  # the choice never depends on earlier calls, even with a cached Gram
    assert chosen(small, 1024, k=1) == fallback  # one step: a Gram saves nothing
    assert chosen(tiny, 4) == "matmul"


def test_auto_is_the_default_and_equals_every_explicit_path():
    atoms = unit_dictionary(2048, D_MODEL, seed=102)
    targets = noisy_planted(atoms, 48, 5, seed=103)
    auto = sparse_code(targets, atoms, 6, method="ito")
    for path in ("matmul", "gram", "screen"):
        assert_same_codes(auto, sparse_code(targets, atoms, 6, method="ito", path=path))


def test_bad_path_arguments():
    atoms = unit_dictionary(96, 24, seed=101)
    x = torch.randn(3, 24)
    assert PATHS == ("auto", "matmul", "gram", "screen")
    with pytest.raises(ValueError, match="^path:"):
        gradient_pursuit(x, atoms, 2, path="fast")
    with pytest.raises(ValueError, match="^path:"):
        omp(x, atoms, 2, path="screen", gram=atoms @ atoms.T)


def test_gpu_chunks_are_larger():
    assert default_batch_size(4608) == 1024 and default_batch_size(65536) == 1024
    assert default_batch_size(4608, "cuda") == 2**28 // 4608
    assert default_batch_size(65536, "cuda") == 4096
