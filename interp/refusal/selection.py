"""Candidate refusal directions, their scores under ablation and addition, and the choice (Arditi et al.)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.chat import TokenBatch, tokenize
from interp.directions import Direction
from interp.display import clip, details, frame, html_table
from interp.hooked import HookedModel, forward, n_layers
from interp.metrics import kl_divergence
from interp.models import model_name
from interp.refusal.judging import refusal_scores
from interp.refusal.scoring import ablation_hooks, addition_hooks, score_candidates
from interp.runner import last_logits
from interp.steering import HookIntervention, ablation_hook_names, apply_all


@dataclass
class SelectionConfig:
    """The selection rule of Arditi et al. (defaults are theirs), with two explicit, optional changes.

    `induce_refusal_threshold=None` replaces the paper's absolute threshold (0: the addition must make
    refusal more likely than not) by the midpoint between the harmless and harmful baseline refusal
    scores on the selection prompts — for a model whose own refusals are not confident (mean score ≈ 0
    on prompts it refuses) the absolute threshold asks harmless prompts to out-refuse harmful ones.
    `protect_first_token=True` projects every candidate off the span of the first token's activations
    at every ablation site. The first token sees no context, so its residual stream is the same for
    every prompt; it is the attention sink, and ablating a direction there shifts every later position's
    attention. With the candidate orthogonal to that span, ablation (and orthogonalised weights) leave
    the first token exactly as it was.
    """

    kl_threshold: float = 0.1
    induce_refusal_threshold: float | None = 0.0
    protect_first_token: bool = False
    prune_layer_fraction: float = 0.2  # discard layers >= int(n_layers * (1 - fraction))
    addition_scale: float = 1.0  # the raw mean-difference vector times this, added at its layer
    score_all: bool = False  # compute KL and addition scores for every eligible candidate
    # Optional screening (an approximation, off by default): score every candidate's ablation on the
    # first `screen_prompts` harmful prompts, then only the best `screen_keep` on all of them.
    screen_prompts: int | None = None
    screen_keep: int = 12
    batch_size: int = 32
    candidate_tokens: int = 1536  # padded tokens per forward when scoring candidates (several candidates' copies)
    progress: bool = True


@dataclass
class CandidateTable:
    """Every candidate's scores (NaN: not computed) on a layer × position grid."""

    layers: list[int]
    positions: list[int]  # relative to the end of the prompt: -n_positions .. -1
    position_labels: list[str]
    vectors: Float[Tensor, "n_layers n_positions d_model"]
    ablation_score: Float[Tensor, "n_layers n_positions"]
    kl: Float[Tensor, "n_layers n_positions"]
    addition_score: Float[Tensor, "n_layers n_positions"]
    eligible: Bool[Tensor, "n_layers n_positions"]
    screen_score: Float[Tensor, "n_layers n_positions"]  # ablation score on the screening prompts (if screened)
    baseline_harmful_score: float
    baseline_harmless_score: float
    kl_threshold: float = 0.1
    induce_threshold: float = 0.0
    protected_dims: int = 0  # dimensions of the first-token span removed from every candidate
    chosen: tuple[int, int] | None = None  # (layer, position index into `positions`)
    reason: str = ""

    def passes(self) -> Bool[Tensor, "n_layers n_positions"]:
        return self.eligible & (self.kl <= self.kl_threshold) & (self.addition_score > self.induce_threshold)

    def __repr__(self) -> str:
        chosen = (f"chosen layer {self.chosen[0]} at {self.position_labels[self.chosen[1]]!r}" if self.chosen is not None
                  else "none chosen")
        return clip(f"CandidateTable({len(self.layers)} layers × {len(self.positions)} positions, "
                    f"{int(self.passes().sum())} pass, {chosen}" + (f": {self.reason}" if self.reason else "") + ")")

    def _repr_html_(self) -> str:
        records = self.rows()
        columns = ("layer", "position", "token", "norm", "ablation_score", "kl", "addition_score", "eligible")
        return details(repr(self), html_table(columns, [[record[c] for c in columns] for record in records]))

    def to_frame(self) -> Any:
        """`rows()` as a pandas DataFrame."""
        return frame(self.rows())

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready record per candidate."""
        out = []
        for i, layer in enumerate(self.layers):
            for j, position in enumerate(self.positions):
                out.append(
                    {
                        "layer": layer, "position": position, "token": self.position_labels[j],
                        "norm": float(self.vectors[i, j].norm()),
                        "ablation_score": _finite(self.ablation_score[i, j]), "kl": _finite(self.kl[i, j]),
                        "addition_score": _finite(self.addition_score[i, j]), "eligible": bool(self.eligible[i, j]),
                        "screen_score": _finite(self.screen_score[i, j]),
                    }
                )
        return out


def _finite(value: Tensor) -> float | None:
    return None if torch.isnan(value) else float(value)


def _first_tokens(batch: TokenBatch) -> set[int]:
    starts = batch.input_ids.shape[1] - batch.lengths
    return set(batch.input_ids.gather(1, starts[:, None])[:, 0].tolist())


@torch.no_grad()
def first_token_basis(model: HookedModel, token_ids: set[int] | Sequence[int]) -> Float[Tensor, "k d_model"]:
    """Orthonormal basis of every activation the ablation sites see at a sequence's first token.

    A first token attends only to itself, so its resid_pre, attn_out and mlp_out at every layer depend
    on the token alone: one forward of each distinct first token gives them all.
    """

    ids = torch.tensor(sorted(token_ids))[:, None]
    seen: list[Tensor] = []

    def keep(activation: Tensor, hook: Any) -> None:
        seen.append(activation[:, 0].detach().double().cpu())

    names = ablation_hook_names(model)
    with apply_all(model, HookIntervention([(name, keep) for name in names])):
        forward(model, TokenBatch(ids, torch.ones_like(ids)))
    stacked = torch.cat(seen)  # [n_sites * n_tokens, d_model]
    left, values, _ = torch.linalg.svd(stacked.T, full_matrices=False)
    return left[:, values > 1e-6 * values[0]].T.float()


def candidate_vectors(
    harmful_acts: Float[Tensor, "n_harmful n_layers n_positions d_model"],
    harmless_acts: Float[Tensor, "n_harmless n_layers n_positions d_model"],
) -> Float[Tensor, "n_layers n_positions d_model"]:
    """mean(harmful) − mean(harmless) at every layer and position, in float64 for the sums."""
    if harmful_acts.shape[1:] != harmless_acts.shape[1:]:
        raise ValueError(
            f"harmless_acts: shape {tuple(harmless_acts.shape)} differs from harmful_acts "
            f"{tuple(harmful_acts.shape)} beyond the prompt axis"
        )
    return (harmful_acts.double().mean(0) - harmless_acts.double().mean(0)).float()


def select_direction(
    model: HookedModel,
    vectors: Float[Tensor, "n_layers n_positions d_model"],
    position_labels: Sequence[str],
    harmful: Sequence[str],
    harmless: Sequence[str],
    refusal_ids: Sequence[int],
    config: SelectionConfig | None = None,
) -> tuple[Direction, CandidateTable]:
    """Score the candidates on formatted selection prompts and choose one (see the module docstring).

    `vectors[l, p]` is the candidate at layer l (resid_pre) and relative position p − n_positions.
    """
    config = config or SelectionConfig()
    _check_candidates(model, vectors, position_labels, harmful, harmless)
    harmful_batch, harmless_batch = tokenize(model, list(harmful)), tokenize(model, list(harmless))
    table = _candidate_table(model, vectors, position_labels, harmful_batch, harmless_batch, config)
    scorer = _CandidateScorer(model, table, refusal_ids, config)
    scorer.baselines(harmful_batch, harmless_batch)
    scorer.ablation_scores(harmful_batch, len(harmful))
    scorer.filter_scores(harmless_batch)
    table.chosen, table.reason = choose_candidate(table, config)
    layer, j = table.chosen
    n_pos = table.vectors.shape[1]
    chosen = scorer.direction(layer, j).with_vector(
        table.vectors[layer, j].clone(),
        meta={
            "position": j - n_pos, "position_token": position_labels[j],
            "ablation_score": float(table.ablation_score[layer, j]), "kl": _finite(table.kl[layer, j]),
            "addition_score": _finite(table.addition_score[layer, j]),
            "baseline_harmful_score": table.baseline_harmful_score,
            "baseline_harmless_score": table.baseline_harmless_score,
            "induce_threshold": table.induce_threshold, "first_token_protected_dims": table.protected_dims,
            "refusal_token_ids": list(refusal_ids), "selection": table.reason,
            "n_select_harmful": len(harmful), "n_select_harmless": len(harmless),
        },
    )
    return chosen, table


def _check_candidates(
    model: HookedModel, vectors: Tensor, position_labels: Sequence[str], harmful: Sequence[str], harmless: Sequence[str]
) -> None:
    layers_total = n_layers(model)
    if vectors.ndim != 3 or vectors.shape[0] != layers_total or vectors.shape[2] != model.cfg.d_model:
        raise ValueError(
            f"vectors: expected shape [n_layers={layers_total}, n_positions, d_model={model.cfg.d_model}], "
            f"got {tuple(vectors.shape)}"
        )
    if len(position_labels) != vectors.shape[1]:
        raise ValueError(f"position_labels: expected {vectors.shape[1]} labels, got {len(position_labels)}")
    if not harmful or not harmless:
        raise ValueError("harmful, harmless: expected at least one selection prompt of each")


def _candidate_table(
    model: HookedModel, vectors: Float[Tensor, "n_layers n_positions d_model"], position_labels: Sequence[str],
    harmful_batch: TokenBatch, harmless_batch: TokenBatch, config: SelectionConfig,
) -> CandidateTable:
    """An empty table of the candidates (first-token directions projected out if asked), eligibility marked."""
    layers_total, n_pos = vectors.shape[0], vectors.shape[1]
    protected = 0
    if config.protect_first_token:
        basis = first_token_basis(model, _first_tokens(harmful_batch) | _first_tokens(harmless_batch))
        vectors = vectors - (vectors @ basis.T) @ basis
        protected = basis.shape[0]
    cutoff = int(layers_total * (1.0 - config.prune_layer_fraction))
    layer_ok = torch.arange(layers_total)[:, None] < cutoff
    # resid_pre at layer 0 is the token embedding: the same template token for every prompt, zero difference.
    eligible = layer_ok & (vectors.norm(dim=-1) > 1e-6 * vectors.norm(dim=-1).max().clamp_min(1e-30))
    nan = torch.full((layers_total, n_pos), float("nan"))
    return CandidateTable(
        layers=list(range(layers_total)), positions=list(range(-n_pos, 0)), position_labels=list(position_labels),
        vectors=vectors, ablation_score=nan.clone(), kl=nan.clone(), addition_score=nan.clone(), eligible=eligible,
        screen_score=nan.clone(), baseline_harmful_score=float("nan"), baseline_harmless_score=float("nan"),
        kl_threshold=config.kl_threshold, protected_dims=protected,
    )


class _CandidateScorer:
    """Fills a `CandidateTable`: baselines, ablation scores (after an optional screen), filter scores."""

    def __init__(self, model: HookedModel, table: CandidateTable, refusal_ids: Sequence[int], config: SelectionConfig) -> None:
        self.model, self.table, self.refusal_ids, self.config = model, table, refusal_ids, config
        self.name = model_name(model)
        self.run = dict(batch_size=config.batch_size)
        self.harmless_base: Tensor | None = None

    def direction(self, layer: int, j: int) -> Direction:
        return Direction(self.table.vectors[layer, j].clone(), layer=layer, model=self.name, source="diff_in_means")

    def score(self, batch: TokenBatch, intervention: Any = None) -> tuple[Tensor, float]:
        logits, _ = last_logits(self.model, batch, [intervention] if intervention is not None else [], **self.run)
        return logits, float(refusal_scores(logits, self.refusal_ids).mean())

    def baselines(self, harmful_batch: TokenBatch, harmless_batch: TokenBatch) -> None:
        table, config = self.table, self.config
        _, table.baseline_harmful_score = self.score(harmful_batch)
        self.harmless_base, table.baseline_harmless_score = self.score(harmless_batch)
        table.induce_threshold = (
            config.induce_refusal_threshold if config.induce_refusal_threshold is not None
            else (table.baseline_harmful_score + table.baseline_harmless_score) / 2
        )

    def candidate_units(self, cells: Sequence[tuple[int, int]]) -> Tensor:
        vectors = torch.stack([self.table.vectors[cell] for cell in cells])
        return vectors / vectors.norm(dim=-1, keepdim=True)

    def mean_scores(self, batch: TokenBatch, cells: Sequence[tuple[int, int]], hooks_for: Any,
                    row_values: Any, desc: str) -> Tensor:
        """Per candidate: the mean over `batch`'s prompts of `row_values`, many candidates per forward."""
        values = score_candidates(self.model, batch, hooks_for, len(cells), row_values,
                                  tokens_per_forward=self.config.candidate_tokens,
                                  prompts_per_chunk=self.config.batch_size, progress=self.config.progress, desc=desc)
        return values.mean(1)

    def ablated_refusal(self, batch: TokenBatch, cells: Sequence[tuple[int, int]], desc: str) -> Tensor:
        units = self.candidate_units(cells)
        return self.mean_scores(batch, cells, lambda block: ablation_hooks(self.model, units[block]),
                                lambda logits, _: refusal_scores(logits, self.refusal_ids), desc)

    def ablation_scores(self, harmful_batch: TokenBatch, n_harmful: int) -> None:
        table, config = self.table, self.config
        cells = [(int(l), int(j)) for l, j in table.eligible.nonzero().tolist()]
        screen = config.screen_prompts
        if screen is not None and screen < n_harmful and config.screen_keep < len(cells):
            scores = self.ablated_refusal(harmful_batch[:screen], cells, "screening")
            for cell, score in zip(cells, scores):
                table.screen_score[cell] = score
            cells = sorted(cells, key=lambda cell: float(table.screen_score[cell]))[: config.screen_keep]
        for cell, score in zip(cells, self.ablated_refusal(harmful_batch, cells, "ablation scores")):
            table.ablation_score[cell] = score
        self.cells = cells

    def filter_scores(self, harmless_batch: TokenBatch) -> None:
        """KL and addition score, in order of ablation score until a candidate passes (or all of them).

        Candidates are scored a block at a time (as many as one forward holds); the table keeps the
        scores up to the first that passes, as scoring them one by one would.
        """
        table, config = self.table, self.config
        order = sorted(self.cells, key=lambda cell: float(table.ablation_score[cell]))
        padded = min(config.batch_size, harmless_batch.input_ids.shape[0]) * int(harmless_batch.lengths.max())
        step = len(order) if config.score_all else max(1, config.candidate_tokens // padded)
        base = self.harmless_base
        for start in range(0, len(order), step):
            cells = order[start : start + step]
            units = self.candidate_units(cells)
            kls = self.mean_scores(
                harmless_batch, cells, lambda part: ablation_hooks(self.model, units[part]),
                lambda logits, prompt: kl_divergence(base.to(logits.device)[prompt], logits), "filter: KL",
            )
            added = torch.stack([table.vectors[cell] for cell in cells]) * config.addition_scale
            layers = [layer for layer, _ in cells]
            additions = self.mean_scores(
                harmless_batch, cells, lambda part: addition_hooks(self.model, added[part], layers[part]),
                lambda logits, _: refusal_scores(logits, self.refusal_ids), "filter: addition",
            )
            for cell, kl, addition in zip(cells, kls, additions):
                table.kl[cell], table.addition_score[cell] = kl, addition
                if not config.score_all and bool(table.passes()[cell]):
                    return  # the lowest-scoring candidate that passes: later ones cannot be chosen


def choose_candidate(table: CandidateTable, config: SelectionConfig) -> tuple[tuple[int, int], str]:
    """The lowest ablated refusal score among candidates that pass every filter (or a stated fallback)."""
    scores = table.ablation_score
    limits = (
        f"KL ≤ {table.kl_threshold}, addition score > {table.induce_threshold:.2f}, "
        f"layer < {int(len(table.layers) * (1 - config.prune_layer_fraction))}"
    )
    tiers = [
        (table.passes(), f"lowest ablated refusal score among candidates passing all filters ({limits})"),
        (table.eligible & (table.kl <= table.kl_threshold),
         f"FALLBACK: no candidate passed all filters ({limits}); lowest ablated refusal score with KL ≤ "
         f"{table.kl_threshold}"),
        (table.eligible & ~torch.isnan(scores),
         f"FALLBACK: no candidate passed the KL filter ({limits}); lowest ablated refusal score overall"),
    ]
    for mask, reason in tiers:
        if mask.any():
            masked = torch.where(mask, scores, torch.full_like(scores, float("inf")))
            flat = int(masked.flatten().argmin())
            return (flat // scores.shape[1], flat % scores.shape[1]), reason
    raise ValueError("vectors: no eligible candidate (all are zero or in the pruned layers)")
