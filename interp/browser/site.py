"""The feature browser as a folder: build it (harvest, weights, optional explanations and steering), write it,
render it again from its stored data.

A browser folder holds `index.html`, `style.css`, `features/NNNN.html` (one page per feature, zero-padded so
they sort) and `data/` (what the pages were rendered from). Links are relative, nothing is fetched from the
network: the folder can be zipped and opened anywhere. It is written atomically, as an interp artifact of kind
"feature browser" (`interp._io.atomic_write_dir`): a folder holding anything else is never replaced.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp._io import atomic_write_dir, atomic_write_text, check_target
from interp.browser.data import BrowserData, decode_tokens, feature_view, index_row, read_data, used_token_ids, write_data
from interp.browser.harvest import (
    FeatureHarvest, HarvestConfig, check_features, check_harvest_dictionary, dictionary_fingerprint, harvest_features,
)
from interp.browser.render import STYLE, render_feature, render_index
from interp.browser.sources import check_corpus
from interp.browser.weights import STEER_PROMPTS, analyse_weights, explain_features, steering_preview
from interp.dictionaries import Dictionary

BROWSER_KIND = "feature browser"
INDEX_FILE, STYLE_FILE, PAGES_DIR, DATA_DIR = "index.html", "style.css", "features", "data"


def check_browser_target(out: str | Path, *, overwrite: bool = False, argument: str = "out") -> None:
    """Raise before any work unless a browser may be written at `out` (new, empty, or a browser with `overwrite`)."""
    check_target(Path(out), BROWSER_KIND, overwrite=overwrite, argument=argument)


def _subset(chosen: Sequence[int] | str | None, pages: Tensor, argument: str) -> list[int]:
    """`chosen` features ("all" = every page) as a list; each must have a page."""
    if chosen is None:
        return []
    if isinstance(chosen, str):
        if chosen != "all":
            raise ValueError(f"{argument}: expected 'all' or a list of features, got {chosen!r}")
        return pages.tolist()
    listed = list(chosen)
    missing = sorted(set(listed) - set(pages.tolist()))
    if missing or any(isinstance(f, bool) or not isinstance(f, int) for f in listed):
        raise ValueError(f"{argument}: {missing[:5] or listed[:5]} are not features with a page")
    return list(dict.fromkeys(listed))


def build_feature_browser(
    model: Any,
    dictionary: Dictionary,
    corpus: Any,
    out: str | Path,
    *,
    features: Sequence[int] | Tensor | None = None,
    config: HarvestConfig = HarvestConfig(),
    harvest: FeatureHarvest | None = None,
    explain: Sequence[int] | str | None = None,
    explain_config: Any = None,
    steer: Sequence[int] | str | None = None,
    steer_prompts: Sequence[str] = STEER_PROMPTS,
    steer_scales: Sequence[float] = (0.5, 1.0, 2.0),
    n_logits: int = 10,
    n_neighbours: int = 10,
    dense_threshold: float = 0.1,
    checkpoint: str | Path | None = None,
    prompts: Sequence[str] | None = None,
    max_docs: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Harvest `dictionary` over `corpus`, analyse its weights and write a static browser to `out`.

    `features`: the pages to build (all by default). A raw decoder (no encoder) needs no corpus (pass None):
    its pages show only the weight-based parts. `explain` / `steer`: features (or "all") to self-explain and
    to preview steering for (slow: one generation per feature × scale). `harvest`: a harvest already made
    (of these features) instead of a new one. `checkpoint`, `prompts`, `max_docs`: see `harvest_features`.
    Everything is checked before the corpus is read; returns `out`.
    """
    check_browser_target(out, overwrite=overwrite)
    pages = check_features(features, dictionary.n_atoms)
    for value, name in ((n_logits, "n_logits"), (n_neighbours, "n_neighbours")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a whole number >= 1, got {value!r}")
    if not 0 < dense_threshold <= 1:
        raise ValueError(f"dense_threshold: expected a fraction in (0, 1], got {dense_threshold!r}")
    explained, steered = _subset(explain, pages, "explain"), _subset(steer, pages, "steer")
    if model is None and (explained or steered):
        raise ValueError("explain, steer: explanations and steering previews need the model")
    raw = dictionary.encoder is None
    if not raw and harvest is None:
        check_harvest_dictionary(model, dictionary)
        check_corpus(corpus)
    if harvest is not None and not torch.equal(harvest.features, pages):
        raise ValueError("harvest: it covers other features than `features`")
    if model is not None:
        dictionary.check_model(model)

    if not raw and harvest is None:
        harvest = harvest_features(model, dictionary, corpus, features=pages, config=config, checkpoint=checkpoint,
                                   prompts=prompts, max_docs=max_docs, progress=progress)
    weights = analyse_weights(model, dictionary, pages, n_logits=n_logits, n_neighbours=n_neighbours, progress=progress)
    explanations = explain_features(model, dictionary, explained, config=explain_config, progress=progress)
    steering = steering_preview(model, dictionary, steered, prompts=steer_prompts, scales=steer_scales,
                                progress=progress) if steered else {}
    tokenizer = getattr(model, "tokenizer", None) if model is not None else None
    ids = used_token_ids(harvest, weights)
    tokens = decode_tokens(tokenizer, ids) if tokenizer is not None else {i: f"#{i}" for i in ids}
    meta = _meta(model, dictionary, harvest, dense_threshold)
    data = BrowserData(meta, pages, weights, harvest, tokens, explanations, steering)
    return write_site(data, out, overwrite=overwrite, progress=progress)


def _meta(model: Any, dictionary: Dictionary, harvest: FeatureHarvest | None, dense_threshold: float) -> dict[str, Any]:
    from interp.models import model_name

    meta: dict[str, Any] = {
        "model": model_name(model) if model is not None else (dictionary.model or "?"),
        "hook_name": dictionary.hook_name or "?", "write_hook": dictionary.write_hook or dictionary.hook_name or "?",
        "dictionary": _label(dictionary.source), "n_atoms": int(dictionary.n_atoms), "kind": dictionary.kind,
        "fingerprint": dictionary_fingerprint(dictionary), "dense_threshold": dense_threshold,
        "created": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "harvested": harvest is not None,
    }
    if harvest is not None:
        meta.update({"corpus": harvest.meta["corpus"], "n_tokens": harvest.state.n_tokens, "n_docs": harvest.state.n_docs})
    return meta


def _label(source: str) -> str:
    """A dictionary's source as its pages name it: a folder or file by its last two parts (not the whole path)."""
    parts = Path(source).parts
    return "/".join(parts[-2:]) if len(parts) > 2 and Path(source).exists() else source


def write_site(data: BrowserData, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Render `data` into a browser folder at `out`, atomically."""
    out = Path(out)
    pages = set(data.features.tolist())
    marker = {key: data.meta[key] for key in ("model", "hook_name", "dictionary", "n_atoms", "fingerprint")}
    with atomic_write_dir(out, BROWSER_KIND, overwrite=overwrite, argument="out", meta=marker) as tmp:
        write_data(data, tmp / DATA_DIR)
        atomic_write_text(tmp / STYLE_FILE, STYLE)
        (tmp / PAGES_DIR).mkdir()
        rows = []
        for column in tqdm(range(data.features.numel()), desc="feature pages", disable=not progress, leave=False):
            view = feature_view(data, column, pages)
            (tmp / PAGES_DIR / data.page_name(view["feature"])).write_text(render_feature(view, data.page_width),
                                                                          encoding="utf-8")
            rows.append(index_row(data, view))
        (tmp / INDEX_FILE).write_text(render_index(rows, data.meta), encoding="utf-8")
    return out


def render_browser(folder: str | Path, out: str | Path | None = None, *, progress: bool = True) -> Path:
    """Render a browser again from its stored data (after an edit of the renderer), in place or into `out`."""
    folder = Path(folder)
    data = read_data(folder / DATA_DIR)
    return write_site(data, out if out is not None else folder, overwrite=True, progress=progress)


def load_browser_data(folder: str | Path) -> BrowserData:
    """The data a browser folder's pages were rendered from."""
    return read_data(Path(folder) / DATA_DIR)
