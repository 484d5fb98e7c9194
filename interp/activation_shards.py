"""Residual harvests larger than RAM: `collect_residuals` streamed into sharded safetensors files, read back lazily.

`collect_residuals_to_shards` runs `interp.activations.collect_residuals` on successive chunks of prompts
(chunk edges fall on its batch edges, so every forward pass is the one the in-memory call would make) and
writes rows to shards of a fixed number of prompts, whatever the batch edges. `open_residual_shards`
maps the shards into memory (`numpy.memmap` over each file's tensor data): indexing reads only the rows
asked for, so a harvest many times the size of RAM can be batched through.

A shard folder holds:
- `shard-00000.safetensors`, ...: one tensor `activations` of shape [rows, n_layers, n_positions, d_model]
  each, written under a temporary name and renamed when complete; its header's metadata names the model,
  site and layers, so a manifest that says otherwise is caught;
- `manifest.json`, written after the last shard: model, site, layers, hook names, positions, dtype, the
  shape of one row and every shard's file and row count;
- `.interp-artifact.json`, the toolkit's artifact marker (kind "activation harvest", every file's SHA-256).

The folder is written beside its target and renamed into place when complete (`interp._io.atomic_write_dir`):
a target that exists must be empty, or a shard folder written here and `overwrite=True` (the old harvest is
removed only after the new one is complete, so both need disk until then); anything else is refused.

`open_residual_shards` checks the manifest against the marker's SHA-256 and every shard against its size
and header; each shard's contents are checked against its SHA-256 the first time it is read in a process.
`verify=False` reads a harvest edited on purpose; the manifest must still agree with the shard headers.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from interp._checks import whole_number
from interp._io import (
    MARKER,
    atomic_write_dir, atomic_write_json, check_recorded, check_recorded_file, check_target, read_json_object,
)
from interp.activations import LastK, Positions, collect_residuals
from interp.chat import TokenBatch, prompt_list
from interp.directions import RESID_SITES, hook_name
from interp.hooked import HookedModel, check_layers, d_model

SHARDS_KIND = "activation harvest"
MANIFEST_FILE = "manifest.json"
TENSOR_NAME = "activations"
FORMAT = "interp.activation_shards"
FORMAT_VERSION = 1
DEFAULT_SHARD_BYTES = 256 * 2**20
MAX_OPEN_SHARDS = 64  # memory maps kept open at once (each holds a file descriptor)
_NUMPY_DTYPES = {torch.float32: (np.float32, "F32"), torch.float16: (np.float16, "F16"),
                 torch.bfloat16: (np.uint16, "BF16"), torch.float64: (np.float64, "F64")}


def collect_residuals_to_shards(
    model: HookedModel,
    prompts: Sequence[str] | TokenBatch,
    layers: Sequence[int] | int,
    folder: str | Path,
    positions: Positions = -1,
    *,
    site: str = "resid_pre",
    batch_size: int = 16,
    rows_per_shard: int | None = None,
    dtype: torch.dtype = torch.float32,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ResidualShards:
    """`collect_residuals(model, prompts, layers, positions, ...)`, written to `folder` shard by shard.

    Rows are prompts, as in memory: row i of the result is `collect_residuals(...)[i]`, of shape
    [n_layers, n_positions, d_model]. `rows_per_shard` defaults to as many rows as fit in 256 MiB; at most
    about two shards' worth of activations is held in memory. `meta` (JSON) is stored in the manifest.
    Returns the shards, opened memory-mapped.
    """
    from interp.models import model_name

    layer_list = check_layers(model, [layers] if isinstance(layers, int) else list(layers))
    whole_number(batch_size, "batch_size", minimum=1)
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(str(d) for d in _NUMPY_DTYPES)}, got {dtype!r}")
    source = prompts if isinstance(prompts, TokenBatch) else prompt_list(prompts)
    n_prompts = source.input_ids.shape[0] if isinstance(source, TokenBatch) else len(source)
    if isinstance(positions, Tensor) and (positions.ndim != 2 or positions.shape[0] != n_prompts):
        raise ValueError(f"positions: an index tensor must have shape [n_prompts={n_prompts}, n_positions], "
                         f"got {tuple(positions.shape)}")
    if rows_per_shard is None:
        row_bytes = len(layer_list) * _n_positions(positions) * d_model(model) * _itemsize(dtype)
        rows_per_shard = max(1, DEFAULT_SHARD_BYTES // row_bytes)
    whole_number(rows_per_shard, "rows_per_shard", minimum=1)
    try:
        meta_json = json.loads(json.dumps(meta or {}))  # refused here, before any work, if not JSON
    except (TypeError, ValueError) as error:
        raise ValueError(f"meta: expected a JSON-serialisable dict ({error})") from None
    # Chunks are whole batches, so each forward pass is the one the in-memory call would make.
    chunk = batch_size * max(1, rows_per_shard // batch_size)
    label = {"format": FORMAT, "model": model_name(model), "site": site, "layers": json.dumps(layer_list)}
    writer = _ShardWriter(rows_per_shard, label)
    with atomic_write_dir(Path(folder), SHARDS_KIND, overwrite=overwrite, argument="folder") as tmp:
        writer.folder = tmp
        bar = tqdm(total=n_prompts, desc="activations to disk", unit="prompt", disable=not progress, leave=False)
        for start in range(0, n_prompts, chunk):
            end = min(start + chunk, n_prompts)
            part = source[start:end]
            chunk_positions = positions[start:end] if isinstance(positions, Tensor) else positions
            writer.add(collect_residuals(model, part, layer_list, chunk_positions, site=site, batch_size=batch_size,
                                         progress=False, dtype=dtype))
            bar.update(end - start)
        bar.close()
        writer.flush(final=True)
        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION, "model": label["model"], "site": site,
            "layers": layer_list, "hook_names": [hook_name(layer, site) for layer in layer_list],
            "positions": _describe_positions(positions), "dtype": str(dtype).removeprefix("torch."),
            "tensor": TENSOR_NAME, "row_shape": writer.row_shape, "n_rows": writer.n_rows,
            "shards": writer.shards, "meta": meta_json,
        }
        atomic_write_json(tmp / MANIFEST_FILE, manifest)  # last: a folder without it is not a harvest
    return open_residual_shards(folder)


class _ShardWriter:
    """Buffers collected rows and writes full shards of `rows_per_shard` rows, each under a temporary name."""

    def __init__(self, rows_per_shard: int, label: dict[str, str]) -> None:
        self.rows_per_shard = rows_per_shard
        self.label = label  # each shard's header metadata: what the rows are
        self.folder = Path()
        self.pending: list[Tensor] = []
        self.n_pending = 0
        self.n_rows = 0
        self.row_shape: list[int] = []
        self.shards: list[dict[str, Any]] = []

    def add(self, rows: Float[Tensor, "n layers positions d_model"]) -> None:
        self.row_shape = list(rows.shape[1:])
        self.pending.append(rows)
        self.n_pending += rows.shape[0]
        self.flush(final=False)

    def flush(self, *, final: bool) -> None:
        while self.n_pending >= self.rows_per_shard or (final and self.n_pending):
            stacked = torch.cat(self.pending)
            take = min(self.rows_per_shard, stacked.shape[0])
            self._write(stacked[:take])
            rest = stacked[take:]
            self.pending, self.n_pending = ([rest] if rest.shape[0] else []), rest.shape[0]

    def _write(self, rows: Tensor) -> None:
        name = f"shard-{len(self.shards):05d}.safetensors"
        partial = self.folder / f".{name}.partial"
        save_file({TENSOR_NAME: rows.contiguous()}, str(partial), metadata=self.label)
        os.replace(partial, self.folder / name)
        self.shards.append({"file": name, "rows": int(rows.shape[0]), "start": self.n_rows})
        self.n_rows += int(rows.shape[0])


def _n_positions(positions: Positions) -> int:
    if isinstance(positions, LastK):
        return positions.k
    if isinstance(positions, Tensor):
        return int(positions.shape[1]) if positions.ndim == 2 else 1
    return 1 if isinstance(positions, int) else len(list(positions))


def _describe_positions(positions: Positions) -> Any:
    if isinstance(positions, LastK):
        return {"last_k": positions.k}
    if isinstance(positions, Tensor):
        return {"per_prompt_index": list(positions.shape)}
    return positions if isinstance(positions, int) else list(positions)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class _Shard:
    path: Path
    rows: int
    start: int


class ResidualShards:
    """A shard folder read lazily: `len()` rows (prompts), each [n_layers, n_positions, d_model].

    `shards[i]`, `shards[a:b]` and `shards[indices]` read just those rows (a copy in RAM, as a tensor);
    `batches(...)` iterates over all rows; `tokens(layer)` is a flat [n_rows × n_positions, d_model] view of
    one layer that `interp.sae_training.train_sae` accepts like a tensor.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], record: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self._record = record  # the artifact marker: each shard's contents are checked when first mapped
        self.layers: list[int] = list(manifest["layers"])
        self.hook_names: list[str] = list(manifest["hook_names"])
        self.dtype: torch.dtype = getattr(torch, manifest["dtype"])
        self.row_shape: tuple[int, int, int] = tuple(manifest["row_shape"])  # type: ignore[assignment]
        self._shards = [_Shard(folder / entry["file"], int(entry["rows"]), int(entry["start"]))
                        for entry in manifest["shards"]]
        self._starts = np.array([shard.start for shard in self._shards], dtype=np.int64)
        self._open: OrderedDict[int, np.memmap] = OrderedDict()

    def __len__(self) -> int:
        return int(self.manifest["n_rows"])

    def __repr__(self) -> str:
        return (f"ResidualShards({str(self.folder)!r}, rows={len(self)}, row_shape={self.row_shape}, "
                f"dtype={self.dtype}, shards={len(self._shards)})")

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.row_shape))

    def __getitem__(
        self, index: int | slice | Sequence[int] | Int[Tensor, "n"] | Int[np.ndarray, "n"]
    ) -> Float[Tensor, "... n_layers n_positions d_model"]:
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            return self[[int(index)]][0]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._read_range(start, max(start, stop))
            rows = np.arange(start, stop, step, dtype=np.int64)
        else:
            rows = self._check_rows(index)
        return self._read_rows(rows)

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> Iterator[Float[Tensor, "batch n_layers n_positions d_model"]]:
        """Every row once, `batch_size` at a time: in order, or in a seeded random order (`shuffle=True`).

        A shuffled batch is a random set of rows, read (and returned) in file order, so each read is local.
        """
        whole_number(batch_size, "batch_size", minimum=1)
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy() if shuffle else None
        end = n - n % batch_size if drop_last else n
        for start in range(0, end, batch_size):
            if order is None:
                yield self._read_range(start, min(start + batch_size, n))
            else:
                yield self._read_rows(np.sort(order[start : start + batch_size]))

    def load(self) -> Float[Tensor, "n_rows n_layers n_positions d_model"]:
        """Every row in memory, as `collect_residuals` would have returned it."""
        return self._read_range(0, len(self))

    def tokens(self, layer: int) -> TokenRows:
        """Layer `layer`'s activations as flat token rows [n_rows × n_positions, d_model], read lazily."""
        if layer not in self.layers:
            raise ValueError(f"layer: {layer} is not in this harvest (layers {self.layers})")
        return TokenRows(self, self.layers.index(layer))

    def _check_rows(self, index: Any) -> Int[np.ndarray, "n"]:
        rows = np.asarray(index.cpu() if isinstance(index, Tensor) else index)
        if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer) or rows.ndim != 1:
            raise TypeError(f"index: expected an int, a slice or a 1-d sequence of ints, got {type(index).__name__}")
        rows = rows.astype(np.int64)
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"index: rows out of range for {len(self)} rows")
        return rows

    def _map(self, shard_index: int) -> np.memmap:
        if shard_index in self._open:
            self._open.move_to_end(shard_index)
            return self._open[shard_index]
        shard = self._shards[shard_index]
        if self._record is not None:
            check_recorded_file(self.folder, shard.path.name, self._record["files"].get(shard.path.name))
        mapped = _memmap_tensor(shard.path, (shard.rows, *self.row_shape), self.dtype)
        self._open[shard_index] = mapped
        if len(self._open) > MAX_OPEN_SHARDS:
            self._open.popitem(last=False)
        return mapped

    def _read_range(self, start: int, stop: int) -> Float[Tensor, "n n_layers n_positions d_model"]:
        parts = []
        first = self._shard_of(start) if stop > start else len(self._shards)
        for shard_index in range(first, len(self._shards)):
            shard = self._shards[shard_index]
            if shard.start >= stop:
                break
            low, high = max(start, shard.start) - shard.start, min(stop, shard.start + shard.rows) - shard.start
            parts.append(np.array(self._map(shard_index)[low:high]))
        return self._as_tensor(np.concatenate(parts) if parts else self._empty(0))

    def _read_rows(
        self, rows: Int[np.ndarray, "n"], layer_index: int | None = None
    ) -> Float[Tensor, "n *row"]:
        """The rows asked for, each whole or (with `layer_index`) only that layer's [n_positions, d_model]."""
        out = self._empty(len(rows), layer_index is not None)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        for shard_index in np.unique(shard_of):
            chosen = shard_of == shard_index
            local = rows[chosen] - self._shards[shard_index].start
            mapped = self._map(int(shard_index))
            out[chosen] = mapped[local] if layer_index is None else mapped[local, layer_index]
        return self._as_tensor(out)

    def _shard_of(self, row: int) -> int:
        return int(np.searchsorted(self._starts, row, side="right") - 1)

    def _empty(self, n: int, one_layer: bool = False) -> np.ndarray:
        shape = self.row_shape[1:] if one_layer else self.row_shape
        return np.empty((n, *shape), dtype=_NUMPY_DTYPES[self.dtype][0])

    def _as_tensor(self, array: np.ndarray) -> Tensor:
        tensor = torch.from_numpy(array)
        return tensor.view(torch.bfloat16) if self.dtype == torch.bfloat16 else tensor


class TokenRows:
    """One layer of a shard folder as flat rows [n_rows × n_positions, d_model]; indexable like a tensor.

    Enough of a tensor for `train_sae` (`shape`, `ndim`, `device`, `dtype`, indexing by ints, slices and
    index tensors), so an SAE trains from a harvest on disk without loading it.
    """

    def __init__(self, shards: ResidualShards, layer_index: int) -> None:
        self.shards, self.layer_index = shards, layer_index
        self.n_positions = shards.row_shape[1]
        self.shape = torch.Size((len(shards) * self.n_positions, shards.row_shape[2]))
        self.ndim, self.device, self.dtype = 2, torch.device("cpu"), shards.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice | Int[Tensor, "n"] | Sequence[int]) -> Float[Tensor, "... d_model"]:
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            return self[[int(index)]][0]
        if isinstance(index, slice):
            flat = np.arange(*index.indices(self.shape[0]), dtype=np.int64)
        else:
            flat = np.asarray(index.cpu() if isinstance(index, Tensor) else index).astype(np.int64)
            flat = np.where(flat < 0, flat + self.shape[0], flat)
        if flat.size and (flat.min() < 0 or flat.max() >= self.shape[0]):
            raise IndexError(f"index: token rows out of range for {self.shape[0]} rows")
        prompts, positions = np.divmod(flat, self.n_positions)
        unique, inverse = np.unique(prompts, return_inverse=True)
        rows = self.shards._read_rows(unique, self.layer_index)  # [n_unique, n_positions, d_model]
        return rows[torch.from_numpy(inverse), torch.from_numpy(positions)]


def open_residual_shards(folder: str | Path, *, verify: bool = True) -> ResidualShards:
    """A shard folder written by `collect_residuals_to_shards`, memory-mapped (nothing is read yet).

    Checks the manifest (against its recorded SHA-256, and every value), each shard's header and size, and
    that the headers describe what the manifest says (model, site, layers); a missing, damaged or edited
    file is an error naming it. Each shard's contents are checked against the marker when first read.
    `verify=False` reads a harvest edited on purpose (the manifest must still agree with the shards).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder: no shard folder at {folder}")
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ValueError(f"folder: {folder} is not a complete activation shard folder (no {MANIFEST_FILE})")
    # The shards' contents are hashed when first read (a harvest may be many times the size of RAM).
    record = check_recorded(folder, SHARDS_KIND, required=(MANIFEST_FILE,), verify=verify, hashed=(MANIFEST_FILE,))
    if verify and record is None:
        raise ValueError(f"folder: {folder} is not a complete activation shard folder (no {MARKER}); "
                         "pass verify=False to read it without one")
    manifest = _checked_manifest(manifest_path, read_json_object(manifest_path))
    unrecorded = [entry["file"] for entry in manifest["shards"] if record is not None and entry["file"] not in record["files"]]
    if unrecorded:
        raise ValueError(f"{manifest_path}: shards {unrecorded} are not recorded in {folder / MARKER} (edited?)")
    dtype = getattr(torch, manifest["dtype"])
    expected_label = {"format": FORMAT, "model": manifest["model"], "site": manifest["site"],
                      "layers": json.dumps(manifest["layers"])}
    total = 0
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a shard named in {MANIFEST_FILE} is missing")
        if entry["start"] != total:
            raise ValueError(f"{manifest_path}: shard {entry['file']} starts at {entry['start']}, expected {total}")
        _, label = _shard_header(path, (entry["rows"], *manifest["row_shape"]), dtype)  # header, shape and size
        if label and {key: label.get(key) for key in expected_label} != expected_label:
            said = {key: label.get(key) for key in ("model", "site", "layers")}
            raise ValueError(f"{manifest_path}: says model {manifest['model']!r}, site {manifest['site']!r}, layers "
                             f"{manifest['layers']}, but {path.name} was written for {said} (edited?)")
        total += entry["rows"]
    if total != manifest["n_rows"]:
        raise ValueError(f"{manifest_path}: shards hold {total} rows, the manifest says {manifest['n_rows']}")
    return ResidualShards(folder, manifest, record)


def _checked_manifest(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` if every value is what `collect_residuals_to_shards` writes; else a ValueError naming `path`."""
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    try:
        if getattr(torch, str(manifest.get("dtype")), None) not in _NUMPY_DTYPES:
            raise ValueError(f"dtype: unsupported {manifest.get('dtype')!r}")
        if not isinstance(manifest.get("model"), str) or not manifest["model"]:
            raise ValueError(f"model: expected a name, got {manifest.get('model')!r}")
        if manifest.get("site") not in RESID_SITES:
            raise ValueError(f"site: expected one of {RESID_SITES}, got {manifest.get('site')!r}")
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not layers or len(set(map(repr, layers))) != len(layers):
            raise ValueError(f"layers: expected a list of distinct layer numbers, got {layers!r}")
        for layer in layers:
            whole_number(layer, "layers", minimum=0)
        if manifest.get("hook_names") != [hook_name(layer, manifest["site"]) for layer in layers]:
            raise ValueError(f"hook_names: {manifest.get('hook_names')!r} do not match layers {layers} at {manifest['site']}")
        shape = manifest.get("row_shape")
        if not isinstance(shape, list) or len(shape) != 3:
            raise ValueError(f"row_shape: expected [n_layers, n_positions, d_model], got {shape!r}")
        for size in shape:
            whole_number(size, "row_shape", minimum=1)
        if shape[0] != len(layers):
            raise ValueError(f"row_shape: {shape} holds {shape[0]} layers, but layers lists {len(layers)}")
        whole_number(manifest.get("n_rows"), "n_rows", minimum=0)
        shards = manifest.get("shards")
        if not isinstance(shards, list):
            raise ValueError(f"shards: expected a list, got {shards!r}")
        for entry in shards:
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
                    or Path(entry["file"]).name != entry["file"] or entry["file"].startswith("."):
                raise ValueError(f"shards: expected entries {{file, rows, start}} naming a file in the folder, got {entry!r}")
            whole_number(entry.get("rows"), "shards: rows", minimum=1)
            whole_number(entry.get("start"), "shards: start", minimum=0)
        if not isinstance(manifest.get("meta", {}), dict):
            raise ValueError(f"meta: expected an object, got {manifest['meta']!r}")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return manifest


def _shard_header(path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[int, dict[str, Any]]:
    """Where the `activations` tensor's data starts in the safetensors file `path`, and the header's metadata;
    a header that does not describe `shape` and `dtype`, or a file too short for it, is a ValueError naming it."""
    numpy_dtype, code = _NUMPY_DTYPES[dtype]
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= size - 8:
            raise ValueError(f"{path}: not a safetensors file (bad header length); truncated?")
        try:
            header = json.loads(handle.read(length))
            entry = header[TENSOR_NAME]
            begin, end = (int(offset) for offset in entry["data_offsets"])
            label = header.get("__metadata__") or {}
            if not isinstance(label, dict):
                raise TypeError
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: not a shard (no readable {TENSOR_NAME!r} tensor in its header)") from None
    expected = int(np.prod(shape)) * np.dtype(numpy_dtype).itemsize
    if entry.get("dtype") != code or list(entry.get("shape", [])) != list(shape) or end - begin != expected or begin < 0:
        raise ValueError(f"{path}: holds {entry.get('dtype')} {entry.get('shape')}, expected {code} {list(shape)}")
    if 8 + length + end > size:
        raise ValueError(f"{path}: truncated ({size} bytes, the header needs {8 + length + end})")
    return 8 + length + begin, label


def _memmap_tensor(path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> np.memmap:
    """The `activations` tensor of a safetensors file as a read-only memmap (8-byte header length, JSON, data)."""
    offset, _ = _shard_header(path, shape, dtype)
    return np.memmap(path, dtype=_NUMPY_DTYPES[dtype][0], mode="r", offset=offset, shape=shape)


def check_shards_target(folder: str | Path, *, overwrite: bool = False, argument: str = "folder") -> None:
    """Raise before any work unless a harvest may be written at `folder` (new, empty, or ours with `overwrite`)."""
    check_target(Path(folder), SHARDS_KIND, overwrite=overwrite, argument=argument)
