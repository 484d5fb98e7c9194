"""CAA vectors for every layer: time for N A/B pairs (CPU or `--device`), against a plain-transformers loop.

    python benchmarks/bench_caa.py [--model smollm2-135m-instruct] [--pairs 300] [--anchor-pairs 64]
                                   [--batch-size 16] [--threads 2] [--device cpu]

Variants, measured in the same run on the same pairs (bundled train + test sycophancy pairs):
* anchor: what a new user writes with plain transformers: per batch, two padded forwards (prompts ending
  in the matching letter, then in the other letter) with `output_hidden_states=True`, keeping the last
  position of every layer. Run on `--anchor-pairs` pairs and scaled per pair.
* collect_residuals: `interp.activations.collect_residuals` over the matching-letter prompts and over the
  other-letter prompts, all layers at position -1 (two bridge forwards per batch, full logits).
* interp, full: `build_caa_vectors(kv_cache=False)`: the same two forwards per batch, through the bridge's
  plain HF clone with `logits_to_keep=1` and recording hooks.
* interp (default): `build_caa_vectors`: one pass per batch over each prompt up to its answer letter,
  with the system-prompt prefix run once for all prompts, then the letter token for A and for B on top of
  the KV cache; every layer read by hooks in the same passes.
Also timed: one steered A/B condition on the held-out pairs (a sweep's unit of work), cached vs not.
The vectors of all variants are compared (cosine per layer).

`--generations` times steered generations instead (what the sycophancy experiment writes): 8 opinion prompts
× multipliers (-0.3, 0, 0.3) × 32 tokens at the middle layer, one `generate` call per multiplier (the anchor)
against `caa.steered_generations`, which decodes all multipliers' rows together; the texts are compared.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from interp.ab_prompts import ABFormat
from interp.activations import collect_residuals, mean_difference
from interp.caa import build_caa_vectors, steered_generations
from interp.chat import format_chat
from interp.datasets import ContrastPair, load_bundled_opinion_prompts, load_bundled_sycophancy
from interp.evaluators import ABEvaluator
from interp.models import load_hf, load_model
from interp.runner import generate

from _common import device_label, timed  # noqa: E402  (benchmarks/ is on sys.path)

FORMAT = ABFormat("bare, 'My answer is ('", None, "My answer is (")


@torch.no_grad()
def anchor_vectors(hf_model: Any, tokenizer: Any, pairs: list[ContrastPair], batch_size: int) -> torch.Tensor:
    """The plain-transformers loop: two padded forwards per batch, hidden states of every layer."""
    tokenizer.padding_side = "left"
    total = None
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        stems = [format_chat(tokenizer, p.question, system=FORMAT.system) + FORMAT.assistant_prefix for p in batch]
        layers = []
        for letters in ([p.matching_letter for p in batch], [p.not_matching_letter for p in batch]):
            encoded = tokenizer([s + letter for s, letter in zip(stems, letters)], return_tensors="pt", padding=True)
            encoded = encoded.to(hf_model.device)
            hidden = hf_model(**encoded, output_hidden_states=True).hidden_states[:-1]  # resid_pre of each layer
            layers.append(torch.stack([h[:, -1] for h in hidden], dim=1))
        difference = (layers[0] - layers[1]).double().sum(0)
        total = difference if total is None else total + difference
    return (total / len(pairs)).float().cpu()


def collect_vectors(model: Any, pairs: list[ContrastPair], batch_size: int) -> torch.Tensor:
    """Two `collect_residuals` calls (matching-letter and other-letter prompts), every layer, position -1."""
    stems = [format_chat(model, p.question, system=FORMAT.system) + FORMAT.assistant_prefix for p in pairs]
    layers = list(range(model.cfg.n_layers))
    acts = [
        collect_residuals(model, [s + getattr(p, which) for s, p in zip(stems, pairs)], layers, -1,
                          batch_size=batch_size, progress=False)[:, :, 0]
        for which in ("matching_letter", "not_matching_letter")
    ]
    return mean_difference(acts[0], acts[1])


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a[1:].double().cpu(), b[1:].double().cpu(), dim=-1)  # layer 0: embeddings


def bench_generations(model: Any, vectors: Any, device: str) -> None:
    prompts = [format_chat(model, p.prompt) for p in load_bundled_opinion_prompts()[:8]]
    layer, multipliers = model.cfg.n_layers // 2, [-0.3, 0.0, 0.3]
    run = dict(max_new_tokens=32, progress=False)

    def one_at_a_time() -> dict[float, list[str]]:
        return {m: generate(model, prompts, interventions=[vectors.steer(layer, m)] if m else [], batch_size=16, **run)
                for m in multipliers}

    anchor_s, anchor = timed(one_at_a_time, device)
    ours_s, ours = timed(lambda: steered_generations(model, prompts, vectors, layer, multipliers, batch_size=16, **run), device)
    same = sum(a == b for m in multipliers for a, b in zip(anchor[m], ours[m]))
    print(f"\nsteered generations, {len(prompts)} prompts x {len(multipliers)} multipliers x 32 tokens at layer {layer}: "
          f"one generate per multiplier {anchor_s:.1f} s, all rows together {ours_s:.1f} s ({anchor_s / ours_s:.2f}x); "
          f"identical texts {same}/{len(prompts) * len(multipliers)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--anchor-pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--generations", action="store_true", help="time steered generations only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = (load_bundled_sycophancy("train") + load_bundled_sycophancy("test"))[: args.pairs]
    anchor_pairs = pairs[: args.anchor_pairs]
    print(f"model {args.model}, {len(pairs)} pairs ({args.anchor_pairs} for the anchor), batch {args.batch_size}, "
          f"{device_label(args.device)}, {torch.get_num_threads()} threads, load average at start {os.getloadavg()[0]:.1f}")

    hf_model, tokenizer = load_hf(args.model, device=args.device)
    model = load_model(args.model, device=args.device)
    run = dict(batch_size=args.batch_size, progress=False)
    build_caa_vectors(model, pairs[:4], FORMAT, **run)  # warm-up
    if args.generations:
        bench_generations(model, build_caa_vectors(model, pairs[:32], FORMAT, **run), args.device)
        return

    device = args.device
    anchor_s, anchor = timed(lambda: anchor_vectors(hf_model, tokenizer, anchor_pairs, args.batch_size), device)
    collect_s, collected = timed(lambda: collect_vectors(model, pairs, args.batch_size), device)
    full_s, full = timed(lambda: build_caa_vectors(model, pairs, FORMAT, kv_cache=False, **run), device)
    ours_s, ours = timed(lambda: build_caa_vectors(model, pairs, FORMAT, **run), device)
    ours_anchor_set = build_caa_vectors(model, anchor_pairs, FORMAT, **run)

    per_pair_anchor = anchor_s / len(anchor_pairs)
    rows = [
        ("plain transformers loop (anchor)", per_pair_anchor * len(pairs), f"measured on {len(anchor_pairs)}: {anchor_s:.1f} s"),
        ("collect_residuals, two passes per batch", collect_s, "plain HF clone, stops after the last layer read"),
        ("interp, two full passes per batch", full_s, "plain clone, logits_to_keep=1"),
        ("interp, cached prompt + letter steps", ours_s, ""),
    ]
    print(f"\n| variant | time for {len(pairs)} pairs | per pair | vs anchor | note |")
    print("|---|---|---|---|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.1f} s | {seconds / len(pairs) * 1e3:.0f} ms | {per_pair_anchor * len(pairs) / seconds:.2f}x | {note} |")

    print("\nagreement of the vectors (cosine per layer, layers 1..L-1):")
    same = cosines(ours.vectors, full.vectors)
    print(f"  cached vs two full passes ({len(pairs)} pairs): min {same.min():.6f}")
    print(f"  cached vs collect_residuals ({len(pairs)} pairs): min {cosines(ours.vectors, collected).min():.6f}")
    versus_anchor = cosines(ours_anchor_set.vectors, anchor)
    print(f"  interp vs anchor ({len(anchor_pairs)} pairs): min {versus_anchor.min():.4f}, median {versus_anchor.median():.4f} "
          "(the anchor's HF forward numbers left-padded rows from the padding, not the first real token)")

    test = load_bundled_sycophancy("test")
    steer = ours.steer(model.cfg.n_layers // 2, 0.2)
    build_s, cached = timed(lambda: ABEvaluator(model, test, FORMAT, **run), device)
    cached_s, _ = timed(lambda: cached.score([steer]), device)
    full_eval = ABEvaluator(model, test, FORMAT, kv_cache=False, **run)
    uncached_s, _ = timed(lambda: full_eval.score([steer]), device)
    print(f"\none steered A/B condition on {len(test)} held-out pairs: cached {cached_s:.2f} s "
          f"(after a one-off {build_s:.1f} s pass over the prompts), re-running the prompts {uncached_s:.1f} s "
          f"({uncached_s / cached_s:.0f}x)")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
