"""The data a feature browser shows, computed and stored before any HTML (the renderer only formats it).

`BrowserData` gathers a harvest (absent for a raw decoder), the weight analysis, the decoded strings of every
token id the pages use, and the optional explanations and steering preview. `feature_view` and `index_rows`
turn it into plain dicts, one per page and one per index row: everything `interp.browser.render` needs.
`write_data` / `read_data` store it under a browser's `data/` folder, so a site can be rendered again
without the model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from interp._io import atomic_write_json, read_json_object
from interp.browser.harvest import Context, FeatureHarvest
from interp.browser.weights import WeightAnalysis

# Intervals of a feature's max activation that the quantile rows sample, highest first.
INTERVALS = ((0.75, 1.0), (0.5, 0.75), (0.25, 0.5), (0.1, 0.25), (0.0, 0.1))
BROWSER_FILE, WEIGHTS_FILE, HARVEST_PREFIX = "browser.json", "weights.safetensors", "harvest-"


@dataclass
class BrowserData:
    """Everything a browser's pages show; `features` are the features with a page."""

    meta: dict[str, Any]  # model, hook_name, dictionary, fingerprint, n_atoms, corpus, dense_threshold, ...
    features: Int[Tensor, "n"]
    weights: WeightAnalysis
    harvest: FeatureHarvest | None  # None for a raw decoder: no encoder, nothing fires
    tokens: dict[int, str]  # every token id the pages show, decoded one by one
    explanations: dict[int, dict[str, Any]] = field(default_factory=dict)
    steering: dict[str, Any] = field(default_factory=dict)

    @property
    def page_width(self) -> int:
        return len(str(int(self.meta["n_atoms"]) - 1))

    def page_name(self, feature: int) -> str:
        return f"{feature:0{self.page_width}d}.html"


def used_token_ids(harvest: FeatureHarvest | None, weights: WeightAnalysis) -> list[int]:
    """Every token id the pages show: the logit effects' tokens and the ids in top and sampled contexts.

    Args:
        harvest: the feature harvest, or None (a weights-only browser).
        weights: the weight-based analysis (promoted and suppressed tokens per feature).

    Returns:
        The sorted distinct ids (padding, marked negative, left out); only these tokens' strings are stored.
    """
    ids = [weights.promoted_ids.flatten(), weights.suppressed_ids.flatten()]
    if harvest is not None:
        ids += [harvest.state.top.window_ids.flatten(), harvest.state.samples.window_ids.flatten()]
    every = torch.cat([i.long() for i in ids])
    return every[every >= 0].unique().tolist()


def decode_tokens(tokenizer: Any, ids: list[int]) -> dict[int, str]:
    """Each id decoded on its own, as `interp.features` shows a context's tokens (once per distinct id)."""
    return {i: tokenizer.decode([i]) for i in ids}


def write_data(data: BrowserData, folder: Path) -> None:
    """Write the browser's data into `folder`: tensors as safetensors, the rest as JSON (written last, atomically).

    Args:
        data: what the pages are rendered from.
        folder: the destination (created if missing).
    """
    folder.mkdir(parents=True, exist_ok=True)
    save_file(data.weights.tensors(), str(folder / WEIGHTS_FILE))  # its `features` are the pages
    if data.harvest is not None:
        data.harvest.write_files(folder, HARVEST_PREFIX)
    atomic_write_json(folder / BROWSER_FILE, {
        "meta": data.meta, "tokens": {str(k): v for k, v in data.tokens.items()},
        "explanations": {str(k): v for k, v in data.explanations.items()}, "steering": data.steering,
    })


def read_data(folder: Path) -> BrowserData:
    """Read the browser's data back from `folder` (as `write_data` wrote it).

    Args:
        folder: a feature-browser folder.

    Returns:
        The `BrowserData`: weight analysis, harvest (None for a weights-only browser), token strings, metadata.

    Raises:
        FileNotFoundError: a file of the data is missing.
    """
    record = read_json_object(folder / BROWSER_FILE)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    harvest = (FeatureHarvest.read_files(folder, HARVEST_PREFIX)
               if (folder / f"{HARVEST_PREFIX}harvest.json").is_file() else None)
    steering = record.get("steering") or {}
    if "features" in steering:
        steering = {**steering, "features": {int(k): v for k, v in steering["features"].items()}}
    weights = WeightAnalysis.from_tensors(tensors)
    return BrowserData(record["meta"], weights.features, weights, harvest,
                       {int(k): v for k, v in record["tokens"].items()},
                       {int(k): v for k, v in record.get("explanations", {}).items()}, steering)


# ---------------------------------------------------------------------------------------------
# Views: plain dicts for the renderer
# ---------------------------------------------------------------------------------------------


def _context(data: BrowserData, context: Context) -> dict[str, Any]:
    return {"value": context.value, "doc": context.doc, "position": context.position, "center": context.center,
            "tokens": [data.tokens.get(i, "?") for i in context.ids], "acts": context.acts}


def _flags(data: BrowserData, column: int) -> list[str]:
    if data.harvest is None:
        return []
    density = float(data.harvest.density[column])
    return ["dead"] if density == 0 else ["dense"] if density > data.meta["dense_threshold"] else []


def _intervals(data: BrowserData, column: int, top: list[Context], per_interval: int) -> list[dict[str, Any]]:
    """Random firings in each interval of the max, and the share of all firings the histogram puts there."""
    harvest = data.harvest
    assert harvest is not None
    peak = float(harvest.max_activation[column]) or 1.0  # a dead feature: no firing, any scale
    shown = {(c.doc, c.position) for c in top}
    samples = [s for s in harvest.band_samples(column) if (s.doc, s.position) not in shown]
    counts = harvest.state.histogram[column].double()
    # A bin counts in the interval its centre falls in; the max's own bin may be centred above the max.
    bins = _interval_of(_bin_centres(harvest).clamp(max=peak) / peak)
    picked = _interval_of(torch.tensor([s.value for s in samples], dtype=torch.float64) / peak).tolist()
    total = max(float(counts.sum()), 1.0)
    rows = []
    for index, (low, high) in enumerate(INTERVALS):
        inside = sorted((s for s, i in zip(samples, picked) if i == index), key=lambda s: -s.value)
        rows.append({"low": low, "high": high, "share": float(counts[bins == index].sum()) / total,
                     "contexts": [_context(data, s) for s in inside[:per_interval]],
                     "in_top": int((_interval_of(torch.tensor([c.value for c in top], dtype=torch.float64) / peak)
                                    == index).sum()) if top else 0})
    return rows


def _interval_of(fractions: Tensor) -> Tensor:
    """Which of INTERVALS (highest first) each fraction of the max falls in; the top one includes 1."""
    lows = torch.tensor([low for low, _ in INTERVALS], dtype=fractions.dtype)
    return (fractions[:, None] < lows[None, :]).sum(1)


def _bin_centres(harvest: FeatureHarvest) -> Tensor:
    edges = torch.tensor(harvest.config.histogram.edges(), dtype=torch.float64)
    inner = (edges[:-1] * edges[1:]).sqrt()
    return torch.cat([edges[:1] / 2, inner, edges[-1:] * 1.5])


def _histogram(data: BrowserData, column: int) -> dict[str, Any]:
    harvest = data.harvest
    assert harvest is not None
    counts = harvest.state.histogram[column]
    nonzero = counts.nonzero().flatten()
    if nonzero.numel() == 0:
        return {"counts": [], "low": 0.0, "high": 0.0}
    first, last = int(nonzero[0]), int(nonzero[-1])
    edges = [0.0, *harvest.config.histogram.edges(), float("inf")]
    return {"counts": counts[first : last + 1].tolist(), "low": edges[first], "high": edges[last + 1]}


def _coactive(data: BrowserData, contexts: list[Context], pages: set[int], limit: int = 10) -> list[dict[str, Any]]:
    """The features most often active at this one's kept firings (top and sampled), with the share of them."""
    counts = Counter(partner for context in contexts for partner in context.coactive)
    n = max(len(contexts), 1)
    return [{"feature": f, "share": c / n, "page": f in pages} for f, c in counts.most_common(limit)]


def feature_view(data: BrowserData, column: int, pages: set[int], *, per_interval: int = 4) -> dict[str, Any]:
    """What feature `data.features[column]`'s page shows, as plain values."""
    feature = int(data.features[column])
    w = data.weights
    view: dict[str, Any] = {
        "feature": feature, "meta": data.meta, "flags": _flags(data, column), "harvested": data.harvest is not None,
        "promoted": [(data.tokens.get(i, "?"), v) for i, v in zip(w.promoted_ids[column].tolist(), w.promoted[column].tolist())],
        "suppressed": [(data.tokens.get(i, "?"), v)
                       for i, v in zip(w.suppressed_ids[column].tolist(), w.suppressed[column].tolist())],
        "neighbours": [{"feature": f, "cosine": c, "page": f in pages}
                       for f, c in zip(w.neighbour_ids[column].tolist(), w.neighbour_cosines[column].tolist())],
        "explanation": data.explanations.get(feature),
        "steering": _steering(data, feature),
        "previous": _step(data, column, -1), "next": _step(data, column, 1),
    }
    if data.harvest is not None:
        harvest = data.harvest
        top = harvest.top_contexts(column)
        view.update({
            "density": float(harvest.density[column]), "fired": int(harvest.state.fired[column]),
            "n_tokens": harvest.state.n_tokens, "max": float(harvest.max_activation[column]),
            "mean": float(harvest.mean_activation[column]), "top": [_context(data, c) for c in top],
            "intervals": _intervals(data, column, top, per_interval), "histogram": _histogram(data, column),
            "coactive": _coactive(data, top + harvest.band_samples(column), pages),
        })
    return view


def _step(data: BrowserData, column: int, delta: int) -> int | None:
    other = column + delta
    return int(data.features[other]) if 0 <= other < data.features.numel() else None


def _steering(data: BrowserData, feature: int) -> dict[str, Any] | None:
    rows = data.steering.get("features", {}).get(feature)
    if rows is None:
        return None
    return {"prompts": data.steering["prompts"], "scales": data.steering["scales"], "unsteered": data.steering["unsteered"],
            "rows": rows}


def index_row(data: BrowserData, view: dict[str, Any], *, search_contexts: int = 5) -> dict[str, Any]:
    """A page's row in the index: the numbers it sorts by and the words its search matches."""
    feature = view["feature"]
    promoted = [token for token, _ in view["promoted"][:5]]
    explanation = (view["explanation"] or {}).get("text", "")
    row: dict[str, Any] = {"feature": feature, "page": data.page_name(feature), "promoted": promoted,
                           "explanation": explanation, "flags": view["flags"]}
    words = set(promoted) | set(explanation.lower().split())
    if view["harvested"]:
        top = view["top"][:search_contexts]
        row.update({key: view[key] for key in ("density", "max", "mean")})
        row["top_tokens"] = list(dict.fromkeys(c["tokens"][c["center"]] for c in top))
        words |= {token for c in top for token in c["tokens"]}
    row["search"] = " ".join(sorted({w.strip().lower() for w in words if w.strip()}))
    return row
