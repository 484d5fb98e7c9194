"""Directions in weights: orthogonalisation ("abliteration") and recovery by SVD of weight differences.

**Abliteration.** Directional ablation of a unit direction r̂ at every residual read and write
(`interp.steering.Ablate`) equals editing every weight that *writes* into the residual stream —
token (and position) embeddings, each attention output projection, each MLP output projection, and
their biases — to W ← (I − r̂r̂ᵀ)W: then no write carries r̂, so every resid_pre, attn_out and mlp_out
is already r̂-free. The unembedding is left alone (the hooks leave it alone too); a model that ties
its unembedding to the embedding is untied first, or editing the embedding would silently edit the
unembedding as well. Norms after a block's output (Gemma's sandwich norms) would undo the edit, so
such models are refused with a clear error.

**Recovery.** An abliterated model differs from its base by ΔW = −r̂(r̂ᵀW) in every written matrix:
rank one, with r̂ as the left singular vector (in residual space), even over many matrices
concatenated. Quantisation adds noise that can dominate the spectrum — error concentrated on the
rows of outlier residual dimensions makes a top singular vector that is no edit at all. So candidates
are chosen by evidence, not by index: the *edit consistency* of candidate u (the cosine between
uᵀΔW and −uᵀW_base over all matrices: 1 for a projection edit along u, ≈ 0 for quantisation noise,
which is uncorrelated with the weights), its share of the difference's energy, and, given prompts,
its behaviour (the refusal score with u ablated).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from interp._io import atomic_write_dir, check_target
from interp.directions import Direction
from interp.hooked import d_model, is_bridge, plain_model
from interp.models import is_hf_save, load_hf, model_name
from interp.refusal import last_logits, refusal_scores
from interp.steering import Ablate

WEIGHT_KINDS = ("embed", "attn_out", "mlp_out", "attn_in", "mlp_in")
_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
_ATTENTION = ("self_attn", "attn", "attention", "self_attention")
_ATTENTION_OUT = ("o_proj", "out_proj", "c_proj", "dense")
_ATTENTION_IN = ("q_proj", "k_proj", "v_proj", "c_attn", "query_key_value", "qkv_proj")
_MLP = ("mlp", "feed_forward")
_MLP_OUT = ("down_proj", "fc2", "c_proj", "dense_4h_to_h", "w2")
_MLP_IN = ("gate_proj", "up_proj", "fc1", "c_fc", "dense_h_to_4h", "w1", "w3", "gate_up_proj")
_POSITION_EMBEDDINGS = ("wpe", "embed_positions")


# ---------------------------------------------------------------------------------------------
# Finding the weights in an HF module tree
# ---------------------------------------------------------------------------------------------


def hf_tree(model: Any, argument: str = "model") -> nn.Module:
    """The plain HF module tree of a bridge (`load_model`), or an HF `PreTrainedModel` itself."""
    from transformers import PreTrainedModel

    if is_bridge(model):
        plain = plain_model(model)
        if plain is None:
            raise ValueError(
                f"{argument}: a TransformerBridge without interp's plain HF clone; load it with "
                "interp.models.load_model, or pass the HF model from interp.models.load_hf"
            )
        return plain
    if isinstance(model, PreTrainedModel):
        return model
    raise ValueError(
        f"{argument}: expected an HF model (interp.models.load_hf), a bridge from interp.models.load_model, "
        f"or a path; got {type(model).__name__} (a HookedTransformer's weights are not HF weights)"
    )


def _child(module: nn.Module, names: Sequence[str]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def decoder_layers(hf: nn.Module) -> tuple[str, nn.ModuleList]:
    for path in _LAYER_PATHS:
        module: Any = hf
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return path, module
    raise ValueError(f"model: no decoder layers found at any of {_LAYER_PATHS} ({type(hf).__name__})")


def hidden_size(hf: nn.Module) -> int:
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


# ---------------------------------------------------------------------------------------------
# Orthogonalisation and export
# ---------------------------------------------------------------------------------------------


def _untie_unembedding(model: Any, hf: nn.Module) -> bool:
    """Give the unembedding its own copy of a tied embedding matrix (in every tree that holds it)."""
    embedding, unembedding = hf.get_input_embeddings(), hf.get_output_embeddings()
    if unembedding is None or unembedding.weight is not embedding.weight:
        return False
    shared = embedding.weight
    own = nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)
    trees = [hf] + ([model] if model is not hf and isinstance(model, nn.Module) else [])
    for tree in trees:
        for module in tree.modules():
            if not isinstance(module, nn.Embedding) and module._parameters.get("weight") is shared:
                module._parameters["weight"] = own
    for config in (hf.config, getattr(hf.config, "text_config", None)):
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
    return True


def _project_out_(view: Float[Tensor, "d_model n"], unit: Float[Tensor, "d_model"], chunk: int = 16384) -> None:
    """view ← (I − r̂r̂ᵀ) view in place, in float64 column chunks (an embedding has ~10⁵ columns)."""
    r = unit.to(view.device, torch.float64)
    for start in range(0, view.shape[1], chunk):
        part = view[:, start : start + chunk]
        part.sub_((r[:, None] * (r @ part.double())[None, :]).to(part.dtype))


@torch.no_grad()
def orthogonalize_weights(model: Any, direction: Direction, *, allow_other_model: bool = False) -> dict[str, Any]:
    """Fold the ablation of `direction` into the weights, in place: W ← (I − r̂r̂ᵀ)W for every residual write.

    `model` is an HF model (`load_hf`) or a bridge from `load_model` (its HF weights are edited, so the
    bridge itself becomes the orthogonalised model). Returns what was edited and whether the
    unembedding had to be untied from the embedding.
    """
    hf = hf_tree(model)
    width = hidden_size(hf)
    label = model_name(model) if is_bridge(model) else None
    direction.check_compatible(None if allow_other_model else label, width)
    unit = direction.unit().vector.double()  # a zero vector fails here, before anything is changed
    untied = _untie_unembedding(model, hf)
    edited = []
    for ref in residual_writers(hf):
        _project_out_(ref.residual_view(), unit)
        edited.append(ref.name)
        bias = getattr(ref.module, "bias", None)
        if ref.writes and isinstance(bias, Tensor) and bias.shape == (width,):
            _project_out_(bias[:, None], unit)
            edited.append(ref.name.removesuffix("weight") + "bias")
    return {"edited": edited, "untied_unembedding": untied}


def save_hf_model(
    model: Any, folder: str | Path, tokenizer: Any = None, info: dict[str, Any] | None = None, *, overwrite: bool = False
) -> Path:
    """`save_pretrained` of the HF weights + tokenizer into `folder`, atomically; `load_model` reads it.

    `folder` must be new or empty, or hold a saved HF model (replaced only with `overwrite=True`).
    """
    hf = hf_tree(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("tokenizer: an HF model has no tokenizer attached; pass the one from load_hf")
    folder = Path(folder)
    with atomic_write_dir(folder, "HF model", overwrite=overwrite, argument="folder", legacy=is_hf_save) as tmp:
        hf.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if info is not None:
            (tmp / "abliteration.json").write_text(json.dumps(info, indent=2, default=str))
    return folder


def abliterate(
    source: str | Path, direction: Direction, folder: str | Path, *, device: str | torch.device = "cpu",
    allow_other_model: bool = True, overwrite: bool = False,
) -> Path:
    """Load `source` fresh (`load_hf`), orthogonalise it against `direction`, save it to `folder`."""
    check_target(Path(folder), "HF model", overwrite=overwrite, argument="folder", legacy=is_hf_save)
    hf, tokenizer = load_hf(source, device=device)
    report = orthogonalize_weights(hf, direction, allow_other_model=allow_other_model)
    info = {"source": str(source), "direction": {"layer": direction.layer, "model": direction.model,
            "source": direction.source, "meta": direction.meta}, **report}
    return save_hf_model(hf, folder, tokenizer, info, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# Simulated block quantisation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def quantize_blocks(weight: Float[Tensor, "rows cols"], bits: int = 4, block: int = 32) -> Float[Tensor, "rows cols"]:
    """Round-trip through symmetric absmax block quantisation along the last axis (GGML Q4_0/Q8_0-like).

    GGML stores a matrix row by row in blocks of 32 with one scale each; so does this. Returns the
    dequantised weight in the input's dtype.
    """
    if bits not in (2, 3, 4, 5, 6, 8):
        raise ValueError(f"bits: expected one of 2, 3, 4, 5, 6, 8, got {bits}")
    if weight.ndim != 2:
        raise ValueError(f"weight: expected a matrix, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    padded = torch.nn.functional.pad(weight.float(), (0, (-cols) % block))
    blocks = padded.reshape(rows, -1, block)
    levels = 2 ** (bits - 1) - 1
    scale = blocks.abs().amax(-1, keepdim=True).clamp_min(1e-30) / levels
    restored = (blocks / scale).round().clamp(-levels - 1, levels) * scale
    return restored.reshape(rows, -1)[:, :cols].to(weight.dtype)


@torch.no_grad()
def quantize_weights_(model: Any, kinds: Sequence[str], bits: int = 4, layers: Sequence[int] | None = None,
                      block: int = 32, rows_per_chunk: int = 8192) -> list[str]:
    """Quantise the selected matrices in place (in their stored layout); returns their names."""
    refs = weight_refs(hf_tree(model), kinds, layers)
    for ref in refs:
        weight = ref.module.weight
        for start in range(0, weight.shape[0], rows_per_chunk):
            weight[start : start + rows_per_chunk] = quantize_blocks(weight[start : start + rows_per_chunk], bits, block)
    return [ref.name for ref in refs]


# ---------------------------------------------------------------------------------------------
# SVD of weight differences
# ---------------------------------------------------------------------------------------------


@dataclass
class WeightDiff:
    """The SVD of the concatenated residual-space weight differences."""

    singular_values: Float[Tensor, "d_model"]  # all of them, descending (the spectrum)
    directions: list[Direction]  # the top k left singular vectors, unit norm
    consistency: list[float]  # edit consistency of each of the top k (see `edit_consistency`)
    alignment: list[float]  # cosine between each direction and the direction its edit reads from
    energy_share: list[float]  # σ_i² / Σσ²
    weight_names: list[str]
    diff_norm: float
    meta: dict[str, Any] = field(default_factory=dict)


def load_pair(base: Any, edited: Any, *, device: str | torch.device = "cpu") -> tuple[nn.Module, nn.Module]:
    """Two HF trees for a base and an edited model, each given as a model, an HF folder, a GGUF or a name."""
    trees = []
    for argument, value in (("base", base), ("edited", edited)):
        if isinstance(value, (str, Path)):
            value = load_hf(value, device=device)[0]
        trees.append(hf_tree(value, argument))
    check_same_shapes(*trees)
    return trees[0], trees[1]


def check_same_shapes(base: nn.Module, edited: nn.Module) -> None:
    """ValueError naming the first parameter that `edited` lacks or has in another shape."""
    base_shapes = {name: tuple(p.shape) for name, p in base.named_parameters()}
    edited_shapes = {name: tuple(p.shape) for name, p in edited.named_parameters()}
    if type(base).__name__ != type(edited).__name__:
        raise ValueError(
            f"edited: a {type(edited).__name__}, but base is a {type(base).__name__}; expected the same architecture"
        )
    for name, shape in base_shapes.items():
        if name not in edited_shapes and name.startswith("lm_head"):
            continue  # an untied copy of a tied unembedding
        if name not in edited_shapes:
            raise ValueError(f"edited: has no parameter {name!r} (base has shape {shape}); expected the same architecture")
        if edited_shapes[name] != shape:
            raise ValueError(f"edited: parameter {name!r} has shape {edited_shapes[name]}, but base has {shape}")


@torch.no_grad()
def weight_diff_directions(
    base: Any,
    edited: Any,
    weights: Sequence[str] = ("mlp_out",),
    *,
    layers: Sequence[int] | None = None,
    k: int = 4,
    reference: Direction | Tensor | None = None,
    layer: int | None = None,
    model_label: str | None = None,
) -> WeightDiff:
    """Top-k singular directions (residual space) of edited − base over the chosen matrices, concatenated.

    `weights` are kinds from `WEIGHT_KINDS` at `layers` (default: all) or exact parameter names.
    Computed from the d_model × d_model Gram matrix Σ ΔW ΔWᵀ in float64 (exact, and cheap however many
    columns are concatenated). Each direction's sign is chosen to agree with `reference` when given;
    otherwise the sign is arbitrary (an orthogonalisation edit does not have one) and is fixed so its
    largest component is positive. The `Direction`s sit at `layer` (default: the reference's layer, or
    the middle layer); for an ablation the layer does not matter.
    """
    base_tree, edited_tree = load_pair(base, edited)
    base_refs, edited_refs = weight_refs(base_tree, weights, layers), weight_refs(edited_tree, weights, layers)
    width = hidden_size(base_tree)
    if not 1 <= k <= width:
        raise ValueError(f"k: expected 1..{width}, got {k}")
    gram = torch.zeros(width, width, dtype=torch.float64)
    diff_sq = 0.0
    for base_ref, edited_ref in zip(base_refs, edited_refs):
        diff = (edited_ref.residual_view().detach().float().cpu() - base_ref.residual_view().detach().float().cpu())
        gram += (diff @ diff.T).double()
        diff_sq += float((diff.double() ** 2).sum())
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    order = eigenvalues.flip(0).clamp_min(0)
    vectors = eigenvectors.flip(1)[:, :k].T.contiguous()  # [k, d_model]
    ref_vector = reference.vector if isinstance(reference, Direction) else reference
    if ref_vector is not None:
        if ref_vector.shape != (width,):
            raise ValueError(f"reference: expected a vector of width {width}, got shape {tuple(ref_vector.shape)}")
        signs = torch.sign(vectors @ ref_vector.double().cpu())
    else:
        signs = torch.sign(vectors.gather(1, vectors.abs().argmax(1, keepdim=True))[:, 0])
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]
    consistency, alignment = edit_consistency(vectors, base_refs, edited_refs)
    n_blocks = len(decoder_layers(base_tree)[1])
    at_layer = layer if layer is not None else (reference.layer if isinstance(reference, Direction) else n_blocks // 2)
    label = model_label or (model_name(base) if is_bridge(base) else str(base) if isinstance(base, (str, Path)) else "")
    names = [ref.name for ref in base_refs]
    total = float(order.sum()) or 1.0
    directions = [
        Direction(
            vectors[i].float(), layer=at_layer, model=label, source="weight_svd",
            meta={"rank": i, "singular_value": float(order[i].sqrt()), "energy_share": float(order[i]) / total,
                  "edit_consistency": consistency[i], "edit_alignment": alignment[i],
                  "weights": names if len(names) <= 8 else f"{len(names)} matrices",
                  "sign": "reference" if ref_vector is not None else "arbitrary (largest component positive)"},
        )
        for i in range(k)
    ]
    return WeightDiff(
        singular_values=order.sqrt().float(), directions=directions, consistency=consistency, alignment=alignment,
        energy_share=[float(order[i]) / total for i in range(k)], weight_names=names, diff_norm=diff_sq**0.5,
    )


def edit_consistency(
    vectors: Float[Tensor, "k d_model"], base_refs: list[WeightRef], edited_refs: list[WeightRef]
) -> tuple[list[float], list[float]]:
    """How well each candidate's slice of the difference is a linear function of the base weights.

    An edit ΔW = −u(aᵀW_base) (an orthogonalisation has a = u) makes y = −uᵀΔW exactly aᵀW_base. We
    regress y on the rows of W_base over all concatenated columns (least squares, a ∈ R^d_model) and
    return the adjusted R² (≈ 1 for an edit, ≈ 0 for quantisation or other noise, which is not a
    function of the weights) and cos(a, u) (≈ 1 for an orthogonalisation along u).
    """
    width = vectors.shape[1]
    base_gram = torch.zeros(width, width, dtype=torch.float64)
    cross = torch.zeros(width, vectors.shape[0], dtype=torch.float64)
    target_sq = torch.zeros(vectors.shape[0], dtype=torch.float64)
    columns = 0
    for base_ref, edited_ref in zip(base_refs, edited_refs):
        base = base_ref.residual_view().detach().float().cpu()
        target = -(vectors.float() @ (edited_ref.residual_view().detach().float().cpu() - base))  # [k, n]
        base_gram += (base @ base.T).double()
        cross += (base @ target.T).double()
        target_sq += (target.double() ** 2).sum(1)
        columns += base.shape[1]
    ridge = 1e-9 * float(base_gram.diagonal().mean()) * torch.eye(width, dtype=torch.float64)
    coefficients = torch.linalg.solve(base_gram + ridge, cross)  # [d_model, k]
    explained = (cross * coefficients).sum(0) / target_sq.clamp_min(1e-300)
    if columns > width + 1:  # adjust for the fit a random target gets by chance (d_model regressors)
        explained = 1 - (1 - explained) * (columns - 1) / (columns - width - 1)
    alignment = torch.nn.functional.cosine_similarity(coefficients.T, vectors, dim=1)
    return explained.clamp(-1, 1).tolist(), alignment.tolist()


# ---------------------------------------------------------------------------------------------
# Choosing among the singular directions
# ---------------------------------------------------------------------------------------------


@dataclass
class WeightDiffChoice:
    direction: Direction
    index: int
    reason: str
    candidates: list[dict[str, Any]]


def choose_weight_diff_direction(
    model: Any,
    result: WeightDiff,
    harmful: Sequence[str] | None = None,
    refusal_ids: Sequence[int] | None = None,
    harmless: Sequence[str] | None = None,
    *,
    min_consistency: float = 0.5,
    batch_size: int = 32,
    progress: bool = False,
) -> WeightDiffChoice:
    """Choose the edit direction among the top-k by structure and (given formatted prompts) behaviour.

    Structure: candidates with edit consistency ≥ `min_consistency` look like an orthogonalisation
    edit; the rest are noise (quantisation error, fine-tuning drift). Behaviour: with `harmful` prompts
    and `refusal_ids`, the mean refusal score on `model` (the base) with a structural candidate ablated; the
    lowest wins among the structural candidates (all candidates if none passes, which is reported).
    Without prompts, the most consistent candidate wins. With `harmless` prompts too, a direction whose
    sign came from no reference is flipped so that harmful prompts project more on it than harmless
    ones at its layer (resid_pre, last token).
    """
    if d_model(model) != result.directions[0].d_model:
        width = result.directions[0].d_model
        raise ValueError(f"model: d_model {d_model(model)} differs from the directions' width {width}")
    directions = [d.with_vector(d.vector, model=model_name(model)) for d in result.directions]
    structural = [c >= min_consistency for c in result.consistency]
    behaviour: list[float | None] = [None] * len(directions)
    baseline = None
    if harmful is not None and refusal_ids is not None:
        layer = directions[0].layer
        logits, harmful_acts = last_logits(model, harmful, batch_size=batch_size, record_layers=[layer])
        baseline = float(refusal_scores(logits, refusal_ids).mean())
        # Only candidates that look like an edit are worth a behavioural score (each costs an ablated
        # forward of every prompt); when none does, all are scored.
        scored = [i for i, ok in enumerate(structural) if ok] or list(range(len(directions)))
        for i in tqdm(scored, desc="SVD candidates", disable=not progress, leave=False):
            ablated, _ = last_logits(model, harmful, [Ablate(directions[i])], batch_size=batch_size)
            behaviour[i] = float(refusal_scores(ablated, refusal_ids).mean())
        if harmless is not None and directions[0].meta.get("sign", "").startswith("arbitrary"):
            _, harmless_acts = last_logits(model, harmless, batch_size=batch_size, record_layers=[layer])
            gap = harmful_acts[:, 0, -1].mean(0) - harmless_acts[:, 0, -1].mean(0)
            directions = [
                d.with_vector(d.vector * (1.0 if float(d.vector @ gap) >= 0 else -1.0),
                              meta={**d.meta, "sign": "harmful − harmless projection positive"})
                for d in directions
            ]
    pool = [i for i, ok in enumerate(structural) if ok] or list(range(len(directions)))
    if any(score is not None for score in behaviour):
        index = min(pool, key=lambda i: behaviour[i])
        why = f"lowest ablated refusal score ({behaviour[index]:.2f}; baseline {baseline:.2f})"
    else:
        index = max(pool, key=lambda i: result.consistency[i])
        why = "highest edit consistency (no prompts given for a behavioural score)"
    scope = (
        f"among candidates with edit consistency ≥ {min_consistency} ({[i for i in pool]})"
        if any(structural) else f"NO candidate reached edit consistency {min_consistency}; chosen among all"
    )
    rejected = [
        f"#{i} (σ={float(d.meta['singular_value']):.3g}, consistency {result.consistency[i]:.2f}"
        + (f", ablated score {behaviour[i]:.2f}" if behaviour[i] is not None else ", not scored: no edit structure")
        + ")"
        for i, d in enumerate(directions) if i != index
    ]
    reason = (
        f"singular direction #{index} (σ={float(directions[index].meta['singular_value']):.3g}, edit consistency "
        f"{result.consistency[index]:.3f}, energy share {result.energy_share[index]:.2f}): {why} {scope}; "
        f"others: {', '.join(rejected) or 'none'}"
    )
    candidates = [
        {"index": i, "singular_value": float(d.meta["singular_value"]), "energy_share": result.energy_share[i],
         "edit_consistency": result.consistency[i], "ablated_refusal_score": behaviour[i], "structural": structural[i]}
        for i, d in enumerate(directions)
    ]
    chosen = directions[index].with_vector(
        directions[index].vector, meta={**directions[index].meta, "chosen_because": reason}
    )
    return WeightDiffChoice(direction=chosen, index=index, reason=reason, candidates=candidates)
