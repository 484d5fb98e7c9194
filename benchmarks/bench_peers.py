"""Our aggregators against steering-vectors' and repeng's, each peer in its own virtualenv: same weights, same strings.

    python benchmarks/bench_peers.py --steering-vectors-python /tmp/peer-venvs/steering-vectors/bin/python
                                     --repeng-python /tmp/peer-venvs/repeng/bin/python
                                     [--model smollm2-135m-instruct] [--pairs 234] [--layers 0 1 ...]
                                     [--batch-size 16] [--threads 2]

Both peers pin what cannot install beside us (steering-vectors: transformers < 5; repeng: numpy < 2), so each runs
`benchmarks/peer_worker.py` in its own virtualenv (BENCHMARKS.md has the commands that make them). This script:
1. loads the model through interp and writes it once as a plain HF folder (`save_hf_model`: save_pretrained of
   the weights and tokenizer) in a temporary directory, which each peer loads with its own transformers; the
   last-position logits of one text are compared between our load and each peer's;
2. writes the contrast pairs as full texts to one JSON file: the bundled sycophancy A/B training pairs, each
   question in the chat template + "My answer is (" + the matching letter (positive) or the other letter
   (negative); all three libraries read these strings at their last token, and the token ids each peer's tokenizer
   makes are checked equal to ours;
3. runs the worker in each peer's virtualenv (vectors as .npy, seconds as JSON);
4. builds ours from the same strings (`collect_residuals` at the last token, then `aggregate`);
5. prints the cosine per layer between each of our aggregators and the peer's of the same definition, and the
   build seconds (one activation pass + the aggregation; each library's pass timed once, at the same batch size;
   each aggregation the median of 3 calls).

Layers, exactly: our `resid_post` of block k = the output of decoder layer k = steering-vectors' "decoder_block"
layer k = repeng's layer id k for 0 <= k <= n_layers - 2 (it reads `output_hidden_states[k + 1]`). repeng's id
n_layers - 1 (its default "-1", and any negative id -j is n_layers - j) reads `output_hidden_states[n_layers]`,
which transformers returns *after the final norm*: not a residual-stream tensor, so it is left out of repeng's
comparison (the worker checks both facts in the peer's own transformers and the script prints them). Each peer
gets its own ids for the chosen layers; its vectors become ours with `block_output_vectors(site="resid_post")`.

Signs: no peer leaves a sign arbitrary: steering-vectors orients PCA by the mean difference (as we do) and the
regressions by their ±1 labels; repeng orients by a majority vote over pairs. The cosines are raw (not aligned);
"sign flips" counts the layers where the two orientations disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import timed  # noqa: E402  (benchmarks/ is on sys.path)

WORKER = Path(__file__).with_name("peer_worker.py")
ASSISTANT_PREFIX = "My answer is ("  # bench_aggregators' format: the letter is the next token


@dataclass(frozen=True)
class Peer:
    name: str  # the worker's first argument and the package name
    flag: str  # this script's option giving the peer's python
    last_layer_ok: bool  # whether its id n_layers - 1 reads the last block's output


PEERS = (Peer("steering-vectors", "--steering-vectors-python", True), Peer("repeng", "--repeng-python", False))

# (our aggregator, peer, the peer's aggregator as the worker names it, the peer's call)
COMPARISONS = (
    ("mean_difference", "steering-vectors", "mean_aggregator", "mean_aggregator()"),
    ("pca_center", "steering-vectors", "pca_aggregator", "pca_aggregator()"),
    ("logistic", "steering-vectors", "logistic_aggregator", "logistic_aggregator()"),
    ("linear", "steering-vectors", "linear_aggregator", "linear regression (its removed linear_aggregator)"),
    ("pca_diff", "repeng", "pca_diff", 'ControlVector.train(method="pca_diff")'),
    ("pca_center", "repeng", "pca_center", 'ControlVector.train(method="pca_center")'),
)


def peer_python(value: str | None, flag: str) -> str:
    """The peer's interpreter, or a SystemExit that names the flag and how to make the virtualenv."""
    if not value:
        raise SystemExit(f"{flag}: required: the python of a virtualenv with that peer installed at its own pins "
                         "(BENCHMARKS.md, 'Against steering-vectors and repeng', has the commands)")
    if not Path(value).is_file() or not os.access(value, os.X_OK):
        raise SystemExit(f"{flag}: {value!r} is not an executable file")
    return value


def readable_by_transformers_4(folder: Path) -> None:
    """transformers 5 writes `rope_theta` inside `rope_parameters`; 4.x reads only the top-level key and silently
    falls back to 10,000 (SmolLM2's is 100,000: its last-position logits then differ by 7.6). Copy it up."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
        path.write_text(json.dumps(config, indent=2))


def peer_layers(layers: list[int], n_layers: int, peer: Peer) -> list[int]:
    """The chosen layers the peer's ids read as a block's output (repeng's last id reads after the final norm)."""
    return [k for k in layers if peer.last_layer_ok or k < n_layers - 1]


def pair_texts(model: Any, pairs: list[Any]) -> tuple[list[str], list[str]]:
    """Each question in the chat template + the prefix + the matching / the other letter."""
    from interp.chat import format_chat

    chats = [format_chat(model, pair.question) + ASSISTANT_PREFIX for pair in pairs]
    return ([c + pair.matching_letter for c, pair in zip(chats, pairs)],
            [c + pair.not_matching_letter for c, pair in zip(chats, pairs)])


def read_peer(out: Path, model: str, n_layers: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker's result.json and its vectors as `SteeringVectors` at resid_post (block k's output)."""
    from interp.vectors import block_output_vectors

    result = json.loads((out / "result.json").read_text())
    layers = [int(k) for k in result["layers"]]
    vectors = {}
    for name in result["aggregators"]:
        array = np.load(out / f"{name}.npy")
        if array.shape[0] != len(layers):
            raise ValueError(f"{out / (name + '.npy')}: {array.shape[0]} rows for {len(layers)} layers")
        vectors[name] = block_output_vectors(dict(zip(layers, torch.from_numpy(array))), model,
                                             source=f"{result['peer']} {name}", n_layers=n_layers, site="resid_post")
    return result, vectors


def compare(ours: Any, theirs: Any) -> dict[str, Any]:
    """Raw cosines per layer on the peer's layers: min, median, the worst layer and the sign flips."""
    ours = ours.select(list(theirs.layers))
    cosines = ours.cosine(theirs).tolist()
    worst = min(range(len(cosines)), key=lambda i: cosines[i])
    return {"min": min(cosines), "median": statistics.median(cosines), "worst_layer": theirs.layers[worst],
            "sign_flips": sum(c < 0 for c in cosines), "abs_min": min(abs(c) for c in cosines),
            "cosines": dict(zip(theirs.layers, cosines))}


def run_worker(python: str, peer: Peer, model_dir: Path, pairs_json: Path, layers: list[int], out: Path,
               batch_size: int, threads: int) -> None:
    command = [python, str(WORKER), peer.name, "--model", str(model_dir), "--pairs", str(pairs_json),
               "--layers", *map(str, layers), "--out", str(out), "--batch-size", str(batch_size),
               "--threads", str(threads)]
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # nothing of ours leaks into the peer's environment
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{peer.flag}: the {peer.name} worker failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def unpadded_ids(batch: Any) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for peer in PEERS:
        parser.add_argument(peer.flag, help=f"the python of a virtualenv with {peer.name} at its own pins")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=None, help="the first N training pairs (default all)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="block indices (default every block)")
    parser.add_argument("--batch-size", type=int, default=16, help="for every library's activation pass")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pythons = {peer.name: peer_python(getattr(args, peer.flag.lstrip("-").replace("-", "_")), peer.flag)
               for peer in PEERS}

    from interp.activations import collect_residuals
    from interp.aggregators import aggregate
    from interp.chat import tokenize
    from interp.datasets import load_bundled_sycophancy
    from interp.hooked import check_layers, n_layers as count_layers
    from interp.models import load_model
    from interp.models.dimensions import model_name
    from interp.runner import batch_logits
    from interp.vectors import SteeringVectors
    from interp.weight_edit import save_hf_model

    torch.set_num_threads(args.threads)
    print(f"model {args.model}, cpu ({platform.processor() or platform.machine()}), {args.threads} threads, "
          f"batch size {args.batch_size}, load average at start {os.getloadavg()[0]:.1f}")
    model = load_model(args.model, device="cpu")
    n_layers, name = count_layers(model), model_name(model)
    layers = check_layers(model, list(range(n_layers)) if args.layers is None else args.layers, "--layers")
    pairs = load_bundled_sycophancy("train")[: args.pairs]
    positive, negative = pair_texts(model, pairs)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        work = Path(tmp)
        save_hf_model(model, work / "model")
        readable_by_transformers_4(work / "model")
        pairs_json = work / "pairs.json"
        pairs_json.write_text(json.dumps({"positive": positive, "negative": negative}))
        results, peer_vectors, logits = {}, {}, {}
        for peer in PEERS:
            out = work / peer.name
            wall, _ = timed(lambda: run_worker(pythons[peer.name], peer, work / "model", pairs_json,
                                               peer_layers(layers, n_layers, peer), out, args.batch_size, args.threads))
            results[peer.name], peer_vectors[peer.name] = read_peer(out, name, n_layers)
            logits[peer.name] = torch.from_numpy(np.load(out / "logits.npy"))
            print(f"{peer.name} worker: {wall:.1f} s wall (load {results[peer.name]['load_s']:.1f} s)")

        # Ours, from the same strings at the same positions
        batches = [tokenize(model, texts) for texts in (positive, negative)]
        our_logits = batch_logits(model, tokenize(model, positive[:1]), [], keep_last=1)[0, -1].float()
        pass_s, reads = timed(lambda: [collect_residuals(model, batch, layers, -1, site="resid_post",
                                                         batch_size=args.batch_size, progress=False)[:, :, 0]
                                       for batch in batches])
        ours, our_seconds = {}, {}
        for aggregator in dict.fromkeys(ours_name for ours_name, *_ in COMPARISONS):
            samples = [timed(lambda: aggregate(aggregator, *reads)) for _ in range(3)]  # as the worker: median of 3
            our_seconds[aggregator], vectors = statistics.median(s for s, _ in samples), samples[-1][1]
            ours[aggregator] = SteeringVectors(vectors, tuple(layers), name, aggregator, "resid_post")

    # Checks: same weights, same tokens, the layer mapping
    our_ids = unpadded_ids(batches[0]) + unpadded_ids(batches[1])
    for peer in PEERS:
        result = results[peer.name]
        same_ids = result["token_ids"] == our_ids
        difference = float((logits[peer.name] - our_logits).abs().max())
        check = result["layer_check"]
        print(f"{peer.name}: token ids {'identical' if same_ids else 'DIFFER'} ({len(our_ids)} texts); last-position "
              f"logits max |ours − theirs| {difference:.2e} (logit scale {float(our_logits.abs().max()):.1f}); "
              f"hidden_states[k+1] vs block k output {check['hidden_states[k+1] vs block k output']:.1e} (k = "
              f"{check['layer']}), hidden_states[-1] vs final norm output "
              f"{check['hidden_states[-1] vs final norm output']:.1e}")
        if not same_ids:
            raise SystemExit(f"{peer.name}: its tokenizer makes other token ids than ours; the comparison would be void")

    print(f"\n{len(pairs)} pairs; ours at resid_post of blocks {layers[0]}–{layers[-1]}; one pass of ours "
          f"{pass_s:.2f} s, steering-vectors {results['steering-vectors']['pass_s']:.2f} s, repeng "
          f"{results['repeng']['pass_s']:.2f} s\n")
    print("| ours | peer's | layers | cosine min | cosine median | sign flips | ours s (pass + aggregation) "
          "| theirs s (pass + aggregation) | theirs / ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for our_name, peer_name, their_name, call in COMPARISONS:
        theirs = peer_vectors[peer_name][their_name]
        stats = compare(ours[our_name], theirs)
        result = results[peer_name]
        ours_s, theirs_s = pass_s + our_seconds[our_name], result["pass_s"] + result["aggregate_s"][their_name]
        print(f"| `{our_name}` | {peer_name} `{call}` | {theirs.layers[0]}–{theirs.layers[-1]} | {stats['min']:.6f} "
              f"(layer {stats['worst_layer']}) | {stats['median']:.6f} | {stats['sign_flips']} | "
              f"{ours_s:.2f} ({pass_s:.2f} + {our_seconds[our_name]:.3f}) | "
              f"{theirs_s:.2f} ({result['pass_s']:.2f} + {result['aggregate_s'][their_name]:.3f}) | "
              f"{theirs_s / ours_s:.2f} |")
        if stats["min"] < 0.999:
            low = {k: round(c, 4) for k, c in stats["cosines"].items() if c < 0.999}
            print(f"|   | below 0.999 at layers: {low} |||||||")
    print()
    for peer in PEERS:
        print(f"{peer.name} virtualenv: " + ", ".join(f"{k} {v}" for k, v in results[peer.name]["versions"].items()))
    import transformers

    print(f"ours: python {platform.python_version()}, transformers {transformers.__version__}, torch "
          f"{torch.__version__}, numpy {np.__version__}; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
