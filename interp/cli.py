"""The `interp` command: list models, generate with a direction, reproduce experiments."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _models(args: argparse.Namespace) -> int:
    from interp.models import list_models

    rows = list_models()
    print(f"{'name':30} {'layers':>6} {'d_model':>7}  installed  cached  description")
    for row in rows:
        print(
            f"{row['name']:30} {row['n_layers']:>6} {row['d_model']:>7}  {'yes' if row['installed'] else 'no':9}  "
            f"{'yes' if row['cached'] else 'no':6}  {row['description']}"
        )
        if not row["installed"]:
            print(f"{'':30} install: {row['install']}")
    print("Also accepted: a local HF folder, a .gguf file, or a hub name (needs the network).")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from interp.chat import format_chat
    from interp.directions import Direction
    from interp.models import load_model
    from interp.steering import Steer, generate

    model = load_model(args.model, device=args.device)
    prompt = args.prompt if args.raw else format_chat(model, args.prompt)
    interventions = []
    if args.direction:
        direction = Direction.load(args.direction)
        interventions.append(
            Steer(direction, scale=args.scale, layer=args.layer, unit=args.unit, positions=args.positions)
        )
    elif args.layer is not None or args.scale != 1.0:
        raise SystemExit("interp generate: --layer and --scale need --direction FILE")
    completion = generate(
        model, [prompt], interventions=interventions, max_new_tokens=args.max_new_tokens,
        do_sample=args.sample, temperature=args.temperature, seed=args.seed, progress=False,
    )[0]
    print(completion)
    return 0


def _parse_settings(settings: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; VALUE is read as JSON when it parses (numbers, lists, null), else as a string."""
    parsed: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {setting!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
        if isinstance(parsed[key], list):
            parsed[key] = tuple(parsed[key])
    return parsed


def _reproduce(args: argparse.Namespace) -> int:
    from interp.experiments import load_registry, run_experiment

    registry = load_registry()
    names = sorted(registry) if args.experiment == "all" else [args.experiment]
    overrides = {"model": args.model} if args.model else {}
    if args.device:
        overrides["device"] = args.device
    overrides.update(_parse_settings(args.set or []))
    for name in names:
        if name not in registry:
            raise SystemExit(f"interp reproduce: unknown experiment {name!r}; known: all, {', '.join(sorted(registry))}")
        folder = run_experiment(name, args.out, **overrides)
        print(f"{name}: wrote {folder}")
        summary = folder / "summary.md"
        if summary.exists():
            print(summary.read_text())
    # Refreshed after every run (one experiment or all), so the index lists every folder in --out.
    from interp.report import write_report

    print(f"report: wrote {write_report(args.out)}")
    return 0


def _train_sae(args: argparse.Namespace) -> int:
    import shlex

    from interp.corpus import build_corpus, load_corpus, save_corpus
    from interp.dictionaries import shipped_root
    from interp.models import load_model, model_name
    from interp.sae_training import SAETrainingConfig, train_saes_for_model

    config = SAETrainingConfig(
        architecture=args.architecture, d_sae=args.d_sae, k=args.k, l1_coefficient=args.l1_coefficient,
        lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
    )
    model = load_model(args.model, device=args.device)
    corpus_path = Path(args.corpus) if args.corpus else None
    if corpus_path is not None and corpus_path.exists():
        texts = load_corpus(corpus_path)
    else:
        texts = build_corpus(model, args.tokens, batch_size=args.generation_batch_size, seed=args.seed)
        if corpus_path is not None:
            save_corpus(texts, corpus_path)
    out = Path(args.out) if args.out else shipped_root() / model_name(model)
    reports = train_saes_for_model(model, texts, args.layers, out, config=config, max_length=args.max_length,
                                   command="interp " + shlex.join(args.argv))
    print("| hook | training tokens | variance explained | L0 | dead | CE recovered | train s |")
    print("|---|---|---|---|---|---|---|")
    for report in reports.values():
        evaluation = report["evaluation"]
        print(f"| {report['hook_name']} | {report['training_tokens']:,} | {evaluation['variance_explained']:.3f} | "
              f"{evaluation['l0']:.1f} | {evaluation['dead_fraction']:.3f} | {evaluation['ce_loss_recovered']:.3f} | "
              f"{report['train_seconds']:.0f} |")
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", help="the offline model registry: installed? cached?").set_defaults(func=_models)

    generate = commands.add_parser("generate", help="generate from a prompt, optionally steered by a Direction")
    generate.add_argument("--model", default="smollm2-135m-instruct")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--raw", action="store_true", help="do not apply the chat template")
    generate.add_argument("--direction", help="a folder written by Direction.save")
    generate.add_argument("--layer", type=int, help="add at this layer instead of the direction's own")
    generate.add_argument("--scale", type=float, default=1.0)
    generate.add_argument("--unit", action="store_true", help="scale the unit vector, not the vector as found")
    generate.add_argument("--positions", choices=("all", "new"), default="new")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--sample", action="store_true")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--device")
    generate.set_defaults(func=_generate)

    reproduce = commands.add_parser("reproduce", help="run an experiment (or all) into --out")
    reproduce.add_argument("experiment", help="an experiment name, or 'all'")
    reproduce.add_argument("--out", type=Path, default=Path("results"))
    reproduce.add_argument("--model", help="override the experiment's default model")
    reproduce.add_argument("--device")
    reproduce.add_argument("--set", action="append", metavar="KEY=VALUE",
                           help="override a config field (JSON values: 8, 0.5, [1,2], null); repeatable")
    reproduce.set_defaults(func=_reproduce)

    train = commands.add_parser("train-sae", help="train SAEs on a model's residual stream (SAE-Lens format)")
    train.add_argument("--model", default="smollm2-135m-instruct")
    train.add_argument("--layers", type=int, nargs="+", required=True, help="resid_pre layers, one SAE each")
    train.add_argument("--tokens", type=int, default=1_000_000, help="corpus size to generate (tokens)")
    train.add_argument("--corpus", help="a JSONL corpus: read if it exists, else generated and written there")
    train.add_argument("--architecture", choices=("topk", "standard"), default="topk")
    train.add_argument("--d-sae", type=int, default=4608)
    train.add_argument("--k", type=int, default=32)
    train.add_argument("--l1-coefficient", type=float, default=2.0)
    train.add_argument("--lr", type=float, default=4e-4)
    train.add_argument("--batch-size", type=int, default=4096)
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-length", type=int, default=256)
    train.add_argument("--generation-batch-size", type=int, default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", help="folder for {hook_name}/ SAE folders (default: interp/data/saes/{model})")
    train.add_argument("--device")
    train.set_defaults(func=_train_sae)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"interp {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
