"""Bad inputs and faults, by category: each case names the argument (or file) and what was expected,
or does the obviously right thing. Saves never destroy what they did not write."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from interp._io import MARKER, PARTIAL_MARKER, ArtifactExistsError, atomic_write_dir, clean_partials
from interp.caa import CAAVectors
from interp.cli import main
from interp.dictionaries import from_decoder
from interp.directions import Direction
from interp.metrics import auroc
from interp.probes import train_probe


def a_direction(width: int = 8) -> Direction:
    return Direction(torch.arange(1.0, width + 1), layer=1, model="m", source="test")


def a_probe():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    return train_probe(x, (x[:, 0] > 0).long()).probe


def some_caa_vectors() -> CAAVectors:
    return CAAVectors(vectors=torch.randn(3, 8), resid_norm=torch.ones(3), model="m", n_pairs=4)


# ---------------------------------------------------------------------------------------------
# Saves never destroy
# ---------------------------------------------------------------------------------------------

SAVERS = {
    "direction": lambda tmp_path: (lambda path, **kw: a_direction().save(path, **kw)),
    "probe": lambda tmp_path: (lambda path, **kw: a_probe().save(path, **kw)),
    "CAA vectors": lambda tmp_path: (lambda path, **kw: some_caa_vectors().save(path, **kw)),
}


@pytest.mark.parametrize("kind", SAVERS)
def test_a_save_into_a_folder_of_other_files_is_refused_even_with_overwrite(kind, tmp_path):
    save = SAVERS[kind](tmp_path)
    results = tmp_path / "results"
    (results / "experiment").mkdir(parents=True)
    (results / "index.html").write_text("a report")
    for overwrite in (False, True):
        with pytest.raises(ArtifactExistsError, match="already holds other files"):
            save(results, overwrite=overwrite)
    assert (results / "index.html").read_text() == "a report" and (results / "experiment").is_dir()


@pytest.mark.parametrize("kind", SAVERS)
def test_a_save_onto_a_regular_file_is_refused(kind, tmp_path):
    save = SAVERS[kind](tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactExistsError, match="is a file"):
        save(tmp_path / "notes.txt", overwrite=True)
    with pytest.raises(ArtifactExistsError, match="which is a file"):
        save(tmp_path / "notes.txt" / "inside")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", SAVERS)
def test_the_same_kind_is_replaced_only_with_overwrite(kind, tmp_path):
    save = SAVERS[kind](tmp_path)
    save(tmp_path / "a")
    with pytest.raises(ArtifactExistsError, match="pass overwrite=True"):
        save(tmp_path / "a")
    save(tmp_path / "a", overwrite=True)
    assert json.loads((tmp_path / "a" / MARKER).read_text())["kind"] == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary folders left


def test_another_kind_or_an_extra_file_is_not_the_same_artifact(tmp_path):
    a_direction().save(tmp_path / "d")
    with pytest.raises(ArtifactExistsError, match="other files"):
        a_probe().save(tmp_path / "d", overwrite=True)
    (tmp_path / "d" / "my_notes.txt").write_text("keep me")
    with pytest.raises(ArtifactExistsError, match="other files"):
        a_direction().save(tmp_path / "d", overwrite=True)
    assert (tmp_path / "d" / "my_notes.txt").read_text() == "keep me"


def test_an_artifact_saved_before_markers_is_recognised(tmp_path):
    a_direction().save(tmp_path / "d")
    (tmp_path / "d" / MARKER).unlink()  # as interp < 0.2 wrote it
    with pytest.raises(ArtifactExistsError, match="pass overwrite=True"):
        a_direction().save(tmp_path / "d")
    a_direction(8).save(tmp_path / "d", overwrite=True)


def test_saved_artifacts_get_the_usual_permissions(tmp_path):
    """Temporary files and folders are private; the finished artifact is not (a report must be readable)."""
    import matplotlib.pyplot as plt

    from interp._io import atomic_write_text
    from interp.plots import save_figure

    umask = os.umask(0o022)
    try:
        a_direction().save(tmp_path / "d")
        atomic_write_text(tmp_path / "index.html", "<html></html>")
        save_figure(plt.figure(), tmp_path / "figure.png")
    finally:
        os.umask(umask)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "index.html").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "figure.png").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "figure.png", "index.html"]


def test_an_empty_folder_is_written_into(tmp_path):
    (tmp_path / "empty").mkdir()
    a_direction().save(tmp_path / "empty")
    assert Direction.load(tmp_path / "empty").layer == 1


def test_a_failed_write_keeps_the_old_copy_and_leaves_nothing(tmp_path):
    a_direction().save(tmp_path / "d")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write_dir(tmp_path / "d", "direction", overwrite=True):
            raise RuntimeError("boom")
    assert torch.equal(Direction.load(tmp_path / "d").vector, a_direction().vector)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def plant_partial(folder: Path, target: str, pid: int) -> Path:
    """A temporary folder as a killed write of `target` by process `pid` leaves it (marked as interp marks it)."""
    folder.mkdir()
    record = {"pid": pid, "host": socket.gethostname(), "target": target}
    (folder / PARTIAL_MARKER).write_text(json.dumps(record))
    return folder


def test_leftovers_of_a_killed_write_are_removed_by_the_next_one(tmp_path):
    dead = plant_partial(tmp_path / ".d.interp-partial-999999999-x1", "d", 999999999)  # no such process
    live = plant_partial(tmp_path / f".d.interp-partial-{os.getpid()}-x2", "d", os.getpid())  # a write in progress
    unmarked = tmp_path / ".d.interp-partial-999999999-x4"  # not proven ours: kept (it used to be removed)
    legacy = tmp_path / ".d.tmp-abc"  # what older versions named theirs, or a user's: kept (it used to be removed)
    other = plant_partial(tmp_path / ".dx.interp-partial-999999999-x3", "dx", 999999999)  # another artifact's
    for folder in (unmarked, legacy):
        folder.mkdir()
    a_direction().save(tmp_path / "d")
    assert not dead.exists() and live.exists() and unmarked.exists() and legacy.exists() and other.exists()
    clean_partials(tmp_path / "dx")
    assert not other.exists()


def test_hf_model_and_sae_saves_refuse_other_files(tiny_folder, tmp_path):
    from interp.models import load_hf
    from interp.sae_training import SAETrainingConfig, save_sae, train_sae
    from interp.weight_edit import save_hf_model

    hf, tokenizer = load_hf(tiny_folder, device="cpu")
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(ArtifactExistsError, match="other files"):
        save_hf_model(hf, tmp_path, tokenizer, overwrite=True)
    save_hf_model(hf, tmp_path / "model", tokenizer)
    with pytest.raises(ArtifactExistsError, match="pass overwrite=True"):
        save_hf_model(hf, tmp_path / "model", tokenizer)
    sae, _ = train_sae(torch.randn(256, 8), SAETrainingConfig(d_sae=16, k=2, batch_size=64, epochs=1), progress=False)
    with pytest.raises(ArtifactExistsError, match="other files"):
        save_sae(sae, tmp_path / "model", hook="blocks.0.hook_resid_pre", model_name="m", overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep"


# ---------------------------------------------------------------------------------------------
# The CLI: every option checked before any work, one line per error
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: validation must come first."""
    import interp.models
    from interp.experiments import load_registry

    load_registry()  # imported now, so no experiment module binds the stand-in below for good

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(interp.models, "load_model", refuse)
    monkeypatch.setattr(interp.models, "load_hf", refuse)


CLI_CASES = [
    (["reproduce", "steering", "--set", "max_new_tokens=abc"], "--set max_new_tokens: expected a whole number, got 'abc'"),
    (["reproduce", "steering", "--set", "layers=abc"], "--set layers: expected a whole number, got 'abc'"),
    (["reproduce", "steering", "--set", "multipliers=[0.1, x]"], "--set multipliers: expected a list"),
    (["reproduce", "steering", "--set", "no_such_field=1"], "--set no_such_field: not a setting of steering"),
    (["reproduce", "steering", "--set", "novalue"], "--set: expected KEY=VALUE"),
    (["reproduce", "all", "--set", "batch_size=8"], "--set batch_size: not a setting of melbo, steering"),
    (["reproduce", "refusal", "--set", "keep_model=maybe"], "--set keep_model: expected true or false"),
    (["reproduce", "steering", "--set", "seed=1.5"], "--set seed: expected a whole number"),
    (["reproduce", "refusal", "--set", "kl_threshold=nan"], "--set kl_threshold: expected a finite number"),
    (["reproduce", "steering", "--set", "device=gpu9"], "--set device: expected a device such as 'cpu'"),
    (["generate", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens: expected >= 1, got 0"),
    (["generate", "--prompt", "hi", "--scale", "3"], "--layer, --scale, --unit and --compare need --direction"),
    (["generate", "--prompt", "hi", "--temperature", "0"], "--temperature: expected a number > 0"),
    (["generate", "--prompt", "hi", "--direction", "/no/such/folder"], "Direction.load: /no/such/folder must be a folder"),
]
if not torch.cuda.is_available():
    CLI_CASES += [
        (["reproduce", "steering", "--device", "cuda"], "--device: 'cuda' was asked for, but this torch"),
        (["generate", "--prompt", "hi", "--device", "cuda"], "--device: 'cuda' was asked for"),
        (["train-sae", "--layers", "1", "--device", "cuda"], "--device: 'cuda' was asked for"),
    ]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(a)[:60] for a, _ in CLI_CASES])
def test_cli_rejects_bad_options_before_any_work(argv, message, no_model_loads, tmp_path, capsys):
    out = ["--out", str(tmp_path / "results")] if argv[0] == "reproduce" else []
    assert main(argv + out) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error


def test_cli_out_must_be_a_folder_of_previous_runs(no_model_loads, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["reproduce", "steering", "--out", str(tmp_path / "file" / "results")]) == 2
    assert "which is a file" in capsys.readouterr().err
    (tmp_path / "results" / "steering").mkdir(parents=True)
    (tmp_path / "results" / "steering" / "thesis.tex").write_text("mine")
    assert main(["reproduce", "steering", "--out", str(tmp_path / "results")]) == 2
    assert "not a previous steering run" in capsys.readouterr().err
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<html>my homepage</html>")
    assert main(["reproduce", "steering", "--out", str(tmp_path / "site")]) == 2
    assert "is not an interp report" in capsys.readouterr().err
    assert (tmp_path / "site" / "index.html").read_text() == "<html>my homepage</html>"


def test_train_sae_checks_its_output_before_loading(no_model_loads, tmp_path, capsys):
    target = tmp_path / "blocks.1.hook_resid_pre"
    target.mkdir()
    (target / "other.bin").write_bytes(b"x")
    assert main(["train-sae", "--layers", "1", "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "already holds other files" in capsys.readouterr().err


def test_debug_shows_the_traceback(no_model_loads, tmp_path):
    with pytest.raises(ValueError, match="expected a whole number"):
        main(["--debug", "reproduce", "steering", "--set", "seed=x", "--out", str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# The library: silently wrong results and raw errors become clear errors naming the argument or file
# ---------------------------------------------------------------------------------------------


def saved_direction(tmp_path: Path, edit=None) -> Path:
    a_direction().save(tmp_path / "d")
    if edit is not None:
        edit(tmp_path / "d")
    return tmp_path / "d"


def edit_json(name: str, change):
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return edit


def replace_text(name: str, old: str, new: str):
    def edit(folder: Path) -> None:
        text = (folder / name).read_text()
        assert old in text
        (folder / name).write_text(text.replace(old, new))

    return edit


def truncate(name: str):
    def edit(folder: Path) -> None:
        (folder / name).write_bytes((folder / name).read_bytes()[:20])

    return edit


def saved_sae(tmp_path: Path, edit=None) -> Path:
    from interp.sae_training import SAETrainingConfig, save_sae, train_sae

    sae, _ = train_sae(torch.randn(256, 8), SAETrainingConfig(d_sae=16, k=2, batch_size=64, epochs=1), progress=False)
    folder = save_sae(sae, tmp_path / "sae", hook="blocks.1.hook_resid_pre", model_name="m", dtype=torch.float32)
    if edit is not None:
        edit(folder)
    return folder


def shorter_b_enc(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights["b_enc"] = weights["b_enc"][:-1].contiguous()
    save_file(weights, str(folder / "sae_weights.safetensors"))


def load_sae(folder: Path, verify: bool = False) -> None:
    """Edited on purpose (`verify=False`): the edited values are checked as new input."""
    from interp.dictionaries import from_saelens_folder

    from_saelens_folder(folder, verify=verify)


def load_direction(folder: Path, verify: bool = False) -> Direction:
    """Edited on purpose (`verify=False`): the edited values are checked as new input."""
    return Direction.load(folder, verify=verify)


def steer(**kwargs):
    from interp.steering import Steer

    return lambda tmp_path, model: Steer(a_direction(), **kwargs)


def gen(prompts, **kwargs):
    from interp.runner import generate

    settings = {"max_new_tokens": 2, "progress": False, **kwargs}
    return lambda tmp_path, model: generate(model, prompts, **settings)


def residuals(**kwargs):
    from interp.activations import collect_residuals
    from interp.chat import format_chats

    return lambda tmp_path, model: collect_residuals(model, format_chats(model, ["hello", "yes"]), [1], progress=False, **kwargs)


def binary_jsonl(tmp_path: Path, model) -> None:
    from interp.datasets import load_ab_pairs

    (tmp_path / "pairs.jsonl").write_bytes(bytes(range(256)) * 4)
    load_ab_pairs(tmp_path / "pairs.jsonl")


def one_class_validation(tmp_path: Path, model) -> None:
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    train_probe(x, torch.tensor([0, 1] * 5), validation_fraction=0.1)  # one validation row: one class


LIBRARY_CASES = {
    # silently wrong before
    "Steer(scale=nan)": (steer(scale=float("nan")), ValueError, "scale: expected a finite number"),
    "Steer(scale=inf)": (steer(scale=float("inf")), ValueError, "scale: expected a finite number"),
    "Direction(layer=True)": (lambda t, m: Direction(torch.ones(3), layer=True, model="m", source="s"), ValueError,
                              "Direction.layer: expected a non-negative int"),
    "empty vector": (lambda t, m: Direction(torch.zeros(0), layer=0, model="m", source="s"), ValueError, "d_model >= 1"),
    "layer 3.7 in direction.json": (lambda t, m: load_direction(saved_direction(t, edit_json("direction.json", lambda d: d.update(layer=3.7)))),
                                    ValueError, "direction.json: layer: expected a whole number, got 3.7"),
    "edited d_model in direction.json": (lambda t, m: load_direction(saved_direction(t, edit_json("direction.json", lambda d: d.update(d_model=9)))),
                                         ValueError, "d_model 9 does not match"),
    "edited d_in in cfg.json": (lambda t, m: load_sae(saved_sae(t, edit_json("cfg.json", lambda d: d.update(d_in=9)))),
                                ValueError, "the config says d_in = 9 but the weights have 8"),
    "malformed hook_name in cfg.json": (lambda t, m: load_sae(saved_sae(t, edit_json("cfg.json", lambda d: d["metadata"].update(hook_name=7)))),
                                        ValueError, "hook_name: expected 'blocks.{layer}.hook_...', got 7"),
    "a dictionary's layer beyond the model": (lambda t, m: from_decoder(torch.randn(4, 32), hook_name="blocks.99.hook_resid_pre").check_model(m),
                                              ValueError, "dictionary: layer 99 is out of range for a model with 3 layers"),
    "edited layer, recorded SHA-256": (lambda t, m: Direction.load(saved_direction(t, replace_text("direction.json", '"layer": 1', '"layer": 2'))),
                                       ValueError, "direction.json does not match its recorded SHA-256: edited or corrupt; pass verify=False"),
    "edited hook_name, recorded SHA-256": (lambda t, m: load_sae(saved_sae(t, replace_text("cfg.json", "blocks.1.", "blocks.2.")), verify=True),
                                           ValueError, "cfg.json does not match its recorded SHA-256"),
    "auroc label 2": (lambda t, m: auroc(torch.randn(4), torch.tensor([0, 1, 2, 1])), ValueError, r"labels: expected 0/1 \(or bools\), got \[2\]"),
    "float position tensor": (residuals(positions=torch.tensor([[1.7], [0.2]])), ValueError, "positions: an index tensor must hold integers"),
    "collect_residuals(dtype=int64)": (residuals(dtype=torch.int64), ValueError, "dtype: expected a floating-point torch.dtype"),
    "one-class validation split": (one_class_validation, ValueError, "the validation split holds one class only"),
    # raw or misleading errors before
    "truncated direction.json": (lambda t, m: load_direction(saved_direction(t, truncate("direction.json"))), ValueError,
                                 "direction.json: not valid JSON"),
    "missing key in direction.json": (lambda t, m: load_direction(saved_direction(t, edit_json("direction.json", lambda d: d.pop("layer")))),
                                      ValueError, r"direction.json: missing \['layer'\]"),
    "corrupt tensor file": (lambda t, m: load_direction(saved_direction(t, truncate("direction.safetensors"))), ValueError,
                            "direction.safetensors: not a readable safetensors file"),
    "truncated cfg.json": (lambda t, m: load_sae(saved_sae(t, truncate("cfg.json"))), ValueError, "cfg.json: not valid JSON"),
    "wrong-length b_enc": (lambda t, m: load_sae(saved_sae(t, shorter_b_enc)), ValueError, r"b_enc: expected shape \[16\]"),
    "k larger than the dictionary": (lambda t, m: load_sae(saved_sae(t, edit_json("cfg.json", lambda d: d.update(k=99)))),
                                     ValueError, "k: expected a whole number from 1 to d_sae = 16, got 99"),
    "binary garbage as JSONL": (binary_jsonl, ValueError, "not UTF-8 text"),
    'Steer(scale="30")': (steer(scale="30"), ValueError, "scale: expected a finite number, got '30'"),
    "generate(batch_size=0)": (gen(["hello"], batch_size=0), ValueError, "batch_size: expected a whole number >= 1, got 0"),
    "generate(max_new_tokens=2.5)": (gen(["hello"], max_new_tokens=2.5), ValueError, "max_new_tokens: expected a whole number >= 1"),
    "int tensor as a Direction (.unit())": (lambda t, m: Direction(torch.tensor([3, 4]), layer=0, model="m", source="s").unit(),
                                            TypeError, "Direction.vector: expected a floating-point tensor, got a torch.int64 tensor"),
    "int tensors to train_probe": (lambda t, m: train_probe(torch.ones(8, 3, dtype=torch.int64), torch.tensor([0, 1] * 4)),
                                   TypeError, "x: expected a floating-point tensor"),
}


@pytest.mark.parametrize("case", LIBRARY_CASES)
def test_library_bad_inputs(case, tmp_path, tiny_model):
    function, error, message = LIBRARY_CASES[case]
    with pytest.raises(error, match=message):
        function(tmp_path, tiny_model)


def test_a_bare_string_is_one_prompt(tiny_model):
    from interp.runner import generate

    assert len(generate(tiny_model, "hello", max_new_tokens=2, progress=False)) == 1


def test_ablate_takes_one_hook_name_as_a_string(tiny_model):
    from interp.steering import Ablate

    direction = Direction(torch.ones(32), layer=1, model="m", source="s")
    ablate = Ablate(direction, hook_names="blocks.1.hook_resid_pre", allow_other_model=True)
    assert ablate.hook_names == ("blocks.1.hook_resid_pre",)
    assert [name for name, _ in ablate.hooks(tiny_model, None)] == ["blocks.1.hook_resid_pre"]


def test_orthogonalize_with_a_zero_vector_leaves_the_model_alone(tiny_folder):
    from interp.models import load_hf
    from interp.weight_edit import orthogonalize_weights

    hf, _ = load_hf(tiny_folder, device="cpu")
    hf.config.tie_word_embeddings = True
    hf.lm_head.weight = hf.model.embed_tokens.weight  # tied, as in SmolLM2: untying would change the model
    before = {name: tensor.clone() for name, tensor in hf.state_dict().items()}
    zero = Direction(torch.zeros(hf.config.hidden_size), layer=0, model="m", source="s")
    with pytest.raises(ValueError, match="zero"):
        orthogonalize_weights(hf, zero, allow_other_model=True)
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    assert all(torch.equal(before[name], tensor) for name, tensor in hf.state_dict().items())
