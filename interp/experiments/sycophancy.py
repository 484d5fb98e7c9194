"""Sycophancy steering with contrastive activation addition (CAA), on every installed packaged model.

Per model: (1) choose the A/B prompt format on training pairs by the probability it puts on the answer
letters; (2) CAA vectors at every layer from the training pairs (one pass per batch); (3) choose the
layer on training pairs (A/B swing between ± a fixed multiplier); (4) sweep layers × multipliers on the
held-out pairs (A/B score and letter mass); (5) open-ended agreement with "Do you agree?" prompts
(first-token agree vs disagree probability, and steered generations scored by a crude keyword judge);
(6) factual multiple-choice accuracy under the same multipliers. Multipliers are in units of the mean
residual norm at the layer (the unit CAA vector scaled), so they compare across layers and models.
The vector is added from the last prompt token on (`Steer(positions="new")`), as CAA adds it after the
instruction. Nothing is tuned on the held-out split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interp._timing import StageClock, progress_on
from interp.ab_prompts import CANDIDATE_FORMATS, letter_balance, shuffle_options
from interp.caa import steered_generations
from interp.chat import format_chat
from interp.datasets import (
    load_bundled_multiple_choice,
    load_bundled_opinion_prompts,
    load_bundled_sycophancy,
)
from interp.evaluators import (
    ABEvaluator,
    AgreementEvaluator,
    ClozeEvaluator,
    MultipleChoiceEvaluator,
    choose_format,
    compare_formats,
    judged_rate,
    keyword_agreement_judge,
)
from interp.experiments import register
from interp.experiments.checks import check_fields
from interp.experiments.common import experiment_model, spread
from interp.experiments.pair_activations import caa_vectors_keeping_activations, model_folder
from interp.experiments.sycophancy_figures import draw_figures
from interp.experiments.sycophancy_summary import summary_markdown
from interp.headlines import (
    NOISE_FLOOR,
    Claim,
    Headline,
    at,
    claim,
    difference_noise,
    format_value,
    num,
    per_model,
    safe,
    skipped_claims,
)
from interp.hooked import HookedModel, n_layers
from interp.models import REGISTRY, is_installed, model_name
from interp.steering import Steer
from interp.sweeps import ab_sweep, summarise_curve

DEFAULT_MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


@dataclass
class SycophancyConfig:
    """The sycophancy experiment's settings, checked when made (`interp.experiments.checks`).

    Each field is an `interp reproduce sycophancy --set KEY=VALUE` setting; `interp reproduce sycophancy --help` lists them with
    their types, defaults and meanings (the comments beside the fields here).
    """

    model: str | None = None  # one model (registry name, HF folder, .gguf); None: every installed DEFAULT_MODELS
    n_format_pairs: int = 24  # training pairs on which the prompt format and the layer are chosen
    n_train: int | None = None  # training pairs for the vectors (None: all 234)
    n_test: int | None = None  # held-out pairs (None: all 79)
    shuffle_seed: int | None = None  # re-draw which letter is matching (the bundled data is balanced already)
    layer_stride: int = 3  # sweep every 3rd layer (vectors are built at every layer)
    layers: tuple[int, ...] | None = None  # explicit sweep layers instead of the stride
    multipliers: tuple[float, ...] = (-1.0, -0.5, -0.25, -0.1, -0.05, 0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
    normalisation: str = "resid"  # multipliers × mean residual norm at the layer
    select_multiplier: float = 0.25  # the layer is chosen by the training A/B swing between ± this
    n_opinion: int | None = None  # opinion prompts for the first-token agreement measure (None: all 30)
    generation_multipliers: tuple[float, ...] = (-0.3, 0.0, 0.3)
    n_generation_prompts: int = 8
    max_new_tokens: int = 32
    n_mc: int | None = 62  # factual multiple-choice questions (every 2nd of the 124; None: all)
    cloze_multipliers: tuple[float, ...] = (-0.5, -0.25, 0.0, 0.25, 0.5)  # free-text accuracy (costlier per point)
    batch_size: int = 16
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges, before any work (interp.experiments.checks)

    def check(self) -> None:
        """What the settings must say together (run by `check_resources` before any work)."""
        if 0.0 not in self.multipliers:
            raise ValueError("multipliers: include 0.0 (the unsteered baseline)")


def sweep_layers(count: int, stride: int, explicit: Sequence[int] | None) -> list[int]:
    """Every `stride`-th layer from 1 (resid_pre of layer 0 is the token embedding), ending near the top."""
    if explicit:
        return sorted({layer % count for layer in explicit})
    if stride < 1:
        raise ValueError(f"layer_stride: expected >= 1, got {stride}")
    return list(range(1, count, stride))


def models_to_run(config: SycophancyConfig) -> tuple[list[str], dict[str, str]]:
    """The models to run and, for registry models that are not installed, the pip command to install them."""
    if config.model is not None:
        return [config.model], {}
    missing = {name: REGISTRY[name].pip_command for name in DEFAULT_MODELS if not is_installed(name)}
    return [name for name in DEFAULT_MODELS if name not in missing], missing


# ---------------------------------------------------------------------------------------------
# Headline: the seed's claims against result.json
# ---------------------------------------------------------------------------------------------


def headline(result: dict[str, Any]) -> Headline:
    """The report's headline of a sycophancy result: key numbers, and the seed's claims with our number and a verdict.

    Args:
        result: the experiment's `result.json` as a dict.

    Returns:
        The `Headline`; a missing key gives an n/a row, never an error.
    """
    numbers: dict[str, Any] = {"headline model": result.get("headline_model")}
    claims: list[Claim] = []
    for name, r in per_model(result).items():
        best = r.get("best_layer")
        numbers[f"{name}: best layer (of {r.get('n_layers', '?')})"] = best
        numbers[f"{name}: held-out A/B swing at best layer"] = safe(lambda: at(r, "curves", str(best), "swing"))
        numbers[f"{name}: unsteered letter mass"] = safe(lambda: at(r, "unsteered", "letter_mass"))
        claims += _model_claims(name, r)
    return Headline(numbers, claims + skipped_claims(result))


def _model_claims(name: str, r: dict[str, Any]) -> list[Claim]:
    def monotonic() -> tuple[str, str]:
        curve = at(r, "curves", str(at(r, "best_layer")))
        swing, window = num(at(curve, "swing")), num(at(curve, "window_swing"))
        # Below the noise floor a "monotonic window" is flat: SmolLM2's +0.009 is no effect, not a partial one.
        verdict = ("yes" if curve["monotonic"] and swing >= NOISE_FLOOR else "partly" if window >= NOISE_FLOOR
                   else "no")
        return (f"layer {r['best_layer']}: swing {swing:+.3f}, monotonic {format_value(bool(curve['monotonic']))}, "
                f"Spearman {num(curve.get('spearman', float('nan'))):+.2f}"), verdict

    def layers() -> tuple[str, str]:
        best, count = int(at(r, "best_layer")), int(at(r, "n_layers"))
        depth = best / count
        verdict = "yes" if 0.35 <= depth <= 0.75 else "partly" if 0.25 <= depth <= 0.85 else "no"
        return f"layer {best} of {count} ({depth:.0%} deep)", verdict

    def accuracy() -> tuple[str, str]:
        mc = at(r, "multiple_choice")
        multipliers = [num(m) for m in at(mc, "multipliers")]
        values = [num(v) for v in at(mc, "accuracy")]
        at_zero, at_top = values[multipliers.index(0.0)], values[multipliers.index(max(multipliers))]
        drop = at_zero - at_top
        noise = difference_noise(at_zero, int(at(mc, "n_questions")))
        verdict = "yes" if drop >= noise else "partly" if drop > 0 else "no"
        return (f"accuracy {at_zero:.2f} unsteered → {at_top:.2f} at multiplier {max(multipliers):+g} "
                f"({num(at(mc, 'n_questions')):.0f} questions; a drop under {noise:.2f} is within sampling noise)",
                verdict)

    return [
        claim(f"[{name}] The CAA multiplier moves the held-out A/B sycophancy score monotonically at the best layer",
              monotonic),
        claim(f"[{name}] The best layers are in the upper-middle of the network (seed: layer 15 of 32 mattered)", layers),
        claim(f"[{name}] Steering towards sycophancy costs factual multiple-choice accuracy", accuracy),
    ]


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


@register(
    "sycophancy",
    "CAA sycophancy vectors: held-out A/B layer × multiplier sweep, open-ended agreement, accuracy trade-off",
    SycophancyConfig,
    headline=headline,
)
def run(config: SycophancyConfig, out: Path) -> dict[str, Any]:
    """Run the sycophancy experiment and write its figures, `result.json` and `summary.md` into `out`.

    Args:
        config: the settings (`interp reproduce sycophancy --help` lists each with its type, default and meaning).
        out: the experiment's output folder.

    Returns:
        The result (config, numbers, timing) that `run_experiment` writes as `result.json`.
    """
    config.check()
    names, missing = models_to_run(config)
    if not names:
        commands = "\n".join(f"    {command}" for command in missing.values())
        raise RuntimeError(f"sycophancy: none of {list(DEFAULT_MODELS)} is installed; install them with:\n{commands}")
    torch.manual_seed(config.seed)
    results = {}
    for name in names:
        folder = model_folder(out, name)
        results[name] = run_model(name, config, folder)
    headline_model = choose_headline(results)
    return {
        "models": results,
        "skipped": {name: f"not installed: {command}" for name, command in missing.items()},
        "headline_model": headline_model,
        "summary_md": summary_markdown(results, missing, headline_model, config),
    }


def run_model(name: str, config: SycophancyConfig, out: Path) -> dict[str, Any]:
    """The whole experiment on one model; figures and vectors go into `out`."""
    clock = StageClock("sycophancy")
    model = experiment_model(name, config.device)
    clock.lap("load")
    pairs = load_pairs(config)
    reports, fmt = choose_prompt_format(model, pairs.format, config)
    clock.lap("format")
    vectors = caa_vectors_keeping_activations(model, pairs.train, fmt, out, batch_size=config.batch_size)  # for sparse
    vectors.save(out / "vectors", overwrite=True)
    clock.lap("vectors")
    layers = sweep_layers(n_layers(model), config.layer_stride, config.layers)
    train_swing, best = choose_layer(choose_format(reports).evaluator, vectors, layers, config)
    clock.lap("layer selection")
    held_out = held_out_sweep(model, pairs.test, fmt, vectors, layers, best, config)
    clock.lap("held-out sweep")
    agreement = agreement_sweep(model, vectors, layers, held_out.ab.multipliers, config)
    clock.lap("agreement")
    generation = generate_steered(model, vectors, [best, agreement.layer], config)
    clock.lap("generation")
    accuracy = accuracy_under_steering(model, fmt, vectors, best, held_out, config)
    clock.lap("accuracy")
    steps = Steps(pairs, reports, fmt, vectors, layers, train_swing, best, held_out, agreement, generation, accuracy)
    draw_figures(model_name(model), steps, config, out)
    clock.lap("figures")
    return model_result(model, steps, config, clock.seconds)


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


@dataclass
class Pairs:
    """The sycophancy A/B pairs: training and held-out test."""

    train: list
    test: list
    format: list  # training pairs on which the prompt format is chosen


@dataclass
class HeldOut:
    """The held-out A/B evaluator and its layers × multipliers sweep."""

    evaluator: ScoredOnce
    ab: Any  # the A/B sweep: layers × multipliers
    baseline: Any  # the unsteered score
    curves: dict[int, Any]
    best: int  # the layer with the widest monotonic held-out swing
    by_category: dict[str, dict[str, float]]  # at the training-chosen layer, per multiplier


@dataclass
class Agreement:
    """Open-ended agreement rows (whether the model agreed), for false and true user claims."""

    false_rows: list[bool]
    true_rows: list[bool]
    unsteered: Any
    rows: dict[int, dict[str, list[float]]]
    effect: dict[int, float]  # per layer: agreement with false claims at +m minus at −m
    layer: int  # where it moved most


@dataclass
class Generation:
    """Steered generations: the prompts, and layer → multiplier → texts."""

    prompts: list
    texts: dict[int, dict[float, list[str]]]
    judged: dict[int, dict[float, tuple[float, int]]]


@dataclass
class Accuracy:
    """Factual accuracy under steering: the questions, and multiplier → multiple-choice scores."""

    questions: list
    mc_scores: dict[float, Any]
    accuracy: list[float]
    cloze_multipliers: list[float]
    cloze_scores: dict[float, Any]
    cloze_accuracy: list[float]
    cloze_ab: list[float]


@dataclass
class Steps:
    """Everything the steps of one model produced, for the figures and result.json."""

    pairs: Pairs
    reports: list
    fmt: Any
    vectors: Any
    layers: list[int]
    train_swing: dict[int, float]
    best: int
    held_out: HeldOut
    agreement: Agreement
    generation: Generation
    accuracy: Accuracy


def load_pairs(config: SycophancyConfig) -> Pairs:
    """The bundled sycophancy pairs, spread to `n_train` / `n_test` (options re-shuffled when `shuffle_seed` is set)."""
    train = spread(load_bundled_sycophancy("train"), config.n_train)
    test = spread(load_bundled_sycophancy("test"), config.n_test)
    if config.shuffle_seed is not None:
        train, test = shuffle_options(train, config.shuffle_seed), shuffle_options(test, config.shuffle_seed + 1)
    format_pairs = spread(load_bundled_sycophancy("train"), config.n_format_pairs)
    if config.shuffle_seed is not None:
        format_pairs = shuffle_options(format_pairs, config.shuffle_seed)
    return Pairs(train, test, format_pairs)


def choose_prompt_format(model: HookedModel, format_pairs: list, config: SycophancyConfig) -> tuple[list, Any]:
    """The prompt format, chosen on training pairs by letter mass."""
    reports = compare_formats(model, format_pairs, CANDIDATE_FORMATS, batch_size=config.batch_size)
    return reports, choose_format(reports).fmt


def choose_layer(selector: Any, vectors: Any, layers: list[int], config: SycophancyConfig) -> tuple[dict[int, float], int]:
    """The layer, chosen on training pairs (the format choice's pairs, already run) by the A/B swing at ± m."""
    s = config.select_multiplier
    selection = ab_sweep(selector, vectors, layers, [-s, s], normalisation=config.normalisation, progress=progress_on())
    train_swing = {layer: selection.row(layer)[1] - selection.row(layer)[0] for layer in layers}
    return train_swing, max(train_swing, key=train_swing.get)


def held_out_sweep(model: HookedModel, test: list, fmt: Any, vectors: Any, layers: list[int], best: int,
                   config: SycophancyConfig) -> HeldOut:
    """Layers × multipliers on the held-out pairs; by category at the chosen layer."""
    evaluator = ScoredOnce(ABEvaluator(model, test, fmt, batch_size=config.batch_size))
    ab = ab_sweep(evaluator, vectors, layers, config.multipliers, normalisation=config.normalisation)
    baseline = evaluator.score()
    curves = {layer: summarise_curve(ab.multipliers, ab.row(layer)) for layer in layers}
    held_out_best = max(layers, key=lambda layer: curves[layer].window_swing)
    by_category = {
        str(m): (evaluator.score([vectors.steer(best, m, config.normalisation)]) if m else baseline).by_group(
            evaluator.categories
        )
        for m in ab.multipliers
    }
    return HeldOut(evaluator, ab, baseline, curves, held_out_best, by_category)


class ScoredOnce:
    """An `ABEvaluator` that keeps each steered condition's score: the per-category rows and the cloze figure's
    A/B column re-read the held-out sweep's conditions instead of running them again."""

    def __init__(self, evaluator: ABEvaluator) -> None:
        self.evaluator, self.categories = evaluator, evaluator.categories
        self._scores: dict[tuple, Any] = {}

    def score(self, interventions: Sequence[Steer] = ()) -> Any:
        key = tuple((s.layer, s.direction.layer, s.direction.norm, s.scale, s.positions, s.unit) for s in interventions)
        if key not in self._scores:
            self._scores[key] = self.evaluator.score(interventions)
        return self._scores[key]


def agreement_sweep(model: HookedModel, vectors: Any, layers: list[int], multipliers: list[float],
                    config: SycophancyConfig) -> Agreement:
    """Open-ended agreement: first-token agree vs disagree probabilities at every sweep layer."""
    opinions = spread(load_bundled_opinion_prompts(), config.n_opinion)
    agreement = AgreementEvaluator(model, opinions, batch_size=config.batch_size, progress=progress_on())
    false_rows = [not flag for flag in agreement.stance_is_true]
    true_rows = list(agreement.stance_is_true)
    unsteered = agreement.score()
    conditions = [(layer, m) for layer in layers for m in multipliers]
    scores = {
        (layer, m): agreement.score([vectors.steer(layer, m, config.normalisation)]) if m else unsteered
        for layer, m in tqdm(conditions, desc="agreement sweep", leave=False)
    }
    rows = {
        layer: {
            "false_claims": [scores[layer, m].mean(false_rows) for m in multipliers],
            "true_claims": [scores[layer, m].mean(true_rows) for m in multipliers],
            "mass": [scores[layer, m].agree_mass for m in multipliers],
        }
        for layer in layers
    }
    effect = {layer: _difference(multipliers, rows[layer]["false_claims"], config.select_multiplier) for layer in layers}
    # No held-out split exists for these 30 prompts: this layer is reported as where agreement moved most.
    return Agreement(false_rows, true_rows, unsteered, rows, effect, max(layers, key=lambda layer: effect[layer]))


def generate_steered(model: HookedModel, vectors: Any, layers: list[int], config: SycophancyConfig) -> Generation:
    """Steered generations at each of `layers` (0 runs once), scored by a crude keyword judge."""
    prompts = spread(load_bundled_opinion_prompts(), config.n_generation_prompts)
    texts = [format_chat(model, p.prompt) for p in prompts]
    generations: dict[int, dict[float, list[str]]] = {}
    for layer in dict.fromkeys(layers):
        multipliers = [m for m in config.generation_multipliers if m or not generations]  # 0 runs once
        generations[layer] = steered_generations(
            model, texts, vectors, layer, multipliers, normalisation=config.normalisation,
            max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
        )
    unsteered_texts = next(iter(generations.values())).get(0.0)
    if unsteered_texts is not None:
        for layer_generations in generations.values():
            layer_generations.setdefault(0.0, unsteered_texts)
    judged = {
        layer: {
            m: judged_rate(keyword_agreement_judge, [p.prompt for p in prompts], completions)
            for m, completions in sorted(layer_generations.items())
        }
        for layer, layer_generations in generations.items()
    }
    return Generation(prompts, generations, judged)


def accuracy_under_steering(model: HookedModel, fmt: Any, vectors: Any, best: int, held_out: HeldOut,
                            config: SycophancyConfig) -> Accuracy:
    """Factual accuracy at the chosen layer: letters A-D after the A/B format's prefix (all multipliers),
    and the choices' text after "The answer is" (small models that cannot answer in letters still can)."""
    def steer(m: float) -> list:
        return [vectors.steer(best, m, config.normalisation)] if m else []

    questions = spread(load_bundled_multiple_choice(), config.n_mc)
    mc = MultipleChoiceEvaluator(model, questions, fmt, batch_size=config.batch_size, progress=progress_on())
    mc_scores = {m: mc.score(steer(m)) for m in held_out.ab.multipliers}
    accuracy = [mc_scores[m].accuracy for m in held_out.ab.multipliers]
    cloze = ClozeEvaluator(model, questions, batch_size=config.batch_size, progress=progress_on())
    cloze_multipliers = [float(m) for m in config.cloze_multipliers]
    cloze_scores = {m: cloze.score(steer(m)) for m in cloze_multipliers}
    cloze_accuracy = [cloze_scores[m].accuracy for m in cloze_multipliers]
    cloze_ab = [(held_out.evaluator.score(steer(m)) if m else held_out.baseline).score for m in cloze_multipliers]
    return Accuracy(questions, mc_scores, accuracy, cloze_multipliers, cloze_scores, cloze_accuracy, cloze_ab)


def _difference(multipliers: Sequence[float], values: Sequence[float], step: float) -> float:
    """values at +step minus at −step (NaN when the sweep lacks either)."""
    if step not in multipliers or -step not in multipliers:
        return float("nan")
    return values[list(multipliers).index(step)] - values[list(multipliers).index(-step)]


def choose_headline(results: dict[str, dict[str, Any]]) -> str:
    """The model whose held-out A/B score moves most, monotonically, at its training-chosen layer,
    among those that put at least half the probability on the letters."""

    def strength(result: dict[str, Any]) -> float:
        curve = result["curves"][str(result["best_layer"])]
        return curve["window_swing"] if result["unsteered"]["letter_mass"] >= 0.5 else -1.0

    return max(results, key=lambda name: strength(results[name]))


# ---------------------------------------------------------------------------------------------
# result.json
# ---------------------------------------------------------------------------------------------


def model_result(model: HookedModel, steps: Steps, config: SycophancyConfig, seconds: dict[str, float]) -> dict[str, Any]:
    """One model's part of the sycophancy result: baseline, sweeps, agreement, accuracy and timings."""
    held_out, pairs = steps.held_out, steps.pairs
    baseline, layers = held_out.baseline, steps.layers
    return {
        "model": model_name(model),
        "n_layers": n_layers(model),
        "format_reports": [report.to_dict() for report in steps.reports],
        "format": steps.fmt.to_dict(),
        "n_train": len(pairs.train),
        "n_test": len(pairs.test),
        "letter_balance": {"train": letter_balance(pairs.train), "test": letter_balance(pairs.test)},
        "normalisation": config.normalisation,
        "vector_raw_norm": steps.vectors.vectors.norm(dim=-1).tolist(),
        "mean_resid_norm": steps.vectors.resid_norm.tolist(),
        "sweep_layers": layers,
        "train_swing": {str(layer): value for layer, value in steps.train_swing.items()},
        "best_layer": steps.best,
        "held_out_best_layer": held_out.best,
        "unsteered": {"score": baseline.score, "letter_mass": baseline.letter_mass,
                      "a_share": baseline.a_share, "a_share_spread": baseline.a_share_spread,
                      "by_category": baseline.by_group(held_out.evaluator.categories)},
        "ab_sweep": held_out.ab.to_dict(),
        "curves": {str(layer): held_out.curves[layer].to_dict() for layer in layers},
        "best_layer_by_category": held_out.by_category,
        "agreement": _agreement_result(steps.agreement, held_out.ab.multipliers),
        "generations": _generations_result(steps.generation),
        "multiple_choice": _accuracy_result(steps.accuracy, steps.best, held_out.ab.multipliers),
        "seconds": seconds,
    }


def _agreement_result(agreement: Agreement, multipliers: list[float]) -> dict[str, Any]:
    false_rows, true_rows, unsteered = agreement.false_rows, agreement.true_rows, agreement.unsteered
    return {
        "multipliers": multipliers, "n_false": sum(false_rows), "n_true": sum(true_rows),
        "unsteered": {"false_claims": unsteered.mean(false_rows),
                      "true_claims": unsteered.mean(true_rows), "mass": unsteered.agree_mass},
        "by_layer": {str(layer): rows for layer, rows in agreement.rows.items()},
        "per_layer_effect_false_claims": {str(layer): value for layer, value in agreement.effect.items()},
        "layer_most_moved": agreement.layer,
    }


def _generations_result(generation: Generation) -> dict[str, Any]:
    return {
        "judge": "keyword_agreement_judge (crude)",
        "by_layer": {
            str(layer): {
                "agree_rate": {str(m): {"rate": rate, "n_judged": n} for m, (rate, n) in generation.judged[layer].items()},
                "examples": {
                    str(m): [{"prompt": p.prompt, "completion": c} for p, c in zip(generation.prompts, completions)]
                    for m, completions in sorted(layer_generations.items())
                },
            }
            for layer, layer_generations in generation.texts.items()
        },
    }


def _accuracy_result(accuracy: Accuracy, best: int, multipliers: list[float]) -> dict[str, Any]:
    cloze_multipliers = accuracy.cloze_multipliers
    return {
        "layer": best, "multipliers": multipliers, "accuracy": accuracy.accuracy,
        "letter_mass": [accuracy.mc_scores[m].letter_mass for m in multipliers], "n_questions": len(accuracy.questions),
        "cloze_multipliers": cloze_multipliers, "cloze_accuracy": accuracy.cloze_accuracy, "cloze_ab_score": accuracy.cloze_ab,
        "cloze_correct_share": [float(accuracy.cloze_scores[m].mass.mean()) for m in cloze_multipliers],
    }
