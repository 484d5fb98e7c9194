"""The sparse experiment's targets: each vector to reconstruct (the sycophancy CAA vector, the refusal
direction) with the dictionary at its layer, the SAE codes of its two training sets, and how its behaviour is
measured (`interp.experiments.sparse` runs them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp._timing import progress_on
from interp.ab_prompts import CANDIDATE_FORMATS, mixed_matching_letters
from interp.caa import caa_activations, caa_vectors_from_activations
from interp.chat import format_chats
from interp.datasets import bundled, load_bundled_sycophancy, load_instructions
from interp.dictionaries import Dictionary, from_saelens_folder, shipped_dictionaries
from interp.directions import Direction
from interp.evaluators import ABEvaluator, choose_format, compare_formats
from interp.experiments.common import RefusalConfig, fit_refusal, load_split, spread
from interp.experiments.pair_activations import model_folder, saved_pair_activations
from interp.experiments.user_dictionary import input_codes, load_user_dictionary, resid_pre_layer
from interp.hooked import HookedModel
from interp.refusal import refusal_scores
from interp.runner import last_logits
from interp.steering import Ablate, Steer

if TYPE_CHECKING:
    from interp.experiments.sparse import SparseExperimentConfig

@dataclass
class Target:
    """A vector to reconstruct, the dictionary at its layer, the encodings of its two sets, and a behaviour."""

    name: str
    direction: Direction
    dictionary: Dictionary
    pos_codes: Float[Tensor, "n_pos n_atoms"] | None  # None: it does not read resid_pre (a transcoder)
    neg_codes: Float[Tensor, "n_neg n_atoms"] | None
    measure: Callable[[Direction | None], dict[str, float]]  # None: unsteered
    effect_key: str  # the measure's entry that is the behavioural effect (bigger = stronger)
    effect_label: str
    info: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Dictionaries
# ---------------------------------------------------------------------------------------------


def dictionary_for(model: HookedModel, name: str, layer: int, path: str | None) -> tuple[Dictionary | None, str]:
    """The dictionary whose atoms land at `layer`'s resid_pre: `path` if its do, else the shipped one; (None, why)."""
    if path is not None:
        dictionary = load_user_dictionary(path, model, layer=layer)
        if resid_pre_layer(dictionary) == layer:
            return dictionary, dictionary.describe()
    shipped = shipped_dictionaries(name)
    hook = f"blocks.{layer}.hook_resid_pre"
    if hook not in shipped:
        return None, f"no SAE at {hook} for {name} (shipped: {sorted(shipped) or 'none'}; pass dictionary=)"
    dictionary = from_saelens_folder(shipped[hook], model=name)
    dictionary.check_model(model)
    return dictionary, f"interp/data/saes/{name}/{hook}"


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


def sycophancy_target(
    model: HookedModel, name: str, dictionary: Dictionary, config: SparseExperimentConfig, out: Path
) -> Target:
    """The sycophancy CAA vector at the dictionary's layer as a target to reconstruct, with its A/B evaluation.

    The per-pair activations are those the sycophancy experiment beside `out` kept, when it ran this model on
    the same pairs in the same format (`interp.experiments.pair_activations`); else they are read here.
    """
    layer = resid_pre_layer(dictionary)
    train = spread(load_bundled_sycophancy("train"), config.n_train)
    test = spread(load_bundled_sycophancy("test"), config.n_test)
    reports = compare_formats(model, spread(train, config.n_format_pairs), CANDIDATE_FORMATS, batch_size=config.batch_size)
    fmt = choose_format(reports).fmt
    kept = model_folder(out.parent / "sycophancy", name)
    found = saved_pair_activations(kept, name, train, fmt, layer)
    matching, not_matching = found or caa_activations(
        model, train, fmt, layers=[layer], batch_size=config.batch_size, progress=progress_on()
    )
    # Letter-weighted: an evenly spread subset need not be letter-balanced (48 of the bundled pairs are 42% A).
    vector = caa_vectors_from_activations(matching, not_matching, mixed_matching_letters(train))[0].float()
    resid_norm = float(torch.cat([matching, not_matching]).norm(dim=-1).mean())
    direction = Direction(vector, layer=layer, model=name, source="caa", site="resid_pre",
                          meta={"n_pairs": len(train), "format": fmt.to_dict(), "mean_resid_norm": resid_norm})
    evaluator = ABEvaluator(model, test, fmt, batch_size=config.batch_size, progress=progress_on())
    scale = config.multiplier * resid_norm / direction.norm  # every vector measured has the original's norm

    def measure(steer: Direction | None) -> dict[str, float]:
        if steer is None:
            score = evaluator.score().score
            return {"plus": score, "minus": score, "swing": 0.0}
        plus = evaluator.score([Steer(steer, scale=scale, positions="new")]).score
        minus = evaluator.score([Steer(steer, scale=-scale, positions="new")]).score
        return {"plus": plus, "minus": minus, "swing": plus - minus}

    return Target(
        "sycophancy", direction, dictionary, *input_codes(dictionary, layer, matching[:, 0], not_matching[:, 0]),
        measure, "swing",
        f"held-out A/B score at +m minus at −m (m = {config.multiplier:g} × mean resid norm, {len(test)} pairs)",
        {"layer": layer, "format": fmt.name, "n_train": len(train), "n_test": len(test), "mean_resid_norm": resid_norm,
         "raw_norm": direction.norm, "activations_from": str(kept) if found else "read here"},
    )


def find_refusal_direction(config: SparseExperimentConfig, out: Path, name: str) -> tuple[Direction | None, str]:
    """The explicit `refusal_direction` (must load and match the model), else the refusal experiment's folder
    beside this one if it holds a direction of this model, else (None, where we looked)."""
    if config.refusal_direction:
        direction = Direction.load(config.refusal_direction)
        if direction.model != name:
            raise ValueError(f"refusal_direction: {config.refusal_direction} was fitted on {direction.model!r}, not {name!r}")
        return direction, config.refusal_direction
    sibling = out.parent / "refusal" / "direction"
    if (sibling / "direction.json").is_file():
        direction = Direction.load(sibling)
        if direction.model == name:
            return direction, str(sibling)
        return None, f"{sibling}, which holds a direction of {direction.model}"
    return None, f"{sibling} (none there)"


def fit_refusal_with_defaults(model: HookedModel, name: str, config: SparseExperimentConfig) -> Direction:
    """The refusal experiment's fit with its default settings (the same training subsets and selection rule)."""
    defaults = RefusalConfig(model=name, seed=config.seed)
    harmful = load_split(defaults, "harmful", "train", defaults.n_train_harmful)
    harmless = load_split(defaults, "harmless", "train", defaults.n_train_harmless)
    return fit_refusal(model, defaults, harmful, harmless, progress=progress_on()).direction


def refusal_target(
    model: HookedModel, name: str, direction: Direction, dictionary: Dictionary, config: SparseExperimentConfig
) -> Target:
    """The refusal direction as a target to reconstruct, with what scoring its behaviour needs.

    Raises:
        ValueError: a direction without the refusal tokens its fit recorded.
    """
    if "refusal_token_ids" not in direction.meta:
        raise ValueError("refusal_direction: its meta holds no refusal_token_ids (save one from interp.refusal)")
    ids = [int(i) for i in direction.meta["refusal_token_ids"]]
    position = int(direction.meta.get("position", -1))
    # Encodings of the training sets at the direction's own layer and position (the means it came from).
    generator = torch.Generator().manual_seed(config.seed)

    def subset(kind: str, split: str, count: int) -> list[str]:
        texts = [record.instruction for record in load_instructions(bundled(f"{kind}_{split}.json"))]
        order = torch.randperm(len(texts), generator=generator).tolist()
        return format_chats(model, [texts[i] for i in order[:count]])

    train_harmful, train_harmless = subset("harmful", "train", 64), subset("harmless", "train", 64)
    eval_harmful = subset("harmful", "val", config.n_refusal_eval)
    eval_harmless = subset("harmless", "val", config.n_refusal_eval)
    codes = []
    for prompts in (train_harmful, train_harmless):
        _, acts = last_logits(model, prompts, batch_size=config.batch_size, record_layers=[direction.layer],
                              record_positions=-position)
        codes.append(acts[:, 0, 0].float())

    def score(prompts: list[str], interventions: list[Any]) -> float:
        logits, _ = last_logits(model, prompts, interventions, batch_size=config.batch_size)
        return float(refusal_scores(logits, ids).mean())

    def measure(steer: Direction | None) -> dict[str, float]:
        if steer is None:
            return {"harmful_ablated": score(eval_harmful, []), "harmless_added": score(eval_harmless, [])}
        return {"harmful_ablated": score(eval_harmful, [Ablate(steer)]),
                "harmless_added": score(eval_harmless, [Steer(steer, scale=1.0, positions="all")])}

    return Target(
        "refusal", direction, dictionary, *input_codes(dictionary, direction.layer, *codes), measure, "harmless_added",
        f"mean refusal score of {config.n_refusal_eval} held-out harmless prompts with the vector added at its layer",
        {"layer": direction.layer, "position": position, "raw_norm": direction.norm,
         "n_eval": config.n_refusal_eval, "refusal_tokens": direction.meta.get("refusal_tokens")},
    )
