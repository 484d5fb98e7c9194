"""Reading a data file: its text, its JSON list or JSON lines, and the error that lists every bad record."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PathLike = str | os.PathLike[str]

_MAX_LISTED_PROBLEMS = 25


class DatasetFormatError(ValueError):
    """A data file that does not match its format; `problems` lists every bad record found."""

    def __init__(self, path: PathLike, problems: Sequence[str]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        shown = self.problems[:_MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = "\n".join(f"  {p}" for p in shown)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{self.path}: {len(self.problems)} {noun}:\n{lines}{tail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problems))


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
    if not isinstance(records, list):
        raise DatasetFormatError(path, [f"expected a JSON list of objects, got {type(records).__name__}"])
    if not records:
        raise DatasetFormatError(path, ["the JSON list is empty"])
    return records


def parse_json_list(path: PathLike, text: str, parse: Callable[[Any], T]) -> list[T]:
    """`parse` of each record of the JSON list in `text`; each ValueError is reported with its record index."""
    parsed: list[T] = []
    problems: list[str] = []
    for index, record in enumerate(json_list(path, text)):
        try:
            parsed.append(parse(record))
        except ValueError as error:
            problems.append(f"record {index}: {error}")
    if problems:
        raise DatasetFormatError(path, problems)
    return parsed


def parse_jsonl(path: PathLike, text: str, parse: Callable[[Any], T]) -> list[T]:
    """`parse` of each non-blank JSON line of `text`; each bad line is reported with its line number."""
    parsed: list[T] = []
    problems: list[str] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed.append(parse(json.loads(line)))
        except json.JSONDecodeError as error:
            problems.append(f"line {line_number}: invalid JSON ({error.msg})")
        except ValueError as error:
            problems.append(f"line {line_number}: {error}")
    if problems:
        raise DatasetFormatError(path, problems)
    return parsed
