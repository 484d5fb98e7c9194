"""`interp features`: build a feature browser from the command line.

Every argument is checked before the model loads (as every `interp` command does): the model name and the
device (by `interp.cli`, with the checks every command makes), the output folder, the dictionary (read, and its width and layers compared with the model's config),
the feature lists, the harvest options and the corpus's first records.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `interp features`' options to `parser` (the dictionary, model, corpus, output folder, harvest sizes, ...).

    Args:
        parser: the `features` subcommand's parser; each option's help names its default.
    """
    parser.add_argument("--dictionary", required=True,
                        help="an SAE or transcoder: any folder or file interp.dictionaries reads, or a safetensors decoder")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="a registry name (interp models), a local HF folder, a .gguf file or a hub name")
    parser.add_argument("--corpus", help="texts to harvest: a .txt/.jsonl file (optionally .gz) or an activation shard "
                                         "folder; not needed for a raw decoder")
    parser.add_argument("--out", type=Path, required=True, help="the browser's folder (new, empty, or a browser)")
    parser.add_argument("--hook", help="where the dictionary reads (blocks.L.hook_...), when its files do not say")
    parser.add_argument("--features", help="pages to build, e.g. 0-99,512 (default: all)")
    parser.add_argument("--explain", help="features to self-explain: a list like --features, or 'all' (slow)")
    parser.add_argument("--steer", help="features to preview steering for: a list, or 'all' (slow)")
    parser.add_argument("--n-top", type=int, default=20, help="top contexts kept per feature")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text at most")
    parser.add_argument("--batch-tokens", type=int, default=4096, help="tokens per forward pass of the harvest")
    parser.add_argument("--max-docs", type=int, help="read at most this many texts")
    parser.add_argument("--checkpoint", type=Path, help="a folder to save the harvest in as it runs (resumed from)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: a GPU if there is one, else the CPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace a browser already at --out")


def parse_features(text: str | None, n_atoms: int, argument: str) -> list[int] | None:
    """'0-9,12' as [0, ..., 9, 12] (None when not given); every index must be in [0, n_atoms)."""
    if text is None:
        return None
    chosen: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        low, dash, high = part.partition("-")
        try:
            chosen += list(range(int(low), int(high) + 1)) if dash else [int(part)]
        except ValueError:
            raise ValueError(f"{argument}: expected feature numbers and ranges like 0-99,512, got {part!r}") from None
    bad = [f for f in chosen if not 0 <= f < n_atoms]
    if not chosen or bad:
        raise ValueError(f"{argument}: expected features in [0, {n_atoms}), got {bad[:5] or 'none'}")
    return list(dict.fromkeys(chosen))


def _subset(text: str | None, n_atoms: int, pages: list[int] | None, argument: str) -> list[int] | str | None:
    if text is None or text == "all":
        return text
    chosen = parse_features(text, n_atoms, argument)
    missing = sorted(set(chosen or []) - set(pages if pages is not None else range(n_atoms)))
    if missing:
        raise ValueError(f"{argument}: features {missing[:5]} get no page (see --features)")
    return chosen


def run(args: argparse.Namespace) -> int:
    """Run `interp features`: check every option before any work, then harvest and write the feature browser.

    Args:
        args: the parsed options (`add_arguments`).

    Returns:
        The exit status (0 on success).

    Raises:
        ValueError: an option is invalid (an output folder that holds other files, a corpus that does not
            exist, `--max-length` past the model's context, ...), before the model loads.
    """
    from interp._checks import output_folder
    from interp._io import check_target
    from interp.browser.harvest import HARVEST_KIND
    from interp.browser.site import build_feature_browser, check_browser_target
    from interp.browser.sources import check_corpus
    from interp.models import load_model, model_dimensions, within_context

    # interp.cli has checked --model and --device (with the checks every command makes).
    check_browser_target(output_folder(args.out, "--out"), overwrite=args.overwrite, argument="--out")
    dictionary = _read_dictionary(args.dictionary, args.hook)
    _, width, depth = model_dimensions(args.model, "--model")
    dictionary.check_dimensions(width, depth, "--dictionary")
    pages = parse_features(args.features, dictionary.n_atoms, "--features")
    explain = _subset(args.explain, dictionary.n_atoms, pages, "--explain")
    steer = _subset(args.steer, dictionary.n_atoms, pages, "--steer")
    config = _config(args)
    within_context(config.max_length, args.model, "--max-length")
    if args.max_docs is not None and args.max_docs < 1:
        raise ValueError(f"--max-docs: expected a whole number >= 1, got {args.max_docs}")
    corpus: Any = None
    if dictionary.encoder is not None:
        if args.corpus is None:
            raise ValueError("--corpus: the dictionary has an encoder; name the texts to harvest it on")
        corpus = check_corpus(args.corpus, "--corpus")
        corpus = corpus.shards if corpus.kind == "shards" else Path(args.corpus).expanduser()
        if args.checkpoint is not None:
            check_target(args.checkpoint, HARVEST_KIND, overwrite=True, argument="--checkpoint")
    elif args.corpus is not None:
        print("note: a raw decoder has no encoder; --corpus is not read (the pages show the weight-based parts)")
    model = load_model(args.model, device=args.device)
    out = build_feature_browser(model, dictionary, corpus, args.out, features=pages, config=config, explain=explain,
                                steer=steer, checkpoint=args.checkpoint, max_docs=args.max_docs,
                                overwrite=args.overwrite)
    print(f"wrote {out / 'index.html'}")
    return 0


def _read_dictionary(path: str, hook: str | None) -> Any:
    from interp.dictionaries import load_dictionary

    try:
        return load_dictionary(Path(path).expanduser(), hook_name=hook)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise ValueError(f"--dictionary: {error}") from None


def _config(args: argparse.Namespace) -> Any:
    from interp.browser.harvest import HarvestConfig

    try:
        return HarvestConfig(n_top=args.n_top, max_length=args.max_length, batch_tokens=args.batch_tokens)
    except (ValueError, TypeError) as error:  # its messages name the fields: name the flags instead
        field, _, rest = str(error).partition(":")
        raise ValueError(f"--{field.replace('_', '-')}:{rest}") from None
