"""TopK and gated SAEs trained on the same activations, side by side: variance explained, L0, dead
features and CE loss recovered on held-out text.

Text comes from `--corpus` (JSONL(.gz) of {"text"}, as `interp train-sae` reads) or from `--text-glob`
(any plain-text or Markdown files, split at blank lines into chunks of about 1,000 characters).

    python benchmarks/bench_sae_architectures.py --text-glob '/usr/share/vim/vim90/doc/usr_*.txt' \\
        --layer 15 --d-sae 2304 --gated-l1 0.25
"""

from __future__ import annotations

import argparse
import glob
import random
import re
import time
from pathlib import Path

import torch

from interp.corpus import load_corpus
from interp.dictionaries import from_saelens_folder
from interp.models import load_model
from interp.sae_training import (
    SAETrainingConfig,
    harvest_activations,
    reconstruction_stats,
    save_sae,
    spliced_losses,
    train_sae,
)


def chunks_of(pattern: str, max_chars: int = 1000, seed: int = 0) -> list[str]:
    """Paragraphs of the matching files joined into chunks of at most `max_chars`, shuffled."""
    texts = []
    for path in sorted(glob.glob(pattern)):
        chunk = ""
        for paragraph in (p.strip() for p in re.split(r"\n\s*\n", Path(path).read_text(errors="ignore"))):
            if not paragraph:
                continue
            if chunk and len(chunk) + len(paragraph) > max_chars:
                texts.append(chunk)
                chunk = ""
            chunk = f"{chunk}\n\n{paragraph}" if chunk else paragraph
        if chunk:
            texts.append(chunk)
    random.Random(seed).shuffle(texts)
    return [text for text in texts if len(text) > 40]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus")
    source.add_argument("--text-glob")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--n-train-texts", type=int, default=560)
    parser.add_argument("--n-eval-texts", type=int, default=60)
    parser.add_argument("--n-ce-texts", type=int, default=20)
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--gated-l1", type=float, default=0.25)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", default="/tmp/bench_sae_architectures")
    args = parser.parse_args()

    texts = load_corpus(args.corpus) if args.corpus else chunks_of(args.text_glob)
    train_texts = texts[: args.n_train_texts]
    eval_texts = texts[args.n_train_texts : args.n_train_texts + args.n_eval_texts]
    model = load_model(args.model)
    hook = f"blocks.{args.layer}.hook_resid_pre"
    train = harvest_activations(model, train_texts, [args.layer], max_length=256, progress=True).activations[args.layer]
    held_out = harvest_activations(model, eval_texts, [args.layer], max_length=256, progress=True).activations[args.layer]
    common = {"d_sae": args.d_sae, "batch_size": 512, "epochs": args.epochs, "lr": args.lr, "dead_after_tokens": 50_000}
    configs = {f"TopK, k = {args.k}": SAETrainingConfig(architecture="topk", k=args.k, **common),
               f"gated, L1 {args.gated_l1:g}": SAETrainingConfig(architecture="gated", l1_coefficient=args.gated_l1, **common)}
    print(f"{args.model} {hook}: {train.shape[0]:,} training tokens, {held_out.shape[0]:,} held out, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| SAE | variance explained | L0 | dead | CE loss recovered | train CPU s |")
    print("|---|---|---|---|---|---|")
    for label, config in configs.items():
        cpu = time.process_time()
        sae, _ = train_sae(train, config, progress=False)
        cpu = time.process_time() - cpu
        folder = save_sae(sae, f"{args.out}/{config.architecture}", hook=hook, model_name=args.model,
                          dtype=torch.float32, overwrite=True)
        dictionary = from_saelens_folder(folder)
        explained, l0, dead = reconstruction_stats(dictionary, held_out)
        losses = spliced_losses(model, dictionary, eval_texts[: args.n_ce_texts], mean_activation=held_out.float().mean(0))
        recovered = (losses["zero"] - losses["spliced"]) / (losses["zero"] - losses["clean"])
        print(f"| {label} | {explained:.3f} | {l0:.1f} | {dead:.3f} | {recovered:.3f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
