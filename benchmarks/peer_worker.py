"""The peers' half of `bench_peers.py`: run inside steering-vectors' or repeng's own virtualenv.

    <peer venv>/bin/python benchmarks/peer_worker.py {steering-vectors|repeng} --model DIR --pairs PAIRS.json
                                                     --layers 0 1 ... --out DIR [--batch-size 16] [--threads 2]

Imports only the peer, torch, numpy, transformers (the peer's own dependency) and the standard library: nothing
of interp, which does not install beside the peers' pins. Loads the HF folder `bench_peers.py` wrote, reads the
pairs ({"positive": [...], "negative": [...]}, the same strings for all three libraries), builds every vector the
peer has at `--layers` (the peer's own layer ids, decoder-layer indices), and writes to `--out`:
* `{aggregator}.npy`: float32 [len(layers), d_model], row i the peer's vector for `layers[i]`;
* `logits.npy`: the last position's logits of the first positive text (the check that both loads agree);
* `result.json`: versions, the token ids of every text as the peer's tokenizer makes them, seconds (the one
  activation pass, each aggregation), and a self-check of what the peer's layer ids read (see `layer_check`).

Timing: steering-vectors' `train_steering_vector` is exactly `extract_activations` then `aggregate_activations`,
so the pass is timed once and each aggregator on its result (pass + aggregation = the train call; each
aggregation the median of 3 calls). repeng's
`ControlVector.train` runs the pass and the PCA in one call: the pass (`batched_get_hiddens`, the function it
calls) is timed once, then `ControlVector.train(method=...)` per method with that function returning a copy of the
timed pass's hidden states, which times the rest of the call (PCA and sign) and builds the vector through the
public API.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def versions(peer: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in (peer, "transformers", "torch", "numpy", "scikit-learn"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def timed(function):
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def median_timed(function, repeats: int = 3):
    """(median seconds, value) over `repeats` calls: an aggregation takes milliseconds, so one call would mostly
    measure a first call's set-up (the same in bench_peers.py for ours)."""
    samples = [timed(function) for _ in range(repeats)]
    return statistics.median(s for s, _ in samples), samples[-1][1]


def load(model_dir: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
    if config.get("tokenizer_class") == "TokenizersBackend" and not _takes_dtype():
        # transformers 5 saves its fast tokenizer under a class name 4.x does not know; the files are a fast
        # tokenizer's (tokenizer.json + this config), which 4.x reads as such (the token ids are checked equal)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32) if _takes_dtype() else \
        AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    return model.eval(), tokenizer


def _takes_dtype() -> bool:
    major = int(importlib.metadata.version("transformers").split(".")[0])
    return major >= 5


def layer_check(model, tokenizer, text: str, layers: list[int]) -> dict[str, float]:
    """Max |difference| between `output_hidden_states[k + 1]` and decoder layer k's output (forward hooks), for
    the largest k of `layers` below the last block, and between the last hidden state and the final norm's output:
    which tensor a peer's layer id reads, checked in the peer's own transformers."""
    decoder = model.model.layers
    outputs: dict[str, torch.Tensor] = {}
    k = max(k for k in layers if k < len(decoder) - 1)
    handles = [decoder[k].register_forward_hook(lambda m, a, o: outputs.__setitem__("block", o[0] if isinstance(o, tuple) else o)),
               model.model.norm.register_forward_hook(lambda m, a, o: outputs.__setitem__("norm", o))]
    try:
        with torch.no_grad():
            hidden = model(**tokenizer([text], return_tensors="pt"), output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    return {"layer": k, "n_hidden_states": len(hidden),
            "hidden_states[k+1] vs block k output": float((hidden[k + 1] - outputs["block"]).abs().max()),
            "hidden_states[-1] vs final norm output": float((hidden[-1] - outputs["norm"]).abs().max())}


def steering_vectors_build(model, tokenizer, positive, negative, layers, batch_size):
    from sklearn.linear_model import LinearRegression
    from steering_vectors import (aggregate_activations, extract_activations, logistic_aggregator, mean_aggregator,
                                  pca_aggregator)
    from steering_vectors.aggregators import _get_normalized_regression_coef

    def linear_aggregator():
        # steering-vectors' linear_aggregator, removed from the public API before 0.12: the same helper its
        # logistic_aggregator calls, with LinearRegression(fit_intercept=False) (its definition when it existed).
        return lambda pos, neg: _get_normalized_regression_coef(pos, neg, LinearRegression(fit_intercept=False))

    samples = list(zip(positive, negative))
    pass_s, (pos_acts, neg_acts) = timed(lambda: extract_activations(
        model, tokenizer, samples, layers=layers, layer_type="decoder_block", read_token_index=-1,
        batch_size=batch_size))
    vectors, seconds = {}, {}
    for name, make in (("mean_aggregator", mean_aggregator), ("pca_aggregator", pca_aggregator),
                       ("logistic_aggregator", logistic_aggregator), ("linear_aggregator", linear_aggregator)):
        seconds[name], by_layer = median_timed(lambda: aggregate_activations(pos_acts, neg_acts, make()))
        vectors[name] = np.stack([by_layer[k].float().numpy() for k in layers])
    return pass_s, vectors, seconds


def repeng_build(model, tokenizer, positive, negative, layers, batch_size):
    from repeng import ControlVector, DatasetEntry
    from repeng import extract

    dataset = [DatasetEntry(positive=p, negative=n) for p, n in zip(positive, negative)]
    strings = [s for entry in dataset for s in (entry.positive, entry.negative)]  # repeng's own order
    real = extract.batched_get_hiddens
    pass_s, hiddens = timed(lambda: real(model, tokenizer, strings, list(layers), batch_size))
    vectors, seconds = {}, {}
    try:
        # pca_center centres its hidden states in place: every call gets its own copy of the pass
        extract.batched_get_hiddens = lambda *args, **kwargs: {k: v.copy() for k, v in hiddens.items()}
        for method in ("pca_diff", "pca_center"):
            seconds[method], vector = median_timed(lambda: ControlVector.train(
                model, tokenizer, dataset, hidden_layers=list(layers), batch_size=batch_size, method=method))
            vectors[method] = np.stack([np.asarray(vector.directions[k], dtype=np.float32) for k in layers])
    finally:
        extract.batched_get_hiddens = real
    return pass_s, vectors, seconds


BUILDERS = {"steering-vectors": steering_vectors_build, "repeng": repeng_build}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=sorted(BUILDERS))
    parser.add_argument("--model", required=True, help="an HF folder (save_pretrained)")
    parser.add_argument("--pairs", required=True, help='JSON {"positive": [...], "negative": [...]}')
    parser.add_argument("--layers", type=int, nargs="+", required=True, help="the peer's layer ids (>= 0)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = json.loads(Path(args.pairs).read_text())
    positive, negative = list(pairs["positive"]), list(pairs["negative"])
    load_s, (model, tokenizer) = timed(lambda: load(args.model))
    with torch.no_grad():
        logits = model(**tokenizer([positive[0]], return_tensors="pt")).logits[0, -1]
    np.save(out / "logits.npy", logits.float().numpy())
    pass_s, vectors, seconds = BUILDERS[args.peer](model, tokenizer, positive, negative, args.layers, args.batch_size)
    for name, array in vectors.items():
        np.save(out / f"{name}.npy", array.astype(np.float32))
    result = {
        "peer": args.peer, "versions": versions(args.peer), "layers": args.layers, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "load_s": load_s, "pass_s": pass_s, "aggregate_s": seconds,
        "aggregators": sorted(vectors), "n_pairs": len(positive),
        "token_ids": [list(tokenizer(text)["input_ids"]) for text in positive + negative],
        "layer_check": layer_check(model, tokenizer, positive[0], args.layers),
        "load_average": os.getloadavg()[0], "executable": sys.executable,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
