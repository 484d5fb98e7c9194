"""Writes that never destroy and are never half-done: atomic files and artifact folders.

An artifact folder (a Direction, CAA vectors, a probe, an SAE, an HF model, the model cache) is written
into a temporary sibling and renamed into place only when complete. It carries a marker,
`.interp-artifact.json`, with its kind and every file's size and SHA-256: that is how a later save
recognises a folder as "the same kind of artifact" (the only thing it may replace, and only with
`overwrite=True`), and how a load checks that what it reads is what was written (`check_recorded`: the
first load in a process hashes every file, later ones compare sizes and hash only files changed since).
A folder holding anything else is never replaced.

Temporary siblings are folders named `.{name}.interp-partial-{pid}-...` (a temporary file lives inside
one too), and the first thing written into each is `.interp-partial.json`, naming the writer's pid and
host. Only the next *write* of that artifact removes leftovers, and only those that carry this marker and
whose writer is dead: nothing is ever removed by its name alone, and loads remove nothing.

The small artifacts (a Direction, a probe, CAA vectors) are one safetensors file and one JSON file:
`save_tensor_folder` and `load_tensor_folder` write and read that pair.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MARKER = ".interp-artifact.json"
PARTIAL = "interp-partial"
PARTIAL_MARKER = ".interp-partial.json"  # the first file of every temporary folder: whose it is


class ArtifactExistsError(FileExistsError):
    """The target of a save holds something the save may not replace."""


def _files(folder: Path) -> dict[str, Path]:
    return {str(path.relative_to(folder)): path for path in sorted(folder.rglob("*")) if path.is_file()}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The artifact marker of `folder`, or None when it has none (or an unreadable one)."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return None
    return record


def artifact_problem(
    folder: Path, kind: str, *, same_contents: Callable[[Path, str], bool] | None = None
) -> str | None:
    """None when `folder` is a complete artifact of `kind` whose files match the marker's sizes (and,
    with `same_contents(path, sha256)`, their contents); otherwise what is wrong, in words."""
    folder = Path(folder)
    record = read_marker(folder)
    if record is None:
        return f"{folder} has no readable {MARKER}"
    if record.get("kind") != kind:
        return f"{folder} holds a {record.get('kind')!r}, not a {kind!r}"
    for name, expected in record["files"].items():
        problem = _recorded_file_problem(folder, name, expected, same_contents)
        if problem is not None:
            return f"{problem} (changed or corrupt)"
    return None


def _recorded_file_problem(
    folder: Path, name: str, expected: Any, same_contents: Callable[[Path, str], bool] | None
) -> str | None:
    path = folder / name
    if not isinstance(expected, dict) or Path(name).is_absolute() or ".." in Path(name).parts:
        return f"{folder / MARKER}: malformed entry for {name!r}"
    if not path.is_file():
        return f"{path} is missing"
    if path.stat().st_size != expected.get("size"):
        return f"{path} has {path.stat().st_size} bytes, its recorded size is {expected.get('size')!r}"
    if same_contents is not None and not same_contents(path, str(expected.get("sha256", ""))):
        return f"{path} does not match its recorded SHA-256"
    return None


# Files whose contents were hashed in this process, by (path, inode, size, mtime, ctime): a file changed in
# place since gets a new ctime and is hashed again, even when its mtime was put back (`cp -p`, `rsync -t` and
# `tar x` restore mtimes; nothing but the kernel sets ctime). The one record for every artifact, the model
# cache included.
_VERIFIED: set[tuple[str, int, int, int, int]] = set()


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def verified_sha256(path: Path, expected: str) -> bool:
    """Whether `path` has SHA-256 `expected`; each unchanged file is hashed once per process."""
    key = _stat_key(path)
    if key in _VERIFIED:
        return True
    if sha256_file(path) != expected:
        return False
    _VERIFIED.add(key)
    return True


def check_recorded(
    folder: Path, kind: str, *, required: Sequence[str] = (), verify: bool = True, hashed: Sequence[str] | None = None
) -> dict[str, Any] | None:
    """Raise unless every file `folder`'s marker records is there, unchanged (see `verified_sha256`);
    return the marker (None when there is none, or with `verify=False`).

    A folder without a marker (saved before markers existed, or by another tool) passes, as does anything
    with `verify=False` (an artifact edited on purpose: the caller validates the values it reads). With a
    marker, it must be of `kind` and record every file of `required`. With `hashed`, only those files'
    contents are checked here, the others' sizes: the caller checks them (`check_recorded_file`) when read.
    """
    folder = Path(folder)
    marker = folder / MARKER
    if not verify or not (marker.exists() or marker.is_symlink()):
        return None
    record = read_marker(folder)
    if record is None:
        raise ValueError(f"{marker}: not a readable artifact marker (truncated or edited?); {_EDITED_HINT}")
    if record.get("kind") != kind:
        raise ValueError(f"{folder}: holds a {record.get('kind')!r} ({MARKER}), not a {kind}")
    for name in required:
        if name not in record["files"]:
            raise ValueError(f"{folder / name}: not recorded in {marker} (edited?); {_EDITED_HINT}")
    for name, expected in record["files"].items():
        check_recorded_file(folder, name, expected, contents=hashed is None or name in hashed)
    return record


_EDITED_HINT = "pass verify=False to read it as edited"


def check_recorded_file(folder: Path, name: str, expected: Any, *, contents: bool = True) -> None:
    """Raise unless `folder / name` has the size (and, with `contents`, the SHA-256) its marker entry records."""
    problem = _recorded_file_problem(Path(folder), name, expected, verified_sha256 if contents else None)
    if problem is not None and problem.endswith("is missing"):
        raise FileNotFoundError(f"{problem}, but {Path(folder) / MARKER} records it; {_EDITED_HINT}")
    if problem is not None:
        raise ValueError(f"{problem}: edited or corrupt; {_EDITED_HINT}")


def _is_replaceable(folder: Path, kind: str, legacy: Callable[[Path], bool] | None) -> bool:
    """Whether every file in `folder` belongs to one artifact of `kind` (so replacing it loses nothing)."""
    present = set(_files(folder)) - {MARKER}
    record = read_marker(folder)
    if record is not None:
        return record.get("kind") == kind and present <= set(record["files"])
    return legacy is not None and legacy(folder)


def fixed_files(*names: str) -> Callable[[Path], bool]:
    """A `legacy` test for artifacts written before markers existed: the folder holds exactly `names`
    (file names only interp writes, all of them: a folder with fewer, or others, may be a user's own)."""
    def holds_only(folder: Path) -> bool:
        return set(_files(folder)) == set(names)

    return holds_only


def check_target(
    target: Path, kind: str, *, overwrite: bool = False, argument: str = "path",
    legacy: Callable[[Path], bool] | None = None,
) -> None:
    """Raise unless an artifact of `kind` may be written at `target` (see `atomic_write_dir`)."""
    target = Path(target)
    for parent in (target, *target.parents):
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == target else f"is under {parent}, which is a file"
            raise ArtifactExistsError(f"{argument}: {target} {what}; expected a folder for the {kind}")
    if not target.exists() or not any(target.iterdir()):
        return
    if not _is_replaceable(target, kind, legacy):
        raise ArtifactExistsError(
            f"{argument}: {target} already holds other files; a {kind} is written only into a new or empty "
            "folder, or over a saved one of the same kind (nothing else there is ever replaced)"
        )
    if not overwrite:
        raise ArtifactExistsError(f"{argument}: {target} already holds a saved {kind}; pass overwrite=True to replace it")


def clean_partials(target: Path) -> None:
    """Remove the temporary folders of `target` that a killed write left: only those carrying interp's
    partial marker, written by a process of this host that is no longer alive.

    Nothing else is removed, whatever its name (`.NAME.old-dec01/` is a user's backup; a folder whose
    marker is missing or unreadable may be anything). Temporary files are never removed by name: a file
    cannot carry a marker, so each is written inside a marked temporary folder (`atomic_file`).
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    for sibling in target.parent.glob(f".{glob.escape(target.name)}.{PARTIAL}-*"):
        if _abandoned(sibling, target.name):
            shutil.rmtree(sibling, ignore_errors=True)


def _abandoned(folder: Path, name: str) -> bool:
    """Whether `folder` is a temporary folder of the artifact `name` whose writer (on this host) is dead."""
    marker = folder / PARTIAL_MARKER
    if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    pid = record.get("pid") if isinstance(record, dict) else None
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    return (record.get("target") == name and record.get("host") == socket.gethostname()
            and folder.name.startswith(f".{name}.{PARTIAL}-{pid}-") and not _alive(pid))


def _partial_folder(target: Path) -> Path:
    """A new temporary folder beside `target`, marked as this process's first thing."""
    folder = Path(tempfile.mkdtemp(prefix=_partial_prefix(target), dir=target.parent))
    try:
        _mark_partial(folder, target)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _mark_partial(folder: Path, target: Path) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "target": target.name}
    (folder / PARTIAL_MARKER).write_text(json.dumps(record) + "\n")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process, or no pid at all: not ours to judge
    return True


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _usual_mode(path: Path, directory: bool) -> None:
    # mkstemp/mkdtemp create private (0600/0700) entries; a finished artifact gets the mode any new file would.
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _partial_prefix(target: Path) -> str:
    return f".{target.name}.{PARTIAL}-{os.getpid()}-"


@contextmanager
def atomic_write_dir(
    target: Path, kind: str, *, overwrite: bool = False, argument: str = "path",
    legacy: Callable[[Path], bool] | None = None, meta: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; when the block completes it becomes `target`.

    `target` may be absent or an empty folder. A folder holding a saved artifact of the same `kind` (and
    nothing else) is replaced only with `overwrite=True`, and only after the new copy is complete;
    anything else, or a file at `target`, is refused before any work (`ArtifactExistsError`). `legacy`
    recognises artifacts saved before markers existed. The marker records `kind`, `meta` and every file.
    """
    target = Path(target)
    check_target(target, kind, overwrite=overwrite, argument=argument, legacy=legacy)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_partials(target)
    tmp = _partial_folder(target)
    try:
        yield tmp
        files = {name: {"size": path.stat().st_size, "sha256": sha256_file(path)}
                 for name, path in _files(tmp).items() if name != PARTIAL_MARKER}
        record = {"kind": kind, **({"meta": meta} if meta else {}), "files": files}
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        _usual_mode(tmp, directory=True)
        # Checked again: something may have appeared at `target` while the artifact was being written.
        check_target(target, kind, overwrite=overwrite, argument=argument, legacy=legacy)
        # Unmarked from here: a kill before the rename leaves a complete copy that is never removed (a leak,
        # never a loss).
        (tmp / PARTIAL_MARKER).unlink()
        if target.exists():
            # Rename the old folder away first so the swap leaves no moment without a complete copy.
            old = Path(tempfile.mkdtemp(prefix=_partial_prefix(target), dir=target.parent))
            old.rmdir()
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            _mark_partial(old, target)  # a kill while it is removed leaves a leftover the next write removes
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_artifact(folder: Path, kind: str) -> bool:
    """Remove `folder` if it carries interp's marker of `kind` (and holds nothing the marker does not
    record); anything else is left as it is. Whether it was removed."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir() or not _is_replaceable(folder, kind, None):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def add_to_artifact(folder: Path, name: str, text: str) -> Path:
    """Write one more file into a saved artifact, atomically, and record it in the artifact's marker."""
    folder = Path(folder)
    record = read_marker(folder)
    if record is None:
        raise ArtifactExistsError(f"folder: {folder} is not a saved artifact (no {MARKER})")
    path = atomic_write_text(folder / name, text)
    record["files"][name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    atomic_write_text(folder / MARKER, json.dumps(record, indent=2) + "\n")
    return path


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; a truncated or non-object file is a ValueError naming it."""
    try:
        value = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (expected JSON)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}); truncated or edited?") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_tensors(path: Path, required: Sequence[str] = ()) -> dict[str, Any]:
    """The tensors of a safetensors file; a corrupt file or a missing tensor is a ValueError naming it."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError for damaged files
        raise ValueError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error})") from None
    missing = [name for name in required if name not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensors {missing} (has {sorted(tensors)})")
    return tensors


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; when the block completes it becomes `path`.

    The temporary file (same name as `path`, so writers that go by the suffix work) lives in a marked
    temporary folder beside `path`: a killed write leaves a folder the next write may recognise and remove.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_partials(path)
    folder = _partial_folder(path)
    tmp = folder / path.name
    try:
        tmp.touch()
        yield tmp
        _usual_mode(tmp, directory=False)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: Path, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, default=to_jsonable) + "\n")


def to_jsonable(value: Any) -> Any:
    """`json.dumps(default=...)` for what metadata holds besides plain JSON: tensors, arrays, paths."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def save_tensor_folder(
    path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, Any], *, kind: str, tensors_file: str,
    json_file: str, overwrite: bool = False,
) -> Path:
    """`tensors` as `tensors_file` (safetensors) + `metadata` as `json_file`, in the folder `path`, atomically.

    `path` must be new or empty, or hold a saved `kind` (replaced only with `overwrite=True`); see
    `atomic_write_dir`. Tensors are saved on the CPU in their own dtype.
    """
    from safetensors.torch import save_file

    path = Path(path)
    # Serialised first: metadata that is not JSON fails before anything is written.
    text = json.dumps(dict(metadata), indent=2, default=to_jsonable)
    with atomic_write_dir(path, kind, overwrite=overwrite, legacy=fixed_files(tensors_file, json_file)) as tmp:
        save_file({name: value.detach().cpu().contiguous() for name, value in tensors.items()}, str(tmp / tensors_file))
        (tmp / json_file).write_text(text)
    return path


def load_tensor_folder(
    path: str | Path, *, kind: str, tensors_file: str, json_file: str, tensors: Sequence[str] = (),
    keys: Sequence[str] = (), argument: str = "load", verify: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors and metadata a `save_tensor_folder` wrote; a missing file, tensor (of `tensors`) or
    metadata key (of `keys`) is an error naming the file (`argument` names the caller when files are absent).

    The files are checked against the folder's marker first (`check_recorded`; `verify=False` reads an
    artifact edited on purpose, whose values the caller then validates). Nothing is written or removed.
    """
    path = Path(path)
    if not (path / tensors_file).is_file() or not (path / json_file).is_file():
        raise FileNotFoundError(f"{argument}: {path} must be a folder holding {tensors_file} and {json_file}")
    check_recorded(path, kind, required=(tensors_file, json_file), verify=verify)
    metadata = read_json_object(path / json_file)
    missing = [key for key in keys if key not in metadata]
    if missing:
        raise ValueError(f"{path / json_file}: missing {missing}")
    return read_tensors(path / tensors_file, tensors), metadata
