"""Refusal rates of generated text with each of several directions ablated (harmful prompts) or added
(harmless prompts): the two behavioural axes of the refusal figures in Arditi et al. and the seed.

A `Judge` decides what counts as a refusal: the phrase judge by default, or any callable, e.g. one that
wraps a local guard model (`load_judge("package.module:function")`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from interp._checks import whole_number
from interp.directions import Direction
from interp.display import clip
from interp.hooked import HookedModel
from interp.metrics import bootstrap_mean_ci
from interp.refusal.judging import Judge, judge_all, phrase_judge
from interp.runner import generate_greedy
from interp.steering import Ablate, Intervention, Steer


@dataclass(frozen=True)
class RefusalRates:
    """One direction's refusal rates, with bootstrap 95% intervals over prompts."""

    name: str
    harmful_ablated: float  # share of harmful prompts refused with the direction ablated at every layer
    harmful_ablated_ci95: tuple[float, float]
    harmless_added: float  # share of harmless prompts refused with the direction added at its layer
    harmless_added_ci95: tuple[float, float]
    n_harmful: int
    n_harmless: int
    examples: dict[str, str]  # the first harmful and harmless completion, for reading

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def __repr__(self) -> str:
        low, high = self.harmful_ablated_ci95
        low2, high2 = self.harmless_added_ci95
        return clip(f"RefusalRates({self.name!r}: harmful refused {self.harmful_ablated:.2f} [{low:.2f}, {high:.2f}] "
                    f"ablated (n={self.n_harmful}), harmless refused {self.harmless_added:.2f} [{low2:.2f}, {high2:.2f}] "
                    f"added (n={self.n_harmless}))")


def load_judge(spec: str | None) -> Judge:
    """`None` or "phrases": `phrase_judge`; "package.module:function": that callable (instruction, completion) -> bool."""
    if spec is None or spec == "phrases":
        return phrase_judge
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"judge: expected 'phrases' or 'package.module:function', got {spec!r}")
    try:
        judge = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"judge: cannot import {spec!r} ({error})") from error
    if not callable(judge):
        raise ValueError(f"judge: {spec!r} is not callable")
    return judge


def _rate(model: HookedModel, instructions: Sequence[str], prompts: Sequence[str],
          interventions: Sequence[Intervention], judge: Judge, max_new_tokens: int, batch_size: int,
          seed: int) -> tuple[float, tuple[float, float], str]:
    completions = generate_greedy(model, prompts, interventions, max_new_tokens=max_new_tokens, batch_size=batch_size)
    flags = torch.tensor(judge_all(judge, instructions, completions), dtype=torch.float64)
    return float(flags.mean()), bootstrap_mean_ci(flags, seed=seed), completions[0]


def refusal_rates_under(
    model: HookedModel,
    directions: Mapping[str, Direction | None],
    harmful: tuple[Sequence[str], Sequence[str]],
    harmless: tuple[Sequence[str], Sequence[str]],
    *,
    judge: Judge = phrase_judge,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[RefusalRates]:
    """Greedy completions of `harmful` prompts with each direction ablated and of `harmless` prompts with it
    added (its own norm, at every position of its layer), judged by `judge`.

    `harmful` and `harmless` are (raw instructions, formatted prompts) pairs: the judge reads the
    instruction, the model the prompt. A `None` direction is the unsteered model. Refusals announce
    themselves in the first words, so a few new tokens suffice.
    """
    whole_number(max_new_tokens, "max_new_tokens", minimum=1)
    for name, (instructions, prompts) in (("harmful", harmful), ("harmless", harmless)):
        if not prompts or len(instructions) != len(prompts):
            raise ValueError(f"{name}: expected (instructions, prompts) of equal, non-zero length")
    rows = []
    for name, direction in tqdm(directions.items(), desc="refusal rates", disable=not progress, leave=False):
        ablate = [] if direction is None else [Ablate(direction)]
        add = [] if direction is None else [Steer(direction, scale=1.0, positions="all")]
        harmful_rate, harmful_ci, harmful_example = _rate(model, *harmful, ablate, judge, max_new_tokens, batch_size, seed)
        harmless_rate, harmless_ci, harmless_example = _rate(model, *harmless, add, judge, max_new_tokens, batch_size, seed)
        rows.append(RefusalRates(str(name), harmful_rate, harmful_ci, harmless_rate, harmless_ci, len(harmful[0]),
                                 len(harmless[0]), {"harmful_ablated": harmful_example, "harmless_added": harmless_example}))
    return rows
