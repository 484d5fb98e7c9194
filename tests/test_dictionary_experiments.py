"""`interp reproduce sparse` and `interp reproduce classifier` with `--set dictionary=PATH`, end to end on the tests'
tiny letter model: a saved SAE-Lens skip transcoder (reads resid_mid of block 1, writes its mlp_out) and a
sparsify-format SAE (a `layers.0` hookpoint: block 0's output), both random and made here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tiny_letters import make_letter_model_folder

WIDTH, N_ATOMS = 32, 64
pytestmark = pytest.mark.usefixtures("single_thread")


def randn(*shape: int, seed: int, scale: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def saved_transcoder(folder: Path) -> Path:
    """What SAE-Lens's `SkipTranscoder.save_model` writes (cfg.json + sae_weights.safetensors)."""
    folder.mkdir(parents=True)
    save_file({"W_enc": randn(WIDTH, N_ATOMS, seed=1), "b_enc": randn(N_ATOMS, seed=2, scale=0.05),
               "W_dec": randn(N_ATOMS, WIDTH, seed=3), "b_dec": randn(WIDTH, seed=4, scale=0.05),
               "W_skip": randn(WIDTH, WIDTH, seed=5, scale=0.05)}, str(folder / "sae_weights.safetensors"))
    config = {"architecture": "skip_transcoder", "d_in": WIDTH, "d_sae": N_ATOMS, "d_out": WIDTH,
              "apply_b_dec_to_input": False, "normalize_activations": "none",
              "metadata": {"hook_name": "blocks.1.hook_resid_mid", "hook_name_out": "blocks.1.hook_mlp_out"}}
    (folder / "cfg.json").write_text(json.dumps(config))
    return folder


def sparsify_sae(root: Path) -> Path:
    """What sparsify's `SparseCoder.save_to_disk` writes for the hookpoint `layers.0`."""
    folder = root / "layers.0"
    folder.mkdir(parents=True)
    save_file({"encoder.weight": randn(N_ATOMS, WIDTH, seed=6), "encoder.bias": torch.zeros(N_ATOMS),
               "W_dec": randn(N_ATOMS, WIDTH, seed=7), "b_dec": torch.zeros(WIDTH)}, str(folder / "sae.safetensors"))
    config = {"activation": "topk", "expansion_factor": 2, "normalize_decoder": True, "num_latents": N_ATOMS, "k": 8,
              "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": WIDTH}
    (folder / "cfg.json").write_text(json.dumps(config))
    return root  # the repository root: one hookpoint inside


@pytest.fixture(scope="module")
def letter_folder(tmp_path_factory) -> Path:
    return make_letter_model_folder(tmp_path_factory.mktemp("tiny-letters-dictionaries"))


def reproduce(name: str, out: Path, model: Path, dictionary: Path, **settings: object) -> dict:
    from interp.cli import main

    arguments = ["reproduce", name, "--out", str(out), "--set", f"model={model}", "--set", f"dictionary={dictionary}"]
    for key, value in settings.items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        arguments += ["--set", f"{key}={text}"]
    assert main(arguments) == 0
    return json.loads((out / name / "result.json").read_text())


SPARSE = dict(n_train=8, n_test=6, n_format_pairs=4, ks=(1, 2), behaviour_ks=(1, 2), figure_ks=(1, 2), mmlu_ks=(2,), small_k=2,
              n_corpus=8, n_examples=2, refusal_figure=False, batch_size=8)
CLASSIFIER = dict(n_questions=16, n_train_pairs=8, n_test_pairs=6, n_bootstrap=20, top_k=3, n_random=4,
                  n_refusal_check=2, demo_samples=2, demo_lambdas=(0.0,), batch_size=16)


@pytest.mark.parametrize("kind", ["transcoder", "sparsify SAE"])
def test_sparse_and_classifier_experiments_run_on_each_kind(kind, letter_folder, tmp_path):
    dictionary = saved_transcoder(tmp_path / "tc") if kind == "transcoder" else sparsify_sae(tmp_path / "repo")
    sparse = reproduce("sparse", tmp_path / "sparse", letter_folder, dictionary,
                       self_explain=kind == "transcoder", **SPARSE)
    target = sparse["models"][next(iter(sparse["models"]))]["targets"]["sycophancy"] if "models" in sparse else \
        sparse["targets"]["sycophancy"]
    # Atoms written at mlp_out of block 1 (the transcoder) or at block 0's output land at resid_pre 2 and 1.
    assert target["layer"] == (2 if kind == "transcoder" else 1)
    assert target["best_small_k"]["k"] <= 2 and len(target["max_activating"]) >= 1
    assert ("encdiff" in target["cosine"]) == (kind != "transcoder")  # a transcoder does not read resid_pre
    assert ("transcoder" in target["dictionary"]) == (kind == "transcoder")
    classifier = reproduce("classifier", tmp_path / "classifier", letter_folder, dictionary, **CLASSIFIER)
    (section,) = classifier["models"].values()
    assert section["layer"] == (1 if kind == "transcoder" else 0)
    assert section["site"] == ("resid_mid" if kind == "transcoder" else "resid_post")
    names = [row["name"] for row in section["classifiers"]["rows"]]
    assert any("encoder pre-activation" in name for name in names)
    assert any("decoder-atom" in name for name in names) == (kind != "transcoder")


def test_a_wrong_dictionary_is_refused_before_the_model_loads(letter_folder, tmp_path, monkeypatch, capsys):
    import interp.experiments.common as common
    from interp.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(common, "load_model", no_model)
    wide = tmp_path / "wide"
    wide.mkdir()
    save_file({"W_dec": randn(8, 48, seed=1)}, str(wide / "d.safetensors"))
    for name in ("sparse", "classifier"):
        code = main(["reproduce", name, "--out", str(tmp_path / name), "--set", f"model={letter_folder}",
                     "--set", f"dictionary={wide / 'd.safetensors'}", "--set", "layer=1"])
        assert code == 2
        assert "width 48 does not match the model's d_model 32" in capsys.readouterr().err
