"""Self-explanation: per-row patched generation, the batched scores, the scale rule, planted words on SmolLM2."""

import json

import pytest
import torch

from interp.chat import format_chat, tokenize
from interp.hooked import forward, hooks_on
from interp.runner import generate, generate_with_row_patches
from interp.selfexplain import (
    SelfExplainConfig,
    SelfExplanationTable,
    explanation_prompt,
    patched_scores,
    plot_self_explanations,
    self_explain,
    suggest_scale,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# The tiny model's tokenizer knows words only, so its placeholder is a word.
TINY = SelfExplainConfig(layer=1, scales=(0.5, 2.0, 8.0), template="what is {placeholder} ?",
                         answer_prefix="the {placeholder} is", placeholder="cat", max_new_tokens=6)


def _residual(model, prompt: str, hook: str, position: int) -> torch.Tensor:
    """The activation at `hook`, token `position` of `prompt`, from a plain run."""
    seen = {}

    def record(activation, hook):
        seen["value"] = activation[0, position].detach().clone()

    with hooks_on(model, [(hook, record)]):
        forward(model, tokenize(model, prompt))
    return seen["value"]


def _random_rows(model, n: int, scale: float = 6.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, model.cfg.d_model, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_hooked_transformer"])
def test_patching_in_what_is_already_there_changes_nothing(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    prompt = format_chat(model, "tell me a joke about the sea")
    hook, position = "blocks.1.hook_resid_pre", 5
    own = _residual(model, prompt, hook, position)
    kwargs = {"max_new_tokens": 8, "stop_at_eos": False, "progress": False}
    patched = generate_with_row_patches(model, prompt, hook, position, own.expand(3, -1), **kwargs)
    assert patched == generate(model, prompt, **kwargs) * 3


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_hooked_transformer"])
def test_row_patches_same_with_and_without_kv_cache(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    prompt = format_chat(model, "what is the capital of france ?")
    rows = _random_rows(model, 4)
    kwargs = {"max_new_tokens": 8, "stop_at_eos": False, "progress": False, "batch_rows": 3}
    cached = generate_with_row_patches(model, prompt, "blocks.1.hook_resid_pre", [4, -2], rows, use_cache=True, **kwargs)
    uncached = generate_with_row_patches(model, prompt, "blocks.1.hook_resid_pre", [4, -2], rows, use_cache=False, **kwargs)
    assert cached == uncached
    assert cached != generate(model, prompt, max_new_tokens=8, stop_at_eos=False, progress=False) * 4  # a real patch


def test_row_patches_are_per_row_and_the_bridge_hooks_agree_with_the_fast_path(tiny_model):
    prompt = format_chat(tiny_model, "what is the capital of france ?")
    rows = _random_rows(tiny_model, 3, seed=1)
    kwargs = {"max_new_tokens": 8, "stop_at_eos": False, "progress": False}
    together = generate_with_row_patches(tiny_model, prompt, "blocks.2.hook_resid_pre", 6, rows, **kwargs)
    alone = [generate_with_row_patches(tiny_model, prompt, "blocks.2.hook_resid_pre", 6, row[None], **kwargs)[0]
             for row in rows]
    assert together == alone and len(set(together)) > 1
    through_the_bridge = generate_with_row_patches(tiny_model, prompt, "blocks.2.hook_resid_pre", 6, rows, fast=False,
                                                   **kwargs)
    assert through_the_bridge == together


def test_batched_scores_and_explanations_equal_one_row_at_a_time(tiny_model):
    table = self_explain(tiny_model, {"a": _random_rows(tiny_model, 1)[0], "b": _random_rows(tiny_model, 1, seed=2)[0]},
                         TINY, progress=False)
    single = self_explain(tiny_model, {"a": _random_rows(tiny_model, 1)[0], "b": _random_rows(tiny_model, 1, seed=2)[0]},
                          SelfExplainConfig(**{**TINY.__dict__, "batch_rows": 1}), progress=False)
    assert [row.text for row in table.rows] == [row.text for row in single.rows]
    got = torch.tensor([[row.self_similarity, row.entropy] for row in table.rows])
    expected = torch.tensor([[row.self_similarity, row.entropy] for row in single.rows])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert table.best == single.best

    prompt, positions = explanation_prompt(tiny_model, TINY)
    vectors = _random_rows(tiny_model, 5)
    finals, logits = patched_scores(tiny_model, prompt, 1, positions, vectors, batch_rows=5)
    one_by_one = [patched_scores(tiny_model, prompt, 1, positions, row[None], batch_rows=1) for row in vectors]
    torch.testing.assert_close(finals, torch.cat([f for f, _ in one_by_one]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, torch.cat([lg for _, lg in one_by_one]), rtol=1e-4, atol=1e-5)


def test_the_table_reads_back_and_plots(tiny_model, tmp_path):
    table = self_explain(tiny_model, {"a": _random_rows(tiny_model, 1)[0]}, TINY, progress=False)
    assert isinstance(table, SelfExplanationTable)
    assert [row.scale for row in table.for_name("a")] == [0.5, 2.0, 8.0]
    assert table.best["a"] in TINY.scales and table.hook == "blocks.1.hook_resid_pre" and table.unit_norm > 0
    json.dumps(table.to_dict())
    assert table.markdown().count("\n") == 2 + 3 - 1 and "★" in table.markdown()
    plot_self_explanations(table, tmp_path / "se.png")
    assert (tmp_path / "se.png").stat().st_size > 0
    with pytest.raises(ValueError, match="name: expected one of"):
        table.for_name("missing")


def test_the_placeholder_is_found_by_position_not_by_token_id(tiny_model):
    # "cat" also stands in the template's own text; only the filled-in fields are placeholders.
    config = SelfExplainConfig(template="the cat : what is {placeholder} ?", answer_prefix="{placeholder} is",
                               placeholder="cat")
    prompt, positions = explanation_prompt(tiny_model, config)
    ids = tokenize(tiny_model, prompt).input_ids[0]
    cat = tiny_model.tokenizer.convert_tokens_to_ids("cat")
    assert (ids == cat).sum() == 3 and len(positions) == 2 and all(ids[p] == cat for p in positions)
    assert positions[-1] == len(ids) - 2  # the answer's placeholder, before "is"


def test_the_scale_rule():
    # The lowest entropy wins among scales whose direction reached the last layer; ties go to the smaller scale.
    assert suggest_scale([1, 2, 4, 8], [0.1, 0.2, 0.3, 0.4], [5.0, 3.0, 4.0, 6.0]) == 2
    assert suggest_scale([1, 2, 4, 8], [-0.1, 0.0, 0.3, 0.4], [1.0, 2.0, 4.0, 4.0]) == 4
    assert suggest_scale([1, 2], [-0.1, -0.2], [3.0, 2.0]) == 2  # nothing reached it: entropy alone
    assert suggest_scale([3.0], [0.5], [1.0]) == 3.0
    with pytest.raises(ValueError, match="equal non-empty lengths"):
        suggest_scale([1, 2], [0.1], [1.0, 2.0])


def test_bad_inputs_name_the_argument(tiny_model):
    vector = {"a": _random_rows(tiny_model, 1)[0]}
    with pytest.raises(ValueError, match="scales: expected at least one scale"):
        SelfExplainConfig(scales=())
    with pytest.raises(ValueError, match="scales: expected positive"):
        SelfExplainConfig(scales=(1.0, -2.0))
    with pytest.raises(ValueError, match="scales: expected distinct"):
        SelfExplainConfig(scales=(1.0, 1.0))
    with pytest.raises(ValueError, match="template: expected exactly one"):
        SelfExplainConfig(template="what is this ?")
    with pytest.raises(ValueError, match="template: expected exactly one"):
        SelfExplainConfig(template="{placeholder} or {placeholder} ?")
    with pytest.raises(ValueError, match="placeholder: expected a non-blank"):
        SelfExplainConfig(placeholder=" ")
    with pytest.raises(ValueError, match="layer: layer 7 is out of range"):
        self_explain(tiny_model, vector, SelfExplainConfig(**{**TINY.__dict__, "layer": 7}), progress=False)
    with pytest.raises(ValueError, match="placeholder: expected 'cat dog' to be exactly one token"):
        self_explain(tiny_model, vector, SelfExplainConfig(**{**TINY.__dict__, "placeholder": "cat dog"}), progress=False)
    with pytest.raises(ValueError, match=r"directions\['a'\]: expected shape \[d_model=32\]"):
        self_explain(tiny_model, {"a": torch.ones(31)}, TINY, progress=False)
    with pytest.raises(ValueError, match=r"directions\['a'\]: expected a finite, non-zero"):
        self_explain(tiny_model, {"a": torch.zeros(32)}, TINY, progress=False)
    with pytest.raises(TypeError, match=r"directions\['a'\]: expected a floating-point tensor"):
        self_explain(tiny_model, {"a": torch.ones(32, dtype=torch.long)}, TINY, progress=False)
    with pytest.raises(ValueError, match="directions: expected a non-empty mapping"):
        self_explain(tiny_model, {}, TINY, progress=False)
    prompt = format_chat(tiny_model, "hello")
    with pytest.raises(ValueError, match=r"vectors: expected shape \[n_rows >= 1, d_model=32\]"):
        generate_with_row_patches(tiny_model, prompt, "blocks.1.hook_resid_pre", 0, torch.ones(2, 31), progress=False)
    with pytest.raises(ValueError, match="position: expected token indices in"):
        generate_with_row_patches(tiny_model, prompt, "blocks.1.hook_resid_pre", 99, torch.ones(2, 32), progress=False)
    with pytest.raises(ValueError, match="prompt: expected one non-empty formatted prompt"):
        generate_with_row_patches(tiny_model, [prompt], "blocks.1.hook_resid_pre", 0, torch.ones(2, 32), progress=False)


# ---------------------------------------------------------------------------------------------
# The embedded SmolLM2: planted words come back as explanations, a random direction's do not
# ---------------------------------------------------------------------------------------------

WORDS = (" cat", " Paris")


def _explained(table, name: str, word: str) -> list:
    return [row for row in table.for_name(name) if word in row.text.lower()]


def _check_planted(table) -> None:
    for word in WORDS:
        hits = _explained(table, word, word.strip().lower())
        assert hits, f"{word!r} was never explained as itself:\n{table.markdown()}"
        assert all(row.self_similarity > 0 for row in hits)
        assert all(not _explained(table, "random", other.strip().lower()) for other in WORDS), table.markdown()


@pytest.mark.integration
def test_smollm_placeholder_errors(smollm):
    with pytest.raises(ValueError, match="placeholder: expected 'Xyzzyq' to be exactly one token"):
        explanation_prompt(smollm, SelfExplainConfig(placeholder="Xyzzyq"))
    prompt, positions = explanation_prompt(smollm, SelfExplainConfig())
    ids = tokenize(smollm, prompt).input_ids[0]
    assert [smollm.tokenizer.decode(ids[p]) for p in positions] == ["X", "X"]


@pytest.mark.integration
@pytest.mark.generation
def test_smollm_explains_a_token_embedding_as_its_word(smollm):
    """W_E[word] written in at layer 0 (where the residual is the token embedding) reads as the word."""
    directions = {word: smollm.W_E[smollm.tokenizer.encode(word, add_special_tokens=False)[0]].detach() for word in WORDS}
    directions["random"] = torch.randn(smollm.cfg.d_model, generator=torch.Generator().manual_seed(0))
    table = self_explain(smollm, directions, SelfExplainConfig(layer=0, max_new_tokens=6), progress=False)
    _check_planted(table)


@pytest.mark.integration
@pytest.mark.generation
def test_smollm_explains_a_words_residual_at_the_default_layer(smollm):
    """A word's own residual at the default layer (from "I like the cat") reads as the word, at the suggested scale too."""
    config = SelfExplainConfig(max_new_tokens=6)
    hook = f"blocks.{config.layer}.hook_resid_pre"
    directions = {word: _residual(smollm, "I like the" + word, hook, -1) for word in WORDS}
    directions["random"] = torch.randn(smollm.cfg.d_model, generator=torch.Generator().manual_seed(0))
    table = self_explain(smollm, directions, config, progress=False)
    _check_planted(table)
    for word in WORDS:
        assert word.strip().lower() in table.best_row(word).text.lower(), table.markdown()
