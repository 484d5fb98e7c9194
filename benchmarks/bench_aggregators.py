"""Which aggregator steers best? Every aggregator of `interp.aggregators`, the same pairs, the same layers, the same norm.

    python benchmarks/bench_aggregators.py [--model smollm2-135m-instruct] [--layers 10 15 20]
                                           [--multipliers 0.25 0.5 1.0] [--bootstrap 1000] [--threads 2]

Two behaviours, each from one pass over its pairs (`build_steering_vectors` / `contrast_vectors`):
* A/B sycophancy: vectors from the 234 bundled training pairs at the answer letter; the held-out score is the
  mean P(matching letter) on the 79 test pairs with the vector added from the last prompt token on
  (`ABEvaluator`). The swing at multiplier m is score(+m) − score(−m).
* Sentiment: vectors from the 24 bundled positive/negative requests at their last token; the effect is the
  next-token log-odds of the bundled positive vs negative words on the 12 neutral prompts, added at every
  position (as the `steering` experiment); the swing is log-odds(+m) − log-odds(−m).
Every vector is rescaled to the mean residual norm at its layer (the pairs' activations there), so a multiplier
means the same for every aggregator; the intervals are 95% bootstrap intervals over the held-out pairs / prompts
(the paired per-item swings). Also printed: the cosine between aggregators at each layer, and the seconds each
aggregator took on the activations (the pass itself is shared and timed once). A CPU benchmark of behaviour: the
swings do not depend on the device, so it takes no `--device` and is not part of the GPU check.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch

from interp.ab_prompts import ABFormat
from interp.aggregators import AGGREGATORS
from interp.caa import build_steering_vectors, contrast_vectors
from interp.chat import format_chats, tokenize
from interp.datasets import bundled, load_bundled_sycophancy
from interp.evaluators import ABEvaluator
from interp.experiments.steering_demo import load_steering_data, word_token_ids
from interp.metrics import bootstrap_mean_ci
from interp.models import load_model
from interp.runner import batch_logits
from interp.steering import Steer
from interp.vectors import SteeringVectors

from _common import timed  # noqa: E402  (benchmarks/ is on sys.path)

FORMAT = ABFormat("bare, 'My answer is ('", None, "My answer is (")


def normalised(built: dict[str, SteeringVectors]) -> dict[str, SteeringVectors]:
    """Each aggregator's vectors at the mean residual norm of each layer."""
    return {name: v.with_norms(torch.tensor(v.meta["mean_resid_norms"])) for name, v in built.items()}


def swings(per_item: Any, vectors: dict[str, SteeringVectors], multipliers: list[float], n_bootstrap: int,
           positions: str) -> dict[str, dict[int, dict[float, tuple[float, float, float]]]]:
    """(mean swing, low, high) per aggregator, layer and multiplier; `per_item(interventions)` -> [n_items]."""
    out: dict[str, dict[int, dict[float, tuple[float, float, float]]]] = {}
    for name, v in vectors.items():
        out[name] = {}
        for direction in v:
            out[name][direction.layer] = {}
            for m in multipliers:
                up = per_item([Steer(direction, m, positions=positions)])
                down = per_item([Steer(direction, -m, positions=positions)])
                difference = (up - down).double()
                low, high = bootstrap_mean_ci(difference, n_bootstrap=n_bootstrap)
                out[name][direction.layer][m] = (float(difference.mean()), low, high)
    return out


def print_swings(title: str, results: dict, multipliers: list[float], baseline: float, unit: str) -> None:
    print(f"\n### {title} (unsteered {baseline:.3f}; swing = value(+m) − value(−m), {unit})\n")
    print("| aggregator | layer | " + " | ".join(f"±{m:g}" for m in multipliers) + " |")
    print("|---|---|" + "---|" * len(multipliers))
    for name, by_layer in results.items():
        for layer, by_m in by_layer.items():
            cells = " | ".join(f"{by_m[m][0]:+.3f} [{by_m[m][1]:+.3f}, {by_m[m][2]:+.3f}]" for m in multipliers)
            print(f"| {name} | {layer} | {cells} |")


def print_cosines(title: str, vectors: dict[str, SteeringVectors]) -> None:
    names = list(vectors)
    for layer in next(iter(vectors.values())).layers:
        print(f"\n{title}, layer {layer}: cosine between aggregators\n")
        print("| | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for a in names:
            row = [float(vectors[a].select(layer).cosine(vectors[b].select(layer))[0]) for b in names]
            print(f"| {a} | " + " | ".join(f"{c:+.2f}" for c in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layers", type=int, nargs="+", default=[10, 15, 20])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="× mean residual norm")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"model {args.model}, layers {args.layers}, multipliers ±{args.multipliers} × mean residual norm, "
          f"cpu, {torch.get_num_threads()} threads, load average at start {os.getloadavg()[0]:.1f}")
    model = load_model(args.model, device="cpu")
    names = list(AGGREGATORS)

    # A/B sycophancy
    train, test = load_bundled_sycophancy("train"), load_bundled_sycophancy("test")
    pass_s, built = timed(lambda: build_steering_vectors(model, train, FORMAT, layers=args.layers, aggregators=names,
                                                         batch_size=args.batch_size, progress=False))
    print(f"\nA/B: one pass over {len(train)} pairs at {len(args.layers)} layers + every aggregator: {pass_s:.1f} s; "
          "aggregation alone: " + ", ".join(f"{n} {v.meta['seconds']:.2f} s" for n, v in built.items()))
    ab_vectors = normalised(built)
    evaluator = ABEvaluator(model, test, FORMAT, batch_size=args.batch_size, progress=False)
    ab = swings(lambda steers: evaluator.score(steers).p_matching, ab_vectors, args.multipliers, args.bootstrap, "new")
    print_swings(f"A/B sycophancy, {len(test)} held-out pairs, P(matching)", ab, args.multipliers,
                 evaluator.score().score, "positive = more sycophantic")
    print_cosines("A/B vectors", ab_vectors)

    # Sentiment
    data = load_steering_data(bundled("sentiment_steering.json"))
    positive = format_chats(model, [pair["positive"] for pair in data["pairs"]])
    negative = format_chats(model, [pair["negative"] for pair in data["pairs"]])
    sentiment_vectors = normalised(contrast_vectors(model, positive, negative, layers=args.layers, aggregators=names,
                                                    batch_size=args.batch_size, progress=False))
    neutral = tokenize(model, format_chats(model, data["neutral"]))
    positive_ids = word_token_ids(model.tokenizer, data["positive_words"])
    negative_ids = word_token_ids(model.tokenizer, data["negative_words"])

    def log_odds(steers: list[Steer]) -> torch.Tensor:
        log_probs = batch_logits(model, neutral, steers, keep_last=1)[:, -1].float().log_softmax(-1)
        return log_probs[:, positive_ids].logsumexp(-1) - log_probs[:, negative_ids].logsumexp(-1)

    sentiment = swings(log_odds, sentiment_vectors, args.multipliers, args.bootstrap, "all")
    print_swings(f"Sentiment, {len(data['neutral'])} neutral prompts, log-odds positive − negative words", sentiment,
                 args.multipliers, float(log_odds([]).mean()), "positive = more positive")
    print_cosines("Sentiment vectors", sentiment_vectors)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
