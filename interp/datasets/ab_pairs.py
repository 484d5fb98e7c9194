"""A/B contrast pairs: Anthropic's model-written evals (JSONL) and the CAA repo's data (a JSON list)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from interp.datasets.reading import PathLike, check_strict, parse_json_list, parse_jsonl, read_text

AB_LETTERS: tuple[str, str] = ("A", "B")


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


def load_ab_pairs(path: PathLike, default_category: str = "", *, strict: bool = True) -> list[ContrastPair]:
    """Load A/B contrast pairs from JSONL (one object per line) or JSON (a list of objects).

    Each object needs `question`, `answer_matching_behavior` and `answer_not_matching_behavior`;
    an optional `category` is kept (`default_category` is used where it is missing). The format
    is read from the content: a file whose first character is "[" is a JSON list, anything else
    is JSONL (blank lines are allowed). Every malformed line or record is reported, with its
    line number (JSONL) or record index (JSON), in one `DatasetFormatError`; with `strict=False` they
    are skipped with a `DatasetWarning` that counts them.
    """
    check_strict(strict)
    text = read_text(path)
    parse = partial(_pair_from_record, default_category=default_category)
    if text.lstrip().startswith("["):
        return parse_json_list(path, text, parse, strict)
    return parse_jsonl(path, text, parse, strict)
