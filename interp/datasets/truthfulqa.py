"""TruthfulQA as multiple choice: the public CSV (`TruthfulQA.csv`), best answer vs incorrect answers.

Columns read: `Question`, `Best Answer`, `Incorrect Answers` (semicolon-separated), and `Category` as the
subject; others (`Type`, `Correct Answers`, `Source`) are ignored. Each question becomes the best answer
and its first `n_choices - 1` distinct incorrect answers, in an order shuffled with `seed`; questions
with fewer incorrect answers are left out (every question needs the same number of choices to be scored
over the same letters).
"""

from __future__ import annotations

import csv
import io
import random

from interp.datasets.multiple_choice import MC_LETTERS, MultipleChoice
from interp.datasets.reading import DatasetFormatError, PathLike, read_text

TRUTHFULQA_COLUMNS = ("Question", "Best Answer", "Incorrect Answers")


def load_truthfulqa(path: PathLike, *, n_choices: int = 4, seed: int = 0) -> list[MultipleChoice]:
    """Multiple-choice questions from a TruthfulQA-format CSV (see the module docstring)."""
    if isinstance(n_choices, bool) or not isinstance(n_choices, int) or not 2 <= n_choices <= len(MC_LETTERS):
        raise ValueError(f"n_choices: expected an int in 2..{len(MC_LETTERS)}, got {n_choices!r}")
    reader = csv.DictReader(io.StringIO(read_text(path)))
    missing = [column for column in TRUTHFULQA_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise DatasetFormatError(path, [f"missing TruthfulQA columns {missing} (found {reader.fieldnames})"])
    shuffler = random.Random(seed)
    questions, problems = [], []
    for line, row in enumerate(reader, start=2):
        question, best = (row["Question"] or "").strip(), (row["Best Answer"] or "").strip()
        if not question or not best:
            problems.append(f"line {line}: empty 'Question' or 'Best Answer'")
            continue
        wrong = [answer.strip() for answer in (row["Incorrect Answers"] or "").split(";")]
        wrong = [answer for answer in dict.fromkeys(wrong) if answer and answer != best][: n_choices - 1]
        if len(wrong) < n_choices - 1:
            continue
        choices = [best, *wrong]
        shuffler.shuffle(choices)
        subject = (row.get("Category") or "").strip()
        questions.append(MultipleChoice(question, tuple(choices), choices.index(best), subject))
    if problems:
        raise DatasetFormatError(path, problems)
    if not questions:
        raise DatasetFormatError(path, [f"no question has {n_choices - 1} distinct incorrect answers"])
    return questions
