"""Every figure the experiments draw, rendered from small made-up values with the experiments' own labels:
no text leaves the canvas and no axis label runs past its axis (`interp.plots.text_problems`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from matplotlib.figure import Figure

from interp.classify import ClassifierReport, ClassifierRow
from interp.directions import Direction
from interp.experiments import classifier_figures, refusal_figures, steering_demo, sycophancy_figures
from interp.experiments.sparse_refusal import plot_refusal_figure
from interp.experiments.sycophancy import SycophancyConfig
from interp.features import FeatureContext, MaxActivating, plot_max_activating
from interp.plots import line_plot, renderer_of, text_problems
from interp.refusal import SelectionConfig
from interp.refusal.selection import CandidateTable
from interp.selfexplain import SelfExplanation, SelfExplanationTable, plot_self_explanations
from interp.sweeps import Sweep

MODEL = "SmolLM2-135M-Instruct"
MULTIPLIERS = [-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0]


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Every figure saved in the test, by file name: what of its text does not fit."""
    found: dict[str, list[str]] = {}
    original = Figure.savefig

    def savefig(self: Figure, fname: object, *args: object, **kwargs: object) -> None:
        found[Path(str(fname)).name] = text_problems(self)
        original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return found


def assert_fits(checked: dict[str, list[str]], names: set[str]) -> None:
    assert names <= set(checked), f"not drawn: {names - set(checked)}"
    assert {name: problems for name, problems in checked.items() if problems} == {}


def curve(n: int = len(MULTIPLIERS), low: float = 0.1, high: float = 0.9) -> list[float]:
    return torch.linspace(low, high, n).tolist()


def test_text_problems_finds_a_label_longer_than_its_axis() -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4, 3))
    axis.set_ylabel("a label far longer than the axis it labels, which is only three inches tall " * 2)
    problems = text_problems(figure)
    plt.close(figure)
    assert any("leaves the canvas" in p for p in problems) and any("longer than its axis" in p for p in problems)


def test_sycophancy_figures(tmp_path: Path, checked: dict[str, list[str]]) -> None:
    layers = list(range(0, 30, 3))
    sweep = Sweep(layers, MULTIPLIERS, torch.rand(len(layers), len(MULTIPLIERS)), torch.rand(len(layers), len(MULTIPLIERS)),
                  "resid")
    rows = {layer: {"false_claims": curve(), "true_claims": curve(), "mass": curve()} for layer in layers}
    steps = SimpleNamespace(
        held_out=SimpleNamespace(ab=sweep, baseline=SimpleNamespace(score=0.5)), layers=layers, best=12,
        pairs=SimpleNamespace(test=[None] * 50), train_swing={layer: 0.1 for layer in layers},
        agreement=SimpleNamespace(effect={layer: 0.05 for layer in layers}, rows=rows, false_rows=[True, False] * 10,
                                  unsteered=SimpleNamespace(mean=lambda rows: 0.4), layer=9),
        accuracy=SimpleNamespace(accuracy=curve(), cloze_multipliers=[-4.0, 0.0, 4.0], cloze_accuracy=curve(3),
                                 cloze_ab=curve(3)),
    )
    sycophancy_figures.draw_figures(MODEL, steps, SycophancyConfig(), tmp_path)
    assert_fits(checked, {"ab_score_vs_multiplier.png", "letter_mass_vs_multiplier.png", "layer_effect.png",
                          "agreement_vs_multiplier.png", "agreement_false_vs_true.png", "accuracy_tradeoff.png"})


def test_refusal_figures(tmp_path: Path, checked: dict[str, list[str]]) -> None:
    for n_layers in (4, 24):
        grid = torch.rand(n_layers, 5)
        table = CandidateTable(list(range(n_layers)), [-5, -4, -3, -2, -1], ["<|im_end|>", "\n", "<|im_start|>",
                               "assistant", "\n"], torch.randn(n_layers, 5, 8), grid, grid, grid,
                               torch.ones(n_layers, 5, dtype=torch.bool), torch.full((n_layers, 5), float("nan")),
                               1.0, -1.0, chosen=(1, 2))
        refusal_figures.candidates_heatmap(table, SelectionConfig(), f"{MODEL}: refusal-direction candidates",
                                           tmp_path / f"candidates_heatmap_{n_layers}.png")
    rates = {"harmful": {"baseline": 0.9, "ablated": 0.05, "subtracted": 0.1, "orthogonalised": 0.0},
             "harmless": {"baseline": 0.0, "ablated": 0.0, "subtracted": 0.02, "orthogonalised": 1.0}}
    refusal_figures.refusal_rate_bars(rates, {"harmful": 32, "harmless": 32}, f"{MODEL}: held-out refusal rates "
                                      "(32 harmful, 32 harmless)", tmp_path / "refusal_rates.png")
    spectra = {label: (SimpleNamespace(singular_values=torch.logspace(2, -3, 40)), 0)
               for label in ("clean", "re-quantised q8_0", "re-quantised q4_0")}
    refusal_figures.svd_spectra(spectra, f"{MODEL}: SVD of ΔW_O+W_out (all layers), base → orthogonalised",
                                tmp_path / "svd_spectrum.png")
    assert_fits(checked, {"candidates_heatmap_4.png", "candidates_heatmap_24.png", "refusal_rates.png",
                          "svd_spectrum.png"})


def test_refusal_rates_have_intervals(tmp_path: Path) -> None:
    rates = {"harmful": {"baseline": 0.5}, "harmless": {"baseline": 0.0}}
    refusal_figures.refusal_rate_bars(rates, {"harmful": 10, "harmless": 10}, "rates", tmp_path / "r.png")
    # Drawn again to read the error bars back: one per bar, the harmless 0 of 10 reaching above 0 (Wilson).
    import matplotlib.pyplot as plt

    captured = []
    original = plt.Axes.bar
    try:
        plt.Axes.bar = lambda self, *args, **kwargs: captured.append(kwargs["yerr"]) or original(self, *args, **kwargs)
        refusal_figures.refusal_rate_bars(rates, {"harmful": 10, "harmless": 10}, "rates", tmp_path / "r.png")
    finally:
        plt.Axes.bar = original
    (harmful_low, harmful_high), (harmless_low, harmless_high) = [(e[0][0], e[1][0]) for e in captured]
    assert harmful_low > 0.2 and harmful_high > 0.2 and harmless_low == 0 and harmless_high > 0.2


def test_classifier_figures(tmp_path: Path, checked: dict[str, list[str]]) -> None:
    names = ["feature 1234 (encoder pre-activation)", "feature 77 (decoder-atom dot product)",
             "feature 4000 (encoder pre-activation)", "CAA direction (layer 12)", "linear probe (layer 12)",
             "model's own letter probabilities", "random feature 42"]
    groups = ["feature", "feature", "feature", "direction", "probe", "model", "random"]
    rows = [ClassifierRow(name, group, 1.0, 0.8, 0.75, (0.6, 0.9), 0.5, (0.4, 0.6), 0.6, (0.5, 0.7))
            for name, group in zip(names, groups)]
    rows.append(ClassifierRow("chance", "chance", 1.0, 0.5, 0.5, None, 0.25, None, 0.5, None))
    labels = torch.zeros(40, 4, dtype=torch.bool)
    labels[:, 0] = True
    report = ClassifierReport(rows, 80, 40, 4, 12, top_features={"encoder": [1234, 4000], "decoder": [77]},
                              test_scores={name: torch.randn(40, 4) for name in names}, test_labels=labels)
    classifier_figures.draw_figures(report, f"{MODEL} (TruthfulQA-style multiple choice)", tmp_path)
    summary = {"by_lambda": {str(x): {"sycophancy_rate": 0.5, "ci95": [0.3, 0.7]} for x in (0.0, 0.5, 1.0, 2.0, 5.0)},
               "floor_all_samples_sycophantic": 0.2, "greedy_sycophancy_rate": 0.6, "n_samples": 8}
    classifier_figures.demo_figure(summary, MODEL, tmp_path / "probe_penalty_best_of_n.png")
    assert_fits(checked, {"score_histograms.png", "roc_curves.png", "top_features.png", "probe_penalty_best_of_n.png"})


def test_line_plots_of_the_other_experiments(tmp_path: Path, checked: dict[str, list[str]]) -> None:
    """The steering demo's figures, and line plots with the longest labels MELBO and the sparse experiment write."""
    scores = {layer: curve() for layer in range(0, 30, 4)}
    steering_demo.draw_figures(MODEL, MULTIPLIERS, scores, 0.1, 8, curve(), curve(), tmp_path)
    line_plot(list(range(1, 301)), {f"vector {i}": curve(300) for i in range(16)}, xlabel="step",
              ylabel="MELBO loss (−Σ ‖Δh_target‖₂^p)^(1/q)",
              title=f"{MODEL}: MELBO training, layer 7 → blocks.20.hook_resid_pre, R = 12.5", path=tmp_path / "loss.png")
    line_plot([0.5, 1.0, 2.0, 4.0], {'samples containing "tomato"': curve(4), 'P(first token is "tomato")': curve(4)},
              xlabel="scale (× learned vector, norm R)", ylabel="fraction / probability",
              title=f'{MODEL}: "tomato" vs steering scale, vector 11 (32 samples, T=0.7)', path=tmp_path / "word.png")
    line_plot([1, 2, 4, 8], {"ITO": curve(4), "FISTA": curve(4), "OMP": curve(4)},
              xlabel="k (features; reconstruction rescaled to the vector's norm)",
              ylabel="P(sycophantic letter) / (P(A) + P(B)), held out",
              title="sycophancy: A/B sycophancy score under +vector\n(dotted: the original vector; unsteered 0.512)",
              path=tmp_path / "behaviour.png", baseline=0.6)
    assert_fits(checked, {"sentiment_logodds_vs_multiplier.png", "generation_word_rates.png", "loss.png", "word.png",
                          "behaviour.png"})


def max_activating_result() -> MaxActivating:
    words = ["I", " think", " you", "'re", " absolutely", " right", ",", " and", " that", " is", " wonderful", "!"] * 8
    contexts = {
        f: [FeatureContext(f, 3.0 - r, r, 10, words, [float(i % 5) for i in range(len(words))], 4) for r in range(3)]
        for f in (101, 2048)
    }
    return MaxActivating([101, 2048], torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.long),
                         torch.zeros(2, 3, dtype=torch.long), contexts, torch.tensor([0.01, 0.2]), 5000, 40)


def test_sparse_figures(tmp_path: Path, checked: dict[str, list[str]]) -> None:
    plot_max_activating(max_activating_result(), tmp_path / "max_activating_sycophancy.png", n=3,
                        title="sycophancy: features of the best k ≤ 4 reconstruction (inference-time optimisation, k=2)")
    ks = [1, 2, 4, 8, 16]
    methods = ["ito", "fista"]
    row = {key: 0.5 for key in ("harmful_ablated", "harmless_added", "mmlu_ablated")}
    row.update({f"{key}_ci95": [0.4, 0.6] for key in ("harmful_ablated", "harmless_added", "mmlu_ablated")})
    rows = {f"{m} k={k}": row for m in methods for k in ks}
    rows.update({name: {**row, "n_harmful": 32, "n_harmless": 32} for name in ("unsteered", "original", "skyline")})
    result = {"rows": rows, "ks": ks, "methods": methods, "judge": "phrases"}
    plot_refusal_figure(result, Direction(torch.ones(8), 12, MODEL, "diff_in_means"), tmp_path / "refusal_figure.png")
    table = SelfExplanationTable(tuple(SelfExplanation(name, scale, "text", 0.5, 2.0) for name in
                                       ("sycophancy vector", "refusal direction", "feature 1234 (decoder row)")
                                       for scale in (0.25, 0.5, 1.0, 2.0, 4.0)),
                                 {"sycophancy vector": 1.0, "refusal direction": 2.0, "feature 1234 (decoder row)": 0.5},
                                 "blocks.12.hook_resid_pre", 54.3)
    plot_self_explanations(table, tmp_path / "self_explanation_sycophancy.png")
    assert_fits(checked, {"max_activating_sycophancy.png", "refusal_figure.png", "self_explanation_sycophancy.png"})


def test_max_activating_tokens_do_not_cover_each_other() -> None:
    """Each token's shading box ends where the next begins: no box covers a letter of the token before it."""
    figure = plot_max_activating(max_activating_result(), n=3)
    renderer = renderer_of(figure)
    figure.canvas.draw()  # places the shading boxes
    rows: dict[float, list] = {}
    for text in figure.axes[0].texts:
        if text.get_bbox_patch() is not None:
            rows.setdefault(text.get_position()[1], []).append(text)
    assert rows
    for texts in rows.values():
        for before, after in zip(texts, texts[1:]):
            letters = before.get_window_extent(renderer)
            assert after.get_bbox_patch().get_window_extent(renderer).x0 >= letters.x1 - 0.5
        assert texts[-1].get_bbox_patch().get_window_extent(renderer).x1 <= figure.bbox.x1


def test_plot_functions_return_a_figure_and_save_only_with_a_path(tmp_path: Path) -> None:
    figure = plot_max_activating(max_activating_result())
    assert isinstance(figure, Figure) and not list(tmp_path.iterdir())
    assert isinstance(plot_max_activating(max_activating_result(), tmp_path / "m.png"), Figure)
    assert (tmp_path / "m.png").stat().st_size > 1000
