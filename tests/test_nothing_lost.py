"""Nothing interp did not make is ever deleted: user folders and backups with every name pattern the code
knows survive every load, save and failure path (issue 25, item 1).

Beside each artifact we plant what a user may keep there: backups named like interp's old temporary siblings
(`.NAME.old-dec01/`, `.NAME.tmp-1`), folders and files named like interp's current ones but not proven to
be interp's (no partial marker, a marker from another host, a malformed one), and a temporary folder of a
live writer. Interp may remove one thing only: a temporary folder carrying its partial marker whose writer
is dead, and only when it writes that artifact again.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import interp.models as models
from interp._io import MARKER, PARTIAL_MARKER, ArtifactExistsError, atomic_file, atomic_write_dir, remove_artifact
from interp.activation_shards import collect_residuals_to_shards, open_residual_shards
from interp.caa import CAAVectors
from interp.dictionaries import load_dictionary
from interp.directions import Direction
from interp.models import load_model
from interp.probes import LinearProbe, train_probe

from test_models import _fake_cache

DEAD = 999_999_999  # no such process


def plant_bystanders(folder: Path, name: str) -> dict[Path, bytes]:
    """A user's things beside the artifact `folder/name`, by every pattern interp's code has known."""
    planted: dict[Path, bytes] = {}

    def put(relative: str, content: bytes = b"mine") -> None:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        planted[path] = content

    put(f".{name}.old-dec01/results.csv")  # a user's backup folder (interp < 0.2 named its leftovers so)
    put(f".{name}.old-v1/cfg.json")
    put(f".{name}.tmp-1/notes.txt")
    put(f".{name}.tmp-abc")  # a file
    put(f".{name}.old-2024")
    put(f".{name}.interp-partial-{DEAD}-abc/weights.bin")  # interp's name, but no partial marker
    put(f".{name}.interp-partial-{DEAD}-abcd1234.json", b"{}")  # a file named as mkstemp named ours
    put(f".{name}.interp-partial-{DEAD}-abcd1234{Path(name).suffix}")
    put(f".{name}.interp-partial-{DEAD}-other/{PARTIAL_MARKER}",  # a marker from another machine
        json.dumps({"pid": DEAD, "host": socket.gethostname() + "-elsewhere", "target": name}).encode())
    put(f".{name}.interp-partial-{DEAD}-bad/{PARTIAL_MARKER}", b'{"pid": "999999999"')  # unreadable marker
    put(f".{name}.interp-partial-{DEAD}-wrong/{PARTIAL_MARKER}",  # another artifact's marker
        json.dumps({"pid": DEAD, "host": socket.gethostname(), "target": "x" + name}).encode())
    put(f".{name}.interp-partial-{os.getpid()}-live/{PARTIAL_MARKER}",  # a write in progress (this process)
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "target": name}).encode())
    put(f".{name}.interp-partial-{os.getppid()}-parent/{PARTIAL_MARKER}",  # a live process's
        json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "target": name}).encode())
    put(f".{name}/keep.txt")
    put(f"{name}.bak/keep.txt")
    return planted


def plant_dead_partial(folder: Path, name: str) -> Path:
    """What a killed write of `folder/name` leaves: interp's partial marker, a dead writer on this host."""
    leftover = folder / f".{name}.interp-partial-{DEAD}-killed"
    leftover.mkdir(parents=True)
    (leftover / PARTIAL_MARKER).write_text(json.dumps({"pid": DEAD, "host": socket.gethostname(), "target": name}))
    (leftover / "half.safetensors").write_bytes(b"x" * 64)
    return leftover


def assert_intact(planted: dict[Path, bytes]) -> None:
    lost = [str(path) for path, content in planted.items() if not path.is_file() or path.read_bytes() != content]
    assert not lost, f"lost or changed: {lost}"


# ---------------------------------------------------------------------------------------------
# Artifacts: save, load, overwrite, failed save, failed load
# ---------------------------------------------------------------------------------------------


def a_direction() -> Direction:
    return Direction(torch.arange(1.0, 9.0), layer=1, model="m", source="test")


def a_probe() -> LinearProbe:
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    return train_probe(x, (x[:, 0] > 0).long()).probe


def some_caa_vectors() -> CAAVectors:
    return CAAVectors(vectors=torch.randn(3, 8), resid_norm=torch.ones(3), model="m", n_pairs=4)


def save_an_sae(path: Path, overwrite: bool = False) -> Path:
    from interp.sae_training import SAETrainingConfig, save_sae, train_sae

    sae, _ = train_sae(torch.randn(128, 8, generator=torch.Generator().manual_seed(0)),
                       SAETrainingConfig(d_sae=16, k=2, batch_size=64, epochs=1), progress=False)
    return save_sae(sae, path, hook="blocks.1.hook_resid_pre", model_name="m", dtype=torch.float32, overwrite=overwrite)


# kind -> (save(path, overwrite), load(path), the file a failed load finds damaged)
ARTIFACTS: dict[str, tuple[Callable[..., object], Callable[[Path], object], str]] = {
    "direction": (lambda path, overwrite=False: a_direction().save(path, overwrite=overwrite), Direction.load,
                  "direction.safetensors"),
    "CAA vectors": (lambda path, overwrite=False: some_caa_vectors().save(path, overwrite=overwrite), CAAVectors.load,
                    "caa.json"),
    "probe": (lambda path, overwrite=False: a_probe().save(path, overwrite=overwrite), LinearProbe.load, "probe.json"),
    "SAE": (save_an_sae, load_dictionary, "sae_weights.safetensors"),
}


@pytest.mark.parametrize("kind", ARTIFACTS)
def test_bystanders_survive_every_save_load_and_failure(kind, tmp_path):
    save, load, damaged = ARTIFACTS[kind]
    planted = plant_bystanders(tmp_path, "results")
    target = tmp_path / "results"
    save(target)
    assert_intact(planted)
    load(target)
    assert_intact(planted)
    save(target, overwrite=True)
    assert_intact(planted)
    with pytest.raises(ArtifactExistsError):  # a failed save: the target is taken
        save(target)
    assert_intact(planted)
    user_folder = tmp_path / "mine"
    (user_folder / "data").mkdir(parents=True)
    (user_folder / "data" / "x.csv").write_text("1,2")
    with pytest.raises(ArtifactExistsError, match="other files"):
        save(user_folder, overwrite=True)
    assert (user_folder / "data" / "x.csv").read_text() == "1,2"
    with pytest.raises(RuntimeError, match="boom"):  # a save that fails half-way
        with atomic_write_dir(target, kind, overwrite=True):
            raise RuntimeError("boom")
    assert_intact(planted)
    load(target)
    (target / damaged).write_bytes((target / damaged).read_bytes()[:10])  # a failed load
    with pytest.raises((ValueError, FileNotFoundError)):
        load(target)
    assert_intact(planted)
    assert (target / damaged).stat().st_size == 10  # loads never change what they read


@pytest.mark.parametrize("kind", ARTIFACTS)
def test_loads_remove_nothing_writes_remove_only_their_own_dead_partials(kind, tmp_path):
    save, load, _ = ARTIFACTS[kind]
    target = tmp_path / "results"
    save(target)
    leftover = plant_dead_partial(tmp_path, "results")
    load(target)
    assert leftover.is_dir()  # a load is a read
    planted = plant_bystanders(tmp_path, "results")
    save(target, overwrite=True)
    assert not leftover.exists()
    assert_intact(planted)


def test_artifacts_saved_without_a_marker_are_replaced_only_when_they_are_interps(tmp_path):
    """Folders from before markers: replaced (with overwrite) only when they hold exactly interp's files."""
    a_direction().save(tmp_path / "d")
    (tmp_path / "d" / MARKER).unlink()
    a_direction().save(tmp_path / "d", overwrite=True)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "direction.json").write_text("{}")  # a user's file with interp's name
    with pytest.raises(ArtifactExistsError, match="other files"):
        a_direction().save(tmp_path / "half", overwrite=True)
    assert (tmp_path / "half" / "direction.json").read_text() == "{}"
    (tmp_path / "sae").mkdir()  # an SAE-Lens folder SAE-Lens wrote: a user's, never replaced
    for name in ("cfg.json", "sae_weights.safetensors"):
        (tmp_path / "sae" / name).write_text("mine")
    with pytest.raises(ArtifactExistsError, match="other files"):
        save_an_sae(tmp_path / "sae", overwrite=True)
    assert (tmp_path / "sae" / "cfg.json").read_text() == "mine"


def test_atomic_files_leave_only_marked_leftovers_and_spare_everything_else(tmp_path):
    planted = plant_bystanders(tmp_path, "index.html")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(tmp_path / "index.html") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not (tmp_path / "index.html").exists()
    with atomic_file(tmp_path / "index.html") as tmp:
        assert (tmp.parent / PARTIAL_MARKER).is_file()  # the temporary file lives in a marked folder
        tmp.write_text("done")
    assert (tmp_path / "index.html").read_text() == "done"
    assert_intact(planted)
    theirs = {path.relative_to(tmp_path).parts[0] for path in planted}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in theirs) == ["index.html"]  # nothing left over


def test_activation_shards(tiny_model, tmp_path):
    prompts = ["hello world", "yes no", "the cat", "a b c"]
    planted = plant_bystanders(tmp_path, "h")
    collect_residuals_to_shards(tiny_model, prompts, [0], tmp_path / "h", rows_per_shard=2, progress=False)
    open_residual_shards(tmp_path / "h").load()
    assert_intact(planted)
    collect_residuals_to_shards(tiny_model, prompts, [1], tmp_path / "h", rows_per_shard=2, progress=False, overwrite=True)
    with pytest.raises(ValueError, match="layers"):  # a failed save
        collect_residuals_to_shards(tiny_model, prompts, [9], tmp_path / "h", progress=False, overwrite=True)
    with pytest.raises(ArtifactExistsError):
        collect_residuals_to_shards(tiny_model, prompts, [1], tmp_path / "h", progress=False)
    shard = tmp_path / "h" / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(ValueError, match="shard-00000.safetensors"):  # a failed load
        open_residual_shards(tmp_path / "h")
    assert_intact(planted)


def test_remove_artifact_removes_only_interps_own_of_that_kind(tmp_path):
    """What the refusal experiment uses to drop its temporary abliterated model (keep_model=false)."""
    mine = tmp_path / "my_model"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    assert not remove_artifact(mine, models.HF_MODEL_KIND) and (mine / "config.json").is_file()
    a_direction().save(tmp_path / "d")
    assert not remove_artifact(tmp_path / "d", models.HF_MODEL_KIND) and (tmp_path / "d").is_dir()
    (tmp_path / "d" / "notes.txt").write_text("mine")  # a user's file inside: not removed either
    assert not remove_artifact(tmp_path / "d", "direction") and (tmp_path / "d" / "notes.txt").is_file()
    (tmp_path / "d" / "notes.txt").unlink()
    assert remove_artifact(tmp_path / "d", "direction") and not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------------------------
# The model cache
# ---------------------------------------------------------------------------------------------


def user_model(tiny_folder: Path, where: Path, damage: str) -> dict[Path, bytes]:
    shutil.copytree(tiny_folder, where)
    if damage == "missing tokenizer":
        for path in where.glob("tokenizer*"):
            path.unlink()
    elif damage == "truncated weights":
        weights = where / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "zeroed weights":
        weights = where / "model.safetensors"
        weights.write_bytes(b"\0" * weights.stat().st_size)
    return {path: path.read_bytes() for path in where.rglob("*") if path.is_file()}


@pytest.mark.parametrize("damage", ["missing tokenizer", "truncated weights", "zeroed weights"])
@pytest.mark.parametrize("place", ["models/my-model", "my-model"])
def test_a_users_model_folder_under_the_cache_root_is_never_deleted(damage, place, tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    folder = tmp_path / place
    files = user_model(tiny_folder, folder, damage)
    planted = plant_bystanders(folder.parent, folder.name)
    with pytest.raises(OSError, match=f"(?s)the model folder {folder} failed to load .*it was left as it is"):
        load_model(folder, device="cpu")
    assert_intact(files)
    assert_intact(planted)


def test_a_users_folder_at_a_cache_key_is_not_replaced(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    converted = []
    monkeypatch.setattr(models, "_convert_gguf", lambda gguf, folder: converted.append(folder))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    folder = models.cache_root() / "models" / models._cache_key_for_file(gguf)
    files = user_model(tiny_folder, folder, "truncated weights")  # no marker: not our cache
    with pytest.raises(ArtifactExistsError, match="other files"):
        load_model(gguf, device="cpu")
    assert_intact(files)
    assert not converted  # refused before the conversion's work


def test_a_marked_cache_that_fails_to_load_is_rebuilt_and_bystanders_survive(tiny_folder, tmp_path, monkeypatch):
    gguf, calls = _fake_cache(monkeypatch, tmp_path, tiny_folder)
    folder = models.cached_hf_folder(gguf)
    planted = plant_bystanders(folder.parent, folder.name)
    for path in folder.glob("tokenizer*"):
        path.unlink()  # the marker's check finds them missing: rebuilt
    load_model(gguf, device="cpu")
    assert len(calls) == 2
    assert_intact(planted)
