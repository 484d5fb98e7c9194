"""User requests: refusal_direction JSON lists, JSONL, AdvBench CSVs and plain text, one per line."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from interp.datasets.reading import (
    DatasetFormatError,
    PathLike,
    check_strict,
    csv_rows,
    finish,
    parse_json_list,
    parse_jsonl,
    read_text,
    rows_of_width,
)


@dataclass(frozen=True)
class Instruction:
    """One user request (harmful or harmless), with an optional category label."""

    instruction: str
    category: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError("instruction must be a non-empty string")
        object.__setattr__(self, "category", "" if self.category is None else str(self.category))


def load_instructions(path: PathLike, default_category: str = "", *, strict: bool = True) -> list[Instruction]:
    """Load instructions from a refusal_direction JSON list, an AdvBench CSV or a text file.

    * `.json`: a list of `{"instruction": ..., "category": ...}` (category may be null or absent).
    * `.jsonl`: one such object per line.
    * `.csv`: a header row with a `goal` column (AdvBench: `goal,target`) or an `instruction`
      column, and optionally a `category` column.
    * anything else: plain text, one instruction per non-blank line.

    Missing or empty fields are reported with the record index (JSON), line (JSONL) or row (CSV), in one
    `DatasetFormatError`; with `strict=False` they are skipped with a `DatasetWarning` that counts them.
    """
    check_strict(strict)
    path = Path(path)
    text = read_text(path)
    suffix = path.suffix.lower()
    parse = partial(_instruction_from_record, default_category=default_category)
    if suffix == ".json":
        return parse_json_list(path, text, parse, strict)
    if suffix == ".jsonl":
        return parse_jsonl(path, text, parse, strict)
    if suffix == ".csv":
        return _instructions_from_csv(path, text, default_category, strict)
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


def _instructions_from_csv(path: Path, text: str, default_category: str, strict: bool) -> list[Instruction]:
    rows = csv_rows(path, text)
    header = [name.strip().lower() for name in rows[0]] if rows else []
    column = "goal" if "goal" in header else "instruction" if "instruction" in header else None
    if column is None:
        raise DatasetFormatError(path, [f"row 1: the header {rows[0] if rows else []} has no 'goal' or 'instruction' column"])
    text_at = header.index(column)
    category_at = header.index("category") if "category" in header else None
    instructions: list[Instruction] = []
    problems: list[str] = []
    for row_number, row in rows_of_width(rows[1:], len(header), problems):
        value = row[text_at].strip()
        if not value:
            problems.append(f"row {row_number}: empty '{column}'")
            continue
        category = row[category_at].strip() if category_at is not None else default_category
        instructions.append(Instruction(value, category))
    return finish(path, instructions, problems, strict, "rows")
