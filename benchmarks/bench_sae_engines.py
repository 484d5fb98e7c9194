"""SAE training throughput of both engines, side by side: ours (harvest into memory, then train) and SAE-Lens's
runner (streaming activations from the model while it trains), on the same model, corpus, layer and width.

Both run through `interp.sae_training.train_saes_for_model`, in one process, one after the other; both are
evaluated on the same held-out texts (evaluation time is not counted). Tokens/s is SAE training tokens per
wall-clock second of the whole job before evaluation: for ours, the harvest (one pass of the model over the
corpus) plus the training steps; for SAE-Lens, its runner's run (model passes, norm estimate, steps).

    python benchmarks/bench_sae_engines.py --text-glob '/usr/share/vim/vim90/doc/usr_*.txt' --n-texts 200
"""

from __future__ import annotations

import argparse
import platform
from importlib.metadata import version
from pathlib import Path

import torch
from bench_sae_architectures import chunks_of

from interp.corpus import load_corpus
from interp.hooked import d_model
from interp.models import check_device, load_model
from interp.sae_training import SAETrainingConfig, check_engine, train_saes_for_model

from _common import device_label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--corpus", help="a JSONL corpus of {'text': ...}, as `interp train-sae` reads")
    source.add_argument("--text-glob", default="/usr/share/vim/vim90/doc/usr_*.txt",
                        help="plain-text files, split into ~1,000-character chunks (default: Vim's user manual)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--n-texts", type=int, default=200)
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="/tmp/bench_sae_engines")
    parser.add_argument("--engines", nargs="+", choices=("ours", "saelens"), default=["ours", "saelens"],
                        help="which engines to time (default: both; 'ours' alone where sae-lens is not installed)")
    args = parser.parse_args()

    if "saelens" in args.engines:
        check_engine("saelens", "sae-lens")  # refuse before any work when sae-lens is missing
    device = check_device(args.device, "--device")
    torch.set_num_threads(args.threads)
    texts = load_corpus(args.corpus) if args.corpus else chunks_of(args.text_glob)
    texts = texts[: args.n_texts]
    if not texts:
        raise SystemExit("no texts: pass --corpus or a --text-glob that matches files")
    model = load_model(args.model, device=device)
    config = SAETrainingConfig(d_sae=args.d_sae, k=args.k, batch_size=args.batch_size, epochs=args.epochs, lr=args.lr,
                               dead_after_tokens=50_000)
    reports = {}
    for engine in args.engines:
        reports[engine] = train_saes_for_model(
            model, texts, [args.layer], Path(args.out) / engine, config=config, engine=engine,
            max_length=args.max_length, train_device=device, progress=False, overwrite=True,
            command=f"bench_sae_engines --engine {engine}",
        )[args.layer]

    width = d_model(model)
    print(f"{args.model}, blocks.{args.layer}.hook_resid_pre, {len(texts)} texts (5% held out), TopK d_sae "
          f"{args.d_sae}, k {args.k}, batch {args.batch_size}, {args.epochs:g} epoch(s), lr {args.lr:g}; "
          f"{device_label(device)}, {args.threads} thread(s); torch {torch.__version__}, transformers "
          f"{version('transformers')}, transformer-lens {version('transformer-lens')}, sae-lens {version('sae-lens') if 'saelens' in reports else 'not run'}, "
          f"Python {platform.python_version()}")
    print()
    print("| engine | SAE training tokens | harvest s | SAE steps s | total s | tokens/s | activations in memory "
          "| variance explained | L0 | dead | CE loss recovered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for engine, report in reports.items():
        evaluation = report["evaluation"]
        if engine == "ours":
            harvest, steps = f"{report['harvest_seconds']:.1f}", f"{report['train_seconds']:.1f}"
            held = report["distinct_training_tokens"] * width * 2  # float16 harvest
        else:
            harvest, steps = "(streamed)", "(streamed)"
            held = report["buffer_tokens"] * width * 4  # float32 mixing buffer
        print(f"| {engine} | {report['training_tokens']:,} | {harvest} | {steps} | {report['seconds']:.1f} | "
              f"{report['tokens_per_second']:,.0f} | {held / 2**20:.0f} MiB | {evaluation['variance_explained']:.3f} | "
              f"{evaluation['l0']:.1f} | {evaluation['dead_fraction']:.3f} | {evaluation['ce_loss_recovered']:.3f} |")
    if len(reports) == 2:
        ratio = reports["ours"]["tokens_per_second"] / max(reports["saelens"]["tokens_per_second"], 1e-9)
        print(f"\nours / saelens throughput: {ratio:.2f}x (reports: {args.out}/{{ours,saelens}}/*/training_report.json)")


if __name__ == "__main__":
    main()
