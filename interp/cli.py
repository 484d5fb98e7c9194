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


def _load_direction(path: str, *, verify: bool) -> Any:
    """`Direction.load`, its advice given as this command's flag."""
    from interp.directions import Direction

    try:
        return Direction.load(path, verify=verify)
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"--direction: {error}".replace("pass verify=False", "pass --no-verify")) from None


def _generate(args: argparse.Namespace) -> int:
    import math

    import torch

    from interp._checks import scaled
    from interp._timing import progress_on
    from interp.chat import format_chat
    from interp.directions import Direction, check_direction
    from interp.experiments.checks import check_device_name, check_model_spec
    from interp.models import load_model, model_dimensions, placement, within_context
    from interp.runner import generate
    from interp.steering import Steer

    # Every argument is checked before the model loads (tens of seconds for a large one).
    if args.direction is None and (args.layer is not None or args.scale != 1.0 or args.unit or args.compare):
        raise ValueError("--layer, --scale, --unit and --compare need --direction FOLDER")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: expected >= 1, got {args.max_new_tokens}")
    if not math.isfinite(args.scale):
        raise ValueError(f"--scale: expected a finite number, got {args.scale}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ValueError(f"--temperature: expected a number > 0, got {args.temperature}")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed: expected a whole number >= 0, got {args.seed}")
    if not args.prompt.strip():
        raise ValueError("--prompt: expected a non-blank prompt")
    check_model_spec(args.model, "--model")
    device_map = _device_map(args.device_map)
    if args.device is not None or device_map is None:
        check_device_name(args.device, "--device")
    device = args.device
    placement(device, torch.float32, device_map, None, args.offload_folder, args.quantization)  # checked before loading
    direction = _load_direction(args.direction, verify=not args.no_verify) if args.direction else None
    name, width, depth = model_dimensions(args.model, "--model")
    within_context(args.max_new_tokens, args.model, "--max-new-tokens")
    if direction is not None and width is not None:  # as Steer will check it, before the load
        check_direction(direction, args.model, width, depth, layer=args.layer, argument="--direction",
                        layer_argument="--layer")
    if direction is not None:  # Steer's check of the product: a finite scale can overflow float32 (1e39)
        scaled((direction.unit() if args.unit else direction).vector, args.scale, "--scale")
    model = load_model(args.model, device=device, device_map=device_map, offload_folder=args.offload_folder,
                       quantization=args.quantization)
    prompt = args.prompt if args.raw else format_chat(model, args.prompt)
    interventions = []
    if direction is not None:
        interventions.append(
            Steer(direction, scale=args.scale, layer=args.layer, unit=args.unit, positions=args.positions)
        )
    if args.compare:  # the unsteered completion beside the steered one (the same seed when sampling)
        from interp.recipes import compare

        print(compare(model, prompt, interventions, max_new_tokens=args.max_new_tokens, chat=False,
                      do_sample=args.sample, temperature=args.temperature, seed=args.seed))
        return 0
    completion = generate(
        model, [prompt], interventions=interventions, max_new_tokens=args.max_new_tokens,
        do_sample=args.sample, temperature=args.temperature, seed=args.seed, progress=progress_on(),
    )[0]
    print(completion)
    return 0


def _device_map(text: str | None) -> str | dict[str, str | int] | None:
    """`--device-map`: a strategy name ("auto", ...) or a JSON object of module name -> device."""
    if text is None or text.lstrip()[:1] not in ("{", "["):
        return text
    try:
        parsed = json.loads(text)
    except ValueError as error:
        raise ValueError(f"--device-map: expected a strategy such as auto or a JSON object, got {text!r} ({error})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"--device-map: expected a JSON object of module name -> device, got {text!r}")
    return parsed


def _parse_settings(settings: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs as text; `interp.experiments.parse_settings` types them per experiment."""
    parsed: dict[str, str] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: expected KEY=VALUE, got {setting!r}")
        parsed[key.strip()] = value
    return parsed


def _reproduce(args: argparse.Namespace) -> int:
    from interp.experiments import check_out, load_registry, make_config, parse_settings, run_experiment, run_order
    from interp.experiments.checks import check_resources, settings_of
    from interp.experiments.common import shared_models
    from interp.experiments.fields import renamed
    from interp.report import check_report_target, write_report

    registry = load_registry()
    if args.experiment != "all" and args.experiment not in registry:
        raise ValueError(f"experiment: unknown {args.experiment!r}; known: all, {', '.join(sorted(registry))}")
    names = run_order(registry) if args.experiment == "all" else [args.experiment]  # what an experiment reads, first
    # Everything is checked for every selected experiment before the first one starts.
    settings = renamed(_parse_settings(args.set or []),  # old names (sae_path) as the new, with a warning
                       {field for name in names for field in settings_of(registry[name].config_type)}, "--set ")
    flags = {"model": args.model, "device": args.device}
    settings.update({key: value for key, value in flags.items() if value})
    overrides = parse_settings(names, settings)

    for name in names:  # the model, device, files and layers each experiment will use, named as the user set them
        check_resources(make_config(name, **overrides), lambda field, name=name: (
            f"--{field}" if flags.get(field) else f"--set {field}" if field in settings else f"{name}'s default {field}"))
    check_out(args.out, names)
    check_report_target(args.out)
    with shared_models():  # each model is loaded once for all the experiments
        for name in names:
            folder = run_experiment(name, args.out, progress=args.progress, **overrides)
            print(f"{name}: wrote {folder}")
            summary = folder / "summary.md"
            if summary.exists():
                print(summary.read_text())
    # Refreshed after every run (one experiment or all), so the index lists every folder in --out.
    print(f"report: wrote {write_report(args.out)}")
    return 0


def _train_sae(args: argparse.Namespace) -> int:
    import shlex

    from interp._checks import output_folder
    from interp.corpus import build_corpus, save_corpus
    from interp.dictionaries import shipped_root
    from interp.models import check_device, load_model
    from interp.sae_training import check_engine, check_sae_targets, train_saes_for_model

    # Every argument, the corpus file and the output folders are checked before the model loads.
    check_engine(args.engine, "--engine")  # for saelens: is sae-lens installed? (before the corpus is built)
    config, depth = _check_sae_arguments(args)
    device = check_device(args.device, "--device")
    # model_name(load_model(m)) is m itself, so the output folders are known before the model loads.
    out = output_folder(args.out, "--out") if args.out else shipped_root() / str(args.model)
    check_sae_targets(out, args.layers, overwrite=args.overwrite, argument="--out")
    corpus_path = Path(args.corpus).expanduser() if args.corpus else None
    texts = _read_corpus(corpus_path) if corpus_path is not None and corpus_path.exists() else None
    model = load_model(args.model, device=device)
    if depth is None:  # a hub model: its depth is known now, still before the corpus is built
        _check_sae_layers(args.layers, model.cfg.n_layers, args.model)
    if texts is None:
        texts = build_corpus(model, args.tokens, batch_size=args.generation_batch_size, seed=args.seed)
        if corpus_path is not None:
            save_corpus(texts, corpus_path)
    reports = train_saes_for_model(model, texts, args.layers, out, config=config, engine=args.engine,
                                   max_length=args.max_length, context_size=args.context_size,
                                   command="interp " + shlex.join(args.argv), overwrite=args.overwrite)
    print("| hook | engine | training tokens | variance explained | L0 | dead | CE recovered | s | tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for report in reports.values():
        evaluation = report["evaluation"]
        print(f"| {report['hook_name']} | {report['engine']} | {report['training_tokens']:,} | "
              f"{evaluation['variance_explained']:.3f} | {evaluation['l0']:.1f} | {evaluation['dead_fraction']:.3f} | "
              f"{evaluation['ce_loss_recovered']:.3f} | {report['seconds']:.0f} | {report['tokens_per_second']:,.0f} |")
    print(f"wrote {out}")
    return 0


def _features(args: argparse.Namespace) -> int:
    from interp.browser.command import run
    from interp.experiments.checks import check_device_name, check_model_spec

    check_model_spec(args.model, "--model")
    check_device_name(args.device, "--device")
    return run(args)  # checks the other arguments, the dictionary and the corpus before the model loads


def _check_sae_arguments(args: argparse.Namespace) -> tuple[Any, int | None]:
    """train-sae's options, each named by its flag: the SAE config, the layers against the model's depth (from
    its registry entry or config, without loading it), sizes, the corpus path, and the memory an SAE of
    --d-sae latents needs. Returns the config and the model's depth (None for a hub model)."""
    from interp._checks import output_folder
    from interp.models import model_dimensions
    from interp.experiments.checks import check_device_name, check_model_spec
    from interp.models import within_context
    from interp.sae_training import SAETrainingConfig

    if args.context_size is not None and args.engine != "saelens":
        raise ValueError("--context-size: only --engine saelens packs rows of tokens")
    for flag, value, minimum in (("--context-size", args.context_size, 2), ("--tokens", args.tokens, 1),
                                 ("--max-length", args.max_length, 2), ("--generation-batch-size", args.generation_batch_size, 1),
                                 ("--seed", args.seed, 0)):
        if value is not None and value < minimum:
            raise ValueError(f"{flag}: expected a whole number >= {minimum}, got {value}")
    try:
        config = SAETrainingConfig(
            architecture=args.architecture, d_sae=args.d_sae, k=args.k, l1_coefficient=args.l1_coefficient,
            lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
        )
    except ValueError as error:  # its messages name the fields: name the flags instead
        field, _, rest = str(error).partition(":")
        raise ValueError(f"--{field.replace('_', '-')}:{rest}") from None
    check_model_spec(args.model, "--model")
    check_device_name(args.device, "--device")
    _, width, depth = model_dimensions(args.model, "--model")
    if depth is not None:
        _check_sae_layers(args.layers, depth, args.model)
    if width is not None:
        _check_sae_memory(args.d_sae, width, args.device)
    if args.engine == "saelens":  # it packs rows of exactly this many tokens (ours only truncates at --max-length)
        flag = "--context-size" if args.context_size else "--max-length"
        within_context(args.context_size or args.max_length, args.model, flag)
    if args.corpus:
        corpus = Path(args.corpus).expanduser()
        if corpus.is_dir():
            raise ValueError(f"--corpus: {corpus} is a folder; expected a JSONL or text file (read, or written there)")
        output_folder(corpus.parent, "--corpus")  # where a generated corpus is written
    return config, depth


def _check_sae_layers(layers: Sequence[int], depth: int, model: str) -> None:
    for layer in layers:
        if not 0 <= layer < depth:
            raise ValueError(f"--layers: layer {layer} is out of range for {model!r}, which has {depth} layers (0-{depth - 1})")
    if len(set(layers)) != len(layers):
        raise ValueError(f"--layers: {list(layers)} repeats a layer")


def _check_sae_memory(d_sae: int, width: int, device: str | None) -> None:
    """Refuse an SAE whose weights, gradients and Adam state (4 copies of 2 matrices, float32) exceed the device."""
    import os

    import torch

    from interp.models import check_device

    needed = 4 * 2 * d_sae * width * 4
    resolved = check_device(device, "--device")
    if resolved.type == "cuda":
        available = torch.cuda.get_device_properties(resolved.index or 0).total_memory
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ValueError(f"--d-sae: {d_sae:,} latents on d_model {width} need about {needed / 2**30:,.1f} GiB for the "
                         f"SAE's weights, gradients and optimiser state; the {resolved.type} device has "
                         f"{available / 2**30:,.1f} GiB")


def _read_corpus(path: Path) -> list[str]:
    """The corpus at `path`, or an error naming --corpus."""
    from interp.corpus import load_corpus

    return load_corpus(path, argument="--corpus")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; an option without a default says nothing of it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or not action.option_strings:
            return action.help
        return super()._get_help_string(action)


class _ReproduceHelp(argparse.Action):
    """`interp reproduce NAME --help`: the command's options, then every setting of NAME's config."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from interp.experiments import load_registry
        from interp.experiments.fields import describe_settings

        registry = load_registry()
        name = getattr(namespace, "experiment", None)
        parser.print_help()
        if name in registry:
            experiment = registry[name]
            print(f"\n{name}: {experiment.description}\nsettings (--set KEY=VALUE; a list as 1,2; null for None):")
            print(describe_settings(experiment.config_type))
        else:
            print(f"\nexperiments: {', '.join(sorted(registry))} (interp reproduce NAME --help lists NAME's settings)")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The `interp` command's parser: `reproduce`, `models`, `generate`, `train-sae`, `features`, `--version`, `--debug`."""
    import interp

    parser = argparse.ArgumentParser(prog="interp", description=__doc__, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"interp {interp.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", help="the offline model registry: installed? cached?",
                        formatter_class=_Help).set_defaults(func=_models)

    generate = commands.add_parser("generate", help="generate from a prompt, optionally steered by a Direction",
                                   formatter_class=_Help)
    generate.add_argument("--model", default="smollm2-135m-instruct",
                          help="a registry name (interp models), a local HF folder, a .gguf file or a hub name")
    generate.add_argument("--prompt", required=True, help="the user's message (chat-formatted unless --raw)")
    generate.add_argument("--raw", action="store_true", help="do not apply the chat template")
    generate.add_argument("--direction", help="a folder written by Direction.save")
    generate.add_argument("--no-verify", action="store_true",
                          help="read a --direction whose files were edited on purpose (their values are still checked)")
    generate.add_argument("--layer", type=int, help="add at this layer instead of the direction's own")
    generate.add_argument("--scale", type=float, default=1.0, help="the direction times this is added")
    generate.add_argument("--unit", action="store_true", help="scale the unit vector, not the vector as found")
    generate.add_argument("--positions", choices=("all", "new"), default="new",
                          help="add at every token, or from the last prompt token on")
    generate.add_argument("--compare", action="store_true",
                          help="print the unsteered completion beside the steered one, and the top next tokens of both "
                               "(needs --direction)")
    generate.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    generate.add_argument("--seed", type=int, help="seed of the sampling (with --sample)")
    generate.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: a GPU if there is one, else the CPU)")
    generate.add_argument("--device-map", help='spread the model over devices with accelerate: "auto", "balanced", '
                          '"sequential", or a JSON object of module name -> device ("cpu", 0, "disk")')
    generate.add_argument("--offload-folder", help="a new or empty folder for the weights --device-map puts on disk")
    generate.add_argument("--quantization", choices=("8bit", "4bit"), help="load the weights 8- or 4-bit (bitsandbytes, CUDA)")
    generate.set_defaults(func=_generate)

    reproduce = commands.add_parser("reproduce", help="run an experiment (or all) into --out", add_help=False,
                                    formatter_class=_Help,
                                    description="Run an experiment; `interp reproduce NAME --help` lists its settings.")
    reproduce.add_argument("-h", "--help", action=_ReproduceHelp, help="show this help, and NAME's settings")
    reproduce.add_argument("experiment", help="an experiment name, or 'all'")
    reproduce.add_argument("--out", type=Path, default=Path("results"),
                           help="the results folder: one subfolder per experiment, and index.html")
    reproduce.add_argument("--model", help="override the experiment's default model")
    reproduce.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the experiment's, else a GPU if any)")
    reproduce.add_argument("--set", action="append", metavar="KEY=VALUE",
                           help="override a config field (8, 0.5, true, a list as 1,2 or [1,2], null); repeatable")
    reproduce.add_argument("--progress", action=argparse.BooleanOptionalAction,
                           help="each stage's time and a bar on every step past ~2 s, on stderr (default: on, unless "
                                "the environment sets INTERP_PROGRESS=0)")
    reproduce.set_defaults(func=_reproduce)

    train = commands.add_parser("train-sae", help="train SAEs on a model's residual stream (SAE-Lens format)",
                                formatter_class=_Help)
    train.add_argument("--model", default="smollm2-135m-instruct",
                       help="a registry name (interp models), a local HF folder, a .gguf file or a hub name")
    train.add_argument("--layers", type=int, nargs="+", required=True, help="resid_pre layers, one SAE each")
    train.add_argument("--tokens", type=int, default=1_000_000, help="corpus size to generate (tokens)")
    train.add_argument("--corpus", help="a JSONL corpus: read if it exists, else generated and written there")
    train.add_argument("--engine", choices=("ours", "saelens"), default="ours",
                       help="ours: in-memory trainer, fast for runs that fit in memory; saelens: SAE-Lens's "
                            "training runner, streaming activations from the model, for larger runs (needs interp[sae])")
    train.add_argument("--context-size", type=int,
                       help="--engine saelens: tokens per packed row (default: --max-length)")
    train.add_argument("--architecture", choices=("topk", "standard", "gated"), default="topk", help="the SAE's kind")
    train.add_argument("--d-sae", type=int, default=4608, help="features (latents) per SAE")
    train.add_argument("--k", type=int, default=32, help="active features per token (topk)")
    train.add_argument("--l1-coefficient", type=float, default=2.0, help="sparsity penalty (standard, gated)")
    train.add_argument("--lr", type=float, default=4e-4, help="learning rate")
    train.add_argument("--batch-size", type=int, default=4096, help="activations (tokens) per training step")
    train.add_argument("--epochs", type=float, default=1.0, help="passes over the harvested activations")
    train.add_argument("--max-length", type=int, default=256, help="tokens per corpus text at most")
    train.add_argument("--generation-batch-size", type=int, default=64, help="prompts per batch when generating the corpus")
    train.add_argument("--seed", type=int, default=0, help="seed of the corpus, the split and the training")
    train.add_argument("--out", help="folder for {hook_name}/ SAE folders (default: interp/data/saes/{model})")
    train.add_argument("--overwrite", action="store_true", help="replace SAEs already saved in --out")
    train.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: a GPU if there is one, else the CPU)")
    train.set_defaults(func=_train_sae)

    from interp.browser.command import add_arguments

    browser = commands.add_parser("features", help="an offline feature browser of an SAE or transcoder (static HTML)",
                                  formatter_class=_Help)
    add_arguments(browser)
    browser.set_defaults(func=_features)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `interp` command.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).

    Returns:
        The exit status: 0 on success; an error is one line on stderr (`interp --debug ...` shows the traceback).
    """
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as error:
        # Expected failures (bad arguments, files, a missing model or device) end in one line;
        # --debug shows where they came from.
        if args.debug:
            raise
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        print(f"interp {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
