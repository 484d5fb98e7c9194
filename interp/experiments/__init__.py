"""The experiment registry: each seed experiment registers `run(config) -> result dict`.

`run_experiment(name, out_dir, **overrides)` builds the experiment's config, runs it, and writes
`result.json` (with the config and timing), the figures and `summary.md` into `out_dir/name/`,
each file atomically.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp._io import atomic_write_json, atomic_write_text
from interp._timing import StageClock  # noqa: F401  (re-exported for the experiments)


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    config_type: type
    run: Callable[[Any, Path], dict[str, Any]]  # (config, out_dir) -> result; writes figures itself


EXPERIMENTS: dict[str, Experiment] = {}
# Modules that register experiments; imported lazily so `interp models` stays fast.
EXPERIMENT_MODULES = ("interp.experiments.steering_demo", "interp.experiments.refusal", "interp.experiments.melbo", "interp.experiments.sycophancy",
                      "interp.experiments.classifier", "interp.experiments.sparse")


def register(name: str, description: str, config_type: type) -> Callable:
    def decorator(run: Callable[[Any, Path], dict[str, Any]]) -> Callable:
        EXPERIMENTS[name] = Experiment(name, description, config_type, run)
        return run

    return decorator


def load_registry() -> dict[str, Experiment]:
    for module in EXPERIMENT_MODULES:
        importlib.import_module(module)
    return EXPERIMENTS


def make_config(name: str, **overrides: Any) -> Any:
    experiment = _get(name)
    fields = {f.name for f in dataclasses.fields(experiment.config_type)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown config fields {unknown}; expected some of {sorted(fields)}")
    return experiment.config_type(**overrides)


def _get(name: str) -> Experiment:
    registry = load_registry()
    if name not in registry:
        raise ValueError(f"experiment: unknown {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def run_experiment(name: str, out_dir: str | Path, **overrides: Any) -> Path:
    """Run one registered experiment into `out_dir/name/`; return that folder."""
    experiment = _get(name)
    config = make_config(name, **overrides)
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = experiment.run(config, folder)
    elapsed = time.perf_counter() - started
    summary = result.pop("summary_md", None)
    payload = {
        "experiment": name,
        "config": dataclasses.asdict(config),
        "seconds": round(elapsed, 2),
        **result,
    }
    atomic_write_json(folder / "result.json", payload)
    if summary is not None:
        atomic_write_text(folder / "summary.md", summary + f"\n\n_Ran in {elapsed:.0f} s._\n")
    return folder
