"""Saved artifacts under random edits and truncations (issue 25, item 7): property-based, with Hypothesis.

Each example copies a saved Direction / CAA vectors / probe / SAE folder / activation harvest, damages one
of its files (marker included) and loads it. Every outcome is the saved value, or one ValueError /
FileNotFoundError naming the file: never another exception from a dependency, never a different value.
With `verify=False` (an artifact edited on purpose) the edited values may load, but only valid ones.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp._io import MARKER
from interp.activation_shards import collect_residuals_to_shards, open_residual_shards
from interp.caa import CAAVectors
from interp.dictionaries import Dictionary, load_dictionary
from interp.directions import Direction
from interp.probes import LinearProbe, train_probe

from test_nothing_lost import save_an_sae

SETTINGS = settings(max_examples=int(os.environ.get("INTERP_EDIT_EXAMPLES", 40)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass(frozen=True)
class Kind:
    # `write`, not `save`: nnsight (imported by other test modules) gives every object a `save` attribute,
    # which a dataclass would take for this field's default.
    write: Callable[[Path, Any], Path]  # (folder, tiny_model) -> the saved folder
    load: Callable[..., Any]  # (folder, verify=) -> a value
    same: Callable[[Any, Any], bool]
    valid: Callable[[Any], bool]  # what any loaded value must satisfy, edited or not


def _tensors_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a.values(), b.values()))


def _direction_fields(d: Direction) -> dict[str, Any]:
    return {"vector": d.vector, "layer": d.layer, "model": d.model, "source": d.source, "site": d.site, "meta": d.meta}


def _caa_fields(v: CAAVectors) -> dict[str, Any]:
    return {"vectors": v.vectors, "resid_norm": v.resid_norm, "model": v.model, "n_pairs": v.n_pairs, "fmt": v.fmt,
            "site": v.site, "meta": v.meta}


def _probe_fields(p: LinearProbe) -> dict[str, Any]:
    return {"weight": p.weight, "bias": p.bias, "mean": p.mean, "scale": p.scale, "temperature": p.temperature,
            "platt": p.platt, "layer": p.layer, "site": p.site, "model": p.model, "meta": p.meta}


def _dictionary_fields(d: Dictionary) -> dict[str, Any]:
    e = d.encoder
    return {"atoms": d.atoms, "norms": d.norms, "hook_name": d.hook_name, "model": d.model, "W_enc": e.W_enc,
            "b_enc": e.b_enc, "b_dec": e.b_dec, "architecture": e.architecture, "k": e.k, "meta": d.meta}


def _shard_fields(loaded: tuple[Any, torch.Tensor]) -> dict[str, Any]:
    shards, rows = loaded
    return {"rows": rows, "layers": shards.layers, "hook_names": shards.hook_names,
            "model": shards.manifest["model"], "site": shards.manifest["site"]}


def _finite(*tensors: torch.Tensor) -> bool:
    return all(t.is_floating_point() and bool(torch.isfinite(t).all()) for t in tensors)


def _a_probe() -> LinearProbe:
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    return train_probe(x, (x[:, 0] > 0).long()).probe


def _open_and_read(folder: Path, verify: bool = True) -> tuple[Any, torch.Tensor]:
    shards = open_residual_shards(folder, verify=verify)
    return shards, shards.load()


KINDS = {
    "direction": Kind(
        lambda folder, model: Direction(torch.linspace(-1, 1, 8), layer=1, model="m", source="test",
                                        meta={"note": "x"}).save(folder),
        Direction.load, lambda a, b: _tensors_equal(_direction_fields(a), _direction_fields(b)),
        lambda d: isinstance(d.layer, int) and d.layer >= 0 and isinstance(d.model, str) and _finite(d.vector)),
    "CAA vectors": Kind(
        lambda folder, model: CAAVectors(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), torch.ones(3),
                                         model="m", n_pairs=4).save(folder),
        CAAVectors.load, lambda a, b: _tensors_equal(_caa_fields(a), _caa_fields(b)),
        lambda v: isinstance(v.model, str) and isinstance(v.n_pairs, int) and _finite(v.vectors, v.resid_norm)),
    "probe": Kind(
        lambda folder, model: _a_probe().save(folder), LinearProbe.load,
        lambda a, b: _tensors_equal(_probe_fields(a), _probe_fields(b)),
        lambda p: _finite(p.weight, p.mean, p.scale) and bool((p.scale > 0).all()) and p.temperature > 0
        and (p.model is None or isinstance(p.model, str))),
    "SAE folder": Kind(
        lambda folder, model: save_an_sae(folder), load_dictionary,
        lambda a, b: _tensors_equal(_dictionary_fields(a), _dictionary_fields(b)),
        lambda d: _finite(d.atoms, d.norms) and (d.hook_name is None or d.layer is not None)),
    "activation harvest": Kind(
        lambda folder, model: collect_residuals_to_shards(model, ["hello world", "yes no", "the cat"], [0, 2], folder,
                                                          rows_per_shard=2, progress=False).folder,
        _open_and_read, lambda a, b: _tensors_equal(_shard_fields(a), _shard_fields(b)),
        lambda loaded: loaded[0].hook_names == [f"blocks.{layer}.hook_resid_pre" for layer in loaded[0].layers]),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model) -> dict[str, tuple[Path, Any, list[str]]]:
    """Each kind saved once: (folder, the value it loads as, its files)."""
    out = {}
    for name, kind in KINDS.items():
        folder = Path(kind.write(tmp_path_factory.mktemp("saved") / "artifact", tiny_model))
        files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
        out[name] = (folder, kind.load(folder), files)
    return out


@st.composite
def edits(draw: st.DrawFn, files: list[str]) -> tuple[str, str, int, bytes]:
    """(file, how, where, what): truncate at, overwrite bytes at, insert bytes at, or delete a file."""
    name = draw(st.sampled_from(files))
    how = draw(st.sampled_from(["truncate", "overwrite", "insert", "delete"]))
    where = draw(st.integers(min_value=0, max_value=1 << 20))
    what = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"9", b"-1", b"\"", b"null", b"e9", b"\x00"]))
    return name, how, where, what


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["blocks.2.hook_resid_pre", "blocks.x.hook_resid_pre", "resid_mid", "topk", "gated", "m", "float16"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


@st.composite
def json_edits(draw: st.DrawFn, files: list[str]) -> tuple[str, str, tuple[str, ...], Any]:
    """(file, "json", key path, new value or DELETE): one value of a JSON file replaced, added or removed."""
    name = draw(st.sampled_from([name for name in files if name.endswith(".json")]))
    keys = tuple(draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2)))
    return name, "json", keys, draw(JSON_VALUES | st.just(DELETE))


DELETE = "<delete>"
KEYS = ["layer", "model", "source", "site", "d_model", "dtype", "meta", "n_pairs", "fmt", "name", "system",
        "assistant_prefix", "bias", "temperature", "platt", "scale", "architecture", "k", "d_in", "d_sae", "metadata",
        "hook_name", "model_name", "apply_b_dec_to_input", "normalize_activations", "layers", "hook_names", "row_shape",
        "n_rows", "shards", "rows", "start", "file", "format", "version", "kind", "files", "size", "sha256"]


def apply(folder: Path, edit: tuple) -> bool:
    """Apply `edit`; whether the file changed."""
    name, how, where, what = edit
    path = folder / name
    data = path.read_bytes()
    if how == "json":
        document = json.loads(data)
        parent = document
        for key in where[:-1]:
            child = parent.get(key) if isinstance(parent, dict) else None
            if not isinstance(child, dict):
                break
            parent = child
        if what == DELETE:
            parent.pop(where[-1], None)
        else:
            parent[where[-1]] = what
        path.write_text(json.dumps(document, indent=2))
        return path.read_bytes() != data
    where = where % (len(data) + 1)
    if how == "delete":
        path.unlink()
        return True
    new = {"truncate": data[:where], "overwrite": data[:where] + what + data[where + len(what):],
           "insert": data[:where] + what + data[where:]}[how]
    path.write_bytes(new)
    return new != data


def check(kind: str, saved: dict, edit: tuple[str, str, int, bytes], verify: bool) -> None:
    original_folder, original, _ = saved[kind]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "artifact"
        shutil.copytree(original_folder, folder)
        changed = apply(folder, edit)
        try:
            value = KINDS[kind].load(folder, verify=verify)
        except (ValueError, FileNotFoundError) as error:
            message = str(error)
            assert changed, f"an unchanged folder failed to load: {message}"
            assert str(folder) in message, f"the error names no file: {message}"
            if verify and edit[0] != MARKER and edit[1] != "delete":
                assert edit[0] in message, f"the error does not name {edit[0]}: {message}"
            return
        assert KINDS[kind].valid(value), f"an invalid value loaded after {edit}"
        if verify or edit[0] == MARKER or not changed:
            assert KINDS[kind].same(value, original), f"a different value loaded after {edit}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_edit_of_a_saved_artifact_is_caught_or_harmless(kind, saved):
    @SETTINGS
    @given(edit=edits(saved[kind][2]) | json_edits(saved[kind][2]))
    def run(edit):
        check(kind, saved, edit, verify=True)

    run()


@pytest.mark.parametrize("kind", KINDS)
def test_an_artifact_edited_on_purpose_loads_only_valid_values(kind, saved):
    data_files = [name for name in saved[kind][2] if name != MARKER]

    @SETTINGS
    @given(edit=edits(data_files) | json_edits(data_files))
    def run(edit):
        check(kind, saved, edit, verify=False)

    run()


# ---------------------------------------------------------------------------------------------
# The cases the issue names, one by one
# ---------------------------------------------------------------------------------------------


def _edited_copy(saved: dict, kind: str, tmp_path: Path, name: str, change: Callable[[dict], None]) -> Path:
    folder = tmp_path / kind.replace(" ", "_")
    shutil.copytree(saved[kind][0], folder)
    document = json.loads((folder / name).read_text())
    change(document)
    (folder / name).write_text(json.dumps(document, indent=2))
    return folder


@pytest.mark.parametrize("change, deliberate", [
    (lambda m: m.update(layers=[1, 2]), "hook_names"),  # one layer's data under another's name
    (lambda m: m.update(layers=[1, 2], hook_names=["blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"]),
     r"layers \[1, 2\], but shard-00000.safetensors was written for"),
    (lambda m: m.update(model="another-model"), "'another-model'.*but shard-00000.safetensors was written for"),
    (lambda m: m.update(site="resid_post", hook_names=["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]),
     "site 'resid_post'"),
])
def test_an_edited_shard_manifest_is_an_error_even_when_edited_on_purpose(saved, tmp_path, change, deliberate):
    folder = _edited_copy(saved, "activation harvest", tmp_path, "manifest.json", change)
    with pytest.raises(ValueError, match="manifest.json (does not match its recorded SHA-256|has .* bytes)"):
        open_residual_shards(folder)
    with pytest.raises(ValueError, match=f"manifest.json: .*{deliberate}"):
        open_residual_shards(folder, verify=False)


def test_an_edited_layer_is_an_error_unless_edited_on_purpose_then_checked(saved, tmp_path):
    folder = _edited_copy(saved, "direction", tmp_path, "direction.json", lambda d: d.update(layer=3))
    with pytest.raises(ValueError, match="direction.json (does not match its recorded SHA-256|has .* bytes)"):
        Direction.load(folder)
    assert Direction.load(folder, verify=False).layer == 3  # the user's edit, a valid layer
    for bad in (-1, 2.5, "3", None, True):
        folder = _edited_copy(saved, "direction", tmp_path / str(bad), "direction.json", lambda d, b=bad: d.update(layer=b))
        with pytest.raises(ValueError, match="direction.json: layer|Direction.layer"):
            Direction.load(folder, verify=False)


def test_an_edited_hook_name_is_an_error_unless_edited_on_purpose_then_parsed(saved, tmp_path):
    def move(to):
        return lambda config: config["metadata"].update(hook_name=to)

    folder = _edited_copy(saved, "SAE folder", tmp_path, "cfg.json", move("blocks.2.hook_resid_pre"))
    with pytest.raises(ValueError, match="cfg.json (does not match its recorded SHA-256|has .* bytes)"):
        load_dictionary(folder)
    assert load_dictionary(folder, verify=False).layer == 2
    for bad in ("blocks.x.hook_resid_pre", "blocks.2", "resid_pre", 7, ["blocks.2.hook_resid_pre"]):
        folder = _edited_copy(saved, "SAE folder", tmp_path / str(bad)[:20], "cfg.json", move(bad))
        with pytest.raises(ValueError, match="hook_name: expected 'blocks.{layer}.hook_...'"):
            load_dictionary(folder, verify=False)


def test_the_first_load_hashes_later_loads_compare_sizes_and_hash_only_changed_files(saved, tmp_path, monkeypatch):
    import interp._io as io

    hashed = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    monkeypatch.setattr(io, "_VERIFIED", set())  # a new process
    folder = tmp_path / "d"
    shutil.copytree(saved["direction"][0], folder)
    Direction.load(folder)
    assert sorted(hashed) == ["direction.json", "direction.safetensors"]
    Direction.load(folder)
    assert len(hashed) == 2  # unchanged since: sizes only
    text = (folder / "direction.json").read_text()
    (folder / "direction.json").write_text(text.replace('"model": "m"', '"model": "n"'))  # same size, in place
    with pytest.raises(ValueError, match="direction.json does not match its recorded SHA-256"):
        Direction.load(folder)


def test_folders_without_a_marker_load_as_before(saved, tmp_path):
    for kind in ("direction", "CAA vectors", "probe", "SAE folder"):
        folder = tmp_path / kind.replace(" ", "_")
        shutil.copytree(saved[kind][0], folder)
        (folder / MARKER).unlink()
        assert KINDS[kind].same(KINDS[kind].load(folder), saved[kind][1])
    folder = tmp_path / "harvest"
    shutil.copytree(saved["activation harvest"][0], folder)
    (folder / MARKER).unlink()
    with pytest.raises(ValueError, match="not a complete activation shard folder"):  # a harvest always had one
        open_residual_shards(folder)
    assert KINDS["activation harvest"].same(_open_and_read(folder, verify=False), saved["activation harvest"][1])
