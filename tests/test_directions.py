import json

import pytest
import torch

from interp.directions import Direction


def make(vector=None, **kw):
    return Direction(vector if vector is not None else torch.arange(4.0), layer=2, model="m", source="test", **kw)


def test_unit_keeps_original_and_normalises():
    direction = make(torch.tensor([3.0, 4.0, 0.0, 0.0]))
    assert direction.norm == pytest.approx(5.0)
    assert direction.unit().norm == pytest.approx(1.0)
    assert direction.unit().meta["unit_of_norm"] == pytest.approx(5.0)
    assert direction.cosine(direction.unit()) == pytest.approx(1.0)


def test_save_load_roundtrip(tmp_path):
    direction = make(torch.randn(8), meta={"dataset": "x", "singular_value": torch.tensor(2.5)})
    direction.save(tmp_path / "d")
    loaded = Direction.load(tmp_path / "d")
    assert torch.equal(loaded.vector, direction.vector)
    assert (loaded.layer, loaded.model, loaded.source, loaded.site) == (2, "m", "test", "resid_pre")
    assert loaded.meta == {"dataset": "x", "singular_value": 2.5}
    # Overwriting is asked for, replaces the folder whole and leaves no temporary folders behind.
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        make(torch.ones(8)).save(tmp_path / "d")
    make(torch.ones(8)).save(tmp_path / "d", overwrite=True)
    assert torch.equal(Direction.load(tmp_path / "d").vector, torch.ones(8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_failed_save_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        make(meta={"bad": object()}).save(tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "vector, message",
    [(torch.zeros(2, 3), "shape"), (torch.tensor([1.0, float("nan")]), "NaN"), ([1.0, 2.0], "torch.Tensor")],
)
def test_bad_vectors(vector, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Direction(vector, layer=0, model="m", source="s")


def test_zero_vector_has_no_unit():
    with pytest.raises(ValueError, match="zero"):
        make(torch.zeros(4)).unit()


def test_compatibility_checks():
    direction = make(torch.randn(8))
    direction.check_compatible("m", 8, 4)
    with pytest.raises(ValueError, match="width 8 does not match"):
        direction.check_compatible("m", 16)
    with pytest.raises(ValueError, match="belongs to model 'm'"):
        direction.check_compatible("other", 8)


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="direction.safetensors"):
        Direction.load(tmp_path)
    (tmp_path / "direction.json").write_text(json.dumps({}))
