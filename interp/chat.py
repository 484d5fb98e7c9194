"""Prompts in the model's own chat template, and left-padded token batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor


def tokenizer_of(model_or_tokenizer: Any) -> Any:
    """The tokenizer of a model (its `.tokenizer`), or the argument itself when it is a tokenizer already.

    Args:
        model_or_tokenizer: a hooked model, an HF model with a tokenizer attached, or a tokenizer.

    Returns:
        The tokenizer.
    """
    tokenizer = getattr(model_or_tokenizer, "tokenizer", None)
    return tokenizer if tokenizer is not None else model_or_tokenizer


def format_chat(
    model_or_tokenizer: Any,
    user: str,
    *,
    system: str | None = None,
    assistant_prefix: str = "",
) -> str:
    """`user` rendered with the model's chat template, ready for the assistant's turn.

    `system=None` keeps the template's own default (SmolLM2 and Qwen insert a default system prompt,
    as a user of the model would get); `assistant_prefix` starts the assistant's answer
    (e.g. "(" so the next token is an answer letter).
    """
    tokenizer = tokenizer_of(model_or_tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "format_chat: this model's tokenizer has no chat template (a base model?); "
            "pass plain text prompts instead"
        )
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


def format_chats(model_or_tokenizer: Any, users: list[str], **kwargs: Any) -> list[str]:
    """`format_chat` for each user message.

    Args:
        model_or_tokenizer: a hooked model or its tokenizer (whose chat template is used).
        users: the user messages.
        **kwargs: passed to `format_chat` (e.g. `system=`, `assistant_prefix=`).

    Returns:
        One formatted prompt per message, in order.
    """
    return [format_chat(model_or_tokenizer, user, **kwargs) for user in users]


@dataclass(frozen=True)
class TokenBatch:
    """Left-padded token ids: real tokens of every row end at the last column."""

    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]

    @property
    def lengths(self) -> Int[Tensor, "batch"]:
        return self.attention_mask.sum(dim=1)

    @property
    def position_ids(self) -> Int[Tensor, "batch seq"]:
        # Positions count real tokens only, so a left-padded row sees the positions it would alone.
        return (self.attention_mask.cumsum(dim=1) - 1).clamp_min(0)

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))

    def __getitem__(self, rows: slice) -> TokenBatch:
        kept = self.attention_mask[rows].sum(0) > 0
        return TokenBatch(self.input_ids[rows][:, kept], self.attention_mask[rows][:, kept])


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, prefix: Sequence[int] = ()) -> TokenBatch:
    """`prefix + padding + row` per row: ordinary left padding when `prefix` is empty."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), len(prefix) + width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[:, : len(prefix)] = torch.tensor(list(prefix), dtype=torch.long)
    mask[:, : len(prefix)] = 1
    for i, row in enumerate(rows):  # a loop over prompts, not tokens
        if row:
            ids[i, ids.shape[1] - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, ids.shape[1] - len(row) :] = 1
    return TokenBatch(ids, mask)


def prompt_list(prompts: str | Sequence[str], argument: str = "prompts") -> list[str]:
    """`prompts` as a list of non-empty strings; a bare string is one prompt (not one per character)."""
    if isinstance(prompts, str):
        return [prompts] if prompts else _bad_prompts(argument)
    try:
        listed = list(prompts)
    except TypeError:
        raise TypeError(f"{argument}: expected a string or a list of strings, got {type(prompts).__name__}") from None
    if not listed:
        raise ValueError(f"{argument}: expected a non-empty list of strings, got an empty list")
    if any(not isinstance(p, str) or p == "" for p in listed):
        _bad_prompts(argument)
    return listed


def _bad_prompts(argument: str) -> Any:
    raise ValueError(f"{argument}: every prompt must be a non-empty string")


def tokenize(model_or_tokenizer: Any, prompts: str | Sequence[str], *, device: torch.device | str | None = None) -> TokenBatch:
    """Tokenize text prompts into a left-padded batch.

    Special tokens are added only when the text does not already start with the BOS token (a chat
    template that writes its own BOS would otherwise get two).
    """
    prompts = prompt_list(prompts)
    tokenizer = tokenizer_of(model_or_tokenizer)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and all(p.startswith(bos) for p in prompts))
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special)
    finally:
        tokenizer.padding_side = previous_side
    batch = TokenBatch(encoded["input_ids"], encoded["attention_mask"])
    if device is None and hasattr(model_or_tokenizer, "cfg"):
        device = model_or_tokenizer.cfg.device
    return batch.to(device) if device is not None else batch
