"""Progress where a person waits: every experiment stage logs its time, steps past the threshold show a bar (on
stderr), `progress=` passes through experiments; long generations, corpus building and short SAE training say so."""

from __future__ import annotations

import json
import re

import pytest
import torch

import interp._timing
from interp.cli import main


@pytest.fixture
def no_delay(monkeypatch):
    """Every bar shows at once: the tiny model's steps all run under the ~2 s threshold."""
    monkeypatch.setattr(interp._timing, "PROGRESS_DELAY", 0.0)


def test_reproduce_steering_prints_progress_on_every_stage(tiny_folder, tmp_path, capsys, no_delay):
    args = ["reproduce", "steering", "--model", str(tiny_folder), "--device", "cpu", "--set", "multipliers=-0.5,0,0.5",
            "--set", "max_new_tokens=4"]
    assert main(args + ["--out", str(tmp_path / "on"), "--progress"]) == 0
    err = "\n".join(line.strip() for line in re.split(r"[\r\n]", re.sub(r"\x1b\[\w", "", capsys.readouterr().err)))
    stages = json.loads((tmp_path / "on" / "steering" / "result.json").read_text())["seconds_by_stage"]
    assert list(stages) == ["load", "directions", "log-odds sweep", "generations", "figures and directions"]
    for stage, seconds in stages.items():  # each stage, whatever it took, with its time
        assert re.search(rf"^steering · {re.escape(stage)}: \d+\.\d s \(total \d+\.\d s\)$", err, re.MULTILINE), stage
    assert re.search(r"^steering: done in \d+\.\d s$", err, re.MULTILINE)
    for bar in ("log-odds sweep (layers)", "steered generations", "generate ("):  # bars inside the stages
        assert bar in err, bar

    assert main(args + ["--out", str(tmp_path / "off"), "--no-progress"]) == 0
    quiet = capsys.readouterr().err
    assert "steering ·" not in quiet and "steered generations" not in quiet


def test_progress_passes_through_run_experiment(tiny_folder, tmp_path, capsys, monkeypatch):
    from interp.experiments import run_experiment

    seen = []
    import interp.experiments.steering_demo as steering

    real = steering.generate_with_row_biases
    monkeypatch.setattr(steering, "generate_with_row_biases", lambda *a, **k: seen.append(k["progress"]) or real(*a, **k))
    for flag in (True, False):
        run_experiment("steering", tmp_path / str(flag), progress=flag, model=str(tiny_folder), device="cpu",
                       multipliers=(0.0, 0.5), max_new_tokens=2)
    assert seen == [True, False]
    assert "steering · load" in capsys.readouterr().err
    with pytest.raises(TypeError, match="progress: expected True, False or None"):
        run_experiment("steering", tmp_path / "bad", progress="yes")
    assert not (tmp_path / "bad").exists()


def test_progress_is_off_under_the_test_suite_and_on_by_default(monkeypatch):
    assert not interp._timing.progress_on()  # conftest sets INTERP_PROGRESS=0
    monkeypatch.delenv("INTERP_PROGRESS")
    assert interp._timing.progress_on()
    with interp._timing.showing_progress(False):
        assert not interp._timing.progress_on()


def test_a_long_generate_shows_its_decoding_steps(tiny_model, capsys, no_delay):
    from interp.runner import generate

    quiet = generate(tiny_model, ["the cat sat"], max_new_tokens=5, progress=False, stop_at_eos=False)
    assert capsys.readouterr().err == ""
    assert generate(tiny_model, ["the cat sat"], max_new_tokens=5, stop_at_eos=False) == quiet  # the bar changes nothing
    assert "generate (1 × ≤5 tokens)" in capsys.readouterr().err


def test_corpus_generation_estimates_its_time_early(tiny_model, capsys, no_delay):
    from interp.corpus import build_corpus

    build_corpus(tiny_model, 400, instruction_tokens=4, response_tokens=6, batch_size=4, include_bundled=False)
    err = capsys.readouterr().err
    assert re.search(r"corpus: [\d,]+ tokens at [\d,]+ tokens/s; about [\d.,]+ min more for 400", err)
    assert "corpus tokens" in err and "generate (" in err


def test_too_short_sae_training_warns():
    from interp.sae_training import SAETrainingConfig, train_sae
    from interp.sae_training.trainer import UndertrainedSAEWarning, warn_if_undertrained

    with pytest.warns(UndertrainedSAEWarning, match=r"only 8 training steps \(< 200\)"):
        train_sae(torch.randn(512, 16), SAETrainingConfig(d_sae=32, k=4, batch_size=64), progress=False)
    with pytest.warns(UndertrainedSAEWarning, match=r"variance explained 0.18 on held-out text \(< 0.5\)"):
        warn_if_undertrained("blocks.3.hook_resid_pre", None, 0.18)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_undertrained("blocks.3.hook_resid_pre", 5000, 0.8)  # a real run: silent
