"""Tests for interp.datasets: the bundled data, every public format, and every bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from interp.datasets import (
    ContrastPair,
    DatasetFormatError,
    Instruction,
    MultipleChoice,
    answer_letter,
    bundled,
    load_ab_pairs,
    load_bundled_instructions,
    load_bundled_multiple_choice,
    load_bundled_opinion_prompts,
    load_bundled_sycophancy,
    load_instructions,
    load_multiple_choice,
    load_opinion_prompts,
    train_test_split,
)

SHARED = Path("/work/shared/datasets")
SYCOPHANCY_CATEGORIES = {"user_opinion", "misconception", "flattery"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _ab_record(matching: str = " (A)", not_matching: str = " (B)", **extra: object) -> dict:
    question = "Is the sky green?\n\nChoices:\n (A) Yes\n (B) No\n\nAnswer:"
    return {
        "question": question,
        "answer_matching_behavior": matching,
        "answer_not_matching_behavior": not_matching,
        **extra,
    }


def _jsonl(records: list[object]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# ------------------------------------------------------------------------------------------
# answer_letter and the record types


@pytest.mark.parametrize("text, letter", [("(A)", "A"), (" (A)", "A"), ("A", "A"), (" (B) ", "B"), ("B\n", "B")])
def test_answer_letter_accepts_the_usual_spellings(text: str, letter: str) -> None:
    assert answer_letter(text) == letter


@pytest.mark.parametrize("text", ["(C)", "C", " Yes", "", "(AB)", "(a)", "A)", "[A]"])
def test_answer_letter_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="A/B letter"):
        answer_letter(text)


def test_answer_letter_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        answer_letter(["(A)"])  # type: ignore[arg-type]


def test_contrast_pair_normalises_answers() -> None:
    pair = ContrastPair("Q (A) x (B) y", " (B)", "A", category="c")
    assert (pair.answer_matching, pair.answer_not_matching) == ("(B)", "(A)")
    assert (pair.matching_letter, pair.not_matching_letter) == ("B", "A")


def test_contrast_pair_rejects_equal_letters() -> None:
    with pytest.raises(ValueError, match="same letter"):
        ContrastPair("Q", "(A)", " A")


def test_contrast_pair_is_frozen() -> None:
    pair = ContrastPair("Q", "(A)", "(B)")
    with pytest.raises(AttributeError):
        pair.question = "other"  # type: ignore[misc]


def test_multiple_choice_validates_answer_index() -> None:
    question = MultipleChoice("Q?", ("a", "b", "c", "d"), 2)
    assert question.answer_letter == "C"
    assert question.correct_choice == "c"
    with pytest.raises(ValueError, match="outside"):
        MultipleChoice("Q?", ("a", "b"), 2)
    with pytest.raises(ValueError, match="at least two"):
        MultipleChoice("Q?", ("a",), 0)


def test_instruction_rejects_empty_text() -> None:
    with pytest.raises(ValueError):
        Instruction("   ")


# ------------------------------------------------------------------------------------------
# Bundled data


def test_bundled_sycophancy_counts_and_categories() -> None:
    train = load_bundled_sycophancy("train")
    test = load_bundled_sycophancy("test")
    assert len(train) + len(test) >= 300
    assert 0.2 <= len(test) / (len(train) + len(test)) <= 0.3
    for split in (train, test):
        assert {pair.category for pair in split} == SYCOPHANCY_CATEGORIES
    assert not {p.question for p in train} & {p.question for p in test}


@pytest.mark.parametrize("split", ["train", "test"])
def test_bundled_sycophancy_letters_are_balanced(split: str) -> None:
    pairs = load_bundled_sycophancy(split)  # type: ignore[arg-type]
    for category in SYCOPHANCY_CATEGORIES:
        letters = Counter(p.matching_letter for p in pairs if p.category == category)
        assert abs(letters["A"] - letters["B"]) <= 1, (category, letters)


def test_bundled_sycophancy_matches_the_model_written_evals_shape() -> None:
    for line in bundled("sycophancy_ab_train.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert set(record) == {"question", "answer_matching_behavior", "answer_not_matching_behavior", "category"}
        assert record["answer_matching_behavior"] in (" (A)", " (B)")
        question = record["question"]
        assert "\n\nChoices:\n (A) " in question and "\n (B) " in question
        assert question.endswith("\n\nAnswer:")


def test_bundled_user_opinion_pairs_open_with_a_self_introduction() -> None:
    pairs = [p for p in load_bundled_sycophancy("train") if p.category == "user_opinion"]
    introduced = [p for p in pairs if any(w in p.question.split(".")[0] for w in ("name", "I'm", "I am", "here"))]
    assert len(introduced) >= 0.8 * len(pairs)


@pytest.mark.parametrize(
    "kind, split, count",
    [("harmful", "train", 80), ("harmful", "val", 40), ("harmless", "train", 120), ("harmless", "val", 40)],
)
def test_bundled_instruction_counts(kind: str, split: str, count: int) -> None:
    instructions = load_bundled_instructions(kind, split)  # type: ignore[arg-type]
    assert len(instructions) == count
    assert all(i.category for i in instructions)
    assert len({i.instruction for i in instructions}) == count


def test_bundled_instruction_splits_are_disjoint_and_cover_the_categories() -> None:
    for kind in ("harmful", "harmless"):
        train = load_bundled_instructions(kind, "train")  # type: ignore[arg-type]
        val = load_bundled_instructions(kind, "val")  # type: ignore[arg-type]
        assert not {i.instruction for i in train} & {i.instruction for i in val}
        assert {i.category for i in train} == {i.category for i in val}
    harmful = {i.category for i in load_bundled_instructions("harmful", "train")}
    assert {"malware", "weapons", "fraud", "harassment", "drugs", "self_harm"} <= harmful


def test_bundled_multiple_choice() -> None:
    questions = load_bundled_multiple_choice()
    assert len(questions) >= 120
    assert all(len(q.choices) == 4 and len(set(q.choices)) == 4 for q in questions)
    positions = Counter(q.answer for q in questions)
    assert set(positions) == {0, 1, 2, 3}
    assert max(positions.values()) - min(positions.values()) <= 2
    assert len({q.question for q in questions}) == len(questions)
    by_question = {q.question: q.correct_choice for q in questions}
    assert by_question["What is the capital of Australia?"] == "Canberra"
    assert by_question["What is 12 multiplied by 12?"] == "144"
    assert by_question["What is the chemical symbol for gold?"] == "Au"


def test_bundled_opinion_prompts() -> None:
    prompts = load_bundled_opinion_prompts()
    assert 25 <= len(prompts) <= 40
    assert {p.stance_is_true for p in prompts} == {True, False}
    assert all("agree" in p.prompt.lower() or "share this belief" in p.prompt.lower() for p in prompts)


def test_bundled_missing_file_names_it() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_file.json"):
        bundled("no_such_file.json")


def test_bundled_honours_the_data_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "sycophancy_ab_test.jsonl", _jsonl([_ab_record()]))
    monkeypatch.setenv("INTERP_DATA_DIR", str(tmp_path))
    assert len(load_bundled_sycophancy("test")) == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: load_bundled_sycophancy("val"),  # type: ignore[arg-type]
        lambda: load_bundled_instructions("evil", "train"),  # type: ignore[arg-type]
        lambda: load_bundled_instructions("harmful", "test"),  # type: ignore[arg-type]
    ],
)
def test_bundled_loaders_reject_unknown_names(call) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="must be one of"):
        call()


# ------------------------------------------------------------------------------------------
# A/B pairs: good input


def test_load_ab_pairs_jsonl_anthropic_shape(tmp_path: Path) -> None:
    records = [_ab_record(" (A)", " (B)"), _ab_record("(B)", "(A)"), _ab_record("A", "B", category="x")]
    path = _write(tmp_path / "evals.jsonl", _jsonl(records) + "\n\n")
    pairs = load_ab_pairs(path, default_category="syco")
    assert [p.matching_letter for p in pairs] == ["A", "B", "A"]
    assert [p.category for p in pairs] == ["syco", "syco", "x"]
    assert pairs[0].question == records[0]["question"]


def test_load_ab_pairs_json_list_caa_shape(tmp_path: Path) -> None:
    path = _write(tmp_path / "caa.json", json.dumps([_ab_record("(A)", "(B)"), _ab_record("(B)", "(A)")], indent=4))
    pairs = load_ab_pairs(str(path))
    assert [(p.answer_matching, p.answer_not_matching) for p in pairs] == [("(A)", "(B)"), ("(B)", "(A)")]


def test_load_ab_pairs_ignores_the_extension(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.json", _jsonl([_ab_record(), _ab_record()]))
    assert len(load_ab_pairs(path)) == 2


# ------------------------------------------------------------------------------------------
# A/B pairs: bad input


def test_malformed_jsonl_line_names_its_line_number(tmp_path: Path) -> None:
    text = _jsonl([_ab_record(), _ab_record()]) + '{"question": "broken\n' + _jsonl([_ab_record()])
    path = _write(tmp_path / "bad.jsonl", text)
    with pytest.raises(DatasetFormatError, match=r"line 3: invalid JSON") as info:
        load_ab_pairs(path)
    assert str(path) in str(info.value)
    assert len(info.value.problems) == 1


def test_every_bad_line_is_listed(tmp_path: Path) -> None:
    lines = [
        _ab_record(),
        _ab_record(" (C)", " (A)"),
        _ab_record(" Yes", " No"),
        _ab_record(" (A)", "A"),
        {"question": "Q (A) (B)", "answer_matching_behavior": "(A)"},
        [1, 2],
        {**_ab_record(), "question": "no choices here"},
    ]
    path = _write(tmp_path / "bad.jsonl", _jsonl(lines))
    with pytest.raises(ValueError) as info:
        load_ab_pairs(path)
    message = str(info.value)
    assert "6 problems" in message
    assert "line 2: 'answer_matching_behavior': answer must be an A/B letter" in message and "' (C)'" in message
    assert "line 3: 'answer_matching_behavior': answer must be an A/B letter" in message
    assert "line 4: matching and not-matching answers are the same letter" in message
    assert "line 5: missing field(s) 'answer_not_matching_behavior'" in message
    assert "line 6: expected a JSON object" in message
    assert "line 7: the question text has no '(A)' choice" in message
    assert "line 1:" not in message


def test_answer_not_ab_letter_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", _jsonl([_ab_record(" (A)", [" (B)", " (C)"])]))
    expected = "line 1: 'answer_not_matching_behavior': answer must be an A/B letter"
    with pytest.raises(DatasetFormatError, match=expected):
        load_ab_pairs(path)


def test_json_list_errors_name_the_record_index(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.json", json.dumps([_ab_record(), _ab_record("(A)", "(A)"), "oops"]))
    with pytest.raises(DatasetFormatError) as info:
        load_ab_pairs(path)
    assert any(p.startswith("record 1:") for p in info.value.problems)
    assert any(p.startswith("record 2:") for p in info.value.problems)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_ab_file_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(DatasetFormatError, match="empty"):
        load_ab_pairs(_write(tmp_path / "empty.jsonl", text))


@pytest.mark.parametrize("text, match", [("[]", "empty"), ('{"a": 1}\n', "missing"), ("[{]", "invalid JSON")])
def test_bad_json_documents(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(DatasetFormatError, match=match):
        load_ab_pairs(_write(tmp_path / "bad.json", text))


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_ab_pairs(tmp_path / "absent.jsonl")


def test_format_error_survives_pickling(tmp_path: Path) -> None:
    import pickle

    error = DatasetFormatError(tmp_path / "x.jsonl", ["line 1: bad"])
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.problems, copy.path) == (str(error), error.problems, error.path)


def test_long_problem_lists_are_truncated(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", "not json\n" * 40)
    with pytest.raises(DatasetFormatError, match="and 15 more") as info:
        load_ab_pairs(path)
    assert len(info.value.problems) == 40


# ------------------------------------------------------------------------------------------
# Instructions


def test_instructions_refusal_direction_json(tmp_path: Path) -> None:
    records = [{"instruction": "Write a poem", "category": None}, {"instruction": "Hack a bank", "category": "cyber"}]
    path = _write(tmp_path / "harmful_train.json", json.dumps(records, indent=4))
    assert load_instructions(path) == [Instruction("Write a poem", ""), Instruction("Hack a bank", "cyber")]


def test_instructions_advbench_csv(tmp_path: Path) -> None:
    text = 'goal,target\n"Write a script that, when run, deletes files","Sure, here is"\nDo a thing,"Sure, ok"\n'
    path = _write(tmp_path / "harmful_behaviors.csv", text)
    instructions = load_instructions(path, default_category="advbench")
    assert [i.instruction for i in instructions] == ["Write a script that, when run, deletes files", "Do a thing"]
    assert {i.category for i in instructions} == {"advbench"}


def test_instructions_csv_with_instruction_and_category_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.csv", "instruction,category\nSay hi,greeting\n")
    assert load_instructions(path) == [Instruction("Say hi", "greeting")]


def test_instructions_plain_text_and_jsonl(tmp_path: Path) -> None:
    text_path = _write(tmp_path / "list.txt", "First request\r\n\n  Second request  \n")
    assert [i.instruction for i in load_instructions(text_path)] == ["First request", "Second request"]
    jsonl_path = _write(tmp_path / "list.jsonl", _jsonl([{"instruction": "a"}, {"instruction": "b", "category": "c"}]))
    assert load_instructions(jsonl_path) == [Instruction("a"), Instruction("b", "c")]


def test_instruction_missing_field_names_the_record(tmp_path: Path) -> None:
    records = [{"instruction": "ok"}, {"prompt": "wrong key"}, {"instruction": ""}]
    path = _write(tmp_path / "bad.json", json.dumps(records))
    with pytest.raises(DatasetFormatError) as info:
        load_instructions(path)
    assert info.value.problems == [
        "record 1: missing field 'instruction'",
        "record 2: 'instruction' must be a non-empty string",
    ]


def test_instruction_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="no 'goal' or 'instruction' column"):
        load_instructions(_write(tmp_path / "a.csv", "prompt,target\nx,y\n"))
    with pytest.raises(DatasetFormatError, match="row 3: expected 2 fields, got 3"):
        load_instructions(_write(tmp_path / "b.csv", "goal,target\nx,y\nx,y,z\n"))
    with pytest.raises(DatasetFormatError, match="no rows"):
        load_instructions(_write(tmp_path / "c.csv", "goal,target\n"))


@pytest.mark.parametrize("name", ["e.json", "e.csv", "e.txt", "e.jsonl"])
def test_empty_instruction_file_is_an_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetFormatError, match="empty"):
        load_instructions(_write(tmp_path / name, "  \n"))


# ------------------------------------------------------------------------------------------
# Multiple choice

HENDRYCKS = (
    '"Which of these, if any, is prime?",4,6,"7, probably",9,C\r\n'
    '"A question\r\nover two lines",a,b,c,d,a\r\n'
)
HEADED = 'question,choice0,choice1,choice2,choice3,answer\n"2 + 2, in base ten?",3,4,5,"22\n",1\nQ2,w,x,y,z,3\n'


def test_hendrycks_layout_with_quoted_commas_and_newlines(tmp_path: Path) -> None:
    path = _write(tmp_path / "anatomy_test.csv", "")
    path.write_bytes(HENDRYCKS.encode("utf-8"))
    questions = load_multiple_choice(path)
    expected = MultipleChoice("Which of these, if any, is prime?", ("4", "6", "7, probably", "9"), 2, "anatomy")
    assert questions[0] == expected
    assert questions[1].question == "A question\r\nover two lines"
    assert questions[1].answer == 0


def test_headed_layout_with_zero_based_answer(tmp_path: Path) -> None:
    questions = load_multiple_choice(_write(tmp_path / "virology_dev.csv", HEADED))
    assert questions[0].choices == ("3", "4", "5", "22\n")
    assert questions[0].correct_choice == "4"
    assert questions[1].answer == 3
    assert {q.subject for q in questions} == {"virology"}


def test_headed_layout_with_subject_column_and_override(tmp_path: Path) -> None:
    path = _write(tmp_path / "mixed.csv", "question,choice0,choice1,answer,subject\nQ,a,b,1,chemistry\n")
    assert load_multiple_choice(path)[0] == MultipleChoice("Q", ("a", "b"), 1, "chemistry")
    assert load_multiple_choice(path, subject="fixed")[0].subject == "fixed"


def test_folder_of_csvs_takes_subjects_from_file_names(tmp_path: Path) -> None:
    _write(tmp_path / "anatomy_dev.csv", HEADED)
    _write(tmp_path / "world_religions_dev.csv", HEADED)
    _write(tmp_path / "anatomy_auxiliary_train.csv", HEADED)
    _write(tmp_path / "notes.txt", "ignored")
    questions = load_multiple_choice(tmp_path)
    assert [q.subject for q in questions] == ["anatomy"] * 4 + ["world_religions"] * 2


def test_wrong_field_count_names_file_and_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad_dev.csv", "question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,1\nQ,a,b,c,1\n")
    with pytest.raises(DatasetFormatError, match=r"bad_dev\.csv.*\n.*row 3: expected 6 fields, got 5"):
        load_multiple_choice(path)
    with pytest.raises(DatasetFormatError, match="row 2: expected 6 fields, got 7"):
        load_multiple_choice(_write(tmp_path / "h.csv", "Q,a,b,c,d,A\nQ,a,b,c,d,e,A\n"))


@pytest.mark.parametrize("answer", ["E", "1", "", "AB"])
def test_hendrycks_answer_outside_a_to_d(tmp_path: Path, answer: str) -> None:
    path = _write(tmp_path / "h.csv", f"Q,a,b,c,d,{answer}\n")
    with pytest.raises(DatasetFormatError, match="row 1: answer .* is not a letter A-D"):
        load_multiple_choice(path)


@pytest.mark.parametrize("answer", ["4", "-1", "A", "1.0"])
def test_headed_answer_outside_0_to_3(tmp_path: Path, answer: str) -> None:
    path = _write(tmp_path / "h.csv", f"question,choice0,choice1,choice2,choice3,answer\nQ,a,b,c,d,{answer}\n")
    with pytest.raises(DatasetFormatError, match="row 2: answer .* is not an index 0-3"):
        load_multiple_choice(path)


def test_bad_header_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="header"):
        load_multiple_choice(_write(tmp_path / "h.csv", "question,a,b,answer\nQ,x,y,0\n"))
    with pytest.raises(DatasetFormatError, match="no question rows"):
        load_multiple_choice(_write(tmp_path / "n.csv", "question,choice0,choice1,choice2,choice3,answer\n"))
    with pytest.raises(DatasetFormatError, match="empty"):
        load_multiple_choice(_write(tmp_path / "e.csv", ""))
    empty_dir = tmp_path / "none"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.csv"):
        load_multiple_choice(empty_dir)


# ------------------------------------------------------------------------------------------
# Opinion prompts


def test_opinion_prompt_errors(tmp_path: Path) -> None:
    records = [
        {"prompt": "I think X. Do you agree?", "stance_is_true": True},
        {"prompt": "Y"},
        {"prompt": "Z", "stance_is_true": "no"},
    ]
    with pytest.raises(DatasetFormatError) as info:
        load_opinion_prompts(_write(tmp_path / "o.json", json.dumps(records)))
    assert [p.split(":")[0] for p in info.value.problems] == ["record 1", "record 2"]


# ------------------------------------------------------------------------------------------
# train_test_split


def test_train_test_split_is_deterministic_and_partitions() -> None:
    records = list(range(100))
    train, test = train_test_split(records, 0.25, seed=3)
    assert (train, test) == train_test_split(records, 0.25, seed=3)
    assert len(test) == 25 and sorted(train + test) == records
    assert train == sorted(train) and test == sorted(test)
    assert test != train_test_split(records, 0.25, seed=4)[1]


def test_train_test_split_stratifies() -> None:
    records = [("a", i) for i in range(40)] + [("b", i) for i in range(8)]
    _, test = train_test_split(records, 0.25, seed=0, stratify=lambda r: r[0])
    assert Counter(r[0] for r in test) == {"a": 10, "b": 2}


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_train_test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError):
        train_test_split([1, 2, 3], fraction, seed=0)


def test_train_test_split_edge_fractions() -> None:
    assert train_test_split([1, 2, 3], 0.0, seed=0) == ([1, 2, 3], [])
    assert train_test_split([1, 2, 3], 1.0, seed=0) == ([], [1, 2, 3])


# ------------------------------------------------------------------------------------------
# The real public files, where this machine has them


def _shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    return path


def test_real_mmlu_dev_folder() -> None:
    questions = load_multiple_choice(_shared("mmlu/dev"))
    assert len(questions) == 285
    subjects = Counter(q.subject for q in questions)
    assert len(subjects) == 57 and set(subjects.values()) == {5}
    assert "anatomy" in subjects and "high_school_us_history" in subjects
    assert all(len(q.choices) == 4 for q in questions)


def test_real_mmlu_test_folder() -> None:
    questions = load_multiple_choice(_shared("mmlu/test"))
    assert len(questions) == 3280
    assert len({q.subject for q in questions}) == 10


@pytest.mark.parametrize(
    "name, count", [("harmful_train", 260), ("harmful_val", 39), ("harmless_train", 2000), ("harmless_val", 500)]
)
def test_real_refusal_direction_splits(name: str, count: int) -> None:
    instructions = load_instructions(_shared(f"refusal/{name}.json"))
    assert len(instructions) == count
    if name == "harmful_val":
        assert "chemical_biological" in {i.category for i in instructions}


# ---------------------------------------------------------------------------------------------
# TruthfulQA (public CSV layout) as multiple choice
# ---------------------------------------------------------------------------------------------


def test_truthfulqa_questions_keep_the_best_answer_among_shuffled_incorrect_ones(tmp_path):
    import csv

    from interp.datasets import bundled, load_bundled_truthfulqa, load_truthfulqa

    rows = list(csv.DictReader(bundled("truthfulqa_style.csv").open()))
    questions = load_bundled_truthfulqa()
    kept = [row for row in rows if len([a for a in row["Incorrect Answers"].split(";") if a.strip()]) >= 3]
    assert len(questions) == len(kept) < len(rows)  # the question with one incorrect answer is left out
    for question, row in zip(questions, kept):
        assert question.question == row["Question"] and question.subject == row["Category"]
        assert len(question.choices) == 4 and question.correct_choice == row["Best Answer"]
        wrong = [a.strip() for a in row["Incorrect Answers"].split(";")][:3]
        assert sorted(set(question.choices) - {row["Best Answer"]}) == sorted(wrong)
    answers = {seed: [q.answer for q in load_bundled_truthfulqa(seed=seed)] for seed in (0, 1)}
    assert answers[0] == [q.answer for q in questions] and answers[0] != answers[1]
    assert len(set(answers[0])) > 1  # the best answer is not always in one place
    assert len(load_bundled_truthfulqa(n_choices=2)) == len(rows)

    broken = tmp_path / "TruthfulQA.csv"
    broken.write_text("Type,Category,Question,Correct Answers\nx,y,Why?,Because\n")
    with pytest.raises(DatasetFormatError, match=r"missing TruthfulQA columns \['Best Answer', 'Incorrect Answers'\]"):
        load_truthfulqa(broken)
    with pytest.raises(ValueError, match="n_choices"):
        load_truthfulqa(bundled("truthfulqa_style.csv"), n_choices=1)
