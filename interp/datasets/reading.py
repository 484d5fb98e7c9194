"""Reading a data file: its text, its JSON list or JSON lines, and the error that lists every bad record."""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PathLike = str | os.PathLike[str]

_MAX_LISTED_PROBLEMS = 25


class DatasetFormatError(ValueError):
    """A data file that does not match its format; `problems` lists every bad record found."""

    def __init__(self, path: PathLike, problems: Sequence[str], hint: str = "") -> None:
        self.path = Path(path)
        self.problems = list(problems)
        self.hint = hint
        shown = self.problems[:_MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = "\n".join(f"  {p}" for p in shown)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{self.path}: {len(self.problems)} {noun}:\n{lines}{tail}" + (f"\n{hint}" if hint else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problems, self.hint))


class DatasetWarning(UserWarning):
    """Records left out of a data file: malformed ones skipped with `strict=False`, or questions that cannot
    be asked as the loader was told to ask them (TruthfulQA rows with too few incorrect answers)."""


SKIP_HINT = "(strict=False skips the malformed records with a warning)"


def finish(path: PathLike, records: list[T], problems: Sequence[str], strict: bool, noun: str = "records") -> list[T]:
    """`records`, once the file's malformed ones (`problems`, each "row N: why") are settled: with `strict`
    an error listing them, else a `DatasetWarning` counting them; no record at all is an error either way."""
    if problems and strict:
        raise DatasetFormatError(path, problems, SKIP_HINT)
    if problems:
        listed = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        warnings.warn(f"{path}: skipped {len(problems)} malformed {noun} (strict=False): {listed}", DatasetWarning,
                      stacklevel=3)
    if not records:
        raise DatasetFormatError(path, [f"no valid {noun}" if problems else f"the file has no {noun}"])
    return records


def check_strict(strict: Any) -> bool:
    """Check the `strict=` flag every loader takes.

    Args:
        strict: must be True or False (not a truthy string or number).

    Returns:
        `strict` itself.

    Raises:
        TypeError: anything but a bool.
    """
    if not isinstance(strict, bool):
        raise TypeError(f"strict: expected True or False, got {strict!r}")
    return strict


def read_text(path: PathLike) -> str:
    """The file's text (UTF-8, a byte-order mark dropped); an empty or blank file is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # keep "\r\n" inside quoted CSV fields
            text = handle.read()
    except UnicodeDecodeError as error:
        raise DatasetFormatError(path, [f"not UTF-8 text (byte {error.start}): a binary or mis-encoded file"]) from None
    if not text.strip():
        raise DatasetFormatError(path, ["the file is empty"])
    return text


def json_list(path: PathLike, text: str) -> list[Any]:
    """The decoded JSON list in `text`; anything else (or an empty list) is a `DatasetFormatError`."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetFormatError(path, [f"line {error.lineno}: invalid JSON ({error.msg})"]) from None
    except ValueError as error:  # a number past Python's digit limit
        raise DatasetFormatError(path, [f"invalid JSON ({error})"]) from None
    except RecursionError:
        raise DatasetFormatError(path, ["invalid JSON (nested too deeply)"]) from None
    if not isinstance(records, list):
        raise DatasetFormatError(path, [f"expected a JSON list of objects, got {type(records).__name__}"])
    if not records:
        raise DatasetFormatError(path, ["the JSON list is empty"])
    return records


def parse_json_list(path: PathLike, text: str, parse: Callable[[Any], T], strict: bool = True) -> list[T]:
    """`parse` of each record of the JSON list in `text`; each ValueError is reported with its record index
    (0-based), and settled by `finish` (an error, or with `strict=False` a warning)."""
    parsed: list[T] = []
    problems: list[str] = []
    for index, record in enumerate(json_list(path, text)):
        try:
            parsed.append(parse(record))
        except ValueError as error:
            problems.append(f"record {index}: {error}")
    return finish(path, parsed, problems, strict)


def parse_jsonl(path: PathLike, text: str, parse: Callable[[Any], T], strict: bool = True) -> list[T]:
    """`parse` of each non-blank JSON line of `text`; each bad line is reported with its line number, and
    settled by `finish` (an error, or with `strict=False` a warning)."""
    parsed: list[T] = []
    problems: list[str] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed.append(parse(json.loads(line)))
        except json.JSONDecodeError as error:
            problems.append(f"line {line_number}: invalid JSON ({error.msg})")
        except RecursionError:
            problems.append(f"line {line_number}: invalid JSON (nested too deeply)")
        except ValueError as error:
            problems.append(f"line {line_number}: {error}")
    return finish(path, parsed, problems, strict, "lines")


def rows_of_width(rows: Sequence[list[str]], width: int, problems: list[str], start: int = 2) -> Iterator[tuple[int, list[str]]]:
    """(row number, row) of the non-empty `rows` that have `width` fields (numbered from `start`: the header
    is row 1); each other row becomes a problem."""
    for number, row in enumerate(rows, start=start):
        if not row:
            continue
        if len(row) != width:
            problems.append(f"row {number}: expected {width} fields, got {len(row)}")
            continue
        yield number, row


def csv_rows(path: PathLike, text: str) -> list[list[str]]:
    """The rows of a CSV text; what the csv module cannot read (a field past its size limit, ...) is a
    `DatasetFormatError` naming the row."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[list[str]] = []
    try:
        for row in reader:
            rows.append(row)
    except csv.Error as error:
        raise DatasetFormatError(path, [f"row {len(rows) + 1}: unreadable CSV ({error})"]) from None
    return rows
