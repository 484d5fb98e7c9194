"""How a greedy pursuit computes its correlations: the automatic choice, and the per-dictionary Gram cache.

Three exact paths (`Path`), all selecting the same atoms up to fp32 rounding:

- "matmul": one fp32 `[batch, d] × [d, n_atoms]` correlation matmul per step (`Correlator`).
- "gram": one matmul, then `corr ← corr − Δw · G[support]` per step (Batch-OMP, `Correlator` with a
  Gram). `gram=` supplies G; otherwise it comes from a cache of one Gram per dictionary, so repeated
  calls on the same SAE pay for it once.
- "screen": a bf16 matmul per step with an exact fp32 check (`screen.ScreenedCorrelator`).

"auto" (measured on one AMX core, 1,024 targets, k = 8) depends only on the call, never on earlier
calls, so repeating a call repeats its result bit for bit:

- a Gram when it pays for itself within the call (batch · (k − 1) ≥ n_atoms: the correlation
  matmuls it saves outnumber the n_atoms it costs), fits in `_GRAM_CACHE_BYTES`, and the screen does
  not beat it (below `_SCREEN_BEATS_GRAM_ATOMS` where the screen is available: a reused Gram gives
  12,400 vectors/s against the screen's 9,400 at 2,048 atoms, 5,900 against 7,100 at 4,608). It
  comes from the cache, so repeated calls on the same dictionary compute it once;
- else the screen, where bf16 matmuls are fast (a CPU with AMX, a CUDA GPU of compute capability ≥ 8) and
  the dictionary has at least `_SCREEN_MIN_ATOMS` atoms (`_SCREEN_MIN_ATOMS_CUDA` on a GPU);
- else the fp32 matmul. (Many small calls on one small dictionary: pass `path="gram"`.)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from interp.sparse.correlate import Correlator
from interp.sparse.inputs import UNIT_NORM_TOLERANCE
from interp.sparse.screen import ScreenAtoms, ScreenedCorrelator

Path = Literal["auto", "matmul", "gram", "screen"]
PATHS: tuple[str, ...] = ("auto", "matmul", "gram", "screen")

# Cached Grams, all dictionaries together: one of up to 8,192 fp32 atoms (never 17 GB at 65,536).
_GRAM_CACHE_BYTES = 2**28
# Below this the fp32 matmul is cheap and the screen's fixed per-step work dominates (256 atoms:
# 23,000 vectors/s by matmul, 13,000 by the screen; 1,024 atoms: 9,100 and 10,900).
_SCREEN_MIN_ATOMS = 1024
_SCREEN_BEATS_GRAM_ATOMS = 4096
# On a GPU the fp32 matmul stays fast longer: the screen lost at 4,608 atoms and won at 65,536 on an H200
# (BENCHMARKS.md); the crossover between them was not measured, so the screen starts well above the smaller.
_SCREEN_ON_CUDA = True
_SCREEN_MIN_ATOMS_CUDA = 16384

_gram_cache: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()  # key: (fingerprint, Gram)


@dataclass(frozen=True)
class Plan:
    """The path chosen for one call, with what it needs (a Gram, or the screen's bf16 atoms)."""

    path: str
    gram: Tensor | None = None
    screen: ScreenAtoms | None = None

    def correlator(self, x: Tensor, atoms: Tensor, k: int) -> Correlator | ScreenedCorrelator:
        if self.screen is not None:
            return ScreenedCorrelator(x, atoms, self.screen, k)
        return Correlator(x, atoms, self.gram)


def plan_correlations(
    original: Tensor, atoms: Float[Tensor, "n_atoms d"], batch: int, k: int, path: str, gram: Tensor | None
) -> Plan:
    """The path for `batch` targets in the dictionary `atoms` (prepared from the caller's `original`)."""
    if path not in PATHS:
        raise ValueError(f"path: expected one of {PATHS}, got {path!r}")
    if gram is not None:
        if path not in ("auto", "gram"):
            raise ValueError(f"path: {path!r} does not use a Gram matrix, but gram= was given")
        return Plan("gram", gram=gram)
    if path == "auto":
        path = _auto_path(atoms, batch, k)
    if path == "gram":
        return Plan("gram", gram=cached_gram(original, atoms))
    if path == "screen":
        return Plan("screen", screen=ScreenAtoms(atoms, 1 + UNIT_NORM_TOLERANCE))
    return Plan("matmul")


def _auto_path(atoms: Tensor, batch: int, k: int) -> str:
    n_atoms = atoms.shape[0]
    minimum = _SCREEN_MIN_ATOMS_CUDA if atoms.device.type == "cuda" else _SCREEN_MIN_ATOMS
    screen = atoms.dtype == torch.float32 and n_atoms >= minimum and fast_bf16_matmul(atoms.device)
    if screen and n_atoms >= _SCREEN_BEATS_GRAM_ATOMS:
        return "screen"
    # The Gram costs n_atoms targets' worth of correlation matmuls and saves k − 1 per target.
    if k > 1 and batch * (k - 1) >= n_atoms and gram_fits(n_atoms, atoms.dtype):
        return "gram"
    return "screen" if screen else "matmul"


def _key(original: Tensor, atoms: Tensor) -> tuple:
    """The caller's tensor (storage address, shape, strides, dtype) and the compute dtype and device."""
    return (original.data_ptr(), tuple(original.shape), original.stride(), original.dtype, atoms.dtype,
            str(atoms.device))


def fast_bf16_matmul(device: torch.device) -> bool:
    """Whether bf16 matmuls run several times faster than fp32 ones on `device`."""
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx is not None and amx())
    if device.type == "cuda":
        return _SCREEN_ON_CUDA and torch.cuda.get_device_capability(device)[0] >= 8
    return False


def gram_fits(n_atoms: int, dtype: torch.dtype) -> bool:
    """Whether an `[n_atoms, n_atoms]` Gram matrix of `dtype` fits the per-dictionary cache's memory budget."""
    return n_atoms * n_atoms * torch.finfo(dtype).bits // 8 <= _GRAM_CACHE_BYTES


def _fingerprint(atoms: Float[Tensor, "n_atoms d"]) -> Float[Tensor, "n_atoms"]:
    """Each atom's projection on a fixed random vector: changes whenever any atom's values change."""
    probe = torch.randn(atoms.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return atoms @ probe.to(device=atoms.device, dtype=atoms.dtype)


def cached_gram(original: Tensor, atoms: Float[Tensor, "n_atoms d"]) -> Tensor:
    """`atoms @ atoms.T`, computed once per dictionary and reused while the dictionary is unchanged.

    Keyed on the caller's tensor (storage address, shape, strides, dtype, device) and checked against a
    fingerprint of its values, so an in-place edit (an optimiser step, `.data` writes that bypass the
    version counter) or a new tensor at a freed address recomputes it. Least recently used Grams are
    dropped beyond `_GRAM_CACHE_BYTES`; one larger than that is computed but not kept.
    """
    key, fingerprint = _key(original, atoms), _fingerprint(atoms)
    entry = _gram_cache.get(key)
    if entry is not None and torch.equal(entry[0], fingerprint):
        _gram_cache.move_to_end(key)
        return entry[1]
    _gram_cache.pop(key, None)
    gram = atoms @ atoms.T
    size = gram.numel() * gram.element_size()
    if size <= _GRAM_CACHE_BYTES:
        while _gram_cache and size + _cached_bytes() > _GRAM_CACHE_BYTES:
            _gram_cache.popitem(last=False)
        _gram_cache[key] = (fingerprint, gram)
    return gram


def _cached_bytes() -> int:
    return sum(gram.numel() * gram.element_size() for _, gram in _gram_cache.values())


def clear_gram_cache() -> None:
    """Drop every cached Gram matrix (they are otherwise kept, up to `_GRAM_CACHE_BYTES`, for reuse)."""
    _gram_cache.clear()
