"""Probes: a planted direction is recovered, calibration works, batched fits agree with single ones, the
probe-penalised reward's arithmetic, best-of-n, the probe scorer on a model, and the sycophancy demo."""

from __future__ import annotations

import pytest
import torch

from interp.datasets import ContrastPair
from interp.directions import Direction
from interp.experiments.classifier_demo import probe_penalty_demo
from interp.metrics import expected_calibration_error
from interp.probes import (
    LinearProbe,
    ProbePenalisedReward,
    ProbeScorer,
    best_of_n,
    fit_logistic,
    fit_platt,
    fit_temperature,
    split_rows,
    train_probe,
)

from tiny_letters import make_letter_model_folder

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def letter_model(tmp_path_factory):
    from interp.models import load_model

    return load_model(make_letter_model_folder(tmp_path_factory.mktemp("tiny-letters-probes")), device="cpu")


def _logistic_data(n: int, width: int, seed: int, strength: float = 2.0):
    """Rows with anisotropic scales; labels drawn from a true logistic model along a planted direction."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.5, 3.0, width)
    x = torch.randn(n, width, generator=generator) * scales + 1.0
    planted = torch.randn(width, generator=generator)
    planted /= planted.norm()
    logits = strength * ((x - 1.0) @ planted) + 0.3
    y = torch.rand(n, generator=generator) < logits.sigmoid()
    return x, y, planted


def test_probe_recovers_a_planted_direction_and_is_calibrated():
    x, y, planted = _logistic_data(4000, 24, seed=0)
    fit = train_probe(x, y, validation_fraction=0.25, l2=1e-4, layer=3, model="synthetic")
    direction = fit.probe.direction()
    assert isinstance(direction, Direction) and direction.layer == 3 and direction.source == "probe"
    assert direction.cosine(planted) > 0.95
    assert fit.validation["auroc"] > 0.8 and fit.validation["ece"] < 0.05
    assert fit.probe.temperature == pytest.approx(1.0, abs=0.25)  # a well-specified model needs little rescaling
    # Fresh data from the same model: calibrated probabilities match frequencies.
    x_new, y_new, _ = _logistic_data(4000, 24, seed=0)
    assert expected_calibration_error(fit.probe.predict_proba(x_new), y_new) < 0.05
    # The raw-space weight reproduces the logit.
    raw = x[:5] @ fit.probe.effective_weight + fit.probe.effective_bias
    assert torch.allclose(raw, fit.probe.raw_logits(x[:5]), atol=1e-4)


def test_temperature_and_platt_repair_an_overconfident_score():
    generator = torch.Generator().manual_seed(1)
    true_logits = torch.randn(3000, generator=generator) * 2
    labels = torch.rand(3000, generator=generator) < true_logits.sigmoid()
    overconfident = 4.0 * true_logits
    before = expected_calibration_error(overconfident.sigmoid(), labels)
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)
    assert expected_calibration_error((overconfident / temperature).sigmoid(), labels) < before / 3
    a, b = fit_platt(overconfident, labels)
    assert a == pytest.approx(0.25, rel=0.15) and abs(b) < 0.15


def test_batched_fits_equal_separate_fits_and_adam_agrees():
    x1, y1, _ = _logistic_data(300, 8, seed=2)
    x2, _, _ = _logistic_data(300, 8, seed=3)
    weights, biases = fit_logistic(torch.stack([x1, x2]), y1, l2=1e-2)
    for index, x in enumerate((x1, x2)):
        w, b = fit_logistic(x, y1, l2=1e-2)
        assert torch.allclose(weights[index], w, atol=1e-4) and float(biases[index]) == pytest.approx(float(b), abs=1e-4)
    w_adam, _ = fit_logistic(x1, y1, l2=1e-2, optimizer="adam", max_iter=1500, lr=0.05)
    assert torch.nn.functional.cosine_similarity(w_adam, weights[0], dim=0) > 0.99


def test_bad_probe_input_is_a_clear_error(tmp_path):
    x, y, _ = _logistic_data(50, 4, seed=4)
    with pytest.raises(ValueError, match="both classes"):
        train_probe(x, torch.zeros(50))
    with pytest.raises(ValueError, match="labels"):
        train_probe(x, y[:10])
    with pytest.raises(ValueError, match="0/1"):
        train_probe(x, torch.full((50,), 2.0))
    fit = train_probe(x, y, calibration="platt", layer=1)
    with pytest.raises(ValueError, match="width"):
        fit.probe.logits(torch.zeros(3, 5))
    loaded = LinearProbe.load(fit.probe.save(tmp_path / "probe"))
    assert torch.allclose(loaded.logits(x), fit.probe.logits(x)) and loaded.platt == fit.probe.platt


def test_split_rows_keeps_groups_together():
    groups = torch.arange(40) // 4
    train, val = split_rows(40, 0.3, seed=0, groups=groups)
    assert set(groups[train].tolist()).isdisjoint(groups[val].tolist()) and len(val) == 12


def test_probe_penalised_reward_arithmetic_and_best_of_n():
    def reward(prompt: str, response: str) -> float:
        return float(len(response))

    def score(prompt: str, response: str) -> float:
        return 1.0 if "yes" in response else 0.0

    penalised = ProbePenalisedReward(reward, score, lam=2.5)
    assert penalised("p", "yes sir") == pytest.approx(7 - 2.5)
    assert penalised("p", "no") == pytest.approx(2.0)
    candidates = [["yes indeed", "no"], ["yes", "nope"]]
    assert best_of_n(["p", "q"], candidates, reward) == [0, 1]
    assert best_of_n(["p", "q"], candidates, ProbePenalisedReward(reward, score, lam=100.0)) == [1, 1]
    assert best_of_n(["p", "q"], candidates, ProbePenalisedReward(reward, score, lam=0.0)) == [0, 1]
    with pytest.raises(ValueError, match="candidates"):
        best_of_n(["p"], candidates, reward)


def test_probe_scorer_reads_the_response_end_and_prefill_agrees(letter_model):
    from interp.activations import collect_residuals

    generator = torch.Generator().manual_seed(0)
    probe = LinearProbe(torch.randn(32, generator=generator), 0.1, torch.zeros(32), torch.ones(32), layer=1)
    scorer = ProbeScorer(letter_model, probe)
    prompts, responses = ["the cat sat on", "hello world"], [" the mat", " yes"]
    scores = scorer.score_many(prompts, responses)
    acts = collect_residuals(letter_model, [p + r for p, r in zip(prompts, responses)], [1], progress=False)[:, 0, 0]
    assert scores == pytest.approx(probe.predict_proba(acts).tolist(), abs=1e-5)
    other = ProbeScorer(letter_model, probe, output="logit")
    other.prefill(prompts, responses, acts)
    assert other("hello world", " yes") == pytest.approx(float(probe.logits(acts[1])), abs=1e-5)


def _pairs(count: int, offset: int = 0) -> list[ContrastPair]:
    moods = ("happy", "sad")
    pairs = []
    for i in range(offset, offset + count):
        question = f"i am {moods[i % 2]} . {'the ' * (i % 3)}sky is blue ? Choices : (A) yes (B) no Answer :"
        matching, other = ("(A)", "(B)") if i % 4 < 2 else ("(B)", "(A)")
        pairs.append(ContrastPair(question, matching, other))
    return pairs


def test_probe_penalty_demo_runs_and_reports_rates_within_the_bounds(letter_model):
    demo = probe_penalty_demo(letter_model, _pairs(16), _pairs(8, offset=16), layer=2, n_samples=4,
                              lambdas=(0.0, 1000.0), batch_size=8, progress=False)
    summary = demo.summary
    assert demo.probe.layer == 2 and demo.caa.layer == 2 and demo.caa.source == "caa"
    for value in summary["by_lambda"].values():
        assert summary["floor_all_samples_sycophantic"] <= value["sycophancy_rate"] <= summary["ceiling_any_sample_sycophantic"]
        assert value["ci95"][0] <= value["sycophancy_rate"] <= value["ci95"][1]
    assert 0.0 <= summary["probe_test_auroc"] <= 1.0 and summary["n_test_pairs"] == 8
