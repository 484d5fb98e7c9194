"""Where an export may write: a new `.gguf` file, or one it replaces only with `overwrite=True`.

The file itself is written beside its target and renamed into place when complete
(`interp._io.atomic_file`), so a killed export leaves the old file (or nothing), never half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

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
