"""Where a chat template puts the instruction, and the model's own refusal tokens."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jaxtyping import Bool, Int
from torch import Tensor

from interp.chat import format_chat, tokenize, tokenizer_of
from interp.hooked import HookedModel


def require_chat_template(model: HookedModel) -> None:
    """Refuse a model whose tokenizer has no chat template (refusal directions live on its post-instruction tokens).

    Raises:
        ValueError: no chat template (a base model).
    """
    if not getattr(tokenizer_of(model), "chat_template", None):
        raise ValueError(
            "model: its tokenizer has no chat template; refusal directions are defined on the template's "
            "post-instruction tokens of a chat model (give a chat/instruct model)"
        )


def post_instruction_count(model: HookedModel, prompts: Sequence[str]) -> tuple[int, list[str]]:
    """How many template tokens follow the user message, and their text.

    The template's tail is found by rendering a marker message; its token count caps the longest
    token suffix all `prompts` share (so instructions that all end in "?" do not count as template).
    """
    require_chat_template(model)
    tokenizer = tokenizer_of(model)
    marker = "\u2063MARKER\u2063"
    rendered = format_chat(model, marker)
    tail = rendered[rendered.rindex(marker) + len(marker) :]
    tail_count = len(tokenizer(tail, add_special_tokens=False)["input_ids"]) if tail else 0
    batch = tokenize(model, list(prompts))
    shortest = int(batch.lengths.min())
    # Right-aligned columns (left padding): the common suffix is a run of equal last columns.
    same = (batch.input_ids[:, -shortest:] == batch.input_ids[:1, -shortest:]).all(0).flip(0)
    differs = (~same).nonzero()
    common = int(differs[0]) if len(differs) else shortest
    count = min(common, tail_count)
    if count < 1:
        raise ValueError(
            "prompts: found no chat-template tokens after the user message; format them with "
            "interp.chat.format_chat (a template whose generation prompt follows the user turn)"
        )
    labels = [tokenizer.decode([int(t)]) for t in batch.input_ids[0, -count:]]
    return count, labels


@dataclass(frozen=True)
class RefusalTokens:
    """The refusal tokens and the evidence for them (first tokens of refusals vs compliant answers)."""

    ids: list[int]
    strings: list[str]
    share_of_refusals: list[float]
    share_of_compliance: list[float]


def derive_refusal_tokens(
    tokenizer: Any,
    first_ids: Int[Tensor, "n"],
    refused: Bool[Tensor, "n"],
    *,
    coverage: float = 0.9,
    max_tokens: int = 4,
    min_share: float = 0.05,
) -> RefusalTokens:
    """The model's own refusal tokens: frequent first tokens of refusals, rarer among compliant answers.

    Tokens are taken most frequent first until they cover `coverage` of the refusals or `max_tokens`
    are kept; a token is dropped if under `min_share` of refusals start with it, or if it starts as
    large a share of the compliant answers (so a generic opener is not mistaken for a refusal).
    """
    tokenizer = tokenizer_of(tokenizer)
    first_ids, refused = first_ids.long().cpu(), refused.bool().cpu()
    if first_ids.shape != refused.shape:
        raise ValueError(f"refused: shape {tuple(refused.shape)} must match first_ids {tuple(first_ids.shape)}")
    if not refused.any():
        raise ValueError(
            "refused: the model refused none of the prompts, so it has no refusal tokens to derive "
            "(use a model that refuses, or pass refusal token ids explicitly)"
        )
    refusals = Counter(first_ids[refused].tolist())
    compliant = Counter(first_ids[~refused].tolist())
    n_refused, n_compliant = int(refused.sum()), max(1, int((~refused).sum()))
    kept, covered = [], 0.0
    for token, count in refusals.most_common():
        share = count / n_refused
        if covered >= coverage or len(kept) >= max_tokens or share < min_share:
            break
        if share > compliant.get(token, 0) / n_compliant:
            kept.append(token)
            covered += share
    if not kept:
        token = refusals.most_common(1)[0][0]
        raise ValueError(
            f"refused: no first token separates refusals from compliant answers (most common: "
            f"{tokenizer.decode([token])!r}); pass refusal token ids explicitly"
        )
    return RefusalTokens(
        ids=kept,
        strings=[tokenizer.decode([t]) for t in kept],
        share_of_refusals=[refusals[t] / n_refused for t in kept],
        share_of_compliance=[compliant.get(t, 0) / n_compliant for t in kept],
    )
