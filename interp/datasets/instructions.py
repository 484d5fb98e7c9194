"""User requests: refusal_direction JSON lists, JSONL, AdvBench CSVs and plain text, one per line."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from interp.datasets.reading import DatasetFormatError, PathLike, parse_json_list, parse_jsonl, read_text


@dataclass(frozen=True)
class Instruction:
    """One user request (harmful or harmless), with an optional category label."""

    instruction: str
    category: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError("instruction must be a non-empty string")
        object.__setattr__(self, "category", "" if self.category is None else str(self.category))


def load_instructions(path: PathLike, default_category: str = "") -> list[Instruction]:
    """Load instructions from a refusal_direction JSON list, an AdvBench CSV or a text file.

    * `.json`: a list of `{"instruction": ..., "category": ...}` (category may be null or absent).
    * `.jsonl`: one such object per line.
    * `.csv`: a header row with a `goal` column (AdvBench: `goal,target`) or an `instruction`
      column, and optionally a `category` column.
    * anything else: plain text, one instruction per non-blank line.

    Missing or empty fields are reported with the record index (JSON), line (JSONL) or row (CSV).
    """
    path = Path(path)
    text = read_text(path)
    suffix = path.suffix.lower()
    parse = partial(_instruction_from_record, default_category=default_category)
    if suffix == ".json":
        return parse_json_list(path, text, parse)
    if suffix == ".jsonl":
        return parse_jsonl(path, text, parse)
    if suffix == ".csv":
        return _instructions_from_csv(path, text, default_category)
    return [Instruction(line.strip(), default_category) for line in text.splitlines() if line.strip()]


def _instruction_from_record(record: Any, default_category: str) -> Instruction:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "instruction" not in record:
        raise ValueError("missing field 'instruction'")
    value = record["instruction"]
    if not isinstance(value, str) or not value.strip():
        raise ValueError("'instruction' must be a non-empty string")
    category = record.get("category")
    return Instruction(value.strip(), default_category if category is None else str(category))


def _instructions_from_csv(path: Path, text: str, default_category: str) -> list[Instruction]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = [name.strip().lower() for name in rows[0]]
    column = "goal" if "goal" in header else "instruction" if "instruction" in header else None
    if column is None:
        raise DatasetFormatError(path, [f"row 1: the header {rows[0]} has no 'goal' or 'instruction' column"])
    text_at = header.index(column)
    category_at = header.index("category") if "category" in header else None
    instructions: list[Instruction] = []
    problems: list[str] = []
    for row_number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            problems.append(f"row {row_number}: expected {len(header)} fields, got {len(row)}")
            continue
        value = row[text_at].strip()
        if not value:
            problems.append(f"row {row_number}: empty '{column}'")
            continue
        category = row[category_at].strip() if category_at is not None else default_category
        instructions.append(Instruction(value, category))
    if problems:
        raise DatasetFormatError(path, problems)
    if not instructions:
        raise DatasetFormatError(path, ["the file has a header but no rows"])
    return instructions
