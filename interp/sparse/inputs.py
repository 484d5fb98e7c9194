"""Input checks shared by every sparse solver: unit-norm atoms, targets, k, the Gram matrix, chunking.

Work happens on `atoms.device` (targets are moved there) in `compute_dtype(targets, atoms)`:
half-precision inputs are computed in fp32, float64 stays float64.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

# Targets per chunk: a correlation buffer of at most this many elements (256 MB in fp32; 1,024 targets
# at 65,536 atoms) and at most _MAX_BATCH targets. Measured on a CPU: larger chunks keep the matmul
# efficient up to ~1,024 targets; beyond that the [batch, n_atoms] buffer falls out of cache.
_CORRELATION_BUDGET = 2**26
_MAX_BATCH = 1024
# On a GPU a step is ~15 kernel launches whatever the chunk, so a 1,024-target chunk of a 4,608-atom
# dictionary is launch-bound (13% of an H100's fp32 rate): chunks of up to 1 GiB of fp32 correlations
# (58,000 targets at 4,608 atoms, 4,096 at 65,536) make each launch a large kernel.
_GPU_CORRELATION_BUDGET = 2**28
_GPU_MAX_BATCH = 65536
UNIT_NORM_TOLERANCE = 1e-2  # loose enough for bf16 decoders, tight enough to catch unnormalised ones


def check_atoms(atoms: Tensor) -> None:
    """Refuse atoms that are not a non-empty 2-D floating tensor `[n_atoms, d_model]` of finite, unit-norm rows.

    Raises:
        ValueError: naming what is wrong (normalise rows first: `atoms / atoms.norm(dim=1, keepdim=True)`).
    """
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
    norms = torch.linalg.vector_norm(atoms, dim=1, dtype=compute_dtype(atoms))
    if not torch.isfinite(norms).all():
        raise ValueError("atoms: contains NaN or inf")
    worst = float((norms - 1).abs().max())
    if worst > UNIT_NORM_TOLERANCE:
        raise ValueError(
            f"atoms: expected unit-norm rows (the largest |‖row‖ − 1| is {worst:.3g}); "
            "normalise them first, e.g. atoms / atoms.norm(dim=1, keepdim=True)"
        )


def check_k(k: int, n_atoms: int) -> None:
    """Refuse a k that is not a positive int at most `n_atoms`.

    Raises:
        ValueError: naming k and the bound.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    if k > n_atoms:
        raise ValueError(f"k: expected k <= n_atoms = {n_atoms}, got k = {k}")


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the solvers compute in: float32 promoted with every input's dtype (float64 stays float64).

    Example:
        >>> import torch
        >>> compute_dtype(torch.zeros(2, dtype=torch.bfloat16)), compute_dtype(torch.zeros(2, dtype=torch.float64))
        (torch.float32, torch.float64)
    """
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def prepare_inputs(
    targets: Tensor, atoms: Tensor, k: int | None = None
) -> tuple[Float[Tensor, "batch d_model"], Float[Tensor, "n_atoms d_model"]]:
    """Validate; return targets as `[batch, d_model]` and atoms, on `atoms.device` in the compute dtype."""
    check_atoms(atoms)
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
    norms = torch.linalg.vector_norm(x, dim=1, dtype=compute_dtype(x))
    if not torch.isfinite(norms).all():
        raise ValueError("targets: contains NaN or inf")
    zero_rows = (norms == 0).nonzero().flatten()
    if zero_rows.numel():
        raise ValueError(f"targets: row(s) {zero_rows[:5].tolist()} are zero vectors: nothing to reconstruct")
    if k is not None:
        check_k(k, n_atoms)
    dtype = compute_dtype(targets, atoms)
    return x.to(device=atoms.device, dtype=dtype), atoms.detach().to(dtype=dtype)


def check_gram(gram: Tensor | None, atoms: Tensor) -> Tensor | None:
    """Check a precomputed Gram matrix against the atoms.

    Args:
        gram: `atom_gram(atoms)` (`[n_atoms, n_atoms]`), or None.
        atoms: the dictionary atoms.

    Returns:
        The Gram matrix on the atoms' device and in their dtype, or None.

    Raises:
        ValueError: a Gram matrix of another shape.
    """
    if gram is None:
        return None
    n_atoms = atoms.shape[0]
    if not isinstance(gram, Tensor) or tuple(gram.shape) != (n_atoms, n_atoms):
        shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
        raise ValueError(f"gram: expected atom_gram(atoms) of shape ({n_atoms}, {n_atoms}), got {shape}")
    return gram.detach().to(device=atoms.device, dtype=atoms.dtype)


def default_batch_size(n_atoms: int, device: torch.device | str = "cpu") -> int:
    """Targets per chunk when `batch_size` is None: on a CPU a ≤ 256 MB fp32 correlation buffer and at
    most 1,024 targets; on a GPU a ≤ 1 GiB buffer and at most 65,536 targets."""
    if torch.device(device).type == "cpu":
        return max(1, min(_MAX_BATCH, _CORRELATION_BUDGET // n_atoms))
    return max(1, min(_GPU_MAX_BATCH, _GPU_CORRELATION_BUDGET // n_atoms))


def chunk_slices(
    batch: int, n_atoms: int, batch_size: int | None, device: torch.device | str = "cpu"
) -> list[slice]:
    """Slices that cut `batch` targets into chunks of at most `batch_size` (default: what fits the device's memory).

    Args:
        batch: number of targets.
        n_atoms: dictionary size (sets the default chunk).
        batch_size: targets per chunk, or None for the default.
        device: where the work runs.

    Returns:
        The slices, in order, covering `0..batch`.

    Raises:
        ValueError: a `batch_size` that is not a positive int.
    """
    if batch_size is None:
        batch_size = default_batch_size(n_atoms, device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
    return [slice(start, min(start + batch_size, batch)) for start in range(0, batch, batch_size)]


@torch.no_grad()
def atom_gram(atoms: Float[Tensor, "n_atoms d_model"]) -> Float[Tensor, "n_atoms n_atoms"]:
    """`atoms @ atoms.T` in the compute dtype: the `gram=` of `gradient_pursuit`, `omp` and `fista_k`.

    Needs n_atoms² × 4 bytes (85 MB at 4,608 atoms, 17 GB at 65,536: use it for small dictionaries only).
    """
    check_atoms(atoms)
    atoms = atoms.detach().to(dtype=compute_dtype(atoms))
    return atoms @ atoms.T
