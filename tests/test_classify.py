"""Feature classifiers: AUROC vs sklearn, planted features (synthetic and through a tiny model), the MC
loaders' layouts and bad rows, width checks, and a smoke run of the `classifier` experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interp.classify import (
    LetterActivations,
    bootstrap_metrics,
    classifier_report,
    direction_scores,
    feature_scores,
    fit_on_train,
    measure_on_test,
    option_activations,
    split_questions,
)
from interp.datasets import DatasetFormatError, MultipleChoice, load_multiple_choice
from interp.dictionaries import from_decoder
from interp.directions import Direction
from interp.steering import HookIntervention

from tiny_letters import make_letter_model_folder

SHARED_MMLU = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mmlu"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def letter_folder(tmp_path_factory) -> Path:
    return make_letter_model_folder(tmp_path_factory.mktemp("tiny-letters-classify"))


@pytest.fixture(scope="module")
def letter_model(letter_folder):
    from interp.models import load_model

    return load_model(letter_folder, device="cpu")


# ---------------------------------------------------------------------------------------------
# Planted features


def _dictionary_with_planted_atom(planted: torch.Tensor, n_atoms: int, index: int, seed: int = 0):
    """Random unit atoms made orthogonal to `planted`, except atom `index`, which is `planted` itself."""
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, planted.shape[0], generator=generator)
    unit = planted / planted.norm()
    atoms -= (atoms @ unit)[:, None] * unit
    atoms[index] = unit
    return from_decoder(atoms, hook_name="blocks.1.hook_resid_pre", model="synthetic")


def test_planted_feature_is_selected_on_train_and_separates_test_synthetic():
    n_q, n_opt, width = 120, 4, 24
    generator = torch.Generator().manual_seed(0)
    answers = torch.arange(n_q) % n_opt
    resid = torch.randn(n_q, n_opt, 1, width, generator=generator)
    planted = torch.zeros(width)
    planted[3] = 1.0
    resid[torch.arange(n_q), answers, 0] += 4.0 * planted  # the correct option's letter carries the feature
    acts = LetterActivations(resid, torch.randn(n_q, n_opt, generator=generator), [1], tuple("ABCD"), ["p"] * n_q)
    dictionary = _dictionary_with_planted_atom(planted, 64, index=17)
    report = classifier_report(acts, answers, dictionary=dictionary, probe_layer=1, n_random=30, n_bootstrap=200)
    assert report.top_features["decoder"][0] == 17
    best = report.rows[0]
    assert best.name.startswith("feature 17") and best.test_auroc >= 0.95 and best.test_mc_accuracy >= 0.9
    assert best.test_auroc_ci[0] <= best.test_auroc <= best.test_auroc_ci[1]
    random_mean = next(r for r in report.rows if r.group == "random")
    assert abs(random_mean.test_auroc - 0.5) < 0.08
    assert report.row("logistic probe (full residual)").test_auroc >= 0.9
    assert report.row("chance").test_mc_accuracy == 0.25
    assert "encoder" not in report.top_features  # a decoder-only dictionary has dot products only


def _plant_correct_letter(model, planted: torch.Tensor, layer: int) -> HookIntervention:
    """Add `planted` at the answer letter (resid_pre of `layer`) when it is the option the question's cue
    word names ("one" → A, ..., "four" → D). Layer 0's resid_pre is the embedding: it tells tokens apart.
    The KV-cached continuation sees only its own tokens, so the cue from the head pass is remembered."""
    from interp.hooked import plain_model

    embedding = plain_model(model).get_input_embeddings().weight.detach()
    vocab = model.tokenizer.get_vocab()
    cues = torch.stack([embedding[vocab[w]] for w in ("one", "two", "three", "four")])
    letters = torch.stack([embedding[vocab[w]] for w in "ABCD"])
    state: dict[str, torch.Tensor] = {}

    def matches(activation, table):  # [batch, seq, d] vs [k, d] -> [batch, seq, k]
        return torch.isclose(activation[:, :, None], table.to(activation.dtype), atol=1e-6).all(-1)

    def detect(activation, hook):
        cue = matches(activation, cues).any(1)  # [batch, 4]
        if bool(cue.any()):
            state["cue"] = cue.float().argmax(-1)
        letter = matches(activation[:, -1:], letters)[:, 0]
        state["letter"] = torch.where(letter.any(-1), letter.float().argmax(-1), torch.full_like(letter[:, 0], -1, dtype=torch.long))

    def plant(activation, hook):
        cue = state.get("cue")
        if cue is None or cue.shape[0] != activation.shape[0]:
            return None  # the shared prefix, before any question
        hit = (state["letter"] == cue).to(activation.dtype)
        added = activation.clone()
        added[:, -1] += hit[:, None] * planted.to(activation.dtype)
        return added

    return HookIntervention([("blocks.0.hook_resid_pre", detect), (f"blocks.{layer}.hook_resid_pre", plant)])


def _cue_questions(count: int) -> list[MultipleChoice]:
    cues, nouns = ("one", "two", "three", "four"), ("cat", "dog", "sea", "sun", "tree", "moon", "car")
    return [
        MultipleChoice(f"{'the ' * (i % 3)}what is {cues[i % 4]} {nouns[i % len(nouns)]} ?", ("red", "blue", "green", "sky"), i % 4)
        for i in range(count)
    ]


def test_planted_feature_end_to_end_through_a_tiny_model(letter_model):
    layer = 2
    planted = torch.zeros(32)
    planted[5] = 40.0
    questions = _cue_questions(48)
    plant = _plant_correct_letter(letter_model, planted, layer)
    acts = option_activations(letter_model, questions, [layer], batch_size=16, interventions=[plant], progress=False)
    # The cached path reads the same residuals as a plain forward on prompt + letter (with the plant).
    from interp.activations import collect_residuals
    from interp.steering import apply_all

    with apply_all(letter_model, plant):
        direct = collect_residuals(letter_model, [acts.prompts[0] + letter for letter in "ABCD"], [layer], progress=False)
    assert torch.allclose(direct[:, 0, 0], acts.resid[0, :, 0], atol=1e-4)

    answers = torch.tensor([q.answer for q in questions])
    dictionary = _dictionary_with_planted_atom(planted, 48, index=9)
    dictionary = type(dictionary)(dictionary.atoms, dictionary.norms, hook_name=f"blocks.{layer}.hook_resid_pre")
    report = classifier_report(acts, answers, dictionary=dictionary, n_random=20, n_bootstrap=200, seed=1)
    assert report.top_features["decoder"][0] == 9
    assert report.rows[0].test_auroc >= 0.95
    random_mean = next(r for r in report.rows if r.group == "random")
    assert abs(random_mean.test_auroc - 0.5) < 0.15


def test_sign_is_fixed_on_train_and_bootstrap_resamples_questions():
    answers = torch.arange(40) % 4
    scores = torch.zeros(40, 4, 2)
    scores[torch.arange(40), answers, 0] = -1.0  # low means correct: the sign flips on train
    scores[..., 1] = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    train, test = split_questions(40, 0.5, seed=0)
    assert len(set(train.tolist()) & set(test.tolist())) == 0 and len(train) + len(test) == 40
    fit = fit_on_train(scores[train], answers[train])
    assert fit.sign[0] == -1 and fit.train_auroc[0] == 1.0
    measured = measure_on_test(scores[test], answers[test], fit)
    assert measured["auroc"][0] == 1.0 and measured["mc_accuracy"][0] == 1.0 and measured["binary_accuracy"][0] == 1.0
    intervals = bootstrap_metrics(scores[test], answers[test], fit, n_bootstrap=100)
    assert intervals["auroc"].shape == (2, 2) and intervals["auroc"][0].tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# Loaders and bad input


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_loaders_read_both_csv_layouts(tmp_path):
    hendrycks = load_multiple_choice(_write(tmp_path / "virology_test.csv", '"Q, one",a,b,c,d,C\nQ2,a,b,c,d,A\n'))
    assert hendrycks[0] == MultipleChoice("Q, one", ("a", "b", "c", "d"), 2, "virology") and hendrycks[1].answer == 0
    headed = load_multiple_choice(_write(tmp_path / "anatomy_dev.csv", "question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,3\n"))
    assert headed[0].answer == 3 and headed[0].subject == "anatomy"


@pytest.mark.skipif(not SHARED_MMLU.is_dir(), reason="the shared MMLU folder is not on this machine")
def test_shared_mmlu_layout_uses_zero_based_indices():
    questions = load_multiple_choice(SHARED_MMLU / "dev")
    assert len(questions) > 200 and {q.answer for q in questions} == {0, 1, 2, 3}
    assert all(len(q.choices) == 4 for q in questions)


def test_bad_rows_name_the_file_and_row(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"short\.csv.*\n.*row 2: expected 6 fields, got 5"):
        load_multiple_choice(_write(tmp_path / "short.csv", "Q,a,b,c,d,A\nQ,a,b,c,B\n"))
    with pytest.raises(ValueError, match=r"letter\.csv.*\n.*row 1: answer 'E' is not a letter A-D"):
        load_multiple_choice(_write(tmp_path / "letter.csv", "Q,a,b,c,d,E\n"))
    with pytest.raises(ValueError, match="row 3: answer '7' is not an index 0-3"):
        load_multiple_choice(_write(tmp_path / "h.csv", "question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,1\nQ,a,b,c,d,7\n"))


def test_mismatched_widths_and_ragged_options_are_clear_errors(letter_model):
    acts = LetterActivations(torch.zeros(4, 4, 1, 32), torch.zeros(4, 4), [1], tuple("ABCD"), ["p"] * 4)
    narrow = from_decoder(torch.randn(8, 16), hook_name="blocks.1.hook_resid_pre")
    with pytest.raises(ValueError, match="width 16 does not match"):
        feature_scores(narrow, acts.resid[:, :, 0], "decoder")
    with pytest.raises(ValueError, match="width 16 does not match"):
        narrow.check_model(letter_model)
    with pytest.raises(ValueError, match=r"directions\['x'\]: width 16"):
        direction_scores({"x": Direction(torch.ones(16), layer=1, model="m", source="t")}, acts)
    with pytest.raises(ValueError, match="decoder-only"):
        feature_scores(narrow, torch.zeros(2, 16), "encoder")
    with pytest.raises(ValueError, match="same number of options"):
        option_activations(letter_model, [MultipleChoice("q", ("a", "b"), 0), MultipleChoice("q", ("a", "b", "c"), 0)], [1])
    with pytest.raises(ValueError, match="answers"):
        classifier_report(acts, torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# The experiment


def _tiny_sae_folder(folder: Path, layer: int, width: int = 32, n_atoms: int = 24) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    weights = {"W_enc": torch.randn(width, n_atoms, generator=generator), "b_enc": torch.zeros(n_atoms),
               "b_dec": torch.zeros(width), "W_dec": torch.randn(n_atoms, width, generator=generator)}
    save_file(weights, str(folder / "sae_weights.safetensors"))
    config = {"architecture": "standard", "d_in": width, "d_sae": n_atoms, "apply_b_dec_to_input": True,
              "normalize_activations": "none", "metadata": {"hook_name": f"blocks.{layer}.hook_resid_pre"}}
    (folder / "cfg.json").write_text(json.dumps(config))
    return folder


TINY = dict(n_questions=24, n_train_pairs=12, n_test_pairs=8, n_bootstrap=50, top_k=3, n_random=4,
            n_refusal_check=2, demo_samples=4, demo_lambdas=(0.0, 5.0), batch_size=16)


def test_experiment_smoke_on_a_tiny_model(letter_folder, tmp_path):
    from interp.experiments import load_registry, run_experiment

    assert "classifier" in load_registry()
    sae = _tiny_sae_folder(tmp_path / "sae", layer=1)
    folder = run_experiment("classifier", tmp_path / "out", model=str(letter_folder), dictionary=str(sae), **TINY)
    result = json.loads((folder / "result.json").read_text())
    (section,) = result["models"].values()
    assert section["layer"] == 1 and section["n_questions"] == 24
    groups = {row["group"] for row in section["classifiers"]["rows"]}
    assert {"feature", "random", "direction", "probe", "model", "chance", "biased"} <= groups
    names = [row["name"] for row in section["classifiers"]["rows"]]
    assert any("encoder pre-activation" in n for n in names) and any("decoder-atom" in n for n in names)
    assert "skipped" in section["refusal_direction"]  # a random model does not refuse
    assert set(section["probe_penalty_demo"]["by_lambda"]) == {"0.0", "5.0"}
    produced = {p.name for p in (folder / letter_folder.name).glob("*.png")}
    assert {"score_histograms.png", "roc_curves.png", "top_features.png", "probe_penalty_best_of_n.png"} <= produced
    summary = (folder / "summary.md").read_text()
    assert "test AUROC [95% CI]" in summary and "chosen on test" in summary


def test_experiment_without_a_dictionary_still_runs_the_baselines(letter_folder, tmp_path):
    from interp.experiments import run_experiment

    folder = run_experiment("classifier", tmp_path, model=str(letter_folder), layer=2,
                            **{**TINY, "n_bootstrap": 20, "demo_lambdas": (0.0,)})
    (section,) = json.loads((folder / "result.json").read_text())["models"].values()
    assert section["dictionary"].startswith("no SAE features scored")
    assert {row["group"] for row in section["classifiers"]["rows"]} == {"direction", "probe", "model", "chance"}


def test_the_classifier_experiment_reads_truthfulqa_as_its_question_set(tmp_path):
    from interp.datasets import bundled, load_truthfulqa
    from interp.experiments.classifier import ClassifierConfig, load_questions

    questions, source = load_questions(ClassifierConfig(truthfulqa="bundled"))
    assert questions == load_truthfulqa(bundled("truthfulqa_style.csv")) and source.startswith("TruthfulQA bundled")
    copy = tmp_path / "TruthfulQA.csv"
    copy.write_text(bundled("truthfulqa_style.csv").read_text())
    subset, source = load_questions(ClassifierConfig(truthfulqa=str(copy), n_questions=4, seed=1))
    assert len(subset) == 4 and str(copy) in source
    assert {q.question for q in subset} <= {q.question for q in load_truthfulqa(copy)}
    with pytest.raises(ValueError, match="mmlu_dir, truthfulqa"):
        load_questions(ClassifierConfig(truthfulqa="bundled", mmlu_dir=str(tmp_path)))
