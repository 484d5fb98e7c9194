"""Max-activating examples of SAE features: the corpus tokens where each feature fires hardest.

`max_activating(model, dictionary, texts, features)` runs the corpus in length-sorted, left-padded
batches up to the dictionary's hook point (`interp.runner.read_activations` stops there), encodes every real token after the first
`skip_first` (position 0 is skipped: its residual norm is ~100x the rest and dominates any feature),
and keeps a running top-n per requested feature with tensor ops across batches (no loop over features
or tokens). A second, small pass re-reads only the documents that made some top-n list, to get every
token's activation inside each context window (for the rendering and the figure).
`max_activating_each(model, [(dictionary, features), ...], texts)` does the same for several dictionaries in one
pass over the corpus, each reading its own layer on the way up.

`render_text` prints the contexts with the max token marked «like this»; `plot_max_activating` draws
the top contexts of a few features with tokens coloured by activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.chat import TokenBatch, tokenizer_of
from interp.dictionaries import Dictionary
from interp.display import clip, details, frame, html_table
from interp.hooked import HookedModel, check_layers, model_device
from interp.runner import read_activations

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MARK_OPEN, MARK_CLOSE = "«", "»"


@dataclass(frozen=True)
class FeatureContext:
    """One top activation of a feature: where it is, its value, and the token window around it."""

    feature: int
    value: float
    doc: int  # index into the corpus list as passed
    position: int  # token position in the document (0 = its first token)
    tokens: list[str]  # the window's tokens, decoded one by one
    activations: list[float]  # the feature's activation at each window token
    center: int  # index of the max token inside `tokens`

    def text(self, mark: bool = True) -> str:
        """The window as text, the max token wrapped in «»."""
        parts = list(self.tokens)
        if mark:
            parts[self.center] = f"{MARK_OPEN}{parts[self.center]}{MARK_CLOSE}"
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "doc": self.doc, "position": self.position, "token": self.tokens[self.center],
                "text": self.text()}


@dataclass(frozen=True)
class MaxActivating:
    """The top-n contexts of each requested feature over a corpus."""

    features: list[int]
    values: Float[Tensor, "n_features n_top"]  # descending; -inf where fewer tokens fired
    docs: Int[Tensor, "n_features n_top"]
    positions: Int[Tensor, "n_features n_top"]
    contexts: dict[int, list[FeatureContext]]  # feature -> contexts with a positive activation, best first
    frequency: Float[Tensor, "n_features"]  # fraction of scored tokens where the feature is > 0
    n_tokens: int  # tokens scored (real tokens after the first `skip_first` of each document)
    n_docs: int

    def to_dict(self, n: int | None = None) -> dict[str, Any]:
        return {
            str(f): {"frequency": float(self.frequency[i]),
                     "contexts": [c.to_dict() for c in self.contexts[f][:n]]}
            for i, f in enumerate(self.features)
        }

    def __repr__(self) -> str:
        shown = ", ".join(map(str, self.features[:8])) + (", …" if len(self.features) > 8 else "")
        return clip(f"MaxActivating({len(self.features)} features [{shown}] over {self.n_tokens} tokens of "
                    f"{self.n_docs} documents, up to {self.values.shape[-1]} contexts each)")

    def _repr_html_(self) -> str:
        rows = [(f, float(self.frequency[i]), len(self.contexts[f]),
                 self.contexts[f][0].value if self.contexts[f] else None,
                 _one_line(self.contexts[f][0].text()) if self.contexts[f] else "never active")
                for i, f in enumerate(self.features)]
        return details(repr(self), html_table(("feature", "frequency", "contexts", "top value", "top context"), rows))

    def to_frame(self) -> Any:
        """One row per feature × context: feature, rank, value, doc, position, token, text (a pandas DataFrame)."""
        return frame([{"feature": f, "rank": rank, **context.to_dict()}
                      for f in self.features for rank, context in enumerate(self.contexts[f])],
                     columns=("feature", "rank", "value", "doc", "position", "token", "text"))


# ---------------------------------------------------------------------------------------------
# Validation and batching
# ---------------------------------------------------------------------------------------------


def _check_features(features: Sequence[int] | Tensor, n_atoms: int) -> list[int]:
    if isinstance(features, Tensor):
        features = features.flatten().tolist()
    features = list(features)
    if not features:
        raise ValueError("features: expected at least one feature index")
    bad = [f for f in features if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < n_atoms]
    if bad:
        raise ValueError(f"features: indices must be ints in [0, {n_atoms}), got {bad[:5]}")
    return list(dict.fromkeys(features))  # unique, order kept


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"texts: expected a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts: expected at least one text")
    if any(not isinstance(t, str) for t in texts):
        raise ValueError("texts: every item must be a string")
    return list(texts)


def _token_ids(model: HookedModel, texts: list[str], max_length: int) -> list[list[int]]:
    # As interp.sae_training.tokenize_corpus, but keeping one entry per text so document indices hold.
    encoded = tokenizer_of(model)(texts, add_special_tokens=False, truncation=True, max_length=max_length)
    return [list(ids) for ids in encoded["input_ids"]]


def _batches(
    token_lists: list[list[int]], docs: list[int], batch_tokens: int, pad_id: int
) -> list[tuple[Tensor, TokenBatch]]:
    """Length-sorted, left-padded batches of at most ~`batch_tokens` tokens, with their document indices."""
    order = sorted(docs, key=lambda d: len(token_lists[d]))
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        # Sorted by length, so the last row sets the width.
        while end < len(order) and (end - start + 1) * len(token_lists[order[end]]) <= batch_tokens:
            end += 1
        rows = order[start:end]
        width = len(token_lists[rows[-1]])
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, doc in enumerate(rows):
            length = len(token_lists[doc])
            ids[r, width - length:] = torch.tensor(token_lists[doc])
            mask[r, width - length:] = 1
        batches.append((torch.tensor(rows), TokenBatch(ids, mask)))
        start = end
    return batches


def _feature_activations(
    model: HookedModel, requests: Sequence[tuple[Dictionary, Tensor]], batch: TokenBatch
) -> list[Float[Tensor, "batch seq n_features"]]:
    """Each (dictionary, features) request's SAE activations at every position of a batch: one forward, stopped
    after the last dictionary's read, every dictionary encoding the activation at its own hook point."""
    at_hook: dict[str, list[int]] = {}
    for i, (dictionary, _) in enumerate(requests):
        at_hook.setdefault(dictionary.hook_name, []).append(i)

    def encode(activation: Tensor, name: str) -> list[Tensor]:
        # Encode all atoms (a TopK encoder needs them all), then keep the requested columns.
        return [requests[i][0].encode(activation.float())[..., requests[i][1]].cpu() for i in at_hook[name]]

    read = read_activations(model, batch, list(at_hook), encode)
    by_request: dict[int, Tensor] = {}
    for name, indices in at_hook.items():
        by_request.update(zip(indices, read[name]))
    return [by_request[i] for i in range(len(requests))]


# ---------------------------------------------------------------------------------------------
# The harvest
# ---------------------------------------------------------------------------------------------


def _check_dictionary(model: HookedModel, dictionary: Dictionary) -> int:
    if not isinstance(dictionary, Dictionary):
        raise ValueError(f"dictionary: expected an interp.dictionaries.Dictionary, got {type(dictionary).__name__}")
    dictionary.require_encoder("max-activating examples")
    dictionary.require_hook("max-activating examples")  # a transcoder's features are read at its input site
    dictionary.check_model(model)
    return check_layers(model, dictionary.layer, "dictionary")[0]


@torch.no_grad()
def max_activating(
    model: HookedModel,
    dictionary: Dictionary,
    texts: Sequence[str],
    features: Sequence[int] | Tensor,
    *,
    n_top: int = 10,
    window: tuple[int, int] = (12, 4),
    skip_first: int = 1,
    max_length: int = 256,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> MaxActivating:
    """The `n_top` highest activations of each feature over `texts`, with a token window around each.

    `window = (before, after)` tokens around the max token. Only positions ≥ `skip_first` count.
    Texts are tokenized as they are (no special tokens added): pass chat transcripts for chat contexts.
    """
    return max_activating_each(model, [(dictionary, features)], texts, n_top=n_top, window=window,
                               skip_first=skip_first, max_length=max_length, batch_tokens=batch_tokens,
                               progress=progress)[0]


def max_activating_each(
    model: HookedModel,
    requests: Sequence[tuple[Dictionary, Sequence[int] | Tensor]],
    texts: Sequence[str],
    *,
    n_top: int = 10,
    window: tuple[int, int] = (12, 4),
    skip_first: int = 1,
    max_length: int = 256,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> list[MaxActivating]:
    """`max_activating` for several (dictionary, features) requests in one pass over the corpus: each batch runs
    once, up to the deepest dictionary's hook point, and every dictionary reads its own (e.g. SAEs at two layers).

    Returns:
        One `MaxActivating` per request, in order, each what `max_activating` gives for it alone.
    """
    texts = _check_texts(texts)
    if not requests or any(not (isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], Dictionary)) for r in requests):
        raise ValueError("requests: expected a non-empty list of (dictionary, features) pairs")
    feature_lists = []
    for dictionary, features in requests:
        _check_dictionary(model, dictionary)
        feature_lists.append(_check_features(features, dictionary.n_atoms))
    _check_options(n_top, skip_first, window)
    device = model_device(model)
    encoders = [(dictionary.to(device), torch.tensor(features, device=device))
                for (dictionary, _), features in zip(requests, feature_lists)]
    tokenizer = tokenizer_of(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    token_lists = _token_ids(model, texts, max_length)
    docs = [d for d, ids in enumerate(token_lists) if len(ids) > skip_first]
    if not docs:
        raise ValueError(f"texts: no text has more than skip_first = {skip_first} tokens")

    stride = max_length + 1  # key = doc * stride + position
    batches = _batches(token_lists, docs, batch_tokens, pad_id)
    tops = _running_top(model, encoders, batches, n_top, skip_first, stride, progress)
    contexts = _contexts(model, encoders, feature_lists, token_lists, [(values, keys // stride, keys % stride)
                         for values, keys, _, _ in tops], window, skip_first, batch_tokens, pad_id)
    return [
        MaxActivating(features=features, values=values, docs=keys // stride, positions=keys % stride,
                      contexts=found, frequency=fired.float() / max(n_scored, 1), n_tokens=n_scored, n_docs=len(docs))
        for features, (values, keys, fired, n_scored), found in zip(feature_lists, tops, contexts)
    ]


def _check_options(n_top: int, skip_first: int, window: tuple[int, int]) -> None:
    if isinstance(n_top, bool) or not isinstance(n_top, int) or n_top < 1:
        raise ValueError(f"n_top: expected a positive int, got {n_top!r}")
    if skip_first < 0:
        raise ValueError(f"skip_first: expected >= 0, got {skip_first}")
    if len(window) != 2 or min(window) < 0:
        raise ValueError(f"window: expected (before, after) with non-negative counts, got {window!r}")


def _running_top(
    model: HookedModel,
    requests: list[tuple[Dictionary, Tensor]],
    batches: list[tuple[Tensor, TokenBatch]],
    n_top: int,
    skip_first: int,
    stride: int,
    progress: bool,
) -> list[tuple[Float[Tensor, "n_features n_top"], Int[Tensor, "n_features n_top"], Int[Tensor, "n_features"], int]]:
    """Per request: each feature's top-n values and their (doc, position) keys, its firing count, and the tokens
    scored."""
    best = [(torch.full((len(features), 0), float("-inf")), torch.zeros((len(features), 0), dtype=torch.long),
             torch.zeros(len(features), dtype=torch.long)) for _, features in requests]
    n_scored = 0
    for rows, batch in tqdm(batches, desc="max-activating", disable=not progress, leave=False):
        scored = batch.attention_mask.bool() & (batch.position_ids >= skip_first)  # [batch, seq]
        keys = (rows[:, None] * stride + batch.position_ids).flatten()  # [batch*seq]
        n_scored += int(scored.sum())
        for i, acts in enumerate(_feature_activations(model, requests, batch.to(model_device(model)))):
            acts = acts.masked_fill(~scored[..., None], float("-inf")).flatten(0, 1).T  # [n_features, batch*seq]
            best_values, best_keys, fired = best[i]
            best[i] = (*_merge_top(best_values, best_keys, acts, keys, n_top), fired + (acts > 0).sum(1))
    tops = []
    for best_values, best_keys, fired in best:
        # Equal activations (texts sharing a prefix) in corpus order, whatever order the device's topk left them in.
        by_key = best_keys.argsort(dim=1, stable=True)
        best_values, best_keys = best_values.gather(1, by_key), best_keys.gather(1, by_key)
        by_value = best_values.argsort(dim=1, descending=True, stable=True)
        tops.append((best_values.gather(1, by_value), best_keys.gather(1, by_value), fired, n_scored))
    return tops


def _merge_top(
    best_values: Float[Tensor, "n_features n_best"],
    best_keys: Int[Tensor, "n_features n_best"],
    acts: Float[Tensor, "n_features n_tokens"],
    keys: Int[Tensor, "n_tokens"],
    n_top: int,
) -> tuple[Float[Tensor, "n_features n_top"], Int[Tensor, "n_features n_top"]]:
    # Only a batch's own top-n can enter the running top-n, so merge those rather than every token.
    values, where = acts.topk(min(n_top, acts.shape[1]), dim=1)
    merged_values = torch.cat([best_values, values], dim=1)
    merged_keys = torch.cat([best_keys, keys[where]], dim=1)
    keep = merged_values.topk(min(n_top, merged_values.shape[1]), dim=1).indices
    return merged_values.gather(1, keep), merged_keys.gather(1, keep)


def _contexts(
    model: HookedModel, requests: list[tuple[Dictionary, Tensor]], feature_lists: list[list[int]],
    token_lists: list[list[int]], tops: list[tuple[Tensor, Tensor, Tensor]], window: tuple[int, int],
    skip_first: int, batch_tokens: int, pad_id: int,
) -> list[dict[int, list[FeatureContext]]]:
    """Re-read the documents that made some request's top list (once for all requests); cut each context's window
    with its activations. `tops`: per request, its (values, docs, positions)."""
    # A feature that never fired has no contexts (its top values are 0 or -inf).
    needed = sorted({doc for values, docs, _ in tops for doc in docs[values > 0].tolist()})
    per_doc: list[dict[int, Tensor]] = [{} for _ in requests]
    for rows, batch in _batches(token_lists, needed, batch_tokens, pad_id) if needed else []:
        for i, acts in enumerate(_feature_activations(model, requests, batch.to(model_device(model)))):
            for r, doc in enumerate(rows.tolist()):
                per_doc[i][doc] = acts[r, acts.shape[1] - len(token_lists[doc]):]  # [length, n_features], unpadded
    return [_windows(model, features, token_lists, top, acts, window, skip_first)
            for features, top, acts in zip(feature_lists, tops, per_doc)]


def _windows(
    model: HookedModel, features: list[int], token_lists: list[list[int]], top: tuple[Tensor, Tensor, Tensor],
    per_doc: dict[int, Tensor], window: tuple[int, int], skip_first: int,
) -> dict[int, list[FeatureContext]]:
    """Each feature's contexts: the window around each of its positive top activations."""
    values, docs, positions = top
    positive = values > 0
    tokenizer = tokenizer_of(model)
    before, after = window
    contexts: dict[int, list[FeatureContext]] = {}
    for i, feature in enumerate(features):
        found = []
        for value, doc, position in zip(values[i][positive[i]].tolist(), docs[i][positive[i]].tolist(),
                                        positions[i][positive[i]].tolist()):
            ids = token_lists[doc]
            start, end = max(0, position - before), min(len(ids), position + after + 1)
            window_acts = per_doc[doc][start:end, i].clone()
            window_acts[: max(0, skip_first - start)] = 0.0  # skipped positions carry no score
            found.append(FeatureContext(
                feature=feature, value=float(value), doc=doc, position=position,
                tokens=[tokenizer.decode([t]) for t in ids[start:end]], activations=window_acts.tolist(),
                center=position - start,
            ))
        contexts[feature] = found
    return contexts


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return text.replace("\n", "⏎").replace("\r", "")


def render_text(result: MaxActivating, features: Sequence[int] | None = None, n: int = 5) -> str:
    """Plain-text listing: per feature, its activation frequency and top-n contexts (max token in «»)."""
    lines = []
    for feature in features if features is not None else result.features:
        if feature not in result.contexts:
            raise ValueError(f"features: {feature} was not harvested (harvested: {result.features})")
        i = result.features.index(feature)
        lines.append(f"feature {feature} (active on {100 * float(result.frequency[i]):.2f}% of {result.n_tokens} tokens)")
        contexts = result.contexts[feature][:n]
        if not contexts:
            lines.append("  never active on this corpus")
        for context in contexts:
            lines.append(f"  {context.value:8.2f}  doc {context.doc:>5} pos {context.position:>3}: {_one_line(context.text())}")
    return "\n".join(lines)


def plot_max_activating(
    result: MaxActivating,
    path: str | Path | None = None,
    features: Sequence[int] | None = None,
    n: int = 4,
    title: str | None = None,
) -> Figure:
    """Top-n contexts of each feature, one row per context, tokens shaded by activation (max token boxed);
    saved as PNG when `path` is given. Each token is placed after the measured box of the one before, so
    no token's shading covers another's letters; a row stops at the right edge."""
    import matplotlib.pyplot as plt

    from interp.plots import finish_figure

    chosen = list(features if features is not None else result.features[:4])
    rows: list[tuple[str, FeatureContext | None]] = []
    for feature in chosen:
        if feature not in result.contexts:
            raise ValueError(f"features: {feature} was not harvested (harvested: {result.features})")
        rows.append((f"feature {feature}", None))
        rows += [("", context) for context in result.contexts[feature][:n]] or [("  (never active)", None)]
    figure, axis = plt.subplots(figsize=(11, 0.3 * len(rows) + 0.6))
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.98 if not title else 0.9)
    axis.set_xlim(0, 1)
    axis.set_ylim(len(rows), 0)
    axis.axis("off")
    cmap = plt.get_cmap("Oranges")
    renderer = figure.canvas.get_renderer()
    to_axes = axis.transAxes.inverted()
    pad = 0.1  # the shading box's pad, in font sizes, on each side of a token

    def right_edge(text: Any) -> float:
        box = text.get_window_extent(renderer)
        return float(to_axes.transform((box.x1 + 2 * pad * text.get_fontsize() * figure.dpi / 72, box.y1))[0])

    for y, (label, context) in enumerate(rows):
        if context is None:
            axis.text(0, y + 0.5, label, fontsize=8, fontweight="bold", va="center", family="monospace")
            continue
        x = right_edge(axis.text(0, y + 0.5, f"{context.value:7.2f} ", fontsize=7, va="center", family="monospace"))
        peak = max(max(context.activations), 1e-12)
        for index, (token, activation) in enumerate(zip(context.tokens, context.activations)):
            box = dict(boxstyle=f"square,pad={pad}", facecolor=cmap(0.85 * max(activation, 0) / peak),
                       edgecolor="black" if index == context.center else "none", linewidth=0.8)
            text = axis.text(x, y + 0.5, _one_line(token), fontsize=7, va="center", family="monospace", bbox=box)
            end = right_edge(text)
            if end > 1:
                text.remove()
                break
            x = end
    if title:
        axis.set_title(title, fontsize=9, loc="left")
    return finish_figure(figure, path, layout=False)  # placed by hand: a re-layout would move the tokens


# The corpus as max_activating reads it (one entry of token ids per text; length-sorted, left-padded batches),
# shared with interp.browser so a browser's activations are the ones max_activating computes.
token_ids = _token_ids
length_sorted_batches = _batches
