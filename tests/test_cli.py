import json
import subprocess
import sys

import pytest
import torch

from interp.cli import main
from interp.directions import Direction


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "qwen2.5-coder-0.5b-instruct" in out



def test_python_dash_m_runs_the_cli():
    """`make reproduce` runs `$(PYTHON) -m interp`, so the chosen interpreter's install is the one used."""
    done = subprocess.run([sys.executable, "-m", "interp", "models"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "smollm2-135m-instruct" in done.stdout

def test_generate_with_a_direction(tiny_folder, tmp_path, capsys):
    direction = Direction(torch.randn(32) * 5, layer=1, model=str(tiny_folder), source="random")
    direction.save(tmp_path / "d")
    args = ["generate", "--model", str(tiny_folder), "--prompt", "the cat sat on the", "--raw", "--max-new-tokens", "6", "--device", "cpu"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--direction", str(tmp_path / "d"), "--scale", "4"]) == 0
    steered = capsys.readouterr().out
    assert plain != steered


def test_generate_on_a_model_split_over_cpu_and_disk(tiny_folder, tmp_path, capsys, monkeypatch):
    import interp.models

    loaded = []
    real_load = interp.models.load_model
    monkeypatch.setattr(interp.models, "load_model", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    args = ["generate", "--model", str(tiny_folder), "--prompt", "the cat sat on the", "--raw", "--max-new-tokens", "6"]
    assert main(args + ["--device", "cpu"]) == 0
    whole = capsys.readouterr().out
    layers = {f"model.layers.{i}": "disk" if i == 1 else "cpu" for i in range(3)}
    device_map = {"model.embed_tokens": "cpu", **layers, "model.norm": "disk", "model.rotary_emb": "cpu", "lm_head": "disk"}
    split = args + ["--device-map", json.dumps(device_map), "--offload-folder", str(tmp_path / "offload")]
    assert main(split) == 0
    assert capsys.readouterr().out == whole
    assert loaded[-1].original_model.hf_device_map == device_map  # it really ran split


@pytest.mark.parametrize(("extra", "message"), [
    (["--device-map", "{not json"], "--device-map: expected a strategy such as auto or a JSON object"),
    (["--device-map", "[1, 2]"], "--device-map: expected a JSON object"),
    (["--device", "cpu", "--device-map", "auto"], "device, device_map: give one of them"),
    (["--offload-folder", "somewhere"], "offload_folder: only used with a device_map"),
])
def test_placement_flags_are_checked_before_loading(extra, message, capsys, monkeypatch):
    import interp.models

    monkeypatch.setattr(interp.models, "load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    assert main(["generate", "--model", "smollm2-135m-instruct", "--prompt", "hi", *extra]) == 2
    assert message in capsys.readouterr().err


def test_errors_are_clear(capsys, tmp_path):
    assert main(["generate", "--model", "no-such-model", "--prompt", "hi"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert main(["reproduce", "nope", "--out", str(tmp_path)]) == 2
    assert "experiment: unknown 'nope'" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.generation
def test_steering_experiment_writes_its_artifacts(smollm, tmp_path):
    from interp.experiments import run_experiment

    folder = run_experiment(
        "steering", tmp_path, layers=(13,), multipliers=(-0.25, 0.0, 0.25), max_new_tokens=6, device="cpu"
    )
    result = json.loads((folder / "result.json").read_text())
    assert result["best_layer"] == 13 and len(result["logodds"]["13"]) == 3
    assert (folder / "summary.md").read_text().startswith("# Activation addition")
    for figure in ("sentiment_logodds_vs_multiplier.png", "generation_word_rates.png"):
        assert (folder / figure).read_bytes()[:4] == b"\x89PNG"
    assert Direction.load(folder / "directions" / "layer13").layer == 13


def test_reproduce_all_loads_each_model_once(tiny_folder, monkeypatch):
    import interp.experiments.common as common

    loads = []
    monkeypatch.setattr(common, "load_model", lambda name, device=None: loads.append(name) or torch.nn.Linear(1, 1))
    monkeypatch.setattr(common, "has_active_hooks", lambda model: getattr(model, "hooked", False))
    assert common.experiment_model("a") is not common.experiment_model("a")  # outside the block: a fresh load each time
    loads.clear()
    with common.shared_models():
        first = common.experiment_model("a")
        assert common.experiment_model("a") is first and len(loads) == 1
        assert common.experiment_model("a", "cpu") is not first  # another device is another model
        first.hooked = True  # a hook left behind by an experiment: the next one gets a clean model
        assert common.experiment_model("a") is not first and loads == ["a", "a", "a"]
    assert common.experiment_model("a") is not common.experiment_model("a")


def test_reproduce_all_runs_what_an_experiment_reads_before_it():
    from interp.experiments import load_registry, run_order

    order = run_order(load_registry())
    assert sorted(order) == sorted(load_registry())
    assert order.index("refusal") < order.index("sparse") and order.index("sycophancy") < order.index("sparse")
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="^reads: experiments read each other in a cycle: a -> b -> a"):
        run_order({"a": SimpleNamespace(reads=("b",)), "b": SimpleNamespace(reads=("a",))})
