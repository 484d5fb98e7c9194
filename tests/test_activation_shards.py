"""Residual harvests on disk: sharded safetensors written from `collect_residuals`, read back memory-mapped."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import interp.activation_shards as shards_module
from interp.activation_shards import collect_residuals_to_shards, open_residual_shards
from interp.activations import LastK, collect_residuals
from interp.chat import tokenize
from interp.sae_training import SAETrainingConfig, train_sae

from conftest import WORDS

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(37)]


def test_round_trip_equals_collect_residuals_across_unaligned_shards(tiny_model, prompts, tmp_path):
    # 4 prompts per forward, 7 per shard: shard edges fall inside batches, and the last shard is short.
    expected = collect_residuals(tiny_model, prompts, [0, 2], LastK(2), batch_size=4, progress=False)
    harvest = collect_residuals_to_shards(tiny_model, prompts, [0, 2], tmp_path / "h", LastK(2), batch_size=4,
                                          rows_per_shard=7, meta={"note": "test"}, progress=False)
    assert len(harvest) == 37 and harvest.shape == expected.shape
    manifest = json.loads((tmp_path / "h" / "manifest.json").read_text())
    assert [shard["rows"] for shard in manifest["shards"]] == [7, 7, 7, 7, 7, 2]
    assert manifest["hook_names"] == ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre"]
    assert manifest["positions"] == {"last_k": 2} and manifest["meta"] == {"note": "test"}
    assert torch.equal(harvest.load(), expected)
    assert torch.equal(harvest[5:20], expected[5:20])  # across three shards
    assert torch.equal(harvest[30:100], expected[30:])
    assert torch.equal(harvest[::5], expected[::5])
    assert torch.equal(harvest[[30, 2, 8, 2]], expected[[30, 2, 8, 2]])
    assert torch.equal(harvest[torch.tensor([36, 0])], expected[[36, 0]])
    assert torch.equal(harvest[-1], expected[-1])
    assert harvest[10:10].shape == (0, 2, 2, 32)
    in_order = list(harvest.batches(5))
    assert [len(batch) for batch in in_order] == [5] * 7 + [2]
    assert torch.equal(torch.cat(in_order), expected)
    shuffled = torch.cat(list(harvest.batches(5, shuffle=True, seed=1)))
    key = lambda rows: sorted(map(tuple, rows.reshape(len(rows), -1).tolist()))  # noqa: E731
    assert key(shuffled) == key(expected) and not torch.equal(shuffled, expected)
    assert sum(len(batch) for batch in harvest.batches(5, drop_last=True)) == 35
    with pytest.raises(IndexError, match="index"):
        harvest[[37]]
    # A reopened folder reads the same.
    assert torch.equal(open_residual_shards(tmp_path / "h")[11], expected[11])


def test_reads_are_memory_mapped_and_lazy(tiny_model, prompts, tmp_path, monkeypatch):
    collect_residuals_to_shards(tiny_model, prompts, [1], tmp_path / "h", -1, batch_size=8, rows_per_shard=5,
                                progress=False)
    expected = collect_residuals(tiny_model, prompts, [1], -1, batch_size=8, progress=False)
    monkeypatch.setattr(shards_module, "MAX_OPEN_SHARDS", 2)
    harvest = open_residual_shards(tmp_path / "h")
    assert not harvest._open  # opening reads headers only
    assert torch.equal(harvest[12], expected[12])
    assert list(harvest._open) == [2] and isinstance(harvest._open[2], np.memmap)  # only the shard holding row 12
    for row in range(0, 37, 3):  # every shard, with at most two maps open at a time
        assert torch.equal(harvest[row], expected[row])
        assert len(harvest._open) <= 2
    row = harvest[3]
    row += 1  # a read is a copy: writing to it changes nothing on disk
    assert torch.equal(harvest[3], expected[3])


def test_positions_index_tensor_token_batch_and_dtypes(tiny_model, prompts, tmp_path):
    batch = tokenize(tiny_model, prompts)
    index = torch.stack([torch.zeros(37, dtype=torch.long), torch.ones(37, dtype=torch.long)], dim=1)
    expected = collect_residuals(tiny_model, batch, [0], index, batch_size=6, progress=False, dtype=torch.bfloat16)
    harvest = collect_residuals_to_shards(tiny_model, batch, [0], tmp_path / "h", index, batch_size=6,
                                          rows_per_shard=10, dtype=torch.bfloat16, progress=False)
    assert harvest.dtype == torch.bfloat16 and torch.equal(harvest.load(), expected)
    with pytest.raises(ValueError, match=r"positions: .*n_prompts=37"):
        collect_residuals_to_shards(tiny_model, prompts, [0], tmp_path / "bad", index[:5], progress=False)
    assert not (tmp_path / "bad").exists()


def test_refuses_to_overwrite_what_it_did_not_write(tiny_model, prompts, tmp_path):
    target = tmp_path / "h"
    first = collect_residuals_to_shards(tiny_model, prompts[:10], [0], target, progress=False)
    with pytest.raises(FileExistsError, match="folder: .*overwrite=True"):
        collect_residuals_to_shards(tiny_model, prompts, [0], target, progress=False)
    assert len(open_residual_shards(target)) == 10
    replaced = collect_residuals_to_shards(tiny_model, prompts, [0], target, overwrite=True, progress=False)
    assert len(replaced) == 37 and len(first) == 10  # the old harvest was replaced only once the new one was whole
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds other files"):
        collect_residuals_to_shards(tiny_model, prompts, [0], other, overwrite=True, progress=False)
    assert (other / "notes.txt").read_text() == "mine" and sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        collect_residuals_to_shards(tiny_model, prompts, [0], tmp_path / "file", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(collect_residuals_to_shards(tiny_model, prompts[:3], [0], empty, progress=False)) == 3
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_bad_arguments_fail_before_any_work(tiny_model, prompts, tmp_path):
    target = tmp_path / "h"
    cases = [({"rows_per_shard": 0}, "rows_per_shard"), ({"batch_size": 0}, "batch_size"),
             ({"dtype": torch.int64}, "dtype"), ({"meta": {"x": object()}}, "meta")]
    for kwargs, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            collect_residuals_to_shards(tiny_model, prompts, [0], target, progress=False, **kwargs)
    with pytest.raises(ValueError, match="layers"):
        collect_residuals_to_shards(tiny_model, prompts, [7], target, progress=False)
    with pytest.raises(ValueError, match="prompts"):
        collect_residuals_to_shards(tiny_model, [], [0], target, progress=False)
    assert not target.exists()


def test_damaged_folders_are_errors_naming_the_file(tiny_model, prompts, tmp_path):
    folder = tmp_path / "h"
    collect_residuals_to_shards(tiny_model, prompts, [0], folder, rows_per_shard=20, progress=False)
    with pytest.raises(FileNotFoundError, match="folder"):
        open_residual_shards(tmp_path / "missing")
    shard = folder / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"shard-00001.safetensors has \d+ bytes, its recorded size is \d+"):
        open_residual_shards(folder)
    with pytest.raises(ValueError, match="shard-00001.safetensors: truncated"):
        open_residual_shards(folder, verify=False)
    shard.write_bytes(data)
    (folder / "manifest.json").unlink()
    with pytest.raises(ValueError, match="not a complete activation shard folder"):
        open_residual_shards(folder)


def test_sae_trains_from_a_harvest_on_disk_as_from_memory(tiny_model, prompts, tmp_path):
    harvest = collect_residuals_to_shards(tiny_model, prompts * 8, [0, 1], tmp_path / "h", LastK(3), batch_size=16,
                                          rows_per_shard=50, progress=False)
    rows = harvest.tokens(1)
    in_memory = harvest.load()[:, 1].reshape(-1, 32)
    assert rows.shape == in_memory.shape and len(rows) == 37 * 8 * 3
    picks = torch.tensor([0, 5, 887, 1, 5])
    assert torch.equal(rows[picks], in_memory[picks]) and torch.equal(rows[3:9], in_memory[3:9])
    assert torch.equal(rows[-1], in_memory[-1])
    config = SAETrainingConfig(d_sae=48, k=4, batch_size=64, epochs=1)
    from_disk, _ = train_sae(rows, config, progress=False)
    from_memory, _ = train_sae(in_memory, config, progress=False)
    torch.testing.assert_close(from_disk.W_dec, from_memory.W_dec)
    with pytest.raises(ValueError, match="layer: 2"):
        harvest.tokens(2)
