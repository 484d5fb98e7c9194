"""What several experiments share, so that no experiment imports another.

- `spread`: deterministic, evenly spaced subsets of the bundled data (sycophancy, classifier, sparse).
- `StageClock`: per-stage wall and CPU seconds.
- `experiment_model` / `shared_models`: one load of each model for a whole `interp reproduce all`.
- The refusal experiment's settings and its fitting step (`RefusalConfig`, `load_split`, `fit_refusal`):
  the sparse experiment fits the same direction with the same defaults when no saved one is at hand.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from interp._timing import StageClock
from interp.datasets import bundled, load_instructions
from interp.experiments.checks import check_fields
from interp.hooked import HookedModel, has_active_hooks
from interp.models import load_model
from interp.refusal import REFUSAL_PHRASES, Judge, RefusalFit, SelectionConfig, fit_refusal_direction, make_phrase_judge

__all__ = [
    "RefusalConfig", "StageClock", "experiment_model", "fit_refusal", "load_split", "refusal_judge", "refusal_selection",
    "shared_models", "spread",
]

T = TypeVar("T")


_shared: dict[tuple[str, str | None], Any] | None = None  # set inside `shared_models()`


@contextmanager
def shared_models() -> Iterator[None]:
    """Inside this block `experiment_model` loads each (model, device) once and hands every later experiment
    the same model: `reproduce all` runs six experiments on two models. Experiments never edit a model's
    weights in place (abliteration edits a fresh copy) and remove their hooks, which `experiment_model` checks."""
    global _shared
    outer, _shared = _shared, {} if _shared is None else _shared
    try:
        yield
    finally:
        if outer is None:
            _shared = None


def experiment_model(name: str, device: str | None = None) -> HookedModel:
    """`load_model(name, device=device)`, or the model already loaded for an earlier experiment of this
    `shared_models()` block."""
    if _shared is None:
        return load_model(name, device=device)
    key = (str(name), device)
    model = _shared.get(key)
    if model is None or has_active_hooks(model):  # a hook left behind would leak into this experiment
        model = _shared[key] = load_model(name, device=device)
    return model


def spread(items: Sequence[T], count: int | None) -> list[T]:
    """`count` items evenly spaced through `items` (all of them for None): a deterministic, mixed subset."""
    items = list(items)
    if count is None or count >= len(items):
        return items
    if count < 1:
        raise ValueError(f"count: expected >= 1, got {count}")
    return [items[(i * len(items)) // count] for i in range(count)]


@dataclass
class RefusalConfig:
    """The refusal experiment's settings, checked when made (`interp.experiments.checks`).

    Each field is an `interp reproduce refusal --set KEY=VALUE` setting; `interp reproduce refusal --help` lists them with
    their types, defaults and meanings (the comments beside the fields here).
    """

    model: str = "qwen2.5-coder-0.5b-instruct"
    data_dir: str | None = None  # a folder with {harmful,harmless}_{train,val}.json; default: bundled interp/data/
    harmful_train: str | None = None  # single-file overrides (JSON, JSONL, CSV or text; see interp.datasets)
    harmless_train: str | None = None
    harmful_eval: str | None = None
    harmless_eval: str | None = None
    n_train_harmful: int = 80  # seeded subsets of each file (all, if it has fewer)
    n_train_harmless: int = 64
    n_eval_harmful: int = 40
    n_eval_harmless: int = 40
    n_select_harmful: int = 32  # at most half of the filtered training prompts score the candidates
    n_select_harmless: int = 32
    screen_prompts: int | None = 8  # None: score every candidate on every selection prompt
    screen_keep: int = 12
    score_all: bool = False
    filter_new_tokens: int = 12
    max_new_tokens: int = 24
    kl_threshold: float = 0.1
    prune_layer_fraction: float = 0.2
    # Departures from Arditi et al. (see interp.refusal.SelectionConfig); 0.0 and False give the paper's rule.
    induce_refusal_threshold: float | None = None  # None: midpoint of the harmless and harmful baselines
    protect_first_token: bool = True
    subtract_multiplier: float = 1.0
    n_loss_texts: int = 20
    capability: bool = True  # multiple-choice accuracy with the direction ablated (needs letter tokens A–D)
    mmlu_dir: str | None = None  # MMLU CSVs for that accuracy; default: the bundled questions
    svd_weights: tuple[str, ...] = ("mlp_out",)
    svd_layers: tuple[int, ...] | None = (0,)  # the seed's setting: the first MLP's output weights only
    svd_k: int = 4
    quantize_bits: tuple[int, ...] = (8, 4)
    edited_model: str | None = None  # a real abliterated model (HF folder or GGUF) to recover a direction from
    keep_model: bool = True  # keep the orthogonalised model as an HF folder under the output folder
    refusal_phrases: tuple[str, ...] | None = None  # default: interp.refusal.REFUSAL_PHRASES
    batch_size: int = 32  # forward passes (scores, activations)
    generation_batch_size: int = 64  # a CPU decoding step reads every weight once, so bigger batches amortise it
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges, before any work (interp.experiments.checks)

    def check(self) -> None:
        """The instruction files (run by `check_resources` before any work)."""
        for kind in ("harmful", "harmless"):
            for split in ("train", "val"):
                load_split(self, kind, split, 1)


def load_split(config: RefusalConfig, kind: str, split: str, count: int) -> list[str]:
    """A seeded subset of `count` instructions of `kind` ("harmful"/"harmless") and `split` ("train"/"val")."""
    override = getattr(config, f"{kind}_{'eval' if split == 'val' else 'train'}")
    if override:
        path = Path(override)
    elif config.data_dir:
        path = Path(config.data_dir) / f"{kind}_{split}.json"
    else:
        path = bundled(f"{kind}_{split}.json")
    texts = [record.instruction for record in load_instructions(path)]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(config.seed)).tolist()
    return [texts[i] for i in order[:count]]


def refusal_judge(config: RefusalConfig) -> Judge:
    """The phrase judge of a refusal config (its `refusal_phrases`, or the default list)."""
    return make_phrase_judge(config.refusal_phrases or REFUSAL_PHRASES)


def refusal_selection(config: RefusalConfig, progress: bool = True) -> SelectionConfig:
    """The refusal fit's `SelectionConfig` from a refusal experiment's settings."""
    return SelectionConfig(
        kl_threshold=config.kl_threshold, prune_layer_fraction=config.prune_layer_fraction, score_all=config.score_all,
        induce_refusal_threshold=config.induce_refusal_threshold, protect_first_token=config.protect_first_token,
        screen_prompts=config.screen_prompts, screen_keep=config.screen_keep, batch_size=config.batch_size,
        progress=progress,
    )


def fit_refusal(
    model: HookedModel, config: RefusalConfig, harmful: Sequence[str], harmless: Sequence[str], progress: bool = True
) -> RefusalFit:
    """The refusal experiment's fit on raw training instructions, with its selection rule and phrase judge."""
    return fit_refusal_direction(
        model, harmful, harmless, judge=refusal_judge(config),
        n_select_harmful=config.n_select_harmful, n_select_harmless=config.n_select_harmless,
        filter_new_tokens=config.filter_new_tokens, generation_batch_size=config.generation_batch_size,
        config=refusal_selection(config, progress), seed=config.seed,
    )
