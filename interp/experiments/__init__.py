"""The experiment registry: each seed experiment registers `run(config) -> result dict` and the
`headline` reader that turns its result into key numbers and verdicts for the report.

`run_experiment(name, out_dir, **overrides)` builds the experiment's config, runs it, and writes
`result.json` (with the config and timing), the figures and `summary.md` into `out_dir/name/`,
each file atomically.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp._checks import output_folder
from interp._timing import log, showing_progress
from interp._io import atomic_write_json, atomic_write_text
from interp.experiments.checks import check_resources, check_value, settings_of
from interp.experiments.fields import renamed
from interp.headlines import HeadlineReader
from interp.provenance import run_provenance


@dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    Attributes:
        name: what `interp reproduce NAME` calls it.
        description: one line for listings.
        config_type: its settings dataclass.
        run: `(config, out) -> result`.
        headline: `result -> Headline` for the report, or None.
        reads: experiments whose output folders, beside its own, it reads when they are there (`run_order`).
    """

    name: str
    description: str
    config_type: type
    run: Callable[[Any, Path], dict[str, Any]]  # (config, out_dir) -> result; writes figures itself
    headline: HeadlineReader | None = None  # result -> key numbers and the seed's claims, for the report
    reads: tuple[str, ...] = ()


EXPERIMENTS: dict[str, Experiment] = {}
# Modules that register experiments; imported lazily so `interp models` stays fast.
EXPERIMENT_MODULES = ("interp.experiments.steering_demo", "interp.experiments.refusal", "interp.experiments.melbo", "interp.experiments.sycophancy",
                      "interp.experiments.classifier", "interp.experiments.sparse")


def register(name: str, description: str, config_type: type, headline: HeadlineReader | None = None,
             reads: tuple[str, ...] = ()) -> Callable:
    """Decorator: register an experiment's `run` under `name` (one line per experiment; nothing else to edit).

    Args:
        name: the experiment's name.
        description: one line for listings.
        config_type: its settings dataclass.
        headline: reads the report's headline from a result, or None.
        reads: experiments whose output folders it reads when present (a direction, saved activations, a
            measured accuracy); `interp reproduce all` runs those first.

    Returns:
        The decorator, which returns `run` unchanged.
    """
    def decorator(run: Callable[[Any, Path], dict[str, Any]]) -> Callable:
        EXPERIMENTS[name] = Experiment(name, description, config_type, run, headline, tuple(reads))
        return run

    return decorator


def run_order(registry: dict[str, Experiment]) -> list[str]:
    """Every experiment's name, alphabetically, except that each comes after the experiments it `reads`.

    >>> from types import SimpleNamespace as S
    >>> run_order({"a": S(reads=("c",)), "b": S(reads=()), "c": S(reads=())})
    ['c', 'a', 'b']
    """
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in path:
            raise ValueError(f"reads: experiments read each other in a cycle: {' -> '.join((*path, name))}")
        for earlier in registry[name].reads:
            if earlier in registry:
                visit(earlier, (*path, name))
        ordered.append(name)

    for name in sorted(registry):
        visit(name, ())
    return ordered


def load_registry() -> dict[str, Experiment]:
    """Import every experiment module (each registers itself) and return the registry, by name."""
    for module in EXPERIMENT_MODULES:
        importlib.import_module(module)
    return EXPERIMENTS


def make_config(name: str, **overrides: Any) -> Any:
    """The settings of experiment `name`, with `overrides` applied and checked.

    Args:
        name: a registered experiment.
        **overrides: field values (an old field name still accepted is renamed, with a DeprecationWarning).

    Returns:
        An instance of the experiment's config type.

    Raises:
        ValueError: an unknown experiment or field, or a value its field refuses.
    """
    experiment = _get(name)
    fields = {f.name for f in dataclasses.fields(experiment.config_type)}
    overrides = renamed(overrides, fields)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown config fields {unknown}; expected some of {sorted(fields)}")
    return experiment.config_type(**overrides)


def parse_settings(names: Sequence[str], settings: dict[str, str]) -> dict[str, Any]:
    """Text `KEY=VALUE` settings as typed config values, checked against every experiment in `names`.

    Each key must be a config field of every named experiment, and each value must parse as that field's
    type (int, float, bool, str, a tuple of those as `1,2` or `[1, 2]`, or `null` where the field allows
    None) within its range (`interp.experiments.checks.check_value`); otherwise a ValueError names the key,
    the experiments and what was expected. Nothing runs.
    """
    hints = {name: settings_of(_get(name).config_type) for name in names}
    settings = renamed(settings, {field for fields in hints.values() for field in fields}, "--set ")
    parsed: dict[str, Any] = {}
    for key, text in settings.items():
        lacking = [name for name in names if key not in hints[name]]
        if lacking:
            having = [name for name in names if name not in lacking]
            raise ValueError(
                f"--set {key}: not a setting of {', '.join(lacking)}"
                + (f" (it is one of {', '.join(having)}: run those on their own)" if having else "")
                + (f"; {lacking[0]}'s settings: {', '.join(hints[lacking[0]])}" if len(names) == 1 else "")
            )
        values = {name: check_value(_get(name).config_type, key, _parse_value(text, hints[name][key], f"--set {key}"),
                                    f"--set {key}") for name in names}
        if len({repr(value) for value in values.values()}) > 1:
            raise ValueError(f"--set {key}: {text!r} reads differently in {', '.join(names)}; run them one by one")
        parsed[key] = values[names[0]]
    return parsed


def _parse_value(text: str, annotation: Any, argument: str) -> Any:
    is_union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    options = typing.get_args(annotation) if is_union else (annotation,)
    if type(None) in options and text.strip().lower() in ("null", "none"):
        return None
    kinds = [option for option in options if option is not type(None)]
    if len(kinds) != 1:
        raise ValueError(f"{argument}: the field's type {annotation} cannot be set from the command line")
    kind = kinds[0]
    if typing.get_origin(kind) is tuple:
        element = typing.get_args(kind)[0]
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                items = json.loads(stripped)
            except json.JSONDecodeError as error:
                raise ValueError(f"{argument}: expected a list such as [1, 2], got {text!r} ({error})") from None
            if not isinstance(items, list):
                raise ValueError(f"{argument}: expected a list such as [1, 2], got {text!r}")
            items = [json.dumps(item) if not isinstance(item, str) else item for item in items]
        else:
            items = [item.strip() for item in stripped.split(",") if item.strip()]
        if not items:
            raise ValueError(f"{argument}: expected at least one value, got {text!r}")
        return tuple(_parse_scalar(item, element, argument) for item in items)
    return _parse_scalar(text, kind, argument)


def _parse_scalar(text: str, kind: type, argument: str) -> Any:
    text = text.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise ValueError(f"{argument}: expected true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{argument}: expected a whole number, got {text!r}") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{argument}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{argument}: expected a finite number, got {text!r}")
        return value
    if kind is str:
        return text
    raise ValueError(f"{argument}: the field's type {kind} cannot be set from the command line")


def check_out(out_dir: str | Path, names: Sequence[str]) -> None:
    """Raise before any work unless every `out_dir/name/` can take an experiment's results: absent, empty,
    or a previous run of the same experiment (its run marker or `result.json` names it), in a writable folder
    that is not a system folder (`interp._checks.output_folder`). Nothing else is written over."""
    out = output_folder(out_dir, "--out")
    for name in names:
        folder = out / name
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--out: {folder} is a file; the {name} experiment writes a folder there")
        if folder.is_dir() and any(folder.iterdir()) and _previous_run(folder) != name:
            raise ValueError(
                f"--out: {folder} holds files that are not a previous {name} run (no result.json naming it); "
                "choose another --out, or move them away"
            )


RUN_MARKER = ".interp-experiment.json"  # written first, so a run that stopped half-way is still recognised


def _previous_run(folder: Path) -> str | None:
    for name in (RUN_MARKER, "result.json"):
        try:
            return json.loads((folder / name).read_text())["experiment"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _get(name: str) -> Experiment:
    registry = load_registry()
    if name not in registry:
        raise ValueError(f"experiment: unknown {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def run_experiment(name: str, out_dir: str | Path, *, progress: bool | None = None, **overrides: Any) -> Path:
    """Run one registered experiment into `out_dir/name/`; return that folder.

    `progress` (default: on, unless `INTERP_PROGRESS=0`) logs each stage's time and shows a bar on every step
    that runs longer than a couple of seconds, on stderr (`interp._timing`).

    The config, what it points at (`interp.experiments.checks.check_resources`) and `out_dir/name/` (absent,
    empty or a previous run of this experiment, see `check_out`) are checked before anything is written; a run
    that fails before writing anything but its run marker leaves nothing behind.
    """
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress: expected True, False or None, got {progress!r}")
    experiment = _get(name)
    config = make_config(name, **overrides)
    check_resources(config)
    check_out(out_dir, [name])
    folder = Path(out_dir) / name
    created = [path for path in (*reversed(folder.parents), folder) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / RUN_MARKER, {"experiment": name})
    started = time.perf_counter()
    try:
        with showing_progress(progress) as showing:
            if showing:
                log(f"{name}: running into {folder}")
            result = experiment.run(config, folder)
    except BaseException:
        _remove_if_only_marker(folder, created)
        raise
    elapsed = time.perf_counter() - started
    if showing:
        log(f"{name}: done in {elapsed:.1f} s")
    summary = result.pop("summary_md", None)
    payload = {
        "experiment": name,
        "config": dataclasses.asdict(config),
        "seconds": round(elapsed, 2),
        **result,
        "provenance": run_provenance(name, config, out_dir),  # versions, commit, machine, the command to rerun it
    }
    atomic_write_json(folder / "result.json", payload)
    if summary is not None:
        atomic_write_text(folder / "summary.md", summary + f"\n\n_Ran in {elapsed:.0f} s._\n")
    return folder


def _remove_if_only_marker(folder: Path, created: list[Path]) -> None:
    """After a failed run: the run marker if it is all the run left, and the folders the run created, if empty."""
    try:
        if [path.name for path in folder.iterdir()] == [RUN_MARKER]:
            (folder / RUN_MARKER).unlink()
        for path in reversed(created):
            path.rmdir()  # only empty folders go; anything else stays (OSError)
    except OSError:
        pass
