"""Recovering an edit direction by SVD of the difference between a base and an edited model's weights.

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

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from interp.directions import Direction
from interp.hf_weights import WeightRef, hidden_size, weight_refs
from interp.hooked import d_model, decoder_layers, hf_tree, is_bridge, offloaded_weights, quantization_method
from interp.models import load_hf, model_name
from interp.refusal import refusal_scores
from interp.runner import last_logits
from interp.steering import Ablate


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
        tree = hf_tree(value, argument)
        offloaded, method = offloaded_weights(tree), quantization_method(tree)
        if offloaded or method is not None:
            what = f"{len(offloaded)} weights ({offloaded[0]}, ...) are offloaded by accelerate" if offloaded \
                else f"its weights are quantized ({method})"
            raise ValueError(
                f"{argument}: {what}, so their values are not in the module; the SVD of weight differences reads "
                "every weight: pass the model's folder (loaded here in floating point) or a model without offload"
            )
        trees.append(tree)
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

    `weights` are kinds from `interp.hf_weights.WEIGHT_KINDS` at `layers` (default: all) or exact parameter names.
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
    gram, diff_sq = difference_gram(base_refs, edited_refs, width)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    energies = eigenvalues.flip(0).clamp_min(0)  # σ², descending
    ref_vector = reference.vector if isinstance(reference, Direction) else reference
    vectors = orient_singular_vectors(eigenvectors.flip(1)[:, :k].T.contiguous(), ref_vector, width)
    consistency, alignment = edit_consistency(vectors, base_refs, edited_refs)
    total = float(energies.sum()) or 1.0
    energy_share = [float(energies[i]) / total for i in range(k)]
    names = [ref.name for ref in base_refs]
    directions = singular_directions(
        vectors, energies, energy_share, consistency, alignment, names,
        layer=direction_layer(layer, reference, base_tree), model=base_label(base, model_label),
        sign="reference" if ref_vector is not None else "arbitrary (largest component positive)",
    )
    return WeightDiff(
        singular_values=energies.sqrt().float(), directions=directions, consistency=consistency, alignment=alignment,
        energy_share=energy_share, weight_names=names, diff_norm=diff_sq**0.5,
    )


def difference_gram(
    base_refs: list[WeightRef], edited_refs: list[WeightRef], width: int
) -> tuple[Float[Tensor, "d_model d_model"], float]:
    """Σ ΔW ΔWᵀ over the matrices (float64) and Σ ‖ΔW‖² (the squared Frobenius norm of the whole difference)."""
    gram = torch.zeros(width, width, dtype=torch.float64)
    diff_sq = 0.0
    for base_ref, edited_ref in zip(base_refs, edited_refs):
        diff = (edited_ref.residual_view().detach().float().cpu() - base_ref.residual_view().detach().float().cpu())
        gram += (diff @ diff.T).double()
        diff_sq += float((diff.double() ** 2).sum())
    return gram, diff_sq


def orient_singular_vectors(
    vectors: Float[Tensor, "k d_model"], ref_vector: Float[Tensor, "d_model"] | None, width: int
) -> Float[Tensor, "k d_model"]:
    """Each vector signed to agree with `ref_vector`, or (without one) with its largest component positive."""
    if ref_vector is not None:
        if ref_vector.shape != (width,):
            raise ValueError(f"reference: expected a vector of width {width}, got shape {tuple(ref_vector.shape)}")
        signs = torch.sign(vectors @ ref_vector.double().cpu())
    else:
        signs = torch.sign(vectors.gather(1, vectors.abs().argmax(1, keepdim=True))[:, 0])
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]


def direction_layer(layer: int | None, reference: Direction | Tensor | None, base_tree: nn.Module) -> int:
    """The layer the directions are filed at: the one asked for, the reference's, or the middle block."""
    n_blocks = len(decoder_layers(base_tree)[1])
    if layer is not None:
        return layer
    return reference.layer if isinstance(reference, Direction) else n_blocks // 2


def base_label(base: Any, model_label: str | None) -> str:
    """The model name the directions carry: given, the bridge's own name, or the path the base came from."""
    return model_label or (model_name(base) if is_bridge(base) else str(base) if isinstance(base, (str, Path)) else "")


def singular_directions(
    vectors: Float[Tensor, "k d_model"],
    energies: Float[Tensor, "d_model"],
    energy_share: list[float],
    consistency: list[float],
    alignment: list[float],
    weight_names: list[str],
    *,
    layer: int,
    model: str,
    sign: str,
) -> list[Direction]:
    """One `Direction` per singular vector, its rank, σ, energy share and edit evidence in `meta`."""
    return [
        Direction(
            vectors[i].float(), layer=layer, model=model, source="weight_svd",
            meta={"rank": i, "singular_value": float(energies[i].sqrt()), "energy_share": energy_share[i],
                  "edit_consistency": consistency[i], "edit_alignment": alignment[i],
                  "weights": weight_names if len(weight_names) <= 8 else f"{len(weight_names)} matrices",
                  "sign": sign},
        )
        for i in range(len(vectors))
    ]


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


@dataclass
class WeightDiffChoice:
    """The singular vector chosen as the direction a weight difference encodes, and why.

    Attributes:
        direction: the chosen vector as a `Direction`.
        index: its singular index.
        reason: why it was chosen, in words.
        candidates: per singular vector considered: its index, singular value and score.
    """

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
        baseline, behaviour, harmful_acts = ablated_refusal_scores(
            model, directions, structural, harmful, refusal_ids, batch_size=batch_size, progress=progress
        )
        if harmless is not None and directions[0].meta.get("sign", "").startswith("arbitrary"):
            directions = orient_by_harm_gap(model, directions, harmful_acts, harmless, batch_size=batch_size)
    pool = [i for i, ok in enumerate(structural) if ok] or list(range(len(directions)))
    index, why = pick_candidate(pool, behaviour, result.consistency, baseline)
    reason = choice_reason(result, directions, behaviour, index, why, pool, any(structural), min_consistency)
    candidates = candidate_table(result, directions, behaviour, structural)
    chosen = directions[index].with_vector(
        directions[index].vector, meta={**directions[index].meta, "chosen_because": reason}
    )
    return WeightDiffChoice(direction=chosen, index=index, reason=reason, candidates=candidates)


def ablated_refusal_scores(
    model: Any,
    directions: list[Direction],
    structural: list[bool],
    harmful: Sequence[str],
    refusal_ids: Sequence[int],
    *,
    batch_size: int,
    progress: bool,
) -> tuple[float, list[float | None], Float[Tensor, "n_harmful 1 n_positions d_model"]]:
    """The mean refusal score without ablation, with each candidate ablated (None: not scored), and the
    harmful prompts' residuals at the candidates' layer."""
    layer = directions[0].layer
    logits, harmful_acts = last_logits(model, harmful, batch_size=batch_size, record_layers=[layer])
    baseline = float(refusal_scores(logits, refusal_ids).mean())
    behaviour: list[float | None] = [None] * len(directions)
    # Only candidates that look like an edit are worth a behavioural score (each costs an ablated
    # forward of every prompt); when none does, all are scored.
    scored = [i for i, ok in enumerate(structural) if ok] or list(range(len(directions)))
    for i in tqdm(scored, desc="SVD candidates", disable=not progress, leave=False):
        ablated, _ = last_logits(model, harmful, [Ablate(directions[i])], batch_size=batch_size)
        behaviour[i] = float(refusal_scores(ablated, refusal_ids).mean())
    return baseline, behaviour, harmful_acts


def orient_by_harm_gap(
    model: Any,
    directions: list[Direction],
    harmful_acts: Float[Tensor, "n_harmful 1 n_positions d_model"],
    harmless: Sequence[str],
    *,
    batch_size: int,
) -> list[Direction]:
    """Each direction signed so harmful prompts project more on it than harmless ones (last token)."""
    _, harmless_acts = last_logits(model, harmless, batch_size=batch_size, record_layers=[directions[0].layer])
    gap = harmful_acts[:, 0, -1].mean(0) - harmless_acts[:, 0, -1].mean(0)
    return [
        d.with_vector(d.vector * (1.0 if float(d.vector @ gap) >= 0 else -1.0),
                      meta={**d.meta, "sign": "harmful − harmless projection positive"})
        for d in directions
    ]


def pick_candidate(
    pool: list[int], behaviour: list[float | None], consistency: list[float], baseline: float | None
) -> tuple[int, str]:
    """The lowest ablated refusal score in `pool` when any was scored, else the highest edit consistency."""
    if any(score is not None for score in behaviour):
        index = min(pool, key=lambda i: behaviour[i])
        return index, f"lowest ablated refusal score ({behaviour[index]:.2f}; baseline {baseline:.2f})"
    index = max(pool, key=lambda i: consistency[i])
    return index, "highest edit consistency (no prompts given for a behavioural score)"


def choice_reason(
    result: WeightDiff,
    directions: list[Direction],
    behaviour: list[float | None],
    index: int,
    why: str,
    pool: list[int],
    any_structural: bool,
    min_consistency: float,
) -> str:
    """The chosen candidate's evidence, the pool it was chosen from, and why each other one lost."""
    scope = (
        f"among candidates with edit consistency ≥ {min_consistency} ({[i for i in pool]})"
        if any_structural else f"NO candidate reached edit consistency {min_consistency}; chosen among all"
    )
    rejected = [
        f"#{i} (σ={float(d.meta['singular_value']):.3g}, consistency {result.consistency[i]:.2f}"
        + (f", ablated score {behaviour[i]:.2f}" if behaviour[i] is not None else ", not scored: no edit structure")
        + ")"
        for i, d in enumerate(directions) if i != index
    ]
    return (
        f"singular direction #{index} (σ={float(directions[index].meta['singular_value']):.3g}, edit consistency "
        f"{result.consistency[index]:.3f}, energy share {result.energy_share[index]:.2f}): {why} {scope}; "
        f"others: {', '.join(rejected) or 'none'}"
    )


def candidate_table(
    result: WeightDiff, directions: list[Direction], behaviour: list[float | None], structural: list[bool]
) -> list[dict[str, Any]]:
    """One JSON-ready row of evidence per candidate."""
    return [
        {"index": i, "singular_value": float(d.meta["singular_value"]), "energy_share": result.energy_share[i],
         "edit_consistency": result.consistency[i], "ablated_refusal_score": behaviour[i], "structural": structural[i]}
        for i, d in enumerate(directions)
    ]
