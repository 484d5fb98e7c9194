"""Activation addition on the embedded model: a sentiment direction, swept over layers and multipliers.

The direction at each layer is the mean difference of the residual stream (resid_pre, last prompt
token) between requests worded positively and negatively. Added to neutral prompts, it should shift
the next-token log-odds of positive vs negative words and the words the model writes; multipliers are
in units of the mean residual norm at that layer, so layers are comparable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.activations import collect_residuals, mean_difference
from interp.chat import format_chats, tokenize
from interp.datasets import bundled
from interp.directions import Direction
from interp.experiments import register
from interp.hooked import forward, n_layers
from interp.models import load_model, model_name
from interp.plots import line_plot
from interp.steering import Steer, apply_all, generate



@dataclass
class SteeringDemoConfig:
    model: str = "smollm2-135m-instruct"
    layers: tuple[int, ...] | None = None  # default: 8 layers spread over the network
    multipliers: tuple[float, ...] = (-0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5)  # × mean residual norm
    max_new_tokens: int = 24
    data: str | None = None  # a JSON file shaped like interp/data/sentiment_steering.json
    device: str | None = None
    seed: int = 0


def word_token_ids(tokenizer: Any, words: list[str]) -> list[int]:
    """First token of each word as it may start an answer: bare, with a space, capitalised."""
    ids = set()
    for word in words:
        for variant in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            ids.add(tokenizer.encode(variant, add_special_tokens=False)[0])
    return sorted(ids)


def sentiment_logit_score(model: Any, batch: Any, positive_ids: list[int], negative_ids: list[int]) -> float:
    """Mean over prompts of log P(positive first tokens) − log P(negative first tokens), next token."""
    log_probs = forward(model, batch)[:, -1].float().log_softmax(-1)
    positive = log_probs[:, positive_ids].logsumexp(-1)
    negative = log_probs[:, negative_ids].logsumexp(-1)
    return float((positive - negative).mean())


def word_rate(texts: list[str], words: list[str]) -> float:
    """Fraction of texts that contain at least one of the words (case-insensitive, word prefix)."""
    import re

    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")", re.IGNORECASE)
    return sum(bool(pattern.search(text)) for text in texts) / len(texts)


@register("steering", "activation addition of a sentiment direction: layer × multiplier sweep", SteeringDemoConfig)
def run(config: SteeringDemoConfig, out: Path) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    data = json.loads(Path(config.data or bundled("sentiment_steering.json")).read_text())
    model = load_model(config.model, device=config.device)
    count = n_layers(model)
    # resid_pre of layer 0 is the token embedding: the same last token everywhere, a zero difference.
    layers = list(config.layers) if config.layers else sorted({1 + round(i * (count - 2) / 7) for i in range(8)})
    positive = format_chats(model, [pair["positive"] for pair in data["pairs"]])
    negative = format_chats(model, [pair["negative"] for pair in data["pairs"]])
    neutral = format_chats(model, data["neutral"])

    positive_acts = collect_residuals(model, positive, layers, -1)
    negative_acts = collect_residuals(model, negative, layers, -1)
    neutral_acts = collect_residuals(model, neutral, layers, -1)
    differences = mean_difference(positive_acts, negative_acts)[:, 0]  # [n_layers, d_model]
    residual_norms = neutral_acts.norm(dim=-1).mean(dim=(0, 2))
    name = model_name(model)
    directions = {
        layer: Direction(
            differences[i], layer=layer, model=name, source="diff_in_means",
            meta={"dataset": "sentiment_steering", "position": -1, "mean_resid_norm": float(residual_norms[i])},
        )
        for i, layer in enumerate(layers)
    }

    tokenizer = model.tokenizer
    positive_ids = word_token_ids(tokenizer, data["positive_words"])
    negative_ids = word_token_ids(tokenizer, data["negative_words"])
    neutral_batch = tokenize(model, neutral)

    def steer(layer: int, multiplier: float, positions: str = "all") -> Steer:
        scale = multiplier * float(residual_norms[layers.index(layer)])
        return Steer(directions[layer], scale=scale, unit=True, positions=positions)

    scores: dict[int, list[float]] = {}
    for layer in layers:
        scores[layer] = []
        for multiplier in config.multipliers:
            with apply_all(model, steer(layer, multiplier)):
                scores[layer].append(sentiment_logit_score(model, neutral_batch, positive_ids, negative_ids))
    baseline = sentiment_logit_score(model, neutral_batch, positive_ids, negative_ids)
    swings = {layer: values[-1] - values[0] for layer, values in scores.items()}
    best_layer = max(swings, key=swings.get)

    generations: dict[float, list[str]] = {}
    for multiplier in config.multipliers:
        interventions = [steer(best_layer, multiplier, "new")] if multiplier else []
        generations[multiplier] = generate(
            model, neutral, interventions=interventions, max_new_tokens=config.max_new_tokens, progress=False
        )
    positive_rate = [word_rate(generations[m], data["positive_words"]) for m in config.multipliers]
    negative_rate = [word_rate(generations[m], data["negative_words"]) for m in config.multipliers]

    multipliers = list(config.multipliers)
    line_plot(
        multipliers, {f"layer {layer}": scores[layer] for layer in layers},
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
    for layer, direction in directions.items():
        direction.save(out / "directions" / f"layer{layer}", overwrite=True)

    monotonic = all(b >= a for a, b in zip(scores[best_layer], scores[best_layer][1:]))
    summary = "\n".join(
        [
            f"# Activation addition: sentiment direction on {name}",
            "",
            f"Direction: mean difference of resid_pre at the last prompt token, {len(data['pairs'])} "
            "positive/negative request pairs; multipliers in units of the mean residual norm at the layer.",
            f"Unsteered next-token log-odds (positive − negative words) on {len(neutral)} neutral prompts: "
            f"{baseline:.2f}.",
            "",
            "| layer | mean resid norm | log-odds at lowest multiplier | at highest | swing |",
            "|---|---|---|---|---|",
            *[
                f"| {layer} | {float(residual_norms[i]):.1f} | {scores[layer][0]:.2f} | {scores[layer][-1]:.2f} "
                f"| {swings[layer]:+.2f} |"
                for i, layer in enumerate(layers)
            ],
            "",
            f"Best layer by swing: {best_layer} (monotonic in the multiplier: {monotonic}).",
            f"Generations at layer {best_layer}: positive-word rate {positive_rate[0]:.2f} → {positive_rate[-1]:.2f}, "
            f"negative-word rate {negative_rate[0]:.2f} → {negative_rate[-1]:.2f} (lowest → highest multiplier).",
        ]
    )
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
        "summary_md": summary,
    }
