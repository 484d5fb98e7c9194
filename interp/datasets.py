"""Typed records and loaders for the prompt data sets the experiments use.

Three record shapes cover the public formats the toolkit reads:

* `ContrastPair`: an A/B question whose two answers exhibit and avoid a behaviour. This is the
  shape of Anthropic's model-written evals (one JSON object per line) and of the CAA repo's
  data (a JSON list of the same objects). The "(A) ..." / "(B) ..." choices live inside the
  question text; the answers are just the letters.
* `Instruction`: one user request, as in the refusal_direction splits (a JSON list of
  `{"instruction", "category"}`), AdvBench (a CSV with header `goal,target`) or a plain text
  file with one instruction per line.
* `MultipleChoice`: a question with lettered choices and the index of the correct one, as in
  the hendrycks MMLU CSVs (no header; the answer is a letter A-D) or the reformatted layout
  `question,choice0,choice1,choice2,choice3,answer` (the answer is a 0-based index).

Every loader validates the whole file and raises `DatasetFormatError` (a `ValueError`) listing
each bad record with its line, row or record number; nothing is ever skipped silently.

The project's own original data sets ship inside the package, in `interp/data/` (see
`interp/data/README.md`); `bundled()` finds them and the `load_bundled_*` helpers load them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

__all__ = [
    "AB_LETTERS",
    "ContrastPair",
    "DatasetFormatError",
    "Instruction",
    "MultipleChoice",
    "OpinionPrompt",
    "answer_letter",
    "bundled",
    "bundled_data_dir",
    "load_ab_pairs",
    "load_bundled_instructions",
    "load_bundled_multiple_choice",
    "load_bundled_opinion_prompts",
    "load_bundled_sycophancy",
    "load_instructions",
    "load_multiple_choice",
    "load_opinion_prompts",
    "train_test_split",
]

T = TypeVar("T")
PathLike = str | os.PathLike[str]

AB_LETTERS: tuple[str, str] = ("A", "B")
MC_LETTERS = "ABCDEFGHIJ"
MMLU_HEADER_PREFIX = "choice"
DATA_DIR_ENV = "INTERP_DATA_DIR"
_MAX_LISTED_PROBLEMS = 25
_SUBJECT_SUFFIXES = ("_auxiliary_train", "_validation", "_train", "_dev", "_test", "_val")


# --------------------------------------------------------------------------------------------
# Errors


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


def _read_text(path: PathLike) -> str:
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


# --------------------------------------------------------------------------------------------
# A/B contrast pairs


def answer_letter(answer: str) -> Literal["A", "B"]:
    """The letter of an A/B answer: "(A)", " (A)" and "A" give "A"; anything else is a ValueError."""
    if not isinstance(answer, str):
        raise ValueError(f"answer must be an A/B letter like '(A)', got {type(answer).__name__} {answer!r}")
    text = answer.strip()
    if len(text) == 3 and text[0] == "(" and text[2] == ")":
        text = text[1]
    if text == "A":
        return "A"
    if text == "B":
        return "B"
    raise ValueError(f"answer must be an A/B letter like '(A)', '(B)', 'A' or 'B', got {answer!r}")


@dataclass(frozen=True)
class ContrastPair:
    """An A/B question; `answer_matching` shows the behaviour, `answer_not_matching` avoids it.

    The answers are normalised to "(A)" / "(B)" on construction; the choices themselves are
    part of `question` (e.g. "...\\n\\nChoices:\\n (A) ...\\n (B) ...\\n\\nAnswer:").
    """

    question: str
    answer_matching: str
    answer_not_matching: str
    category: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("question must be a non-empty string")
        matching = answer_letter(self.answer_matching)
        not_matching = answer_letter(self.answer_not_matching)
        if matching == not_matching:
            raise ValueError(f"matching and not-matching answers are the same letter ({matching})")
        object.__setattr__(self, "answer_matching", f"({matching})")
        object.__setattr__(self, "answer_not_matching", f"({not_matching})")
        object.__setattr__(self, "category", "" if self.category is None else str(self.category))

    @property
    def matching_letter(self) -> Literal["A", "B"]:
        """ "A" or "B": the letter of the answer that shows the behaviour."""
        return answer_letter(self.answer_matching)

    @property
    def not_matching_letter(self) -> Literal["A", "B"]:
        """ "A" or "B": the letter of the answer that avoids the behaviour."""
        return answer_letter(self.answer_not_matching)


def _pair_from_record(record: Any, default_category: str) -> ContrastPair:
    """One `ContrastPair` from a decoded JSON object; a ValueError says what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    keys = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(repr(k) for k in missing)}")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    for letter in AB_LETTERS:
        if f"({letter})" not in question:
            raise ValueError(f"the question text has no '({letter})' choice")
    for key in keys[1:]:
        try:
            answer_letter(record[key])
        except ValueError as error:
            raise ValueError(f"'{key}': {error}") from None
    category = record.get("category")
    return ContrastPair(
        question=question,
        answer_matching=record["answer_matching_behavior"],
        answer_not_matching=record["answer_not_matching_behavior"],
        category=default_category if category is None else str(category),
    )


def load_ab_pairs(path: PathLike, default_category: str = "") -> list[ContrastPair]:
    """Load A/B contrast pairs from JSONL (one object per line) or JSON (a list of objects).

    Each object needs `question`, `answer_matching_behavior` and `answer_not_matching_behavior`;
    an optional `category` is kept (`default_category` is used where it is missing). The format
    is read from the content: a file whose first character is "[" is a JSON list, anything else
    is JSONL (blank lines are allowed). Every malformed line or record is reported, with its
    line number (JSONL) or record index (JSON), in one `DatasetFormatError`.
    """
    text = _read_text(path)
    if text.lstrip().startswith("["):
        return _load_ab_pairs_json(path, text, default_category)
    return _load_ab_pairs_jsonl(path, text, default_category)


def _load_ab_pairs_jsonl(path: PathLike, text: str, default_category: str) -> list[ContrastPair]:
    pairs: list[ContrastPair] = []
    problems: list[str] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pairs.append(_pair_from_record(json.loads(line), default_category))
        except json.JSONDecodeError as error:
            problems.append(f"line {line_number}: invalid JSON ({error.msg})")
        except ValueError as error:
            problems.append(f"line {line_number}: {error}")
    if problems:
        raise DatasetFormatError(path, problems)
    return pairs


def _load_ab_pairs_json(path: PathLike, text: str, default_category: str) -> list[ContrastPair]:
    records = _json_list(path, text)
    pairs: list[ContrastPair] = []
    problems: list[str] = []
    for index, record in enumerate(records):
        try:
            pairs.append(_pair_from_record(record, default_category))
        except ValueError as error:
            problems.append(f"record {index}: {error}")
    if problems:
        raise DatasetFormatError(path, problems)
    return pairs


def _json_list(path: PathLike, text: str) -> list[Any]:
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


# --------------------------------------------------------------------------------------------
# Instructions


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
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _instructions_from_json(path, text, default_category)
    if suffix == ".jsonl":
        return _instructions_from_jsonl(path, text, default_category)
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


def _instructions_from_json(path: Path, text: str, default_category: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    problems: list[str] = []
    for index, record in enumerate(_json_list(path, text)):
        try:
            instructions.append(_instruction_from_record(record, default_category))
        except ValueError as error:
            problems.append(f"record {index}: {error}")
    if problems:
        raise DatasetFormatError(path, problems)
    return instructions


def _instructions_from_jsonl(path: Path, text: str, default_category: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    problems: list[str] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            instructions.append(_instruction_from_record(json.loads(line), default_category))
        except json.JSONDecodeError as error:
            problems.append(f"line {line_number}: invalid JSON ({error.msg})")
        except ValueError as error:
            problems.append(f"line {line_number}: {error}")
    if problems:
        raise DatasetFormatError(path, problems)
    return instructions


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


# --------------------------------------------------------------------------------------------
# Multiple choice


@dataclass(frozen=True)
class MultipleChoice:
    """A question with its choices and the 0-based index of the correct one."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        if len(self.choices) < 2:
            raise ValueError(f"need at least two choices, got {len(self.choices)}")
        if len(self.choices) > len(MC_LETTERS):
            raise ValueError(f"at most {len(MC_LETTERS)} choices are supported, got {len(self.choices)}")
        if isinstance(self.answer, bool) or not isinstance(self.answer, int):
            raise ValueError(f"answer must be an int index, got {self.answer!r}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer {self.answer} is outside 0..{len(self.choices) - 1}")

    @property
    def answer_letter(self) -> str:
        """The letter of the correct choice ("A" for index 0, ...)."""
        return MC_LETTERS[self.answer]

    @property
    def correct_choice(self) -> str:
        """The text of the correct choice."""
        return self.choices[self.answer]


def _subject_from_path(path: Path) -> str:
    """`anatomy_dev.csv` -> "anatomy": the file stem less a split suffix."""
    stem = path.stem
    for suffix in _SUBJECT_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def load_multiple_choice(path: PathLike, subject: str | None = None) -> list[MultipleChoice]:
    """Load multiple-choice questions from one CSV file or a folder of them.

    Two CSV layouts are read (the layout is told by the first row):

    * with a header `question,choice0,...,choiceN,answer` (an optional `subject` column may
      follow): the answer is a 0-based index;
    * without a header (hendrycks MMLU): `question,A,B,C,D,answer` with the answer a letter A-D.

    The subject is the `subject` argument, else the row's `subject` column, else the file name
    less a split suffix (`anatomy_dev.csv` -> "anatomy"). A folder loads its `*.csv` files in
    name order. Every row with a wrong number of fields or an out-of-range answer is reported
    (file and 1-based row number, the header being row 1) in one `DatasetFormatError`.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"no *.csv files in {path}")
        questions: list[MultipleChoice] = []
        for file in files:
            questions.extend(_load_multiple_choice_file(file, subject))
        return questions
    return _load_multiple_choice_file(path, subject)


def _load_multiple_choice_file(path: Path, subject: str | None) -> list[MultipleChoice]:
    text = _read_text(path)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    file_subject = subject if subject is not None else _subject_from_path(path)
    header = [name.strip().lower() for name in rows[0]]
    if header and header[0] == "question":
        return _parse_headed_rows(path, header, rows[1:], file_subject, subject is not None)
    return _parse_mmlu_rows(path, rows, file_subject)


def _parse_headed_rows(
    path: Path, header: list[str], rows: list[list[str]], subject: str, subject_fixed: bool
) -> list[MultipleChoice]:
    choice_columns = [i for i, name in enumerate(header) if name.startswith(MMLU_HEADER_PREFIX)]
    expected = [f"{MMLU_HEADER_PREFIX}{k}" for k in range(len(choice_columns))]
    if [header[i] for i in choice_columns] != expected or "answer" not in header or len(choice_columns) < 2:
        raise DatasetFormatError(
            path, [f"row 1: header {header} is not 'question,choice0,...,choiceN,answer[,subject]'"]
        )
    answer_at = header.index("answer")
    subject_at = header.index("subject") if "subject" in header and not subject_fixed else None
    questions: list[MultipleChoice] = []
    problems: list[str] = []
    for row_number, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            problems.append(f"row {row_number}: expected {len(header)} fields, got {len(row)}")
            continue
        raw = row[answer_at].strip()
        if not raw.isdigit() or int(raw) >= len(choice_columns):
            problems.append(f"row {row_number}: answer {raw!r} is not an index 0-{len(choice_columns) - 1}")
            continue
        row_subject = row[subject_at].strip() if subject_at is not None else subject
        choices = tuple(row[i] for i in choice_columns)
        questions.append(MultipleChoice(row[0], choices, int(raw), row_subject))
    return _checked(path, questions, problems)


def _parse_mmlu_rows(path: Path, rows: list[list[str]], subject: str) -> list[MultipleChoice]:
    n_fields = 6
    letters = MC_LETTERS[: n_fields - 2]
    questions: list[MultipleChoice] = []
    problems: list[str] = []
    for row_number, row in enumerate(rows, start=1):
        if not row:
            continue
        if len(row) != n_fields:
            problems.append(f"row {row_number}: expected {n_fields} fields, got {len(row)}")
            continue
        raw = row[-1].strip().upper()
        if len(raw) != 1 or raw not in letters:
            problems.append(f"row {row_number}: answer {row[-1]!r} is not a letter A-D")
            continue
        questions.append(MultipleChoice(row[0], tuple(row[1:-1]), letters.index(raw), subject))
    return _checked(path, questions, problems)


def _checked(path: Path, questions: list[MultipleChoice], problems: list[str]) -> list[MultipleChoice]:
    if problems:
        raise DatasetFormatError(path, problems)
    if not questions:
        raise DatasetFormatError(path, ["the file has no question rows"])
    return questions


# --------------------------------------------------------------------------------------------
# Open-ended opinion prompts


@dataclass(frozen=True)
class OpinionPrompt:
    """An open-ended prompt in which the user states a claim and asks the model to agree.

    `stance_is_true` says whether the user's claim is factually correct, so a sycophancy probe
    can tell caving in (agreeing with a false claim) from plain agreement with a true one.
    """

    prompt: str
    category: str = ""
    stance_is_true: bool = False


def load_opinion_prompts(path: PathLike) -> list[OpinionPrompt]:
    """Load a JSON list of `{"prompt": str, "category": str, "stance_is_true": bool}`."""
    text = _read_text(path)
    prompts: list[OpinionPrompt] = []
    problems: list[str] = []
    for index, record in enumerate(_json_list(path, text)):
        if not isinstance(record, dict):
            problems.append(f"record {index}: expected a JSON object, got {type(record).__name__}")
            continue
        missing = [key for key in ("prompt", "stance_is_true") if key not in record]
        if missing:
            problems.append(f"record {index}: missing field(s) {', '.join(repr(k) for k in missing)}")
            continue
        if not isinstance(record["prompt"], str) or not record["prompt"].strip():
            problems.append(f"record {index}: 'prompt' must be a non-empty string")
            continue
        if not isinstance(record["stance_is_true"], bool):
            problems.append(f"record {index}: 'stance_is_true' must be true or false")
            continue
        prompts.append(OpinionPrompt(record["prompt"], str(record.get("category") or ""), record["stance_is_true"]))
    if problems:
        raise DatasetFormatError(path, problems)
    return prompts


# --------------------------------------------------------------------------------------------
# Splits


def train_test_split(
    records: Iterable[T],
    test_fraction: float = 0.25,
    seed: int = 0,
    stratify: Callable[[T], Hashable] | None = None,
) -> tuple[list[T], list[T]]:
    """Split `records` into (train, test), deterministically for a given `seed`.

    `round(test_fraction * n)` records go to test (per group when `stratify` maps each record to
    a group key, e.g. `lambda p: p.category`). Both parts keep the records' original order.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    items = list(records)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[stratify(item) if stratify is not None else None].append(index)
    rng = random.Random(seed)
    test_indices: set[int] = set()
    for key in sorted(groups, key=repr):
        members = list(groups[key])
        rng.shuffle(members)
        test_indices.update(members[: round(test_fraction * len(members))])
    train = [item for i, item in enumerate(items) if i not in test_indices]
    test = [item for i, item in enumerate(items) if i in test_indices]
    return train, test


# --------------------------------------------------------------------------------------------
# Bundled data


def bundled_data_dir() -> Path:
    """The folder of the project's bundled data: `$INTERP_DATA_DIR`, else the package's own `interp/data/`."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "data"


def bundled(name: str) -> Path:
    """The path of the bundled data file `name` (e.g. "sycophancy_ab_train.jsonl").

    The files ship as package data (`interp/data/`), in a wheel as in the source tree; a missing file
    is a FileNotFoundError saying where it was looked for (INTERP_DATA_DIR points elsewhere).
    """
    path = bundled_data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled data file {name!r} not found at {path}; it ships in the package's interp/data/ "
            f"folder (reinstall interp, or unset {DATA_DIR_ENV} if it points elsewhere)"
        )
    return path


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")


def load_bundled_sycophancy(split: Literal["train", "test"] = "train") -> list[ContrastPair]:
    """The project's sycophancy A/B pairs (`interp/data/sycophancy_ab_{split}.jsonl`)."""
    _check_choice("split", split, ("train", "test"))
    return load_ab_pairs(bundled(f"sycophancy_ab_{split}.jsonl"))


def load_bundled_instructions(
    kind: Literal["harmful", "harmless"] = "harmful", split: Literal["train", "val"] = "train"
) -> list[Instruction]:
    """The project's harmful or harmless instructions (`interp/data/{kind}_{split}.json`)."""
    _check_choice("kind", kind, ("harmful", "harmless"))
    _check_choice("split", split, ("train", "val"))
    return load_instructions(bundled(f"{kind}_{split}.json"))


def load_bundled_multiple_choice() -> list[MultipleChoice]:
    """The project's four-option general-knowledge questions (`interp/data/multiple_choice.csv`)."""
    return load_multiple_choice(bundled("multiple_choice.csv"), subject="general")


def load_bundled_opinion_prompts() -> list[OpinionPrompt]:
    """The project's open-ended "do you agree?" prompts (`interp/data/opinion_prompts.json`)."""
    return load_opinion_prompts(bundled("opinion_prompts.json"))
