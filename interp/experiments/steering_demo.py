"""Activation addition on the embedded model: a sentiment direction, swept over layers and multipliers.

The direction at each layer is the mean difference of the residual stream (resid_pre, last prompt
token) between requests worded positively and negatively. Added to neutral prompts, it should shift
the next-token log-odds of positive vs negative words and the words the model writes; multipliers are
in units of the mean residual norm at that layer, so layers are comparable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp._timing import StageClock, progress_bar, progress_on
from interp.activations import collect_residuals, mean_difference
from interp.chat import format_chats, tokenize
from interp.datasets import bundled
from interp.directions import Direction
from interp.experiments import register
from interp.experiments.checks import check_fields
from interp.experiments.common import experiment_model
from interp.headlines import Headline, at, claim, format_value, grade, num
from interp.hooked import HookedModel, check_layers, n_layers
from interp.models import model_name
from interp.plots import line_plot
from interp.runner import batch_logits, generate_with_row_biases
from interp.steering import Intervention, Steer


@dataclass
class SteeringDemoConfig:
    """The steering experiment's settings, checked when made (`interp.experiments.checks`).

    Each field is an `interp reproduce steering --set KEY=VALUE` setting; `interp reproduce steering --help` lists them with
    their types, defaults and meanings (the comments beside the fields here).
    """

    model: str = "smollm2-135m-instruct"
    layers: tuple[int, ...] | None = None  # default: 8 layers spread over the network
    multipliers: tuple[float, ...] = (-0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5)  # × mean residual norm
    max_new_tokens: int = 24
    data: str | None = None  # a JSON file shaped like interp/data/sentiment_steering.json
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges, before any work (interp.experiments.checks)

    def check(self) -> None:
        """The data file (run by `check_resources` before any work)."""
        load_steering_data(Path(self.data) if self.data else bundled("sentiment_steering.json"))


def load_steering_data(path: Path) -> dict[str, Any]:
    """The JSON the experiment reads (`interp/data/sentiment_steering.json`'s shape), checked before the model loads:
    `pairs` of {positive, negative} requests, `neutral` prompts, `positive_words` and `negative_words`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise ValueError(f"data: {path} is not a readable JSON file ({type(error).__name__}: {error})") from None

    def strings(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(item, str) and item.strip() for item in value)

    problems = [f"'{key}' must be a non-empty list of strings" for key in ("neutral", "positive_words", "negative_words")
                if not (isinstance(data, dict) and strings(data.get(key)))]
    pairs = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(pairs, list) or not pairs or not all(
            isinstance(pair, dict) and strings([pair.get("positive"), pair.get("negative")]) for pair in pairs):
        problems.append("'pairs' must be a non-empty list of {\"positive\": str, \"negative\": str}")
    if problems:
        raise ValueError(f"data: {path}: " + "; ".join(problems))
    return data


def word_token_ids(tokenizer: Any, words: list[str]) -> list[int]:
    """First token of each word as it may start an answer: bare, with a space, capitalised."""
    ids = set()
    for word in words:
        for variant in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            ids.add(tokenizer.encode(variant, add_special_tokens=False)[0])
    return sorted(ids)


def sentiment_logit_score(
    model: HookedModel, batch: Any, positive_ids: list[int], negative_ids: list[int],
    interventions: Sequence[Intervention] = (),
) -> float:
    """Mean over prompts of log P(positive first tokens) − log P(negative first tokens), next token, with
    `interventions` active."""
    log_probs = batch_logits(model, batch, interventions, keep_last=1)[:, -1].float().log_softmax(-1)
    positive = log_probs[:, positive_ids].logsumexp(-1)
    negative = log_probs[:, negative_ids].logsumexp(-1)
    return float((positive - negative).mean())


def word_rate(texts: list[str], words: list[str]) -> float:
    """Fraction of texts that contain at least one of the words (case-insensitive, word prefix)."""
    import re

    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")", re.IGNORECASE)
    return sum(bool(pattern.search(text)) for text in texts) / len(texts)


def headline(result: dict[str, Any]) -> Headline:
    """The report's headline of a steering result: key numbers, and the seed's claims with our number and a verdict.

    Args:
        result: the experiment's `result.json` as a dict.

    Returns:
        The `Headline`; a missing key gives an n/a row, never an error.
    """
    numbers: dict[str, Any] = {}
    best = result.get("best_layer")
    curve = result.get("logodds", {}).get(str(best)) if isinstance(result.get("logodds"), dict) else None
    numbers["best layer"] = best
    numbers["unsteered log-odds (positive − negative)"] = result.get("logodds_unsteered")
    if isinstance(curve, list) and curve:
        numbers["log-odds at lowest → highest multiplier"] = f"{format_value(curve[0])} → {format_value(curve[-1])}"

    def moves() -> tuple[str, str]:
        values = [num(v) for v in at(result, "logodds", str(at(result, "best_layer")))]
        swing = values[-1] - values[0]
        monotonic = bool(at(result, "best_layer_monotonic"))
        verdict = "yes" if swing > 0 and monotonic else "partly" if swing > 0 else "no"
        return f"swing {swing:+.2f} at layer {result['best_layer']}, monotonic: {format_value(monotonic)}", verdict

    def words() -> tuple[str, str]:
        positive = [num(v) for v in at(result, "positive_word_rate")]
        change = positive[-1] - positive[0]
        return f"positive-word rate {positive[0]:.2f} → {positive[-1]:.2f}", grade(change, 0.25, 1e-9)

    return Headline(numbers, [
        claim("Adding a contrast direction to the residual stream shifts the output along it, more with a larger "
              "multiplier (activation addition)", moves),
        claim("Steered generations use more of the steered-towards words", words),
    ])


@dataclass
class Directions:
    """The sentiment direction at each layer, and the mean residual norm there (the multipliers' unit)."""

    layers: list[int]
    by_layer: dict[int, Direction]
    residual_norms: torch.Tensor

    def steer(self, layer: int, multiplier: float, positions: str = "all") -> Steer:
        scale = multiplier * float(self.residual_norms[self.layers.index(layer)])
        return Steer(self.by_layer[layer], scale=scale, unit=True, positions=positions)


def sweep_layers(model: HookedModel, config: SteeringDemoConfig) -> list[int]:
    """The layers swept: `config.layers` (negative ones count from the end), else 8 spread over the network.

    Layer 0 is left out (its resid_pre is the token embedding: a zero difference).
    """
    count = n_layers(model)
    # resid_pre of layer 0 is the token embedding: the same last token everywhere, a zero difference.
    if config.layers:  # negative layers count from the end
        return sorted({layer % count for layer in check_layers(model, list(config.layers), "layers")})
    return sorted({1 + round(i * (count - 2) / 7) for i in range(8)})


def find_directions(model: HookedModel, data: dict[str, Any], neutral: list[str], layers: list[int]) -> Directions:
    """Mean difference of resid_pre at the last token, positive minus negative requests, at every layer."""
    positive = format_chats(model, [pair["positive"] for pair in data["pairs"]])
    negative = format_chats(model, [pair["negative"] for pair in data["pairs"]])

    positive_acts, negative_acts, neutral_acts = (collect_residuals(model, texts, layers, -1, progress=progress_on())
                                                  for texts in (positive, negative, neutral))
    differences = mean_difference(positive_acts, negative_acts)[:, 0]  # [n_layers, d_model]
    residual_norms = neutral_acts.norm(dim=-1).mean(dim=(0, 2))
    name = model_name(model)
    by_layer = {
        layer: Direction(
            differences[i], layer=layer, model=name, source="diff_in_means",
            meta={"dataset": "sentiment_steering", "position": -1, "mean_resid_norm": float(residual_norms[i])},
        )
        for i, layer in enumerate(layers)
    }
    return Directions(layers, by_layer, residual_norms)


def logodds_sweep(
    model: HookedModel, data: dict[str, Any], neutral: list[str], directions: Directions, multipliers: tuple[float, ...]
) -> tuple[dict[int, list[float]], float]:
    """Next-token log-odds of positive vs negative words on the neutral prompts, per layer and multiplier."""
    tokenizer = model.tokenizer
    positive_ids = word_token_ids(tokenizer, data["positive_words"])
    negative_ids = word_token_ids(tokenizer, data["negative_words"])
    neutral_batch = tokenize(model, neutral)
    scores: dict[int, list[float]] = {}
    for layer in progress_bar(directions.layers, desc="log-odds sweep (layers)", progress=progress_on()):
        scores[layer] = []
        for multiplier in multipliers:
            steer = [directions.steer(layer, multiplier)]
            scores[layer].append(sentiment_logit_score(model, neutral_batch, positive_ids, negative_ids, steer))
    baseline = sentiment_logit_score(model, neutral_batch, positive_ids, negative_ids)
    return scores, baseline


def steered_texts(
    model: HookedModel, neutral: list[str], directions: Directions, layer: int, config: SteeringDemoConfig
) -> dict[float, list[str]]:
    """Completions of the neutral prompts with the direction added from the last prompt token on; every
    multiplier's rows decode together."""
    multipliers = list(config.multipliers)
    steers = [directions.steer(layer, m, "new") for m in multipliers]
    biases = torch.stack([steer.scale * steer.direction.unit().vector for steer in steers]).repeat_interleave(len(neutral), 0)
    texts = generate_with_row_biases(model, neutral * len(multipliers), steers[0].direction.hook_name, biases,
                                     positions="new", batch_rows=16 * len(multipliers), progress=progress_on(),
                                     max_new_tokens=config.max_new_tokens)
    return {m: texts[i * len(neutral) : (i + 1) * len(neutral)] for i, m in enumerate(multipliers)}


@register("steering", "activation addition of a sentiment direction: layer × multiplier sweep", SteeringDemoConfig,
          headline=headline)
def run(config: SteeringDemoConfig, out: Path) -> dict[str, Any]:
    """Run the steering experiment and write its figures, `result.json` and `summary.md` into `out`.

    Args:
        config: the settings (`interp reproduce steering --help` lists each with its type, default and meaning).
        out: the experiment's output folder.

    Returns:
        The result (config, numbers, timing) that `run_experiment` writes as `result.json`.
    """
    torch.manual_seed(config.seed)
    clock = StageClock("steering")
    data = load_steering_data(Path(config.data) if config.data else bundled("sentiment_steering.json"))
    model = experiment_model(config.model, config.device)
    clock.lap("load")
    name = model_name(model)
    neutral = format_chats(model, data["neutral"])
    directions = find_directions(model, data, neutral, sweep_layers(model, config))
    layers, residual_norms = directions.layers, directions.residual_norms
    clock.lap("directions")
    scores, baseline = logodds_sweep(model, data, neutral, directions, config.multipliers)
    swings = {layer: values[-1] - values[0] for layer, values in scores.items()}
    best_layer = max(swings, key=swings.get)
    clock.lap("log-odds sweep")
    generations = steered_texts(model, neutral, directions, best_layer, config)
    clock.lap("generations")
    positive_rate = [word_rate(generations[m], data["positive_words"]) for m in config.multipliers]
    negative_rate = [word_rate(generations[m], data["negative_words"]) for m in config.multipliers]
    multipliers = list(config.multipliers)
    draw_figures(name, multipliers, scores, baseline, best_layer, positive_rate, negative_rate, out)
    for layer, direction in directions.by_layer.items():
        direction.save(out / "directions" / f"layer{layer}", overwrite=True)
    clock.lap("figures and directions")
    monotonic = all(b >= a for a, b in zip(scores[best_layer], scores[best_layer][1:]))
    summary = _summary(name, data, directions, scores, baseline, swings, best_layer, monotonic, positive_rate,
                       negative_rate)
    return {
        "model": name,
        "layers": layers,
        "multipliers": multipliers,
        "mean_resid_norm": {layer: float(residual_norms[i]) for i, layer in enumerate(layers)},
        "logodds": {str(layer): values for layer, values in scores.items()},
        "logodds_unsteered": baseline,
        "best_layer": best_layer,
        "best_layer_monotonic": monotonic,
        "positive_word_rate": positive_rate,
        "negative_word_rate": negative_rate,
        "examples": {str(m): generations[m][:4] for m in config.multipliers},
        "seconds_by_stage": clock.seconds,
        "summary_md": summary,
    }


def draw_figures(name: str, multipliers: list[float], scores: dict[int, list[float]], baseline: float, best_layer: int,
                 positive_rate: list[float], negative_rate: list[float], out: Path) -> None:
    """The steering experiment's figures: log-odds against multiplier per layer, and the steered words' rates."""
    line_plot(
        multipliers, {f"layer {layer}": scores[layer] for layer in scores},
        xlabel="multiplier (× mean residual norm at the layer)",
        ylabel="log P(positive) − log P(negative), next token",
        title=f"{name}: sentiment direction added at resid_pre", path=out / "sentiment_logodds_vs_multiplier.png",
        baseline=baseline,
    )
    line_plot(
        multipliers, {"positive words": positive_rate, "negative words": negative_rate},
        xlabel="multiplier (× mean residual norm)", ylabel="fraction of generations containing",
        title=f"{name}: generations steered at layer {best_layer}", path=out / "generation_word_rates.png",
    )


def _summary(name: str, data: dict[str, Any], directions: Directions, scores: dict[int, list[float]], baseline: float,
             swings: dict[int, float], best_layer: int, monotonic: bool, positive_rate: list[float],
             negative_rate: list[float]) -> str:
    residual_norms = directions.residual_norms
    return "\n".join(
        [
            f"# Activation addition: sentiment direction on {name}",
            "",
            f"Direction: mean difference of resid_pre at the last prompt token, {len(data['pairs'])} "
            "positive/negative request pairs; multipliers in units of the mean residual norm at the layer.",
            f"Unsteered next-token log-odds (positive − negative words) on {len(data['neutral'])} neutral prompts: "
            f"{baseline:.2f}.",
            "",
            "| layer | mean resid norm | log-odds at lowest multiplier | at highest | swing |",
            "|---|---|---|---|---|",
            *[
                f"| {layer} | {float(residual_norms[i]):.1f} | {scores[layer][0]:.2f} | {scores[layer][-1]:.2f} "
                f"| {swings[layer]:+.2f} |"
                for i, layer in enumerate(directions.layers)
            ],
            "",
            f"Best layer by swing: {best_layer} (monotonic in the multiplier: {monotonic}).",
            f"Generations at layer {best_layer}: positive-word rate {positive_rate[0]:.2f} → {positive_rate[-1]:.2f}, "
            f"negative-word rate {negative_rate[0]:.2f} → {negative_rate[-1]:.2f} (lowest → highest multiplier).",
        ]
    )
