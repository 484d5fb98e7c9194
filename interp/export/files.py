"""Where an export may write: a new `.gguf` file, or one it replaces only with `overwrite=True`.

The file itself is written beside its target and renamed into place when complete
(`interp._io.atomic_file`), so a killed export leaves the old file (or nothing), never half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf

from interp._io import ArtifactExistsError


def check_output_file(path: str | os.PathLike[str], *, overwrite: bool, argument: str = "path",
                      source: str | os.PathLike[str] | None = None) -> Path:
    """`path` as a Path if a GGUF may be written there; else an error naming `argument`.

    A directory is never replaced; an existing file only with `overwrite=True`; the `source` an export
    reads from never (replacing it would lose the original the export was made from).
    """
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise TypeError(f"{argument}: expected a file path, got {path!r}")
    target = Path(path).expanduser()
    if target.is_dir():
        raise ArtifactExistsError(f"{argument}: {target} is a folder; expected the path of a .gguf file")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise ArtifactExistsError(f"{argument}: {target} is under {parent}, which is a file")
    if source is not None and target.exists() and target.resolve() == Path(source).expanduser().resolve():
        raise ArtifactExistsError(f"{argument}: {target} is the source GGUF itself; write the export to a new file")
    if target.exists() and not overwrite:
        raise ArtifactExistsError(f"{argument}: {target} already exists; pass overwrite=True to replace it")
    return target


def open_gguf(path: str | os.PathLike[str], argument: str) -> gguf.GGUFReader:
    """A memory-mapped reader of the GGUF at `path`; a missing or unreadable file is an error naming `argument`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument}: expected the path of a .gguf file, got {type(path).__name__}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{argument}: {path} is not a file")
    try:
        return gguf.GGUFReader(path)
    except Exception as error:  # the reader raises ValueError, struct.error, IndexError ... on damaged files
        raise ValueError(f"{argument}: {path} is not a readable GGUF file ({type(error).__name__}: {error})") from None


def field_value(reader: gguf.GGUFReader, key: str, argument: str) -> object:
    """The value of metadata `key`; a GGUF that lacks it is an error naming `argument`."""
    field = reader.get_field(key)
    if field is None:
        raise ValueError(f"{argument}: the GGUF has no {key!r} metadata")
    return field.contents()


def gguf_dimensions(path: str | os.PathLike[str], argument: str) -> tuple[int, int]:
    """(d_model, n_layers) of a model GGUF, from its `{arch}.embedding_length` and `{arch}.block_count`."""
    reader = open_gguf(path, argument)
    arch = str(field_value(reader, "general.architecture", argument))
    width, blocks = (field_value(reader, f"{arch}.{key}", argument) for key in ("embedding_length", "block_count"))
    if isinstance(width, bool) or not isinstance(width, int) or isinstance(blocks, bool) or not isinstance(blocks, int):
        raise ValueError(f"{argument}: {path}: {arch}.embedding_length / block_count are not whole numbers")
    return width, blocks
