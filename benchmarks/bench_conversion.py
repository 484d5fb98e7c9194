"""Converting a registry model's GGUF into interp's safetensors cache: transformers parsing the file three times
(for the config, the weights and the tokenizer; the anchor, as before 2026-12-05) against one parse shared by all
three (`interp.models._one_gguf_parse`). Each variant converts into a fresh folder; the run checks that both write
byte-identical files. Times are medians of `--repeats`, interleaved:

    python benchmarks/bench_conversion.py [--model smollm2-135m-instruct] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import torch

import interp.models as models

from _common import interleaved  # noqa: E402  (benchmarks/ is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a registry model (its wheel installed)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gguf = models.registry_gguf(args.model)  # assembles split wheels once, before any timing
    scratch = Path(tempfile.mkdtemp(prefix="interp-bench-conversion-"))
    try:
        def convert(shared: bool) -> Path:
            folder = scratch / ("one parse" if shared else "three parses")
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.nullcontext() if shared else mock.patch.object(models, "_one_gguf_parse", contextlib.nullcontext):
                models._convert_gguf(gguf, folder)
            return folder

        variants = {"three parses (anchor)": lambda: convert(False), "one parse": lambda: convert(True)}
        times = interleaved(variants, args.repeats)
        anchor, shared = scratch / "three parses", scratch / "one parse"
        names = sorted(path.name for path in anchor.iterdir())
        same = names == sorted(path.name for path in shared.iterdir()) and all(
            filecmp.cmp(anchor / name, shared / name, shallow=False) for name in names)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = times["three parses (anchor)"]
    print(f"model {args.model} ({gguf.stat().st_size / 1e6:.0f} MB GGUF), cpu, torch threads {args.threads}; "
          f"median of {args.repeats}; the two conversions' files byte-identical: {'yes' if same else 'NO'}\n")
    print("| conversion | s | × anchor |")
    print("|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.1f} | {base / seconds:.2f} |")


if __name__ == "__main__":
    main()
