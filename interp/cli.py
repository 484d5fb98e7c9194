"""The `interp` command: list models, generate with a direction, reproduce experiments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


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


def _reproduce(args: argparse.Namespace) -> int:
    from interp.experiments import load_registry, run_experiment

    registry = load_registry()
    names = sorted(registry) if args.experiment == "all" else [args.experiment]
    overrides = {"model": args.model} if args.model else {}
    if args.device:
        overrides["device"] = args.device
    for name in names:
        if name not in registry:
            raise SystemExit(f"interp reproduce: unknown experiment {name!r}; known: all, {', '.join(sorted(registry))}")
        folder = run_experiment(name, args.out, **overrides)
        print(f"{name}: wrote {folder}")
        summary = folder / "summary.md"
        if summary.exists():
            print(summary.read_text())
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
    reproduce.set_defaults(func=_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"interp {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
