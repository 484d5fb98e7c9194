"""One table of loaders: `load_dictionary(source)` finds the registered reader that recognises `source`.

A new format is one function `read(source, request) -> Dictionary` (built with
`interp.dictionaries.weights.build_dictionary`, so it gets every check) and one `register_reader` line. The
table is tried in `order`; a source nothing recognises is an error listing every kind and what it needs.

Where a dictionary reads is always known or said: `hook_name=` / `layer=` / `output_hook=` are honoured for
every source (a reader of a multi-layer file or folder uses them to choose; otherwise they replace the
recorded hook, which is kept in `meta`), and a dictionary left without a hook point warns at load
(`HooklessDictionaryWarning`) with how to name one; every workflow that reads activations refuses it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from interp._checks import whole_number
from interp.dictionaries.core import HOOK_HINT, Dictionary, HooklessDictionaryWarning, at_layer, check_hook_name, hook_layer
from interp.dictionaries.weights import from_decoder


@dataclass(frozen=True)
class Request:
    """What the caller asked for besides the source: the model label to record, where it reads and writes."""

    model: str | None = None
    hook_name: str | None = None
    layer: int | None = None
    output_hook: str | None = None
    verify: bool = True


Read = Callable[[Any, Request], Dictionary]


@dataclass(frozen=True)
class Reader:
    """One registered source kind of `load_dictionary`.

    Attributes:
        name: the kind (`"saelens-folder"`, `"sparsify-folder"`, ...).
        recognises: whether a source is of this kind (tried in `order`).
        read: source and `Request` → `Dictionary`.
        needs: what a source of this kind is, for the error that lists every kind.
        order: where it is tried (lower first).
    """

    name: str
    recognises: Callable[[Any], bool]
    read: Read
    needs: str  # what a source of this kind is, for the error that lists them
    order: int


READERS: list[Reader] = []


def register_reader(name: str, recognises: Callable[[Any], bool], read: Read, needs: str, *, order: int = 50) -> None:
    """Add a format to `load_dictionary`'s table (tried in `order`, then registration order)."""
    if any(reader.name == name for reader in READERS):
        raise ValueError(f"name: a dictionary reader {name!r} is already registered")
    READERS.append(Reader(name, recognises, read, needs, order))
    READERS.sort(key=lambda reader: reader.order)


def make_request(model: Any, hook_name: Any, layer: Any, output_hook: Any, verify: Any) -> Request:
    """Check `load_dictionary`'s placement arguments and bundle them into a `Request`.

    Args:
        model: a loaded model (its name is taken), a model name, or None.
        hook_name: the hook point the dictionary reads, or None.
        layer: a block index, or None.
        output_hook: a transcoder's output hook point, or None.
        verify: whether recorded SHA-256s are checked on load.

    Returns:
        The `Request`.

    Raises:
        ValueError: a negative or non-integer layer, a `verify` that is not a bool, a malformed hook name, or a
            layer and a hook name that disagree.
    """
    if model is not None and not isinstance(model, str):
        from interp.models import model_name

        model = model_name(model)
    if layer is not None:
        whole_number(layer, "layer", minimum=0)
    if not isinstance(verify, bool):
        raise ValueError(f"verify: expected True or False, got {verify!r}")
    check_hook_name(hook_name, "hook_name")
    check_hook_name(output_hook, "output_hook")
    if hook_name is not None and layer is not None and hook_layer(hook_name) != layer:
        raise ValueError(f"layer: {layer} disagrees with hook_name {hook_name!r}; pass one of them")
    return Request(model, hook_name, layer, output_hook, verify)


def load_dictionary(
    source: Any,
    *,
    model: Any = None,
    hook_name: str | None = None,
    layer: int | None = None,
    output_hook: str | None = None,
    verify: bool = True,
) -> Dictionary:
    """Whatever a user holds, as a `Dictionary`: an object (a Dictionary, a tensor of decoder rows, an SAE-Lens SAE
    or training SAE, a sparsify SparseCoder) or a folder/file in any registered format (see `READERS`).

    `model`: a label to record, or a loaded model, which the dictionary is then checked against (widths, layers,
    hook points) before anything runs. `hook_name=` / `layer=` choose within a multi-layer source and otherwise
    set where it reads (`output_hook=`: where a transcoder writes). `verify=False` reads a folder interp saved
    that was edited on purpose.
    """
    request = make_request(model, hook_name, layer, output_hook, verify)
    if isinstance(source, (str, Path)) and not Path(source).exists():
        raise FileNotFoundError(f"source: no such file or folder {source}")
    for reader in READERS:
        if reader.recognises(source):
            return finish(reader.read(source, request), request, model)
    kinds = "\n".join(f"  - {reader.name}: {reader.needs}" for reader in READERS)
    if isinstance(source, (str, Path)):
        raise ValueError(f"source: {source} is no dictionary format interp reads; tried, in order:\n{kinds}")
    raise TypeError(f"source: a {type(source).__name__} is no dictionary interp reads; tried, in order:\n{kinds}")


def read_with(read: Read, source: Any, *, model: Any = None, hook_name: str | None = None, layer: int | None = None,
              output_hook: str | None = None, verify: bool = True) -> Dictionary:
    """What each format's `from_...` function is: its reader with `load_dictionary`'s request and placement."""
    request = make_request(model, hook_name, layer, output_hook, verify)
    return finish(read(source, request), request, model)


def finish(dictionary: Dictionary, request: Request, model: Any) -> Dictionary:
    """Place a read dictionary where the request says, warn when it has no hook point, and check it against `model`.

    Args:
        dictionary: what a reader returned.
        request: the caller's `hook_name=` / `layer=` / `output_hook=`.
        model: a loaded model, a model name, or None.

    Returns:
        The placed dictionary (a `HooklessDictionaryWarning` when it records no hook point).

    Raises:
        ValueError: the dictionary's width, layer or hook does not fit a loaded `model`.
    """
    placed = place(dictionary, request)
    if placed.hook_name is None:
        warnings.warn(HooklessDictionaryWarning(
            f"{placed.source} records no hook point: it can code vectors, but nothing can read a model's activations "
            f"with it; {HOOK_HINT}"), stacklevel=3)
    if model is not None and not isinstance(model, str):
        placed.check_model(model)
    return placed


def place(dictionary: Dictionary, request: Request) -> Dictionary:
    """The dictionary reading at the requested hook or layer (and writing at the requested output hook)."""
    hook, output = dictionary.hook_name, dictionary.output_hook
    if request.hook_name is not None:
        hook = request.hook_name
    elif request.layer is not None:
        if hook is None and dictionary.transcoder:
            raise ValueError(f"layer: the transcoder {dictionary.source} records no sites to move to layer "
                             f"{request.layer}; pass hook_name= and output_hook=")
        hook = at_layer(hook, request.layer) if hook is not None else f"blocks.{request.layer}.hook_resid_pre"
        output = at_layer(output, request.layer) if output is not None else None
    if request.output_hook is not None:
        if not dictionary.transcoder:
            raise ValueError(f"output_hook: {dictionary.source} is an SAE, which writes where it reads; "
                             "output_hook is a transcoder's")
        output = request.output_hook
    if (hook, output) == (dictionary.hook_name, dictionary.output_hook):
        return dictionary
    recorded = {key: value for key, value in (("recorded_hook_name", dictionary.hook_name),
                                              ("recorded_output_hook", dictionary.output_hook)) if value is not None}
    return replace(dictionary, hook_name=hook, output_hook=output, meta={**dictionary.meta, **recorded})


def is_path(source: Any) -> bool:
    """Whether `source` is a path (a `str` or `Path`), rather than an object in memory."""
    return isinstance(source, (str, Path))


def file_with_suffix(*suffixes: str) -> Callable[[Any], bool]:
    """A `recognises` test: the source is an existing file with one of `suffixes` (e.g. `".npz"`)."""
    return lambda source: is_path(source) and Path(source).is_file() and Path(source).suffix in suffixes


def folder_with(*names: str) -> Callable[[Any], bool]:
    """A `recognises` test: the source is a folder holding every file in `names`."""
    return lambda source: is_path(source) and Path(source).is_dir() and all((Path(source) / n).is_file() for n in names)


def _read_dictionary(source: Dictionary, request: Request) -> Dictionary:
    return source


def _read_decoder(source: Any, request: Request) -> Dictionary:
    return from_decoder(source, model=request.model)


register_reader("Dictionary", lambda source: isinstance(source, Dictionary), _read_dictionary,
                "an interp.dictionaries.Dictionary", order=0)
register_reader("decoder tensor", lambda source: isinstance(source, Tensor), _read_decoder,
                "a [n_atoms, d_model] tensor of decoder rows", order=1)
register_reader("decoder file", file_with_suffix(".safetensors"), _read_decoder,
                "a .safetensors file holding W_dec (or one [n_atoms, d_model] tensor)", order=90)
