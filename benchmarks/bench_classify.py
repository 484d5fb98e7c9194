"""Benchmark: throughput of scoring a dictionary's features as multiple-choice classifiers (CPU or `--device`).

Rows, in (question × option) examples per second:

- `forward + scoring (ours)`: `interp.classify.option_activations` (per batch the prompts run once into
  a KV cache, each option then runs its last two tokens; the letters' log-probabilities come from the
  same pass) followed by `feature_scores` of every feature, encoder pre-activations and decoder dot
  products;
- `forward + scoring (one forward per option)`: the anchor, the plain route: `collect_residuals` over
  every prompt + letter (left-padded batches, `stop_at_layer` after the layer read), then the same scoring
  (it gives no letter log-probabilities: those need a full-depth pass);
- `scoring alone`: `feature_scores` for both kinds on activations already collected, and the train-split
  evaluation of every feature (`fit_on_train`: vectorised AUROC with ties, sign, threshold).

The dictionary is random with SAE shapes (4,608 features × d_model, encoder and decoder): speed does not
depend on the weights; it lives on `--device`, so the scoring runs there too. Each speed is the best of
`--repeats` runs (the machine may be shared).

    python benchmarks/bench_classify.py --questions 32 --repeats 2 [--device cuda]
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable

import torch

from interp.activations import collect_residuals
from interp.classify import feature_scores, fit_on_train, option_activations
from interp.datasets import load_bundled_multiple_choice
from interp.dictionaries import Dictionary, Encoder

from _common import add_run_arguments, device_label, parse_and_load, timed  # noqa: E402  (benchmarks/ is on sys.path)


def random_sae_dictionary(n_atoms: int, width: int, layer: int, seed: int = 0) -> Dictionary:
    generator = torch.Generator().manual_seed(seed)
    decoder = torch.randn(n_atoms, width, generator=generator)
    norms = decoder.norm(dim=1)
    encoder = Encoder(torch.randn(width, n_atoms, generator=generator) / width**0.5, torch.zeros(n_atoms), torch.zeros(width))
    return Dictionary(decoder / norms[:, None], norms, hook_name=f"blocks.{layer}.hook_resid_pre", source="random", encoder=encoder)


def best_of(repeats: int, run: Callable[[], object], device: str) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        seconds, out = timed(run, device)
        best = min(best, seconds)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--atoms", type=int, default=4608)
    parser.add_argument("--batch-size", type=int, default=16)
    add_run_arguments(parser)
    args, model = parse_and_load(parser)
    questions = load_bundled_multiple_choice()[: args.questions]
    n_examples = len(questions) * 4
    dictionary = random_sae_dictionary(args.atoms, model.cfg.d_model, args.layer).to(args.device)
    answers = torch.tensor([q.answer for q in questions])

    def ours() -> torch.Tensor:
        acts = option_activations(model, questions, [args.layer], batch_size=args.batch_size, progress=False)
        resid = acts.at(args.layer)
        return torch.cat([feature_scores(dictionary, resid, "encoder"), feature_scores(dictionary, resid, "decoder")], -1)

    acts = option_activations(model, questions, [args.layer], batch_size=args.batch_size, progress=False)  # warm-up
    prompts = [prompt + letter for prompt in acts.prompts for letter in acts.letters]

    def per_option() -> torch.Tensor:
        resid = collect_residuals(model, prompts, [args.layer], batch_size=args.batch_size, progress=False)[:, 0, 0]
        resid = resid.reshape(len(questions), 4, -1)
        return torch.cat([feature_scores(dictionary, resid, "encoder"), feature_scores(dictionary, resid, "decoder")], -1)

    resid = acts.at(args.layer).to(args.device)

    def scoring() -> torch.Tensor:
        return torch.cat([feature_scores(dictionary, resid, "encoder"), feature_scores(dictionary, resid, "decoder")], -1)

    def scoring_and_selection() -> object:
        return fit_on_train(scoring(), answers)

    rows = []
    for name, run in (("forward + scoring (ours: KV-cached prompt, 2 tokens per option)", ours),
                      ("forward + scoring (one forward per option, stop_at_layer)", per_option),
                      ("scoring alone (encoder + decoder, all features)", scoring),
                      ("scoring + train evaluation of every feature (AUROC, sign, threshold)", scoring_and_selection)):
        seconds, _ = best_of(args.repeats, run, args.device)
        rows.append((name, seconds, n_examples / seconds))
    lengths = [len(model.tokenizer(p)["input_ids"]) for p in prompts]
    print(f"{args.model}, layer {args.layer}, {args.atoms} features × {model.cfg.d_model}, {len(questions)} questions × 4 options "
          f"= {n_examples} examples, prompt {min(lengths)}–{max(lengths)} tokens, batch {args.batch_size}, "
          f"{args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{device_label(args.device)}; best of {args.repeats}")
    print()
    print("| path | seconds | examples / s |")
    print("|---|---|---|")
    for name, seconds, rate in rows:
        print(f"| {name} | {seconds:.2f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
