"""The classifier experiment's probe-penalty demo: best-of-n sycophancy with a probe penalty."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.ab_prompts import CANDIDATE_FORMATS, mixed_matching_letters
from interp.caa import caa_vectors_from_activations
from interp.classify import letter_activations
from interp.directions import Direction
from interp.hooked import HookedModel
from interp.metrics import auroc, bootstrap_mean_ci
from interp.models import model_name
from interp.probes import (
    LinearProbe,
    ProbeFit,
    ProbePenalisedReward,
    ProbeScorer,
    Reward,
    best_of_n,
    train_probe,
)


@dataclass(frozen=True)
class PenaltyDemo:
    """What `probe_penalty_demo` found: JSON-ready numbers, the probe, and the CAA direction of the same pairs."""

    summary: dict[str, Any]
    probe: LinearProbe
    caa: Direction


AB_LETTERS = ("A", "B")


def probe_penalty_demo(
    model: HookedModel,
    train_pairs: Sequence[Any],
    test_pairs: Sequence[Any],
    layer: int,
    *,
    fmt: Any = None,
    n_samples: int = 8,
    lambdas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 5.0),
    reward: Reward | None = None,
    l2: float = 1e-2,
    site: str = "resid_pre",
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> PenaltyDemo:
    """Best-of-n on held-out sycophancy A/B pairs with and without a sycophancy-probe penalty.

    What it measures: a response is the answer letter, sampled n times per prompt from the model's own
    P(A), P(B) after the format's prefix; it is sycophantic when it is the matching letter. The probe is
    trained on the training pairs' activations at the matching (1) vs the other (0) letter (at `layer`);
    the default reward is the model's own log-probability of the letter. Best-of-n picks the candidate
    with the highest reward − λ·P_probe(sycophantic). With one-letter responses the penalty can only
    move the choice where both letters were sampled; the sycophancy rate of the choice falls to the
    extent the probe tells the held-out letters apart. This is a selection demo, not RL training.
    """
    fmt = fmt or CANDIDATE_FORMATS[0]
    train = pair_activations(model, train_pairs, layer, fmt=fmt, site=site, batch_size=batch_size, progress=progress)
    fit, caa = fit_probe_and_caa(model, train, train_pairs, layer, l2=l2, seed=seed, site=site)
    test = pair_activations(model, test_pairs, layer, fmt=fmt, site=site, batch_size=batch_size, progress=progress)
    probe_auroc, caa_auroc = held_out_aurocs(fit.probe, caa, test)
    # Responses are letters; the reward and the probe read precomputed values through the general interfaces.
    reward_fn: Reward = reward if reward is not None else letter_log_prob_reward(test)
    scorer = prefilled_scorer(model, fit.probe, test)
    summary = {
        "layer": layer, "site": site, "format": fmt.to_dict(), "n_train_pairs": len(train_pairs), "n_test_pairs": len(test_pairs),
        "n_samples": n_samples, "reward": "model log-prob of the letter" if reward is None else getattr(reward, "__name__", "custom"),
        "probe": fit.to_dict(), "probe_test_auroc": probe_auroc, "caa_test_auroc": caa_auroc,
        **best_of_n_rates(test, reward_fn, scorer, lambdas, n_samples=n_samples, seed=seed),
    }
    direction = Direction(caa.float(), layer=layer, model=model_name(model), source="caa", site=site,
                          meta={"n_pairs": len(train_pairs), "format": fmt.to_dict(), "position": "answer letter"})
    return PenaltyDemo(summary, fit.probe, direction)


@dataclass(frozen=True)
class PairActivations:
    """Each pair's residuals (at one layer) and log-probabilities on its two letters, and which letter matches."""

    resid: Float[Tensor, "n_pairs 2 d_model"]
    log_probs: Float[Tensor, "n_pairs 2"]
    matching: Int[Tensor, "n_pairs"]  # index into AB_LETTERS of the sycophantic letter
    prompts: list[str]  # chat-formatted prompt + assistant prefix (the letter follows)


def pair_activations(
    model: HookedModel, pairs: Sequence[Any], layer: int, *, fmt: Any, site: str, batch_size: int, progress: bool
) -> PairActivations:
    """Residuals on the answer letter of both options of each A/B pair, and the letters' log-probabilities.

    Args:
        model: the model.
        pairs: A/B contrast pairs.
        layer: the block read.
        fmt: the A/B prompt format.
        site: the residual site read.
        batch_size: questions per batch.
        progress: show a progress bar.

    Returns:
        The `PairActivations` (matching and not-matching rows).
    """
    out = letter_activations(model, [p.question for p in pairs], AB_LETTERS, [layer], fmt=fmt, site=site,
                             batch_size=batch_size, progress=progress)
    matching = torch.tensor([AB_LETTERS.index(p.matching_letter) for p in pairs])
    return PairActivations(out.resid[:, :, 0], out.log_probs, matching, out.prompts)


def fit_probe_and_caa(
    model: HookedModel, train: PairActivations, train_pairs: Sequence[Any], layer: int, *, l2: float, seed: int, site: str
) -> tuple[ProbeFit, Float[Tensor, "d_model"]]:
    """A probe for the matching (1) vs the other (0) letter, and the CAA vector of the same activations."""
    rows = torch.arange(len(train_pairs))
    matching, other = train.resid[rows, train.matching], train.resid[rows, 1 - train.matching]
    x = torch.cat([matching, other])
    y = torch.cat([torch.ones(len(rows)), torch.zeros(len(rows))])
    fit = train_probe(x, y, groups=torch.cat([rows, rows]), l2=l2, seed=seed, layer=layer, site=site, model=model_name(model))
    caa = caa_vectors_from_activations(matching[:, None], other[:, None], mixed_matching_letters(train_pairs))[0]
    return fit, caa


def held_out_aurocs(probe: LinearProbe, caa: Float[Tensor, "d_model"], test: PairActivations) -> tuple[float, float]:
    """How well the probe's logit and the CAA projection tell the held-out matching letter from the other."""
    labels = torch.zeros(len(test.matching), 2, dtype=torch.bool)
    labels[torch.arange(len(test.matching)), test.matching] = True
    probe_auroc = float(auroc(probe.logits(test.resid).flatten(), labels.flatten()))
    caa_auroc = float(auroc((test.resid @ caa).flatten(), labels.flatten()))
    return probe_auroc, caa_auroc


def letter_log_prob_reward(test: PairActivations) -> Reward:
    """The model's own log-probability of the response letter, looked up from the held-out pass."""
    table = {
        (prompt, letter): float(test.log_probs[i, k])
        for i, prompt in enumerate(test.prompts) for k, letter in enumerate(AB_LETTERS)
    }
    return lambda prompt, response: table[(prompt, response)]


def prefilled_scorer(model: HookedModel, probe: LinearProbe, test: PairActivations) -> ProbeScorer:
    """A probe scorer that already holds every held-out (prompt, letter) activation: no forward passes."""
    scorer = ProbeScorer(model, probe)
    scorer.prefill([p for p in test.prompts for _ in AB_LETTERS], [l for _ in test.prompts for l in AB_LETTERS],
                   test.resid.reshape(-1, test.resid.shape[-1]))
    return scorer


def best_of_n_rates(
    test: PairActivations, reward: Reward, scorer: ProbeScorer, lambdas: Sequence[float], *, n_samples: int, seed: int
) -> dict[str, Any]:
    """Sycophancy of the model's own letter, the bounds its `n_samples` samples set, and of best-of-n per λ."""
    probabilities = test.log_probs.double().softmax(-1)  # renormalised over the two letters
    draws = torch.multinomial(probabilities, n_samples, replacement=True, generator=torch.Generator().manual_seed(seed))
    candidates = [[AB_LETTERS[k] for k in row] for row in draws.tolist()]
    matching_letters = [AB_LETTERS[k] for k in test.matching.tolist()]
    by_lambda = {
        str(float(lam)): penalised_sycophancy(
            test.prompts, candidates, matching_letters, ProbePenalisedReward(reward, scorer, float(lam)), seed
        )
        for lam in lambdas
    }
    all_sycophantic = torch.tensor([all(l == m for l in c) for c, m in zip(candidates, matching_letters)], dtype=torch.float64)
    any_sycophantic = torch.tensor([any(l == m for l in c) for c, m in zip(candidates, matching_letters)], dtype=torch.float64)
    return {
        "model_p_matching": float(probabilities[torch.arange(len(test.matching)), test.matching].mean()),
        "greedy_sycophancy_rate": float((probabilities.argmax(-1) == test.matching).double().mean()),
        "floor_all_samples_sycophantic": float(all_sycophantic.mean()),
        "ceiling_any_sample_sycophantic": float(any_sycophantic.mean()),
        "by_lambda": by_lambda,
    }


def penalised_sycophancy(
    prompts: list[str], candidates: list[list[str]], matching_letters: list[str], reward: Reward, seed: int
) -> dict[str, Any]:
    """The sycophancy rate of best-of-n's choices under `reward`, with a bootstrap 95 % interval."""
    chosen = best_of_n(prompts, candidates, reward)
    sycophantic = torch.tensor([c[i] == m for c, i, m in zip(candidates, chosen, matching_letters)], dtype=torch.float64)
    low, high = bootstrap_mean_ci(sycophantic, seed=seed)
    return {"sycophancy_rate": float(sycophantic.mean()), "ci95": [low, high]}
