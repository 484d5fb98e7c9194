"""One-call recipes: `interp.steering_vector` equals the calls it stands for exactly; `interp.compare`'s baseline is a
plain `generate`, its intervened side a steered one, its token table the next-token probabilities."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.activations import collect_residuals, mean_difference
from interp.caa import build_steering_vectors, contrast_vectors
from interp.chat import format_chat, format_chats, tokenize
from interp.runner import batch_logits, generate
from interp.steering import Steer

POSITIVE = ["i love the sun", "tell me a happy joke", "good dog", "the sea is blue and i love it"]
NEGATIVE = ["i hate the sun", "tell me a sad joke", "bad dog", "the sea is red and i hate it"]


def test_exported_from_the_package():
    from interp import recipes

    assert interp.steering_vector is recipes.steering_vector and interp.compare is recipes.compare
    assert {"steering_vector", "compare", "__version__"} <= set(dir(interp))


def test_steering_vector_from_two_lists_equals_the_multi_call_build(tiny_model):
    one_call = interp.steering_vector(tiny_model, POSITIVE, NEGATIVE, layers=[1, 2], progress=False)
    positive, negative = format_chats(tiny_model, POSITIVE), format_chats(tiny_model, NEGATIVE)
    built = contrast_vectors(tiny_model, positive, negative, layers=[1, 2], progress=False)["mean_difference"]
    assert torch.equal(one_call.vectors, built.vectors) and one_call.layers == built.layers == (1, 2)
    assert one_call.meta == built.meta and one_call.source == "mean_difference"
    # the four calls of the README's quick start: the same vector (its mean in float32, ours in float64)
    by_hand = mean_difference(collect_residuals(tiny_model, positive, [1, 2], -1, progress=False),
                              collect_residuals(tiny_model, negative, [1, 2], -1, progress=False))[:, 0]
    torch.testing.assert_close(one_call.vectors, by_hand, rtol=1e-5, atol=1e-5)
    # formatted prompts pass through as they are; another aggregator, position and a single layer
    logistic = interp.steering_vector(tiny_model, positive, negative, layers=2, aggregator="logistic", chat=False,
                                      position=-2, progress=False)
    expected = contrast_vectors(tiny_model, positive, negative, layers=[2], aggregators="logistic", position=-2,
                                progress=False)["logistic"]
    assert torch.equal(logistic.vectors, expected.vectors)


def test_steering_vector_from_ab_pairs_equals_build_steering_vectors(letter_model):
    from test_caa import LETTER_FORMAT, tiny_pairs

    pairs = tiny_pairs(8)
    one_call = interp.steering_vector(letter_model, pairs, layers=[1, 2], fmt=LETTER_FORMAT, progress=False)
    built = build_steering_vectors(letter_model, pairs, LETTER_FORMAT, layers=[1, 2], progress=False)["mean_difference"]
    assert torch.equal(one_call.vectors, built.vectors) and one_call.layers == (1, 2)


@pytest.fixture(scope="module")
def letter_model(tmp_path_factory):
    from test_caa import make_agreement_letter_folder

    from interp.models import load_model

    return load_model(make_agreement_letter_folder(tmp_path_factory.mktemp("letters")), device="cpu")


@pytest.mark.parametrize(("call", "message"), [
    (dict(layers=[7]), "layers: "),
    (dict(layers=[1], aggregator="nope"), "aggregator: expected one of"),
    (dict(layers=[1], negative=None), "negative: needed unless positive is a list of A/B pairs"),
    (dict(layers=[1], negative=NEGATIVE[:2], aggregator="logistic"), "negative: 'logistic' pairs row i"),
    (dict(layers=[1], negative=[]), "negative: expected a non-empty list"),
])
def test_steering_vector_checks_its_arguments_before_any_work(tiny_model, monkeypatch, call, message):
    import interp.recipes

    monkeypatch.setattr(interp.recipes, "contrast_vectors", lambda *a, **k: pytest.fail("ran before the check"))
    arguments = {"negative": NEGATIVE, **call}
    with pytest.raises(ValueError, match=message):
        interp.steering_vector(tiny_model, POSITIVE, **arguments)


def test_compare_baseline_is_a_plain_generate_and_the_intervened_side_a_steered_one(tiny_model):
    vectors = interp.steering_vector(tiny_model, POSITIVE, NEGATIVE, layers=[1, 2], progress=False)
    steer = Steer(vectors, 4.0)
    result = interp.compare(tiny_model, "tell me about the sky", steer, max_new_tokens=6, top_k=3)
    prompt = format_chat(tiny_model, "tell me about the sky")
    assert result.baseline == generate(tiny_model, [prompt], max_new_tokens=6)[0]
    assert result.intervened == generate(tiny_model, [prompt], interventions=[steer], max_new_tokens=6)[0]
    assert result.baseline != result.intervened and result.interventions == ("Steer(4)",)
    before = batch_logits(tiny_model, tokenize(tiny_model, [prompt]), keep_last=1)[0, -1].float().softmax(-1)
    top = before.topk(3).indices.tolist()
    shown = {change.token: change for change in result.tokens}
    for index in top:
        assert shown[tiny_model.tokenizer.decode([index])].baseline == pytest.approx(float(before[index]))
    assert 3 <= len(result.tokens) <= 6
    best = max(result.tokens, key=lambda change: change.intervened)  # greedy: the first new token is the likeliest
    if best.token not in tiny_model.tokenizer.all_special_tokens:
        assert result.intervened.strip().startswith(best.token.strip())
    text, page = str(result), result._repr_html_()
    assert "baseline" in text and "intervened: Steer(4)" in text and len(text) < 2000 and repr(result) == text
    assert "<table>" in page and "Steer(4)" in page


def test_compare_checks_its_arguments_before_any_work(tiny_model, monkeypatch):
    import interp.recipes

    monkeypatch.setattr(interp.recipes, "generate", lambda *a, **k: pytest.fail("generated before the check"))
    steer = Steer(interp.steering_vector(tiny_model, POSITIVE, NEGATIVE, layers=[1], progress=False), 1.0)
    with pytest.raises(ValueError, match="prompt: expected a non-blank string"):
        interp.compare(tiny_model, " ", steer)
    with pytest.raises(TypeError, match=r"interventions\[1\]: expected an intervention"):
        interp.compare(tiny_model, "hi", [steer, "steer"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        interp.compare(tiny_model, "hi", steer, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_k"):
        interp.compare(tiny_model, "hi", steer, top_k=0)
    from interp.directions import Direction
    from interp.models import model_name

    narrow = Direction(torch.ones(7), layer=1, model=model_name(tiny_model), source="test")
    with pytest.raises(ValueError, match="d_model|width|7"):  # the intervention's own check against the model
        interp.compare(tiny_model, "hi", Steer(narrow, 1.0))
