"""TruthfulQA as multiple choice: the public CSV (`TruthfulQA.csv`), best answer vs incorrect answers.

Columns read: `Question`, `Best Answer`, `Incorrect Answers` (semicolon-separated), and `Category` as the
subject; others (`Type`, `Correct Answers`, `Source`) are ignored. Each question becomes the best answer
and its first `n_choices - 1` distinct incorrect answers, in an order shuffled with `seed`.

Every question needs the same number of choices (to be scored over the same letters), so a question with
fewer distinct incorrect answers is left out, with a `DatasetWarning` counting them (the public file has a
few with one or two). When more than half the rows are left out, the file is more likely not in this
format (answers separated by commas, say): that is an error unless `strict=False`. Malformed rows (a
wrong number of fields, an empty question or best answer) are an error listing them, or with
`strict=False` skipped with a warning.
"""

from __future__ import annotations

import random
import warnings

from interp.datasets.multiple_choice import MC_LETTERS, MultipleChoice
from interp.datasets.reading import (
    SKIP_HINT,
    DatasetFormatError,
    DatasetWarning,
    PathLike,
    check_strict,
    csv_rows,
    finish,
    read_text,
    rows_of_width,
)

TRUTHFULQA_COLUMNS = ("Question", "Best Answer", "Incorrect Answers")


def load_truthfulqa(path: PathLike, *, n_choices: int = 4, seed: int = 0, strict: bool = True) -> list[MultipleChoice]:
    """Multiple-choice questions from a TruthfulQA-format CSV (see the module docstring)."""
    if isinstance(n_choices, bool) or not isinstance(n_choices, int) or not 2 <= n_choices <= len(MC_LETTERS):
        raise ValueError(f"n_choices: expected an int in 2..{len(MC_LETTERS)}, got {n_choices!r}")
    check_strict(strict)
    rows = csv_rows(path, read_text(path))
    header = [name.strip() for name in rows[0]] if rows else []
    missing = [column for column in TRUTHFULQA_COLUMNS if column not in header]
    if missing:
        raise DatasetFormatError(path, [f"missing TruthfulQA columns {missing} (found {header})"])
    at = {name: header.index(name) for name in (*TRUTHFULQA_COLUMNS, "Category") if name in header}
    shuffler = random.Random(seed)
    questions, problems, too_few = [], [], []
    for number, row in rows_of_width(rows[1:], len(header), problems):
        question, best = row[at["Question"]].strip(), row[at["Best Answer"]].strip()
        if not question or not best:
            problems.append(f"row {number}: empty 'Question' or 'Best Answer'")
            continue
        wrong = [answer.strip() for answer in row[at["Incorrect Answers"]].split(";")]
        wrong = [answer for answer in dict.fromkeys(wrong) if answer and answer != best][: n_choices - 1]
        if len(wrong) < n_choices - 1:
            too_few.append(f"row {number}: {len(wrong)} distinct incorrect answer{'s' * (len(wrong) != 1)}")
            continue
        choices = [best, *wrong]
        shuffler.shuffle(choices)
        subject = row[at["Category"]].strip() if "Category" in at else ""
        questions.append(MultipleChoice(question, tuple(choices), choices.index(best), subject))
    if problems and strict:
        raise DatasetFormatError(path, problems, SKIP_HINT)
    need = f"fewer than {n_choices - 1} distinct incorrect answers (separated by ';') for n_choices={n_choices}"
    if too_few and not questions:
        raise DatasetFormatError(path, too_few, f"every question has {need}")
    if too_few and strict and len(too_few) > len(questions):
        raise DatasetFormatError(path, too_few, f"{len(too_few)} of {len(too_few) + len(questions)} questions have {need}: "
                                 "is the file in TruthfulQA's format? (strict=False leaves them out with a warning; "
                                 "or lower n_choices)")
    if too_few:
        listed = "; ".join(too_few[:3]) + ("; ..." if len(too_few) > 3 else "")
        warnings.warn(f"{path}: left out {len(too_few)} of {len(too_few) + len(questions)} questions with {need}: "
                      f"{listed}", DatasetWarning, stacklevel=2)
    return finish(path, questions, problems, strict, "questions")
