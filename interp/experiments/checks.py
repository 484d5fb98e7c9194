"""What every experiment's settings are checked for, before any work.

Two steps, each one table keyed by field name (a field means the same in every experiment that has it):

- `check_value` / `check_fields`: the type of each value (from the config's annotations) and its range —
  counts and sizes are whole numbers >= 1 unless `RANGES` says otherwise, floats are finite. Every
  config runs it in `__post_init__`, and `parse_settings` on each `--set`, so a bad value never starts a run.
- `check_resources`: what a value points at — the model (a registry name, a local HF folder or .gguf
  file, or a hub name), the device, every file and folder, and every layer against the model's depth,
  read from its registry entry or config without loading weights. `run_experiment` runs it before it
  creates the output folder; `interp reproduce` runs it for every selected experiment before the first.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from interp._checks import finite_number, whole_number

Rule = Callable[[Any, str], None]  # raises a ValueError naming the argument (the second parameter)


def at_least(minimum: int | None) -> Rule:
    """A rule: a whole number at least `minimum` (any whole number when None).

    Raises:
        ValueError: (from the rule) naming the setting and the bound.
    """
    def rule(value: Any, argument: str) -> None:
        whole_number(value, argument, minimum=minimum)

    return rule


def above(low: float, *, inclusive: bool = False) -> Rule:
    """A rule: a finite number above `low` (or equal to it when `inclusive`).

    Raises:
        ValueError: (from the rule) naming the setting and the bound.
    """
    def rule(value: Any, argument: str) -> None:
        number = finite_number(value, argument)
        if number < low or (number == low and not inclusive):
            raise ValueError(f"{argument}: expected a number {'>=' if inclusive else '>'} {low:g}, got {value!r}")

    return rule


def fraction(*, zero: bool, one: bool) -> Rule:
    """A rule: a number strictly between 0 and 1, or also equal to 0 (`zero`) or 1 (`one`).

    Raises:
        ValueError: (from the rule) naming the setting and the allowed range.
    """
    def rule(value: Any, argument: str) -> None:
        number = finite_number(value, argument)
        if not (0 < number < 1 or (zero and number == 0) or (one and number == 1)):
            interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"
            raise ValueError(f"{argument}: expected a fraction in {interval}, got {value!r}")

    return rule


def one_of(*options: Any) -> Rule:
    """A rule: one of `options`.

    Raises:
        ValueError: (from the rule) naming the setting and the options.
    """
    def rule(value: Any, argument: str) -> None:
        if value not in options:
            raise ValueError(f"{argument}: expected one of {', '.join(map(repr, options))}, got {value!r}")

    return rule


def non_blank(value: Any, argument: str) -> None:
    """A rule: a string that is not blank.

    Raises:
        ValueError: naming the setting.
    """
    if not value.strip():
        raise ValueError(f"{argument}: expected a non-blank string, got {value!r}")


# Ranges beyond the defaults (whole numbers >= 1, finite floats, any string); a tuple's rule applies to each item.
RANGES: dict[str, Rule] = {
    "seed": at_least(0), "shuffle_seed": at_least(0),
    "layer": at_least(0), "svd_layers": at_least(0),  # used as block indices as they are
    "layers": at_least(None), "source_layer": at_least(None), "target_layer": at_least(None),  # negative: from the end
    "lr": above(0), "temperature": above(0), "radius": above(0), "sweep_radii": above(0), "select_multiplier": above(0),
    "kl_threshold": above(0, inclusive=True), "probe_l2": above(0, inclusive=True), "demo_lambdas": above(0, inclusive=True),
    "test_fraction": fraction(zero=False, one=False), "prune_layer_fraction": fraction(zero=True, one=False),
    "min_refusal_rate": fraction(zero=True, one=True),
    "quantize_bits": one_of(2, 3, 4, 5, 6, 8), "mode": one_of("parallel", "sequential"),
    "kinds": one_of("encoder", "decoder"), "normalisation": one_of("resid", "unit", "raw"),
    "prompt": non_blank, "word": non_blank, "model": non_blank, "refusal_phrases": non_blank,
}
MAY_BE_EMPTY = ("quantize_bits",)  # lists whose emptiness means "none of this step" (any other must hold a value)
LAYER_FIELDS = ("layer", "layers", "source_layer", "target_layer", "svd_layers")


@functools.cache
def _hints(config_type: type) -> dict[str, Any]:
    names = {field.name for field in dataclasses.fields(config_type)}
    return {name: hint for name, hint in typing.get_type_hints(config_type).items() if name in names}


def settings_of(config_type: type) -> dict[str, Any]:
    """The settable fields of a config class and their annotations."""
    return _hints(config_type)


def _kinds(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None is allowed)."""
    is_union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    options = typing.get_args(annotation) if is_union else (annotation,)
    kinds = [option for option in options if option is not type(None)]
    return (kinds[0] if len(kinds) == 1 else annotation), type(None) in options


def check_value(config_type: type, name: str, value: Any, argument: str | None = None) -> Any:
    """`value` for the field `name` of `config_type` (a list given for a tuple field as a tuple), checked
    for its type and range; else a ValueError naming `argument` (default: the field's name)."""
    argument = argument or name
    kind, optional = _kinds(_hints(config_type)[name])
    if value is None:
        if optional:
            return None
        raise ValueError(f"{argument}: expected a value, got None")
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str) or not isinstance(value, (tuple, list)) or not (value or name in MAY_BE_EMPTY):
            raise ValueError(f"{argument}: expected a non-empty list, got {value!r}")
        element = typing.get_args(kind)[0]
        return tuple(_check_scalar(name, item, element, argument) for item in value)
    return _check_scalar(name, value, kind, argument)


def _check_scalar(name: str, value: Any, kind: Any, argument: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{argument}: expected true or false, got {value!r}")
    elif kind is int:
        whole_number(value, argument)
    elif kind is float:
        finite_number(value, argument)
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{argument}: expected a string, got {value!r}")
    rule = RANGES.get(name)
    if rule is not None:
        rule(value, argument)
    elif kind is int:
        whole_number(value, argument, minimum=1)
    return float(value) if kind is float else value


def check_fields(config: Any) -> None:
    """`check_value` of every field of a config instance (its `__post_init__` calls this)."""
    for name in _hints(type(config)):
        setattr(config, name, check_value(type(config), name, getattr(config, name)))


# ---------------------------------------------------------------------------------------------
# What values point at: the model, the device, files and folders, layers
# ---------------------------------------------------------------------------------------------

FILES: dict[str, str] = {  # field -> what must exist there: "file", "folder" or "path" (either)
    "data": "file", "harmful_train": "file", "harmless_train": "file", "harmful_eval": "file", "harmless_eval": "file",
    "corpus": "file", "truthfulqa": "file", "mmlu_dir": "path", "dictionary": "path",
    "refusal_direction": "folder", "data_dir": "folder",
}
SPECIAL_VALUES = {"truthfulqa": ("bundled",), "model": ("all",)}  # not paths or models


def check_model_spec(name: str, argument: str = "model") -> None:
    """Raise unless `name` is a registry model that is installed (or cached), a local HF folder or .gguf file, or a
    hub name."""
    from interp.models import REGISTRY, cache_problem, cache_root, hub_model_id, is_installed

    if name in REGISTRY:
        # A complete model cache loads without the wheel (the wheel is read only to build it).
        if not is_installed(name) and cache_problem(cache_root() / "models" / name, contents=False) is not None:
            raise ValueError(f"{argument}: {name!r} is not installed: {REGISTRY[name].pip_command}")
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{argument}: {path} is a folder without config.json, not an HF model folder")
        return
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{argument}: {path} is a file but not a .gguf model")
        return
    if hub_model_id(name) is None:
        raise ValueError(
            f"{argument}: unknown model {name!r}; expected a registry name ({', '.join(sorted(REGISTRY))}), "
            "a local HF folder, a .gguf file or a hub name such as org/model"
        )


def check_device_name(device: Any, argument: str = "device") -> None:
    """`interp.models.check_device`, and a device that can hold weights to compute with (not 'meta')."""
    from interp.models import check_device

    resolved = check_device(device, argument)
    if resolved.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"{argument}: {str(device)!r} cannot run a model (a {resolved.type!r} device holds no values); "
                         "expected 'cpu', 'cuda' or 'mps'")


def _check_path(value: str, kind: str, argument: str) -> None:
    path = Path(value).expanduser()
    exists = path.is_file() if kind == "file" else path.is_dir() if kind == "folder" else path.exists()
    if not exists:
        what = {"file": "a file", "folder": "a folder", "path": "a file or folder"}[kind]
        raise ValueError(f"{argument}: {path} is not {what}" + ("" if path.exists() else " (it does not exist)"))


def check_resources(config: Any, argument: Callable[[str], str] | Mapping[str, str] | None = None) -> None:
    """Raise (naming the setting through `argument`) unless the model, device, files and layers the config
    names are there: nothing is loaded, generated or written."""
    from interp.models import within_context

    name_of: Callable[[str], str] = (
        argument if callable(argument) else (lambda field: (argument or {}).get(field, field))  # type: ignore[union-attr]
    )
    fields = _hints(type(config))
    order = sorted(fields, key=lambda field: {"device": 0, "model": 2, "edited_model": 2}.get(field, 1))
    for field, value in ((field, getattr(config, field)) for field in order):
        if value is None or value in SPECIAL_VALUES.get(field, ()):
            continue
        if field in ("model", "edited_model"):
            check_model_spec(value, name_of(field))
        elif field == "device":
            check_device_name(value, name_of(field))
        elif field in FILES:
            _check_path(value, FILES[field], name_of(field))
        elif field == "judge" and value != "phrases":
            from interp.refusal.rates import load_judge

            try:
                load_judge(value)
            except ValueError as error:  # its messages say "judge: ..."
                raise ValueError(f"{name_of(field)}:{str(error).removeprefix('judge:')}") from None
    extra = getattr(config, "check", None)
    if callable(extra):  # what the experiment's settings must say together, and its data files' contents
        extra()
    model = getattr(config, "model", None)
    if model is None or model in SPECIAL_VALUES["model"]:
        return
    from interp.models import model_dimensions

    depth = model_dimensions(model, name_of("model"))[2]
    for field in (field for field in LAYER_FIELDS if field in fields):
        values = getattr(config, field)
        for layer in (values if isinstance(values, tuple) else () if values is None else (values,)):
            if depth is not None and not -depth <= layer < depth:
                raise ValueError(f"{name_of(field)}: layer {layer} is out of range for {model!r}, which has {depth} layers")
    for field in (field for field in fields if field.endswith("_new_tokens")):  # generated past the context: hours
        within_context(getattr(config, field), model, name_of(field))
