"""Multiple-choice questions: hendrycks MMLU CSVs and the `question,choice0,...,answer` layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from interp.datasets.reading import DatasetFormatError, PathLike, check_strict, csv_rows, finish, read_text, rows_of_width

MC_LETTERS = "ABCDEFGHIJ"
MMLU_HEADER_PREFIX = "choice"
_SUBJECT_SUFFIXES = ("_auxiliary_train", "_validation", "_train", "_dev", "_test", "_val")


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


def load_multiple_choice(path: PathLike, subject: str | None = None, *, strict: bool = True) -> list[MultipleChoice]:
    """Load multiple-choice questions from one CSV file or a folder of them.

    Two CSV layouts are read (the layout is told by the first row):

    * with a header `question,choice0,...,choiceN,answer` (an optional `subject` column may
      follow): the answer is a 0-based index;
    * without a header (hendrycks MMLU): `question,A,B,C,D,answer` with the answer a letter A-D.

    The subject is the `subject` argument, else the row's `subject` column, else the file name
    less a split suffix (`anatomy_dev.csv` -> "anatomy"). A folder loads its `*.csv` files in
    name order. Every row with a wrong number of fields, an empty question or choice or an
    out-of-range answer is reported (file and 1-based row number, the header being row 1) in one
    `DatasetFormatError`; with `strict=False` such rows are skipped with a `DatasetWarning` counting them.
    """
    check_strict(strict)
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"no *.csv files in {path}")
        questions: list[MultipleChoice] = []
        for file in files:
            questions.extend(_load_multiple_choice_file(file, subject, strict))
        return questions
    return _load_multiple_choice_file(path, subject, strict)


def _load_multiple_choice_file(path: Path, subject: str | None, strict: bool) -> list[MultipleChoice]:
    rows = csv_rows(path, read_text(path))
    file_subject = subject if subject is not None else _subject_from_path(path)
    header = [name.strip().lower() for name in rows[0]] if rows else []
    if header and header[0] == "question":
        questions, problems = _parse_headed_rows(path, header, rows[1:], file_subject, subject is not None)
    else:
        questions, problems = _parse_mmlu_rows(rows, file_subject)
    return finish(path, questions, problems, strict, "question rows")


Parsed = tuple[list[MultipleChoice], list[str]]  # the questions and the problems ("row N: why")


def _parse_headed_rows(path: Path, header: list[str], rows: list[list[str]], subject: str, subject_fixed: bool) -> Parsed:
    choice_columns = [i for i, name in enumerate(header) if name.startswith(MMLU_HEADER_PREFIX)]
    expected = [f"{MMLU_HEADER_PREFIX}{k}" for k in range(len(choice_columns))]
    if [header[i] for i in choice_columns] != expected or "answer" not in header or len(choice_columns) < 2 \
            or len(choice_columns) > len(MC_LETTERS):
        raise DatasetFormatError(
            path, [f"row 1: header {header} is not 'question,choice0,...,choiceN,answer[,subject]' "
                   f"with 2 to {len(MC_LETTERS)} choices"]
        )
    answer_at = header.index("answer")
    subject_at = header.index("subject") if "subject" in header and not subject_fixed else None
    questions: list[MultipleChoice] = []
    problems: list[str] = []
    for row_number, row in rows_of_width(rows, len(header), problems):
        raw = row[answer_at].strip()
        if not (raw.isascii() and raw.isdigit()) or int(raw) >= len(choice_columns):
            problems.append(f"row {row_number}: answer {raw!r} is not an index 0-{len(choice_columns) - 1}")
            continue
        row_subject = row[subject_at].strip() if subject_at is not None else subject
        _append(questions, problems, row_number, row[0], [row[i] for i in choice_columns], int(raw), row_subject)
    return questions, problems


def _parse_mmlu_rows(rows: list[list[str]], subject: str) -> Parsed:
    n_fields = 6
    letters = MC_LETTERS[: n_fields - 2]
    questions: list[MultipleChoice] = []
    problems: list[str] = []
    for row_number, row in rows_of_width(rows, n_fields, problems, start=1):
        raw = row[-1].strip().upper()
        if len(raw) != 1 or raw not in letters:
            problems.append(f"row {row_number}: answer {row[-1]!r} is not a letter A-D")
            continue
        _append(questions, problems, row_number, row[0], row[1:-1], letters.index(raw), subject)
    return questions, problems


def _append(questions: list[MultipleChoice], problems: list[str], row_number: int, question: str,
            choices: list[str], answer: int, subject: str) -> None:
    """The row's question, or its problem: an empty question or choice is no question to score."""
    empty = [MC_LETTERS[i] for i, choice in enumerate(choices) if not choice.strip()]
    if not question.strip():
        problems.append(f"row {row_number}: empty question")
    elif empty:
        problems.append(f"row {row_number}: empty choice {', '.join(empty)}")
    else:
        questions.append(MultipleChoice(question, tuple(choices), answer, subject))
