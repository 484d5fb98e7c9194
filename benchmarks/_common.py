"""Timing shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so a timer read afterwards measures it (CUDA launches are asynchronous)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[float, Any]:
    """(seconds, value) of one call, GPU work included."""
    synchronize(device)
    started = time.perf_counter()
    value = function()
    synchronize(device)
    return time.perf_counter() - started, value


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, device: str | torch.device = "cpu") -> dict[str, float]:
    """Median seconds per variant, measured round-robin so drift hits every variant alike."""
    for function in variants.values():
        function()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, function in variants.items():
            samples[name].append(timed(function, device)[0])
    return {name: statistics.median(values) for name, values in samples.items()}


def device_label(device: str | torch.device) -> str:
    """'cpu' or the GPU's name, for the tables' headers."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def add_run_arguments(parser: argparse.ArgumentParser, repeats: int = 2) -> None:
    """`--repeats`, `--threads` and `--device`, as the benchmarks that load a model take them."""
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")


def parse_and_load(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Any]:
    """The parsed arguments, with torch's thread count set and `--model` loaded on `--device`."""
    from interp.models import load_model

    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args, load_model(args.model, device=args.device)
