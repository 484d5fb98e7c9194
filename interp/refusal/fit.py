"""The whole fit: baseline behaviour, refusal tokens, filtering, candidates, selection; and the interventions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp._timing import StageClock
from interp.chat import format_chats, tokenizer_of
from interp.directions import Direction
from interp.hooked import HookedModel, n_layers
from interp.refusal.judging import Judge, judge_all, phrase_judge
from interp.refusal.selection import CandidateTable, SelectionConfig, candidate_vectors, select_direction
from interp.refusal.template import RefusalTokens, derive_refusal_tokens, post_instruction_count, require_chat_template
from interp.runner import generate_greedy, last_logits
from interp.steering import Ablate, Steer


@dataclass
class RefusalFit:
    """A fitted refusal direction with everything that went into it."""

    direction: Direction
    table: CandidateTable
    refusal_tokens: RefusalTokens
    harmful_refused: list[bool]
    harmless_refused: list[bool]
    harmful_completions: list[str]
    harmless_completions: list[str]
    n_fit: tuple[int, int]  # (harmful, harmless) prompts in the means
    n_select: tuple[int, int]  # (harmful, harmless) prompts that scored the candidates
    select_harmful: list[str]  # the formatted selection prompts (reusable, e.g. to score SVD candidates)
    select_harmless: list[str]
    seconds: dict[str, float]  # wall-clock per stage
    cpu_seconds: dict[str, float]  # CPU time of this process per stage (robust to other load on the machine)


def _split(indices: list[int], n_select: int, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """(fit, select): a seeded shuffle; selection gets at most half, so the means keep enough prompts."""
    order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    count = min(n_select, len(order) // 2)
    return sorted(order[count:]), sorted(order[:count])


def _refusal_tokens(model: HookedModel, logits: Tensor, refused: list[bool], refusal_ids: Sequence[int] | None) -> RefusalTokens:
    """The model's own refusal tokens (from its greedy first tokens), or the ones given."""
    if refusal_ids is None:
        return derive_refusal_tokens(model, logits.argmax(-1), torch.tensor(refused))
    ids = [int(i) for i in refusal_ids]
    tokenizer = tokenizer_of(model)
    unknown = [float("nan")] * len(ids)
    return RefusalTokens(ids, [tokenizer.decode([i]) for i in ids], unknown, unknown)


def _filtered_split(
    refused: list[bool], n_harmful: int, n_select: tuple[int, int], seed: int
) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """(fit, select) indices of the refused harmful and the answered harmless prompts (harmless after harmful)."""
    kept_harmful = [i for i in range(n_harmful) if refused[i]]
    kept_harmless = [i for i in range(n_harmful, len(refused)) if not refused[i]]
    if len(kept_harmful) < 2 or len(kept_harmless) < 2:
        raise ValueError(
            f"harmful, harmless: after filtering, {len(kept_harmful)} refused harmful and {len(kept_harmless)} "
            "answered harmless prompts remain; at least 2 of each are needed (does the model refuse?)"
        )
    generator = torch.Generator().manual_seed(seed)
    return _split(kept_harmful, n_select[0], generator), _split(kept_harmless, n_select[1], generator)


def _baseline(
    model: HookedModel, instructions: list[str], prompts: list[str], judge: Judge, max_new_tokens: int,
    batch_size: int, progress: bool,
) -> tuple[list[str], list[bool]]:
    """The model's own greedy completions of the prompts, and which of them the judge calls refusals."""
    completions = generate_greedy(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    return completions, judge_all(judge, instructions, completions)


def fit_refusal_direction(
    model: HookedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    judge: Judge = phrase_judge,
    refusal_ids: Sequence[int] | None = None,
    n_select_harmful: int = 32,
    n_select_harmless: int = 32,
    filter_new_tokens: int = 16,
    generation_batch_size: int = 64,
    config: SelectionConfig | None = None,
    seed: int = 0,
) -> RefusalFit:
    """Fit a refusal direction on raw (unformatted) training instructions; see the module docstring.

    The filtered prompts are split (seeded): up to `n_select_*` prompts (at most half of each kept set)
    score the candidates, the rest make the means. `refusal_ids` overrides the derived refusal tokens.
    """
    config = config or SelectionConfig()
    require_chat_template(model)
    harmful, harmless = list(harmful), list(harmless)
    if len(harmful) < 2 or len(harmless) < 2:
        raise ValueError(
            f"harmful, harmless: expected at least 2 instructions of each, got {len(harmful)} and {len(harmless)}"
        )
    clock = StageClock()
    lap, seconds, cpu_seconds = clock.lap, clock.seconds, clock.cpu_seconds

    prompts = format_chats(model, harmful + harmless)
    n_pos, labels = post_instruction_count(model, prompts)
    completions, refused = _baseline(model, harmful + harmless, prompts, judge, filter_new_tokens,
                                     generation_batch_size, config.progress)
    lap("baseline_generation")
    logits, acts = last_logits(
        model, prompts, batch_size=config.batch_size, record_layers=list(range(n_layers(model))),
        record_positions=n_pos, progress=config.progress, desc="activations",
    )
    lap("activations")
    tokens = _refusal_tokens(model, logits, refused, refusal_ids)
    n_harmful = len(harmful)
    (fit_harmful, select_harmful), (fit_harmless, select_harmless) = _filtered_split(
        refused, n_harmful, (n_select_harmful, n_select_harmless), seed
    )
    vectors = candidate_vectors(acts[fit_harmful], acts[fit_harmless])

    lap("refusal_tokens_and_means")
    select_harmful_prompts = [prompts[i] for i in select_harmful]
    select_harmless_prompts = [prompts[i] for i in select_harmless]
    direction, table = select_direction(
        model, vectors, labels, select_harmful_prompts, select_harmless_prompts, tokens.ids, config
    )
    lap("candidate_sweep")
    direction = direction.with_vector(
        direction.vector,
        meta={**direction.meta, "refusal_tokens": tokens.strings, "n_fit_harmful": len(fit_harmful),
              "n_fit_harmless": len(fit_harmless)},
    )
    return RefusalFit(
        direction=direction, table=table, refusal_tokens=tokens,
        harmful_refused=refused[:n_harmful], harmless_refused=refused[n_harmful:],
        harmful_completions=completions[:n_harmful], harmless_completions=completions[n_harmful:],
        n_fit=(len(fit_harmful), len(fit_harmless)), n_select=(len(select_harmful), len(select_harmless)),
        select_harmful=select_harmful_prompts, select_harmless=select_harmless_prompts, seconds=seconds,
        cpu_seconds=cpu_seconds,
    )


def ablation(direction: Direction, **kwargs: Any) -> Ablate:
    """Directional ablation at every layer's resid_pre, attn_out and mlp_out (all positions)."""
    return Ablate(direction, **kwargs)


def subtraction(direction: Direction, multiplier: float = 1.0, **kwargs: Any) -> Steer:
    """Activation addition of −multiplier × the raw direction at its own layer, at every position."""
    return Steer(direction, scale=-multiplier, positions="all", **kwargs)
