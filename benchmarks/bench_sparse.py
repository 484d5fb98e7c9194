"""Benchmark: sparse reconstruction speed and error against scikit-learn, and the FLOP rate reached.

One run, one set of targets per dictionary size, one k. Targets are planted: k distinct random unit
atoms with non-negative coefficients uniform in [1, 3], plus Gaussian noise of relative norm
`--noise` (so errors are not all at the fp32 floor). Rows:

- ours, with the default `path="auto"` (the note says which path it took): `ito` (gradient pursuit)
  timed as a first call on the dictionary (the Gram cache emptied before every run, untimed, so a
  Gram the path computes is inside the timed region) and as a repeated call (whatever the first call
  cached is reused), `ito+refit`, `omp`, `fista` (`fista_k`), all non-negative, and `omp signed` (the
  same problem scikit-learn's OMP solves). Then `ito` on each explicit path: `matmul` (one fp32
  correlation matmul per step: the FLOP-rate row), `screen` (bf16 matmul, exact fp32 check), and at
  dictionaries small enough for a Gram matrix `gram` as a first call (Gram computed inside the timed
  region) and reused (computed once per dictionary by the cache), and `omp` on the reused Gram.
- anchors: scikit-learn `OrthogonalMatchingPursuit(precompute=False)` fitted per target (it has no
  non-negative option; `precompute=True` would need a 17 GB Gram at 65,536 atoms), at 4,608 atoms
  also `orthogonal_mp_gram` (Gram precomputed, not timed), and `Lasso(positive=True)` per target at
  the λ our `fista` row settled on (alpha = λ / d_model: sklearn scales the squared error by
  1/(2·n_samples) and here n_samples = d_model), its top-k support then refit by least squares.

Every speed is the best of `--repeats` runs (ours over all targets, sklearn's loop over its fewer
targets), because the machine may be shared: best-of is the closest to an unloaded machine for both
sides. On a busy machine use `--threads 1 --clock cpu`: one thread for torch, numpy's BLAS and
OpenMP, timed by process CPU time, which other jobs barely disturb (with several threads, CPU time
would count OpenMP spin-waiting, and wall time counts the time other jobs hold the cores). The
fp32 matmul peak is the best of several square matmuls, measured before, between and after the
methods in the same run (the highest is kept: the least flattering for our fraction). The "FLOP
rate" of `ito` counts only its k correlation matmuls, 2·d·n_atoms FLOPs per target each, on the fp32
matmul path; the same count for the default path gives its effective rate (the screen's matmuls are
bf16, so that rate can exceed the fp32 peak).

    python benchmarks/bench_sparse.py --atoms 4608 65536 --k 8
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from interp.sparse import SparseCode, clear_gram_cache, default_batch_size, fista_k, gradient_pursuit, omp
from interp.sparse.paths import plan_correlations


@dataclass
class Row:
    method: str
    vectors_per_s: float
    relative_error: float
    recovery: float | None
    n_targets: int
    note: str = ""


def unit_dictionary(n_atoms: int, d_model: int, generator: torch.Generator, device: str) -> torch.Tensor:
    atoms = torch.randn(n_atoms, d_model, generator=generator)
    return (atoms / atoms.norm(dim=1, keepdim=True)).to(device)


def planted_targets(
    atoms: torch.Tensor, n_targets: int, k: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    n_atoms = atoms.shape[0]
    # k distinct atoms per target: the first k of a random permutation of each row of a small pool.
    pool = torch.randint(0, n_atoms, (n_targets, 8 * k), generator=generator)
    support = torch.stack([torch.tensor(list(dict.fromkeys(row.tolist()))[:k]) for row in pool])
    coefficients = 1 + 2 * torch.rand(n_targets, k, generator=generator)
    clean = torch.einsum("bk,bkd->bd", coefficients, atoms.cpu()[support])
    noise_vectors = torch.randn(clean.shape, generator=generator)
    noise_vectors *= noise * clean.norm(dim=1, keepdim=True) / noise_vectors.norm(dim=1, keepdim=True)
    return (clean + noise_vectors).to(atoms.device), support.sort(dim=1).values


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


clock: Callable[[], float] = time.perf_counter  # or time.process_time: see --clock


def matmul_rate(shape: tuple[int, int, int], device: str, repeats: int) -> float:
    """Best fp32 GFLOP/s of `[m, k] @ [k, n]` over `repeats` timed runs (after one warm-up)."""
    m, k, n = shape
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    out = torch.empty(m, n, device=device)
    best = float("inf")
    for attempt in range(repeats + 1):
        sync(device)
        start = clock()
        torch.matmul(a, b, out=out)
        sync(device)
        if attempt:
            best = min(best, clock() - start)
    return 2 * m * k * n / best / 1e9


def peak_matmul_rate(device: str, repeats: int) -> tuple[float, str]:
    rates = {size: matmul_rate((size, size, size), device, repeats) for size in (1024, 2048, 3072, 4096)}
    size = max(rates, key=rates.get)
    return rates[size], f"{size}³"


def recovery(code: SparseCode, truth: torch.Tensor) -> float:
    return float((code.indices.sort(dim=1).values.cpu() == truth).all(dim=1).float().mean())


def time_ours(
    run: Callable[[], SparseCode], n_targets: int, device: str, repeats: int, first_call: bool
) -> tuple[float, SparseCode]:
    """Best rate over `repeats` runs after a warm-up; with `first_call`, the Gram cache is emptied
    (untimed) before every run, so each run pays for whatever the path computes per dictionary."""
    run()  # warm-up (allocator, thread pool)
    times = []
    for _ in range(repeats):
        if first_call:
            clear_gram_cache()
        sync(device)
        start = clock()
        code = run()
        sync(device)
        times.append(clock() - start)
    return n_targets / min(times), code


def best_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = clock()
        result = run()
        times.append(clock() - start)
    return min(times), result


def sklearn_omp_rows(
    atoms: torch.Tensor, targets: torch.Tensor, truth: torch.Tensor, k: int, with_gram: bool, repeats: int
) -> list[Row]:
    from sklearn.linear_model import OrthogonalMatchingPursuit, orthogonal_mp_gram

    design = atoms.cpu().numpy().T  # [d_model, n_atoms], Fortran-ordered: the order sklearn wants
    x = targets.cpu().numpy()

    def loop() -> np.ndarray:
        coefs = []
        for row in range(x.shape[0]):
            model = OrthogonalMatchingPursuit(n_nonzero_coefs=k, fit_intercept=False, precompute=False)
            coefs.append(model.fit(design, x[row]).coef_)
        return np.stack(coefs)

    elapsed, coefs = best_time(loop, repeats)
    errors = np.linalg.norm(x - coefs @ design.T, axis=1) / np.linalg.norm(x, axis=1)
    hits = [np.array_equal(np.sort(np.flatnonzero(c)), t.numpy()) for c, t in zip(coefs, truth)]
    n = x.shape[0]
    rows = [Row("sklearn OMP (per target)", n / elapsed, float(errors.mean()), float(np.mean(hits)), n)]
    if with_gram:
        gram = design.T @ design  # not timed: the most favourable setting for sklearn
        xy = design.T @ x.T
        elapsed, coefs = best_time(lambda: orthogonal_mp_gram(gram, xy, n_nonzero_coefs=k).T, repeats)
        errors = np.linalg.norm(x - coefs @ design.T, axis=1) / np.linalg.norm(x, axis=1)
        hits = [np.array_equal(np.sort(np.flatnonzero(c)), t.numpy()) for c, t in zip(coefs, truth)]
        rows.append(
            Row(
                "sklearn orthogonal_mp_gram", n / elapsed, float(errors.mean()), float(np.mean(hits)), n,
                "Gram and Dᵀx precomputed, untimed",
            )
        )
    return rows


def sklearn_lasso_row(
    atoms: torch.Tensor, targets: torch.Tensor, truth: torch.Tensor, lam: torch.Tensor, k: int, repeats: int
) -> Row:
    from sklearn.linear_model import Lasso

    design = atoms.cpu().numpy().T
    x = targets.cpu().numpy()
    d_model = design.shape[0]

    def loop() -> list[np.ndarray]:
        coefs = []
        for row in range(x.shape[0]):
            model = Lasso(alpha=float(lam[row]) / d_model, positive=True, fit_intercept=False, max_iter=10000)
            coefs.append(model.fit(design, x[row]).coef_)
        return coefs

    elapsed, coefs = best_time(loop, repeats)
    errors, hits = [], []
    for row, coef in enumerate(coefs):
        top = np.sort(np.argsort(-np.abs(coef))[:k])
        refit, *_ = np.linalg.lstsq(design[:, top], x[row], rcond=None)
        errors.append(np.linalg.norm(x[row] - design[:, top] @ refit) / np.linalg.norm(x[row]))
        hits.append(np.array_equal(top, truth[row].numpy()))
    return Row("sklearn Lasso(positive) (per target)", x.shape[0] / elapsed, float(np.mean(errors)),
               float(np.mean(hits)), x.shape[0], "one λ (ours), top-k refit untimed")


def bench_dictionary(
    n_atoms: int, args: argparse.Namespace, generator: torch.Generator
) -> tuple[list[Row], float]:
    atoms = unit_dictionary(n_atoms, args.d_model, generator, args.device)
    targets, truth = planted_targets(atoms, args.n_targets, args.k, args.noise, generator)
    k, n, repeats, device = args.k, args.n_targets, args.repeats, args.device
    common = {"batch_size": args.batch_size}
    auto = plan_correlations(atoms, atoms, n, k, "auto", None).path
    auto_note = {"screen": "screen: bf16 matmul, fp32 check", "gram": "Gram computed in the call",
                 "matmul": "fp32 matmul"}[auto]
    reused_note = "Gram cached by the first call" if auto == "gram" else auto_note
    # name: (run, note, first_call)
    runs: dict[str, tuple[Callable[[], SparseCode], str, bool]] = {
        "ito (auto), first call": (
            lambda: gradient_pursuit(targets, atoms, k, nonnegative=True, **common), auto_note, True
        ),
        "ito (auto), reused": (
            lambda: gradient_pursuit(targets, atoms, k, nonnegative=True, **common), reused_note, False
        ),
        "ito+refit (auto)": (
            lambda: gradient_pursuit(targets, atoms, k, nonnegative=True, refit=True, **common), reused_note, False
        ),
        "omp (auto)": (
            lambda: omp(targets, atoms, k, nonnegative=True, **common), "NNLS by projected gradient", False
        ),
        "omp signed (auto)": (
            lambda: omp(targets, atoms, k, nonnegative=False, **common), "sklearn's problem", False
        ),
        "fista": (lambda: fista_k(targets, atoms, k, nonnegative=True, **common), "λ bisection + refit", False),
        "ito, matmul path": (
            lambda: gradient_pursuit(targets, atoms, k, nonnegative=True, path="matmul", **common),
            "fp32 matmul every step", False,
        ),
        "ito, screen path": (
            lambda: gradient_pursuit(targets, atoms, k, nonnegative=True, path="screen", **common),
            "bf16 matmul, exact fp32 check", False,
        ),
    }
    if n_atoms <= args.gram_max_atoms:
        runs["ito, Gram path, first call"] = (
            lambda: gradient_pursuit(targets, atoms, k, nonnegative=True, path="gram", **common),
            "Gram time included", True,
        )
        runs["ito, Gram path, reused"] = (
            lambda: gradient_pursuit(targets, atoms, k, nonnegative=True, path="gram", **common),
            "Gram computed once per dictionary (cache)", False,
        )
        runs["omp, Gram path, reused"] = (
            lambda: omp(targets, atoms, k, nonnegative=True, path="gram", **common),
            "Gram computed once per dictionary (cache)", False,
        )
    rows, codes = [], {}
    for name, (run, note, first_call) in runs.items():
        rate, code = time_ours(run, n, device, repeats, first_call)
        codes[name] = code
        rows.append(Row(name, rate, float(code.relative_error.mean()), recovery(code, truth), n, note))
        print(f"  {n_atoms} atoms, {name}: {rate:,.0f} vectors/s", flush=True)
    clear_gram_cache()
    ito_flops_per_target = k * 2 * args.d_model * n_atoms
    by_name = {row.method: row for row in rows}
    ito_rate = by_name["ito, matmul path"].vectors_per_s * ito_flops_per_target / 1e9
    auto_rate = by_name["ito (auto), reused"].vectors_per_s * ito_flops_per_target / 1e9
    sk = slice(0, args.sklearn_targets)
    rows += sklearn_omp_rows(atoms, targets[sk], truth[sk], k, n_atoms <= args.gram_max_atoms, repeats)
    lasso = slice(0, args.lasso_targets)
    rows.append(sklearn_lasso_row(atoms, targets[lasso], truth[lasso], codes["fista"].lam[lasso], k, repeats))
    return rows, (ito_rate, auto_rate)


def print_table(
    n_atoms: int,
    rows: list[Row],
    rates: tuple[float, float],
    peak: float,
    shape_rate: float,
    args: argparse.Namespace,
) -> None:
    anchor = next(r for r in rows if r.method.startswith("sklearn OMP"))
    print(f"\n### {n_atoms:,} atoms × {args.d_model}, k = {args.k}, noise = {args.noise}\n")
    print("| method | targets | vectors/s | × sklearn OMP | mean rel. error | exact support | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        recovered = "" if r.recovery is None else f"{r.recovery:.0%}"
        speedup = r.vectors_per_s / anchor.vectors_per_s
        print(
            f"| {r.method} | {r.n_targets} | {r.vectors_per_s:,.1f} | {speedup:,.1f} "
            f"| {r.relative_error:.4f} | {recovered} | {r.note} |"
        )
    ito_gflops, auto_gflops = rates
    print(
        f"\n`ito, matmul path` correlation matmuls: {ito_gflops:.1f} GFLOP/s = {ito_gflops / peak:.0%} of the "
        f"measured fp32 peak ({peak:.1f} GFLOP/s); one bare correlation matmul of a chunk "
        f"({chunk(n_atoms, args)} targets) runs at {shape_rate:.1f} GFLOP/s ({shape_rate / peak:.0%}). "
        f"`ito (auto), reused`, counted the same way: {auto_gflops:.1f} GFLOP/s = {auto_gflops / peak:.0%}."
    )


def chunk(n_atoms: int, args: argparse.Namespace) -> int:
    return min(args.batch_size or default_batch_size(n_atoms, args.device), args.n_targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--atoms", type=int, nargs="+", default=[4608, 65536], help="dictionary sizes")
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--n-targets", type=int, default=1024, help="targets for our methods")
    parser.add_argument("--sklearn-targets", type=int, default=24, help="targets for the sklearn OMP loop")
    parser.add_argument("--lasso-targets", type=int, default=4, help="targets for the sklearn Lasso loop")
    parser.add_argument("--noise", type=float, default=0.1, help="relative norm of the targets' noise")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="targets per chunk (default: automatic)")
    parser.add_argument("--gram-max-atoms", type=int, default=8192, help="time the Gram paths up to this")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch, BLAS and OpenMP")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall or process CPU time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # numpy's BLAS, used by scikit-learn
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, {args.clock} clock, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    generator = torch.Generator().manual_seed(args.seed)
    # The peak is measured before and after the methods, and the higher one kept (the least flattering).
    peak, peak_shape = peak_matmul_rate(args.device, args.repeats)
    results = []
    for n_atoms in args.atoms:
        rows, rates = bench_dictionary(n_atoms, args, generator)
        # The layout `ito` uses on a CPU: atoms @ residual.T, [n_atoms, d] × [d, chunk].
        shape = (n_atoms, args.d_model, chunk(n_atoms, args))
        if not args.device.startswith("cpu"):
            shape = shape[::-1]
        shape_rate = matmul_rate(shape, args.device, args.repeats)
        results.append((n_atoms, rows, rates, shape_rate))
        peak, peak_shape = max((peak, peak_shape), peak_matmul_rate(args.device, args.repeats))
    print(
        f"\nfp32 matmul peak: {peak:.1f} GFLOP/s "
        f"(best of {args.repeats} runs of square matmuls, best {peak_shape})"
    )
    for n_atoms, rows, rates, shape_rate in results:
        print_table(n_atoms, rows, rates, peak, shape_rate, args)


if __name__ == "__main__":
    main()
