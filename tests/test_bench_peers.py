"""benchmarks/bench_peers.py without the peers: the layer mapping on a tiny random Llama, reading a worker's output,
the comparison, and the errors that name a flag. (The peers themselves run only in the benchmark.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_peers  # noqa: E402
import peer_worker  # noqa: E402

from interp.activations import collect_residuals  # noqa: E402
from interp.vectors import SteeringVectors  # noqa: E402

TEXTS = ["the cat sat on the mat", "hello world what is the capital of france"]


def test_peer_layer_ids_read_our_resid_post_and_the_last_hidden_state_is_after_the_norm(tiny_folder, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    n_layers = len(hf.model.layers)
    # the worker's own check, in this transformers: id k reads block k's output; the last hidden state is normed
    check = peer_worker.layer_check(hf, tokenizer, TEXTS[1], list(range(n_layers)))
    assert check["layer"] == n_layers - 2 and check["n_hidden_states"] == n_layers + 1
    assert check["hidden_states[k+1] vs block k output"] == 0
    assert check["hidden_states[-1] vs final norm output"] == 0
    # ...which is our resid_post of block k at the last token, and not our resid_post of the last block
    ours = collect_residuals(tiny_model, [TEXTS[1]], list(range(n_layers)), -1, site="resid_post", progress=False)
    with torch.no_grad():
        hidden = hf(**tokenizer([TEXTS[1]], return_tensors="pt"), output_hidden_states=True).hidden_states
    for k in range(n_layers - 1):
        torch.testing.assert_close(ours[0, k, 0], hidden[k + 1][0, -1], atol=1e-4, rtol=1e-4)
    assert (ours[0, -1, 0] - hidden[n_layers][0, -1]).abs().max() > 0.1
    repeng = next(peer for peer in bench_peers.PEERS if peer.name == "repeng")
    steering_vectors = next(peer for peer in bench_peers.PEERS if peer.name == "steering-vectors")
    assert bench_peers.peer_layers(list(range(n_layers)), n_layers, repeng) == list(range(n_layers - 1))
    assert bench_peers.peer_layers(list(range(n_layers)), n_layers, steering_vectors) == list(range(n_layers))


def write_worker_output(folder: Path, layers: list[int], vectors: dict[str, np.ndarray]) -> Path:
    folder.mkdir()
    for name, array in vectors.items():
        np.save(folder / f"{name}.npy", array.astype(np.float32))
    (folder / "result.json").write_text(json.dumps({"peer": "repeng", "layers": layers, "aggregators": sorted(vectors)}))
    return folder


def test_a_workers_vectors_are_read_at_the_blocks_output_and_compared_with_raw_signs(tmp_path):
    g = torch.Generator().manual_seed(0)
    ours = SteeringVectors(torch.randn(4, 8, generator=g), (0, 1, 2, 3), "m", "pca_diff", "resid_post")
    theirs = ours.vectors[:3].numpy() * np.array([[2.0], [-0.5], [1.0]])  # rescaled; one sign flipped
    out = write_worker_output(tmp_path / "repeng", [0, 1, 2], {"pca_diff": theirs})
    result, read = bench_peers.read_peer(out, "m", n_layers=4)
    assert result["peer"] == "repeng"
    vector = read["pca_diff"]
    assert vector.site == "resid_post" and vector.layers == (0, 1, 2) and vector.meta["blocks"] == [0, 1, 2]
    stats = bench_peers.compare(ours, vector)
    assert stats["sign_flips"] == 1 and stats["worst_layer"] == 1
    assert stats["min"] == pytest.approx(-1, abs=1e-6) and stats["abs_min"] == pytest.approx(1, abs=1e-6)
    assert stats["median"] == pytest.approx(1, abs=1e-6)

    bad = write_worker_output(tmp_path / "bad", [0, 1, 2], {"pca_diff": theirs[:2]})
    with pytest.raises(ValueError, match="2 rows for 3 layers"):
        bench_peers.read_peer(bad, "m", n_layers=4)


def test_a_missing_peer_python_names_its_flag(tmp_path):
    with pytest.raises(SystemExit, match="--repeng-python: required"):
        bench_peers.peer_python(None, "--repeng-python")
    with pytest.raises(SystemExit, match="--steering-vectors-python: .* is not an executable file"):
        bench_peers.peer_python(str(tmp_path / "python"), "--steering-vectors-python")


def test_the_saved_config_gives_transformers_4_the_rope_theta(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}}))
    bench_peers.readable_by_transformers_4(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rope_theta"] == 1e5 and config["rope_parameters"]["rope_theta"] == 1e5
