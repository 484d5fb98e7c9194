"""Capability under an intervention: accuracy equals a hand-computed value on a tiny model, per condition."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interp.ab_prompts import MC_FORMAT, multiple_choice_question
from interp.capability import capability_under, completion_loss
from interp.chat import TokenBatch
from interp.datasets import MultipleChoice
from interp.directions import Direction
from interp.hooked import forward
from interp.models import model_name
from interp.steering import Ablate, Steer, apply_all

from tiny_letters import make_letter_model_folder

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def letter_model(tmp_path_factory):
    from interp.models import load_model

    return load_model(make_letter_model_folder(tmp_path_factory.mktemp("tiny-letters-capability"), seed=1), device="cpu")


def questions(count: int = 12) -> list[MultipleChoice]:
    nouns, colours = ("cat", "dog", "sea", "sun", "tree", "moon"), ("red", "blue", "green", "sky")
    return [MultipleChoice(f"what is the {nouns[i % 6]} {'the ' * (i % 3)}?", colours, i % 4) for i in range(count)]


def accuracy_by_hand(model, items: list[MultipleChoice], interventions) -> tuple[float, list[float]]:
    """One full forward per question (no cache, no batching): the argmax over the four letters' tokens."""
    tokenizer = model.tokenizer
    correct = []
    for item in items:
        prompt = MC_FORMAT.chat(model, multiple_choice_question(item)) + MC_FORMAT.assistant_prefix
        special = not (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token))  # as interp.chat.tokenize
        rows = [tokenizer(prompt + letter, add_special_tokens=special)["input_ids"] for letter in "ABCD"]
        letter_ids = [row[-1] for row in rows]
        ids = torch.tensor([rows[0][:-1]])
        with apply_all(model, *interventions):
            logits = forward(model, TokenBatch(ids, torch.ones_like(ids)))
        correct.append(float(int(logits[0, -1, letter_ids].argmax()) == item.answer))
    return sum(correct) / len(correct), correct


def test_accuracy_equals_the_hand_computed_value_under_each_condition(letter_model):
    items = questions()
    vector = torch.randn(letter_model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    direction = Direction(vector, layer=1, model=model_name(letter_model), source="test")
    conditions = {"baseline": [], "ablated": [Ablate(direction)], "added": [Steer(direction, 6.0)],
                  "subtracted": [Steer(direction, -6.0)]}
    texts = ["the cat is blue .", "what is the capital of france ? paris ."]
    rows = capability_under(letter_model, conditions, questions=items, texts=texts, batch_size=5, progress=False)
    assert [row.condition for row in rows] == list(conditions)
    accuracies = []
    for row, interventions in zip(rows, conditions.values()):
        expected, _ = accuracy_by_hand(letter_model, items, interventions)
        assert row.accuracy == pytest.approx(expected)
        assert row.accuracy_ci95[0] <= row.accuracy <= row.accuracy_ci95[1]
        assert row.n_questions == len(items) and 0 < row.letter_mass <= 1
        assert row.text_loss == pytest.approx(completion_loss(letter_model, texts, interventions))
        accuracies.append(row.accuracy)
    assert len(set(accuracies)) > 1  # the conditions differ on this model: the comparison can fail


def test_questions_come_from_exactly_one_place(letter_model, tmp_path: Path):
    with pytest.raises(ValueError, match="conditions"):
        capability_under(letter_model, {}, questions=questions(2))
    with pytest.raises(ValueError, match="questions, mmlu_dir"):
        capability_under(letter_model, {"baseline": []}, questions=questions(2), mmlu_dir=tmp_path)
