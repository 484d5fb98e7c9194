"""`Direction`s and CAA vectors as llama.cpp control vectors (GGUF), and back.

**The file.** A control vector is a GGUF of architecture `controlvector` holding one F32 tensor
`direction.{k}` of shape [n_embd] per steered layer (plus the hint keys `controlvector.model_hint`
and `controlvector.layer_count`, which llama.cpp does not check). llama.cpp's loader
(`common_control_vector_load_one`) refuses k = 0, sums tensors that name the same k, and scales each
by the user's strength; `llama_set_adapter_cvec` then adds `direction.{k}` to the *output of block k*
(`build_cvec(cur, il)` at the end of every block `il`), at every position of the sequence.

**The layer convention.** Our `Direction` at `blocks.{L}.hook_resid_pre` lives in the residual stream
*entering* block L, which is the output of block L − 1: it is written as `direction.{L-1}`. A direction
at `resid_post` of L is the output of block L: `direction.{L}`. The embeddings (resid_pre of 0) and block
0's output (resid_pre of 1) cannot be steered by llama.cpp (it keeps no tensor for block 0), so those
are refused rather than shifted by a layer. A control vector adds at every position, so the exported
file does what `Steer(direction, scale, unit=unit, positions="all")` does; a CAA `steer` (from the last
prompt token on) differs from it on the prompt tokens before the last.

**Reading the peers' files.** repeng's `ControlVector.export_gguf` and llama.cpp's `cvector-generator` number
tensors the same way (repeng's `directions[k]` is the output of decoder layer k; it trains layers n − 1 … 1 by
default and writes them last first), but repeng may also write `direction.0` and F64 tensors, which llama.cpp
refuses. `load_control_vector` reads all of them as `SteeringVectors` (resid_pre of k + 1, or resid_post of k
when the file steers the last block); `read_control_vector(strict=True)` keeps llama.cpp's own checks.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from jaxtyping import Float

from interp._checks import finite_number, layer_index, whole_number
from interp._io import atomic_file
from interp.caa import CAAVectors, Normalisation
from interp.directions import Direction, check_direction
from interp.export.files import check_output_file
from interp.models import REGISTRY, model_dimensions
from interp.models.dimensions import open_gguf
from interp.vectors import SteeringVectors, block_output_vectors

ARCHITECTURE = "controlvector"
TENSOR_PREFIX = "direction."
CONVENTION = (
    "direction.{k} is added to the output of block k at every position, as llama.cpp applies it; "
    "it is the residual stream at blocks.{k+1}.hook_resid_pre (TransformerLens numbering)"
)


def llama_cpp_layer(layer: int, site: str = "resid_pre") -> int:
    """The index k of the `direction.{k}` tensor that llama.cpp adds where our `blocks.{layer}.hook_{site}` is.

    resid_pre of L is the output of block L − 1, so k = L − 1; resid_post of L is block L's output, k = L.
    """
    whole_number(layer, "layer", minimum=0)
    if site == "resid_pre":
        k = layer - 1
    elif site == "resid_post":
        k = layer
    else:
        raise ValueError(
            f"site: llama.cpp control vectors add to a block's output (our resid_pre of the next layer, or "
            f"resid_post), not at {site!r}"
        )
    if k < 1:
        raise ValueError(
            f"layer: blocks.{layer}.hook_{site} is the {'embedding output' if k < 0 else 'output of block 0'}, which "
            "llama.cpp control vectors cannot steer (they start at the output of block 1, our resid_pre of layer 2)"
        )
    return k


def _as_directions(vectors: Direction | Sequence[Direction] | CAAVectors, layers: Sequence[int] | None,
                   normalisation: Normalisation) -> list[Direction]:
    if isinstance(vectors, CAAVectors):
        if layers is None:
            raise ValueError(
                "layers: which layers of the CAA vectors to export (CAA steers one layer at a time, e.g. layers=[13])"
            )
        if len({whole_number(layer, "layers") for layer in layers}) != len(layers):  # llama.cpp would sum the repeats
            raise ValueError(f"layers: {list(layers)} repeats a layer; list each once (scale= sets the strength)")
        return [vectors.direction(layer, normalisation) for layer in layers]
    if layers is not None:
        raise ValueError("layers: only for CAAVectors; a Direction carries its own layer")
    directions = [vectors] if isinstance(vectors, Direction) else list(vectors)
    if not directions or not all(isinstance(direction, Direction) for direction in directions):
        raise TypeError(
            f"vectors: expected a Direction, a list of Directions or CAAVectors, got {type(vectors).__name__}"
        )
    return directions


def control_vector_layers(
    vectors: Direction | Sequence[Direction] | CAAVectors,
    *,
    scale: float = 1.0,
    unit: bool = False,
    layers: Sequence[int] | None = None,
    normalisation: Normalisation = "resid",
    n_layers: int | None = None,
    target: Any = None,
    allow_other_model: bool = False,
) -> dict[int, Float[np.ndarray, "d_model"]]:
    """The `direction.{k}` tensors (float32) that steer as `Steer(direction, scale, unit=unit)` does, keyed by k.

    `vectors`: one Direction, several (summed where they fall on the same block output, as llama.cpp
    sums them), or CAA vectors with the `layers` to take (each normalised by `normalisation`).
    Each direction gets `Steer`'s checks (`interp._checks.check_direction`) against the model the file is
    for: `target` (a registry name, a .gguf file or a loaded model; default: the directions' own model
    when it is a registry model), or only its block count `n_layers`. A layer past the model's last block
    (which llama.cpp would silently ignore), another width, another model (unless `allow_other_model`) and
    values that overflow float32 are errors; when neither tells the block count, a warning says so.
    """
    scale = finite_number(scale, "scale")
    directions = _as_directions(vectors, layers, normalisation)
    widths = {direction.d_model for direction in directions}
    if len(widths) != 1:
        raise ValueError(f"vectors: the directions have different widths {sorted(widths)}")
    models = {direction.model for direction in directions}
    if len(models) != 1:
        raise ValueError(f"vectors: the directions belong to different models {sorted(models)}")
    name, width, blocks = _target(target, directions[0].model, vectors)
    if n_layers is not None:
        whole_number(n_layers, "n_layers", minimum=1)
        if blocks is not None and n_layers != blocks:
            raise ValueError(f"n_layers: {n_layers}, but the target model has {blocks} blocks")
        blocks = n_layers
    if blocks is None:
        warnings.warn(f"export_control_vector: the directions' model {directions[0].model!r} is not a registry model, "
                      "so their layers cannot be checked against its block count (llama.cpp ignores a vector past "
                      "the last block); pass target= (a .gguf file or the loaded model) or n_layers=", stacklevel=3)
    out: dict[int, np.ndarray] = {}
    for direction in directions:
        check_direction(direction, None if allow_other_model else name, direction.d_model if width is None else width)
        k = llama_cpp_layer(direction.layer, direction.site)
        if blocks is not None and k > blocks - 1:
            raise ValueError(
                f"direction: blocks.{direction.layer}.hook_{direction.site} is past the output of the last block "
                f"({blocks - 1}) of a {blocks}-block model (n_layers)"
            )
        if blocks is not None:  # as Steer refuses it: resid_pre of layer n_layers is no hook point
            layer_index(direction.layer, blocks, "direction", from_end=False)
        vector = (direction.unit() if unit else direction).vector.detach().to("cpu", torch.float64) * scale
        out[k] = out.get(k, 0.0) + vector.numpy()
    largest = float(np.finfo(np.float32).max)
    for k, vector in out.items():
        if not np.all(np.abs(vector) <= largest):
            raise ValueError(f"scale: {scale:g} × the vectors gives values up to {np.abs(vector).max():.3g} at "
                             f"direction.{k}, which overflow float32 (largest {largest:.3g})")
    return {k: out[k].astype(np.float32) for k in sorted(out)}


def _target(target: Any, model: str, vectors: Any) -> tuple[str | None, int | None, int | None]:
    """(name, d_model, n_layers) of the model a control vector is for (see `control_vector_layers`)."""
    if target is not None:
        return model_dimensions(target, "target")
    if model in REGISTRY:
        return model_dimensions(model, "target")
    return None, None, vectors.n_layers if isinstance(vectors, CAAVectors) else None


def export_control_vector(
    vectors: Direction | Sequence[Direction] | CAAVectors,
    path: str | os.PathLike[str],
    *,
    scale: float = 1.0,
    unit: bool = False,
    layers: Sequence[int] | None = None,
    normalisation: Normalisation = "resid",
    n_layers: int | None = None,
    target: Any = None,
    allow_other_model: bool = False,
    model_hint: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a llama.cpp control-vector GGUF at `path` (atomically) that steers as `Steer` does; returns `path`.

    Load it with `llama-cli --control-vector path` (its strength multiplies `scale`), or in
    llama-cpp-python with `interp.export.apply_control_vector`. See `control_vector_layers` for the
    arguments and checks (all made before anything is written); `model_hint` is recorded as
    `controlvector.model_hint` (default: the direction's model). `path` must be new, or an existing file
    replaced only with `overwrite=True`.
    """
    target_path = check_output_file(path, overwrite=overwrite)
    tensors = control_vector_layers(vectors, scale=scale, unit=unit, layers=layers, normalisation=normalisation,
                                    n_layers=n_layers, target=target, allow_other_model=allow_other_model)
    directions = _as_directions(vectors, layers, normalisation)
    provenance = [{"layer": d.layer, "site": d.site, "model": d.model, "source": d.source, "norm": d.norm}
                  for d in directions]
    with atomic_file(target_path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_string("controlvector.model_hint", model_hint or directions[0].model)
        writer.add_uint32("controlvector.layer_count", len(tensors))
        writer.add_string("interp.layer_convention", CONVENTION)
        writer.add_string("interp.directions", json.dumps(
            {"scale": scale, "unit": unit, "directions": provenance}, default=str))
        for k, vector in tensors.items():
            writer.add_tensor(f"{TENSOR_PREFIX}{k}", vector)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target_path


# Tensor types a peer may write (repeng writes whatever numpy dtype its arithmetic produced; float64 after
# `vector * np.float64(...)`); llama.cpp itself reads F32 only.
READABLE_TYPES = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16,
                  gguf.GGMLQuantizationType.F64: np.float64}


def read_control_vector(path: str | os.PathLike[str], *, strict: bool = True) -> dict[int, Float[np.ndarray, "d_model"]]:
    """The `direction.{k}` tensors of a control-vector GGUF (ours, repeng's or llama.cpp's `cvector-generator`),
    keyed by k (the block whose output each is added to).

    `strict=True` applies llama.cpp loader's checks (names `direction.{k}` with k ≥ 1, F32, 1-D, one width).
    `strict=False` reads what repeng's `export_gguf` can also write and interp can still steer with: `direction.0`
    (the output of block 0, which llama.cpp refuses), F16/F64 tensors (as float32), and other tensors skipped.
    """
    reader = open_gguf(path, "path")
    out: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        index = tensor.name.removeprefix(TENSOR_PREFIX)
        if not tensor.name.startswith(TENSOR_PREFIX) or not index.isdigit():
            if not strict:
                continue
            raise ValueError(f"path: {path}: tensor {tensor.name!r} is not named direction.{{layer}}")
        if int(index) == 0 and strict:
            raise ValueError(f"path: {path}: direction.0 is invalid (llama.cpp keeps no control vector for block 0)")
        allowed = (gguf.GGMLQuantizationType.F32,) if strict else tuple(READABLE_TYPES)
        if tensor.tensor_type not in allowed or len(tensor.shape) != 1:
            raise ValueError(f"path: {path}: {tensor.name} must be a 1-D {'/'.join(t.name for t in allowed)} tensor, got "
                             f"{tensor.tensor_type.name} {list(map(int, tensor.shape))}")
        vector = np.array(tensor.data, dtype=READABLE_TYPES[tensor.tensor_type]).astype(np.float32)
        if not np.isfinite(vector).all():
            raise ValueError(f"path: {path}: {tensor.name} contains NaN or inf (or overflows float32)")
        out[int(index)] = out.get(int(index), 0.0) + vector  # llama.cpp sums repeated layers
    if not out:
        raise ValueError(f"path: {path} holds no direction tensors")
    if len({vector.shape[0] for vector in out.values()}) != 1:
        raise ValueError(f"path: {path}: the direction tensors have different widths")
    return {k: out[k] for k in sorted(out)}


def control_vector_buffer(
    control_vector: str | os.PathLike[str] | Mapping[int, np.ndarray], strength: float = 1.0
) -> tuple[Float[np.ndarray, "n"], int]:
    """The flat float32 buffer `llama_set_adapter_cvec` takes, and n_embd: block k's vector × `strength` at
    offset n_embd · (k − 1), zeros for blocks without one (llama.cpp's `common_control_vector_load` layout)."""
    strength = finite_number(strength, "strength")
    layers = control_vector if isinstance(control_vector, Mapping) else read_control_vector(control_vector)
    if not layers or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in layers):
        raise ValueError(f"control_vector: expected block indices k >= 1, got {sorted(layers)}")
    n_embd = int(np.asarray(next(iter(layers.values()))).shape[0])
    buffer = np.zeros(n_embd * max(layers), dtype=np.float64)
    for k, vector in layers.items():
        vector = np.asarray(vector, dtype=np.float64)
        if vector.shape != (n_embd,):
            raise ValueError(f"control_vector: block {k} has shape {vector.shape}, expected ({n_embd},)")
        buffer[n_embd * (k - 1) : n_embd * k] += vector * strength
    if not np.all(np.abs(buffer) <= np.finfo(np.float32).max):  # NaN fails this too
        raise ValueError(f"control_vector: its values × strength {strength:g} are NaN, inf or overflow float32")
    return buffer.astype(np.float32), n_embd


def load_control_vector(
    path: str | os.PathLike[str], model: Any, *, source: str = "control_vector", site: str | None = None,
    n_layers: int | None = None,
) -> SteeringVectors:
    """A control-vector GGUF (ours, repeng's `export_gguf`, llama.cpp's `cvector-generator`) as `SteeringVectors`.

    Every writer numbers a tensor by the block whose output it is added to: `direction.{k}` becomes our resid_pre of
    k + 1 (as our export writes it), or resid_post of k when the file steers the model's last block (which has no
    resid_pre after it) or `site="resid_post"` is asked for; see `interp.vectors.block_output_vectors`.
    `model`: the name the vectors belong to (a registry name also gives the block count), or a loaded model;
    `n_layers` gives the block count otherwise. Read as `read_control_vector(strict=False)` does: repeng's
    `direction.0` and F64 tensors too (a warning says llama.cpp would refuse them).
    """
    name, blocks = _model_name_and_depth(model)
    if n_layers is not None:
        whole_number(n_layers, "n_layers", minimum=1)
        if blocks is not None and blocks != n_layers:
            raise ValueError(f"n_layers: {n_layers}, but the model has {blocks} blocks")
        blocks = n_layers
    tensors = read_control_vector(path, strict=False)
    reader = open_gguf(path, "path")
    if 0 in tensors or any(t.name.startswith(TENSOR_PREFIX) and t.tensor_type != gguf.GGMLQuantizationType.F32
                           for t in reader.tensors):
        warnings.warn(f"load_control_vector: {path} holds direction.0 or non-F32 tensors, which llama.cpp refuses; "
                      "interp reads them (re-export with export_control_vector for llama.cpp)", stacklevel=2)
    hint = reader.get_field("controlvector.model_hint")
    meta: dict[str, Any] = {"file": str(path), "model_hint": str(hint.contents()) if hint is not None else None}
    provenance = reader.get_field("interp.directions")
    if provenance is not None:
        meta["interp"] = json.loads(str(provenance.contents()))
    try:
        return block_output_vectors(tensors, name, source=source, n_layers=blocks, site=site, meta=meta)
    except ValueError as error:
        raise ValueError(f"path: {path}: {error}") from None


def _model_name_and_depth(model: Any) -> tuple[str, int | None]:
    """The name vectors of `model` carry, and its block count where known (a registry name, a loaded model)."""
    if isinstance(model, str):
        if not model:
            raise ValueError(f"model: expected the name of the model the vectors belong to, got {model!r}")
        return model, REGISTRY[model].n_layers if model in REGISTRY else None
    name, _, blocks = model_dimensions(model, "model")
    if not name:
        raise ValueError("model: a loaded model without a name; pass the name the vectors belong to (and n_layers=)")
    return name, blocks
