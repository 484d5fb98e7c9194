"""The `sparse` experiment's pieces on a synthetic target (no model): reconstructions, tables, choices, errors.

Solver-level bad input (zero targets, NaNs, k > n_atoms, width) is covered in test_sparse.py; here only
what the experiment adds on top.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from interp.dictionaries import Dictionary, Encoder
from interp.directions import Direction
from interp.experiments import make_config
from interp.experiments.sparse import (
    METHODS,
    SparseExperimentConfig,
    Target,
    behaviour_table,
    best_small_k,
    check_config,
    cosine_table,
    dictionary_for,
    encoding_difference_code,
    find_refusal_direction,
    reconstruct,
    same_norm,
    summary_markdown,
)


def synthetic_target(n_atoms: int = 64, width: int = 24) -> Target:
    """A vector made of atoms 3 and 7 (+ a little noise), with encodings in which features 3 and 7 rise."""
    generator = torch.Generator().manual_seed(0)
    atoms = torch.randn(n_atoms, width, generator=generator)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    norms = torch.full((n_atoms,), 2.0)
    dictionary = Dictionary(atoms, norms, hook_name="blocks.1.hook_resid_pre", model="m",
                            encoder=Encoder(atoms.T.clone(), torch.zeros(n_atoms), torch.zeros(width)))
    vector = 3 * atoms[3] + 1.5 * atoms[7] + 0.01 * torch.randn(width, generator=generator)
    direction = Direction(vector, layer=1, model="m", source="caa")
    pos = torch.rand(10, n_atoms, generator=generator)
    pos[:, 3] += 2.0
    pos[:, 7] += 1.0
    neg = torch.rand(10, n_atoms, generator=generator)

    def measure(steer: Direction | None) -> dict[str, float]:
        # A stand-in behaviour: the projection on the true vector's unit direction.
        return {"effect": 0.0 if steer is None else float(steer.vector @ direction.unit().vector)}

    return Target("toy", direction, dictionary, pos, neg, measure, "effect", "projection", {"layer": 1})


def test_reconstructions_find_the_planted_atoms():
    target = synthetic_target()
    for method in ("ito", "omp", "fista", "ito_signed"):
        code = reconstruct(target, method, 2)
        assert set(code.indices[0].tolist()) == {3, 7}, method
        assert float(code.cosine[0]) > 0.999
    baseline = encoding_difference_code(target, 2)
    assert baseline.indices[0].tolist() == [3, 7] and baseline.method == "encdiff"
    # Decoded with the decoder rows (atom × norm 2) and the mean differences (~2 and ~1).
    assert float(baseline.coefficients[0, 0]) == pytest.approx(2 * float(target.pos_codes[:, 3].mean()
                                                                         - target.neg_codes[:, 3].mean()))
    rebuilt = same_norm(reconstruct(target, "ito", 1), target.direction)
    assert rebuilt.norm == pytest.approx(target.direction.norm, rel=1e-5)
    assert rebuilt.meta["parent"]["source"] == "caa" and rebuilt.meta["features"] == [3]


def test_tables_and_best_choice():
    target = synthetic_target()
    ks = [1, 2, 4]
    cosines = cosine_table(target, METHODS, ks)
    assert set(cosines) == set(METHODS)
    for method in METHODS:
        assert len(cosines[method]["cosine"]) == 3 and len(cosines[method]["features"][2]) == 4
    assert cosines["ito"]["cosine"][1] > cosines["ito"]["cosine"][0]
    method, k = best_small_k(cosines, ks, small_k=2)
    assert k == 2 and not method.endswith("_signed")
    measured = []
    counting = dataclasses.replace(target, measure=lambda steer: measured.append(steer) or target.measure(steer))
    behaviour = behaviour_table(counting, ["ito", "encdiff"], [1, 2], progress=False)
    # At k=1 both methods choose atom 3: the same vector at the same norm, steered with once.
    assert len(measured) == 3 and behaviour["encdiff"]["1"]["effect"] == behaviour["ito"]["1"]["effect"]
    assert behaviour["ito"]["2"]["effect"] == pytest.approx(target.direction.norm, rel=1e-3)
    assert behaviour["ito"]["1"]["effect"] < behaviour["ito"]["2"]["effect"]
    result = {
        "layer": 1, "dictionary": "toy", "ks": ks, "cosine": cosines, "effect_key": "effect", "effect_label": "projection",
        "unsteered": {"effect": 0.0}, "original": target.measure(target.direction), "behaviour": behaviour,
        "best_small_k": {"method": method, "k": k, "cosine": 1.0, "features": [3, 7]},
        "best_small_k_behaviour": {"method": "ito", "k": 2, **behaviour["ito"]["2"]},
        "max_activating": {"3": {"frequency": 0.1, "contexts": [{"value": 2.0, "text": "a «b» c"}]}},
    }
    config = SparseExperimentConfig(ks=(1, 2, 4), behaviour_ks=(1, 2), small_k=2)
    text = summary_markdown("m", {"toy": result}, {"refusal": "does not refuse"}, "bundled texts", config)
    assert "matches" in text or "beats" in text
    assert "refusal: skipped" in text and "«b»" in text


def test_bad_inputs(tiny_model, tmp_path):
    target = synthetic_target()
    with pytest.raises(ValueError, match="^k:"):
        encoding_difference_code(target, 65)  # k larger than the dictionary
    with pytest.raises(ValueError, match="^k:"):
        reconstruct(target, "omp", 65)
    zero = Target("zero", target.direction.with_vector(torch.zeros(24)), target.dictionary, target.pos_codes,
                  target.neg_codes, target.measure, "effect", "", {})
    with pytest.raises(ValueError, match="^targets: .*zero"):
        reconstruct(zero, "ito", 2)
    with pytest.raises(ValueError, match="NaN"):  # a saved vector with NaNs never becomes a target
        target.direction.with_vector(torch.full((24,), float("nan")))
    # A non-negative code of a vector anti-aligned with every atom is all zeros: no direction to steer with.
    flipped = target.dictionary.atoms.mean(0)
    lonely = Dictionary(torch.nn.functional.normalize(torch.stack([flipped, flipped + 0.1]), dim=1), torch.ones(2))
    negative = Target("neg", target.direction.with_vector(-flipped), lonely, target.pos_codes[:, :2],
                      target.neg_codes[:, :2], target.measure, "effect", "", {})
    with pytest.raises(ValueError, match="reconstruction is zero"):
        same_norm(reconstruct(negative, "ito", 1), negative.direction)
    # Config checks.
    for bad in (dict(methods=("lasso",)), dict(ks=(0,)), dict(behaviour_ks=(32,)), dict(small_k=0),
                dict(multiplier=float("nan"))):
        with pytest.raises(ValueError):
            check_config(SparseExperimentConfig(**bad))
    with pytest.raises(ValueError, match="unknown config fields"):
        make_config("sparse", nonsense=1)
    # A dictionary of another width than the model.
    from interp.sae_training import SparseAutoencoder, save_sae

    folder = save_sae(SparseAutoencoder(16, 32, "topk", k=4), tmp_path / "sae16", hook="blocks.1.hook_resid_pre",
                      model_name="tiny")
    with pytest.raises(ValueError, match="^dictionary: width 16"):
        dictionary_for(tiny_model, "tiny", 1, str(folder))


def test_refusal_direction_lookup(tmp_path):
    config = SparseExperimentConfig(model="m")
    out = tmp_path / "results" / "sparse"
    assert find_refusal_direction(config, out, "m")[0] is None
    saved = Direction(torch.ones(4), layer=2, model="m", source="diff_in_means", meta={"refusal_token_ids": [1]})
    saved.save(tmp_path / "results" / "refusal" / "direction")  # as `interp reproduce all` lays it out
    found, where = find_refusal_direction(config, out, "m")
    assert found is not None and found.layer == 2 and where.endswith("refusal/direction")
    assert find_refusal_direction(config, out, "other")[0] is None  # another model's direction is not used
    explicit = SparseExperimentConfig(refusal_direction=str(tmp_path / "results" / "refusal" / "direction"))
    with pytest.raises(ValueError, match="^refusal_direction:"):
        find_refusal_direction(explicit, out, "other")


def refuses_when_short(instruction: str, completion: str) -> bool:
    """A stand-in judge for the tiny model, which never refuses: any completion shorter than 12 characters."""
    return len(completion) < 12


def test_refusal_figure_on_the_tiny_model(tmp_path, monkeypatch):
    from interp.experiments.sparse_refusal import figure_claims, figure_markdown, refusal_figure
    from interp.hooked import d_model
    from interp.models import load_model, model_name

    from tiny_letters import make_letter_model_folder

    tiny_model = load_model(make_letter_model_folder(tmp_path / "model"), device="cpu")  # has the answer letters

    vector = torch.randn(d_model(tiny_model), generator=torch.Generator().manual_seed(1))
    direction = Direction(4.0 * vector / vector.norm(), layer=1, model=model_name(tiny_model), source="diff_in_means")

    def rebuild(method: str, k: int) -> Direction:
        # Same norm, as same_norm gives; the two methods agree at k=1 (as ITO and the encoding difference can)
        return direction.with_vector(direction.vector.roll(k if method == "ito" or k == 1 else k + 5))

    import interp.experiments.sparse_refusal as sparse_refusal

    measured_names: list[str] = []

    def counting_rates(model, directions, *args, **kwargs):
        measured_names.extend(directions)
        return sparse_refusal_rates(model, directions, *args, **kwargs)

    sparse_refusal_rates = sparse_refusal.refusal_rates_under
    monkeypatch.setattr(sparse_refusal, "refusal_rates_under", counting_rates)
    config = SparseExperimentConfig(figure_ks=(1, 2), figure_methods=("ito", "encdiff"), figure_new_tokens=4,
                                    n_figure_harmful=6, n_figure_harmless=5, skyline_steps=2, skyline_prompts=3,
                                    judge=f"{__name__}:refuses_when_short", batch_size=4, mmlu_ks=(2,))
    from interp.capability import CapabilityRow

    known = {"unsteered": CapabilityRow("unsteered", 0.125, (0.0, 0.5), 0.75, 8)}  # as if the refusal experiment's
    figure = refusal_figure(tiny_model, direction, rebuild, config, tmp_path, progress=False, known_accuracy=known)
    rows = figure["rows"]
    assert list(rows) == ["unsteered", "original", "skyline", "ito k=1", "ito k=2", "encdiff k=1", "encdiff k=2"]
    assert rows["unsteered"]["mmlu_ablated"] == 0.125 and rows["unsteered"]["mmlu_letter_mass"] == 0.75
    assert figure["accuracy_from_refusal_experiment"] == ["unsteered"]
    assert any("Accuracy of unsteered: the refusal experiment's" in line for line in figure_markdown(figure))
    # The same vector is measured once and reported under both names.
    assert measured_names == ["unsteered", "original", "skyline", "ito k=1", "ito k=2", "encdiff k=2"]
    assert rows["encdiff k=1"]["same_as"] == "ito k=1" and "same_as" not in rows["encdiff k=2"]
    assert rows["encdiff k=1"]["name"] == "encdiff k=1"
    assert {key: value for key, value in rows["encdiff k=1"].items() if key not in ("name", "same_as")} == {
        key: value for key, value in rows["ito k=1"].items() if key != "name"}
    for name, row in rows.items():
        assert row["n_harmful"] == 6 and row["n_harmless"] == 5 and row["n_questions"] > 0
        measured = ("harmful_ablated", "harmless_added") + (() if name.endswith("k=1") else ("mmlu_ablated",))
        for key in measured:
            low, high = row[f"{key}_ci95"]
            assert 0.0 <= low <= row[key] <= high <= 1.0
    # Accuracy is measured for the references and the reconstructions at mmlu_ks only; the table says so.
    assert rows["ito k=1"]["mmlu_ablated"] is None and rows["encdiff k=1"]["mmlu_ablated_ci95"] is None
    assert any(line.startswith("| ito k=1 |") and line.endswith("| — |") for line in figure_markdown(figure))
    assert figure["skyline"]["norm"] <= direction.norm + 1e-4  # bounded by the original's norm
    assert (tmp_path / "refusal_figure.png").stat().st_size > 0
    assert len(figure_claims(figure)) == 2 and any("| skyline |" in line for line in figure_markdown(figure))


def test_conditions_with_the_same_vector_are_measured_once():
    from interp.directions import first_with_same_vector

    vector = torch.randn(16, generator=torch.Generator().manual_seed(0))
    a = Direction(vector, layer=2, model="m", source="x")
    same = a.with_vector(vector * (1 + 1e-8))
    other_layer = Direction(vector.clone(), layer=3, model="m", source="x")
    longer = a.with_vector(vector * 2)
    other = a.with_vector(vector.roll(1))
    vectors = {"unsteered": None, "none too": None, "a": a, "b": other, "a again": same, "layer 3": other_layer,
               "twice a": longer, "b again": other.with_vector(other.vector.clone())}
    assert first_with_same_vector(vectors) == {
        "unsteered": "unsteered", "none too": "none too", "a": "a", "b": "b", "a again": "a", "layer 3": "layer 3",
        "twice a": "twice a", "b again": "b"}


def test_the_figure_reads_the_refusal_experiments_accuracy_only_for_its_own_direction(tmp_path):
    import json

    from interp.experiments.sparse_refusal import refusal_experiment_accuracy

    fit = {"position": -1, "ablation_score": -2.5, "kl": 0.07, "addition_score": -1.8}
    direction = Direction(torch.ones(8), layer=3, model="m", source="diff_in_means", meta=dict(fit))
    folder = tmp_path / "refusal"
    folder.mkdir()
    rows = [{"condition": "baseline", "accuracy": 0.27, "accuracy_ci95": [0.2, 0.35], "letter_mass": 0.99,
             "n_questions": 124, "text_loss": None},
            {"condition": "ablated", "accuracy": 0.25, "accuracy_ci95": [0.18, 0.33], "letter_mass": 0.98,
             "n_questions": 124, "text_loss": None}]
    result = {"config": {"model": "m", "mmlu_dir": None, "seed": 0}, "direction": {"layer": 3, **fit},
              "capability": {"questions": "bundled", "rows": rows}}
    (folder / "result.json").write_text(json.dumps(result))
    config = SparseExperimentConfig()
    out = tmp_path / "sparse"
    source = str(folder / "direction")
    known = refusal_experiment_accuracy(out, direction, source, config)
    assert set(known) == {"unsteered", "original"}
    assert (known["original"].accuracy, known["original"].accuracy_ci95, known["original"].n_questions) == (0.25, (0.18, 0.33), 124)
    # Another direction, other questions, another seed, a direction given elsewhere, or no readable run: measured here.
    assert refusal_experiment_accuracy(out, direction.with_vector(direction.vector, meta={**fit, "kl": 0.08}), source, config) == {}
    assert refusal_experiment_accuracy(out, direction, source, SparseExperimentConfig(mmlu_dir=str(tmp_path))) == {}
    assert refusal_experiment_accuracy(out, direction, source, SparseExperimentConfig(seed=1)) == {}
    assert refusal_experiment_accuracy(out, direction, str(tmp_path / "mine"), config) == {}
    (folder / "result.json").write_text("{not json")
    assert refusal_experiment_accuracy(out, direction, source, config) == {}


def test_refusal_figure_settings_are_checked():
    with pytest.raises(ValueError, match="figure_ks"):
        check_config(SparseExperimentConfig(figure_ks=(32,)))
    with pytest.raises(ValueError, match="mmlu_ks"):
        check_config(SparseExperimentConfig(figure_ks=(1, 2), mmlu_ks=(4,)))
    with pytest.raises(ValueError, match="judge"):
        from interp.refusal import load_judge

        load_judge("no_such_module_xyz:judge")


def test_the_refusal_self_explanation_verdict():
    from interp.experiments.sparse_explain import explanation_claims, explanation_markdown

    def explanations(texts: dict[float, str], best: float) -> dict:
        rows = [{"name": "refusal vector", "scale": s, "text": t, "self_similarity": 0.1, "entropy": 2.0}
                for s, t in texts.items()]
        return {"rows": rows, "best": {"refusal vector": best}, "hook": "blocks.2.hook_resid_pre", "unit_norm": 3.0}

    said = {1.0: "a kind of fruit", 4.0: "to refuse a request", 8.0: "I'm sorry, but I can't"}
    assert explanation_claims("refusal", explanations(said, 4.0))[0].agrees == "yes"
    assert explanation_claims("refusal", explanations(said, 1.0))[0].agrees == "partly"
    assert explanation_claims("refusal", explanations({1.0: "a fruit", 2.0: "a colour"}, 1.0))[0].agrees == "no"
    assert explanation_claims("sycophancy", explanations(said, 1.0)) == []
    assert any("★ 4" in line for line in explanation_markdown("refusal", explanations(said, 4.0)))
