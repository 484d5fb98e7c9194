"""Harvesting residual activations of a text corpus, per layer, for SAE training and evaluation.

Position 0 is never harvested (its residual norm is ~100x the rest) and tokens whose norm exceeds
`outlier_ratio` x the median are dropped (counted in the `Harvest`): a few such tokens dominate MSE.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.chat import TokenBatch, tokenizer_of
from interp.directions import hook_name
from interp.hooked import HookedModel, check_layers, model_device
from interp.runner import read_activations


def tokenize_corpus(model: HookedModel, texts: Sequence[str], *, max_length: int = 256) -> list[list[int]]:
    """Token ids of each text, truncated to `max_length` (no special tokens added: transcripts carry their own)."""
    tokenizer = tokenizer_of(model)
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    return [ids for ids in encoded if len(ids) > 1]


def token_batches(token_lists: list[list[int]], batch_tokens: int, pad_id: int) -> list[TokenBatch]:
    """Group tokenised texts into left-padded batches of at most `batch_tokens` tokens (padding included).

    Texts are sorted by length first so each batch pads little.

    Args:
        token_lists: token ids per text.
        batch_tokens: the budget per batch (rows × width).
        pad_id: the padding id.

    Returns:
        The batches (ids and attention mask, left-padded as `interp.chat.tokenize` pads).
    """
    # Sort by length so each batch pads little; left-pad like interp.chat.tokenize.
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    batches, start = [], 0
    while start < len(order):
        width = len(token_lists[order[start]])
        end = start
        while end < len(order) and (end - start + 1) * max(width, len(token_lists[order[end]])) <= batch_tokens:
            width = max(width, len(token_lists[order[end]]))
            end += 1
        end = max(end, start + 1)
        rows = [token_lists[i] for i in order[start:end]]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
        batches.append(TokenBatch(ids, mask))
        start = end
    return batches


@dataclass
class Harvest:
    """Activations of every kept token, per layer, and what was left out."""

    activations: dict[int, Float[Tensor, "n_tokens d_model"]]
    site: str
    n_tokens_seen: int
    n_outliers: dict[int, int]
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens_seen / max(self.seconds, 1e-9)


@torch.no_grad()
def harvest_activations(
    model: HookedModel,
    texts: Sequence[str],
    layers: Sequence[int] | int,
    *,
    site: str = "resid_pre",
    max_length: int = 256,
    batch_tokens: int = 8192,
    skip_first: int = 1,
    outlier_ratio: float | None = 10.0,
    store_dtype: torch.dtype = torch.float16,
    store_device: str | torch.device = "cpu",
    progress: bool = True,
) -> Harvest:
    """Residual activations at every layer in `layers` for every real token after the first `skip_first`.

    One forward per batch (stopping after the last layer needed) reads every layer.
    """
    layer_list = check_layers(model, [layers] if isinstance(layers, int) else list(layers))
    if skip_first < 0:
        raise ValueError(f"skip_first: expected >= 0, got {skip_first}")
    tokenizer = tokenizer_of(model)
    token_lists = tokenize_corpus(model, texts, max_length=max_length)
    if not token_lists:
        raise ValueError("texts: no text holds two or more tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    names = {layer: hook_name(layer, site) for layer in layer_list}
    kept: dict[int, list[Tensor]] = {layer: [] for layer in layer_list}
    seen = 0
    started = time.perf_counter()
    batches = token_batches(token_lists, batch_tokens, pad_id)
    for batch in tqdm(batches, desc="harvest", disable=not progress, leave=False):
        batch = batch.to(model_device(model))
        keep_mask = (batch.attention_mask.bool() & (batch.position_ids >= skip_first))
        seen += int(keep_mask.sum())
        captured = _read_layers(model, batch, keep_mask, names, store_dtype, store_device)
        for layer in layer_list:
            kept[layer].append(captured[layer])
    activations, outliers = {}, {}
    for layer in layer_list:
        activations[layer], outliers[layer] = _drop_outliers(torch.cat(kept[layer]), outlier_ratio)
    return Harvest(activations, site, seen, outliers, time.perf_counter() - started)


def _read_layers(
    model: HookedModel,
    batch: TokenBatch,
    keep_mask: Bool[Tensor, "batch seq"],
    names: dict[int, str],
    store_dtype: torch.dtype,
    store_device: str | torch.device,
) -> dict[int, Float[Tensor, "n_kept d_model"]]:
    """Each layer's activations at the kept positions of one batch (one forward, stopped after the last layer)."""

    def keep(activation: Tensor, name: str) -> Tensor:
        return activation[keep_mask.to(activation.device)].to(store_dtype).to(store_device)

    read = read_activations(model, batch, list(names.values()), keep)
    return {layer: read[name] for layer, name in names.items()}


def _drop_outliers(
    stacked: Float[Tensor, "n_tokens d_model"], outlier_ratio: float | None
) -> tuple[Float[Tensor, "n_kept d_model"], int]:
    """The rows whose norm is at most `outlier_ratio` x the median norm, and how many were dropped."""
    if outlier_ratio is None:
        return stacked, 0
    norms = stacked.float().norm(dim=-1)
    normal = norms <= outlier_ratio * norms.median()
    return stacked[normal], int((~normal).sum())
