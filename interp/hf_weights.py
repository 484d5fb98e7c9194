"""Finding the matrices that read from or write into the residual stream in an HF module tree.

A `WeightRef` names one matrix and says which way it faces the residual stream, so orthogonalisation
(`interp.weight_edit`) and the SVD of weight differences (`interp.weight_diff`) see every architecture's
layouts (nn.Linear, nn.Embedding, GPT-2's Conv1D) the same way: residual axis first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor, nn

from interp.hooked import decoder_layers

WEIGHT_KINDS = ("embed", "attn_out", "mlp_out", "attn_in", "mlp_in")
_ATTENTION = ("self_attn", "attn", "attention", "self_attention")
_ATTENTION_OUT = ("o_proj", "out_proj", "c_proj", "dense")
_ATTENTION_IN = ("q_proj", "k_proj", "v_proj", "c_attn", "query_key_value", "qkv_proj")
_MLP = ("mlp", "feed_forward")
_MLP_OUT = ("down_proj", "fc2", "c_proj", "dense_4h_to_h", "w2")
_MLP_IN = ("gate_proj", "up_proj", "fc1", "c_fc", "dense_h_to_4h", "w1", "w3", "gate_up_proj")
_POSITION_EMBEDDINGS = ("wpe", "embed_positions")


def _child(module: nn.Module, names: Sequence[str]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def hidden_size(hf: nn.Module) -> int:
    """The width of the residual stream of an HF model (its input embedding's columns)."""
    return int(hf.get_input_embeddings().weight.shape[1])


@dataclass(frozen=True)
class WeightRef:
    """One matrix: its parameter name, module, whether it writes into (or reads from) the residual."""

    name: str
    module: nn.Module
    writes: bool

    def residual_view(self) -> Float[Tensor, "d_model n"]:
        """The weight with the residual-stream axis first (a view or transpose, never a copy)."""
        weight = self.module.weight
        embedding = isinstance(self.module, nn.Embedding)
        conv1d = type(self.module).__name__ == "Conv1D"  # GPT-2's [in, out] layout
        residual_first = (self.writes and not conv1d and not embedding) or (not self.writes and conv1d)
        return weight if residual_first else weight.T


def weight_refs(hf: nn.Module, kinds: Sequence[str], layers: Sequence[int] | None = None) -> list[WeightRef]:
    """The matrices of `kinds` (see `WEIGHT_KINDS`) at `layers` (default all), or exact parameter names."""
    path, blocks = decoder_layers(hf)
    chosen = list(range(len(blocks))) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in chosen if not 0 <= layer < len(blocks)]
    if bad:
        raise ValueError(f"layers: {bad} out of range for a model with {len(blocks)} layers")
    refs: list[WeightRef] = []
    for kind in kinds:
        if kind == "embed":
            refs.append(WeightRef(_param_name(hf, hf.get_input_embeddings()), hf.get_input_embeddings(), True))
            continue
        if kind not in WEIGHT_KINDS:
            refs.extend(_named_refs(hf, kind))
            continue
        for layer in chosen:
            refs.extend(_layer_refs(blocks[layer], f"{path}.{layer}", kind))
    if not refs:
        raise ValueError(f"weights: {list(kinds)} selects no matrices")
    return refs


def _layer_refs(block: nn.Module, prefix: str, kind: str) -> list[WeightRef]:
    group, names = (_ATTENTION, _ATTENTION_OUT if kind == "attn_out" else _ATTENTION_IN) if kind.startswith(
        "attn"
    ) else (_MLP, _MLP_OUT if kind == "mlp_out" else _MLP_IN)
    parent = _child(block, group)
    if parent is None:
        raise ValueError(f"weights: {kind!r}: {prefix} has none of the submodules {group}")
    refs = []
    for name in names:
        module = getattr(parent[1], name, None)
        if isinstance(module, nn.Module) and getattr(module, "weight", None) is not None:
            refs.append(WeightRef(f"{prefix}.{parent[0]}.{name}.weight", module, kind.endswith("_out")))
            if kind.endswith("_out"):
                break  # one output projection per block
    if not refs:
        raise ValueError(f"weights: {kind!r}: {prefix}.{parent[0]} has none of {names}")
    return refs


def _param_name(hf: nn.Module, module: nn.Module) -> str:
    for name, candidate in hf.named_modules():
        if candidate is module:
            return f"{name}.weight"
    return "weight"


def _named_refs(hf: nn.Module, name: str) -> list[WeightRef]:
    writers = {ref.name: ref for ref in residual_writers(hf)}
    if name in writers:
        return [writers[name]]
    readers = {ref.name: ref for ref in weight_refs(hf, ("attn_in", "mlp_in"))}
    if name in readers:
        return [readers[name]]
    raise ValueError(
        f"weights: {name!r} is neither one of {WEIGHT_KINDS} nor the name of a matrix that reads from or "
        "writes into the residual stream"
    )


def residual_writers(hf: nn.Module) -> list[WeightRef]:
    """Every matrix that writes into the residual stream: embeddings and each block's two outputs."""
    path, blocks = decoder_layers(hf)
    embedding = hf.get_input_embeddings()
    refs = [WeightRef(_param_name(hf, embedding), embedding, True)]
    base = hf.get_submodule(path.rsplit(".", 1)[0]) if "." in path else hf
    position = _child(base, _POSITION_EMBEDDINGS)
    if position is not None and isinstance(position[1], nn.Embedding):
        refs.append(WeightRef(_param_name(hf, position[1]), position[1], True))
    for layer, block in enumerate(blocks):
        if hasattr(block, "post_feedforward_layernorm") or hasattr(block, "post_attention_norm"):
            raise ValueError(
                "model: its blocks normalise the attention/MLP output before the residual add (sandwich norms); "
                "orthogonalising the output weights would not remove the direction — use hook ablation instead"
            )
        refs.extend(_layer_refs(block, f"{path}.{layer}", "attn_out"))
        refs.extend(_layer_refs(block, f"{path}.{layer}", "mlp_out"))
    return refs
