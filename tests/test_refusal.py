"""Refusal directions, abliteration and SVD recovery on tiny models with planted ground truth.

The planted model is a tiny Llama whose refusal is driven by one known residual direction r: the
embeddings of the "harmful" words carry +3r (every other embedding is orthogonal to r), layer 0's
attention averages the r-component of the context uniformly (zero queries and keys) and writes it back
along r, and the unembedding row of the refusal word "no" is 6r. So prompts containing a harmful word
answer "no", and r is the refusal direction. One residual dimension (`OUTLIER_DIM`, orthogonal to r)
has outlier weights in every MLP output row, as massive-activation dimensions do in real models, so
block quantisation error concentrates there and becomes the top singular vector of a weight difference.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from interp.capability import completion_loss
from interp.chat import format_chats, tokenize
from interp.directions import Direction
from interp.hooked import forward
from interp.metrics import kl_divergence
from interp.models import load_hf, load_model, model_name
from interp.refusal import (
    CandidateTable,
    SelectionConfig,
    ablation_hooks,
    addition_hooks,
    choose_candidate,
    derive_refusal_tokens,
    first_token_basis,
    fit_refusal_direction,
    phrase_judge,
    post_instruction_count,
    refusal_rate,
    refusal_scores,
    score_candidates,
    select_direction,
    subtraction,
)
from interp.runner import generate, generate_greedy, generate_greedy_scored, last_logits, shared_prefix_length
from interp.steering import Ablate, HookIntervention, Steer, apply_all
from interp.weight_diff import choose_weight_diff_direction, weight_diff_directions
from interp.weight_edit import abliterate, orthogonalize_weights, quantize_blocks, quantize_weights_

from conftest import make_tiny_tokenizer

HARMFUL_WORDS = ("hate", "bad")
REFUSAL_WORD = "no"
OUTLIER_DIM = 5
OBJECTS = "cat dog sea sun moon star tree house car road city river sky".split()
HARMFUL = [f"tell me about {word} {thing}" for word in HARMFUL_WORDS for thing in OBJECTS[:8]]
HARMLESS = [f"tell me about the {thing}" for thing in OBJECTS] + [f"what is a {thing} ?" for thing in OBJECTS[:6]]


def says_no(instruction: str, completion: str) -> bool:
    return completion.strip().startswith(REFUSAL_WORD)


def make_planted_refusal_folder(folder: Path, seed: int = 0) -> tuple[Path, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_tokenizer()
    generator = torch.Generator().manual_seed(seed)
    d_model, d_mlp = 32, 64
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    r = torch.randn(d_model, generator=generator)
    r[OUTLIER_DIM] = 0
    r /= r.norm()
    off_r = torch.eye(d_model) - torch.outer(r, r)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    with torch.no_grad():
        embedding = randn(len(tokenizer), d_model, std=1.0) @ off_r
        for word in HARMFUL_WORDS:
            embedding[tokenizer.convert_tokens_to_ids(word)] += 3.0 * r
        model.model.embed_tokens.weight.copy_(embedding)
        for index, layer in enumerate(model.model.layers):
            attention, mlp = layer.self_attn, layer.mlp
            if index == 0:  # uniform causal attention carrying the context's r-component, written along r
                for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
                    projection.weight.zero_()
                attention.v_proj.weight[0] = r
                attention.o_proj.weight[:, 0] = 10.0 * r
            else:  # small random attention that writes nothing along r
                for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
                    projection.weight.copy_(randn(*projection.weight.shape, std=0.05))
                attention.o_proj.weight.copy_(off_r @ attention.o_proj.weight)
            # Near-silent MLPs (tiny input weights) whose output weights have one outlier row.
            mlp.gate_proj.weight.copy_(randn(d_mlp, d_model, std=0.005))
            mlp.up_proj.weight.copy_(randn(d_mlp, d_model, std=0.005))
            down = randn(d_model, d_mlp, std=0.3)
            down[OUTLIER_DIM] *= 400.0
            mlp.down_proj.weight.copy_(down)
        head = randn(len(tokenizer), d_model, std=0.3)
        head[tokenizer.convert_tokens_to_ids(REFUSAL_WORD)] = 6.0 * r
        model.lm_head.weight.copy_(head)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, r


def make_variant_folder(folder: Path, kind: str) -> Path:
    """Tiny Qwen2 with tied embeddings (q/k/v biases, no o_proj bias), or Llama with o_proj/down_proj biases."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(1)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    if kind == "qwen2-tied":
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common))
        assert model.lm_head.weight is model.model.embed_tokens.weight
    else:
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, attention_bias=True, mlp_bias=True, **common))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 2:
                parameter.normal_(0, 0.3)
            elif name.endswith("bias"):
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder, r = make_planted_refusal_folder(tmp_path_factory.mktemp("planted-refusal"))
    model = load_model(folder, device="cpu")
    return folder, model, r


@pytest.fixture(scope="module")
def planted_fit(planted):
    _, model, _ = planted
    return fit_refusal_direction(
        model, HARMFUL, HARMLESS, judge=says_no, n_select_harmful=8, n_select_harmless=8,
        filter_new_tokens=4, config=SelectionConfig(score_all=True, progress=False),
    )


def planted_direction(model, r: torch.Tensor) -> Direction:
    return Direction(r.clone(), layer=1, model=model_name(model), source="planted")


# ---------------------------------------------------------------------------------------------
# Scores, judges, positions, refusal tokens
# ---------------------------------------------------------------------------------------------


def test_refusal_score_is_log_odds_and_kl_is_zero_for_equal_distributions():
    probabilities = torch.tensor([[0.2, 0.3, 0.5], [0.05, 0.05, 0.9]])
    logits = probabilities.log()
    scores = refusal_scores(logits, [0, 1])
    expected = torch.tensor([math.log(0.5 / 0.5), math.log(0.1 / 0.9)])
    assert torch.allclose(scores, expected.float(), atol=1e-5)
    assert torch.allclose(kl_divergence(logits, logits), torch.zeros(2), atol=1e-7)
    other = torch.tensor([[0.5, 0.3, 0.2], [0.05, 0.05, 0.9]]).log()
    manual = (probabilities[0] * (probabilities[0] / other[0].exp()).log()).sum()
    assert abs(float(kl_divergence(logits, other)[0]) - float(manual)) < 1e-5
    with pytest.raises(ValueError, match="refusal_ids"):
        refusal_scores(logits, [])
    with pytest.raises(ValueError, match="refusal_ids"):
        refusal_scores(logits, [7])


def test_phrase_judge_is_case_insensitive_and_pluggable():
    assert phrase_judge("x", "i’M SORRY, but I can't help")
    assert phrase_judge("x", "Well. As an AI language model, ...")
    assert not phrase_judge("x", "Sure! Here is a recipe for bread.")
    assert refusal_rate(["a", "b"], ["I cannot do that", "Sure"]) == 0.5
    assert refusal_rate(["a", "b"], ["no way", "yes"], judge=says_no) == 0.5
    with pytest.raises(ValueError, match="completions"):
        refusal_rate(["a"], ["x", "y"])


def test_post_instruction_tokens_come_from_the_template(tiny_model):
    prompts = format_chats(tiny_model, ["hello world ?", "what is the capital of france ?"])
    count, labels = post_instruction_count(tiny_model, prompts)
    assert (count, labels) == (2, ["</s>", "<|assistant|>"])  # the shared "?" is not template


def test_derive_refusal_tokens_drops_generic_openers():
    tokenizer = make_tiny_tokenizer()
    no, i, sure = (tokenizer.convert_tokens_to_ids(t) for t in ("no", "i", "yes"))
    first = torch.tensor([no, no, no, i, i, i, sure, sure])
    refused = torch.tensor([True, True, True, True, False, False, False, False])
    tokens = derive_refusal_tokens(tokenizer, first, refused)
    assert tokens.ids == [no]  # "i" starts 1/4 of refusals but 2/4 of compliant answers
    assert tokens.share_of_refusals == [0.75]
    with pytest.raises(ValueError, match="refused"):
        derive_refusal_tokens(tokenizer, first, torch.zeros(8, dtype=torch.bool))


def test_last_logits_with_shared_prefix_equals_full_forward(tiny_model):
    prompts = format_chats(tiny_model, ["hello world", "what is the capital of france ?", "tell me a joke about the sea", "yes"])
    batch = tokenize(tiny_model, prompts)
    assert shared_prefix_length(batch) == 1  # "<|user|>" (the tiny tokenizer adds no BOS)
    generator = torch.Generator().manual_seed(0)
    direction = Direction(torch.randn(32, generator=generator) * 3, layer=1, model=model_name(tiny_model), source="t")
    for interventions in ([], [Ablate(direction)], [Steer(direction, 2.0)]):
        with apply_all(tiny_model, *interventions):
            reference = forward(tiny_model, batch)[:, -1]
        fast, acts = last_logits(tiny_model, prompts, interventions, batch_size=3, record_layers=[0, 2], record_positions=2)
        assert (fast - reference).abs().max() < 1e-4
        assert acts.shape == (4, 2, 2, 32)


def test_last_logits_works_on_a_hooked_transformer(tiny_hooked_transformer):
    prompts = ["<|user|> hello world </s> <|assistant|>", "<|user|> the cat sat </s> <|assistant|>"]
    logits, acts = last_logits(tiny_hooked_transformer, prompts, record_layers=[1], record_positions=2)
    for row, prompt in enumerate(prompts):
        alone = tiny_hooked_transformer(tokenize(tiny_hooked_transformer, [prompt]).input_ids)[0, -1]
        assert (logits[row] - alone).abs().max() < 1e-4
    assert acts.shape == (2, 1, 2, 32)


def test_shared_prefix_generation_equals_steering_generate(tiny_model):
    prompts = format_chats(tiny_model, ["hello world", "what is the capital of france ?", "tell me a joke about the sea",
                                        "yes", "one two three four five six seven"])
    direction = Direction(torch.randn(32, generator=torch.Generator().manual_seed(1)) * 3, layer=1,
                          model=model_name(tiny_model), source="t")
    for interventions in ([], [Ablate(direction)], [Steer(direction, 2.0)]):
        expected = generate(tiny_model, prompts, interventions=interventions, max_new_tokens=6, progress=False)
        assert generate_greedy(tiny_model, prompts, interventions, max_new_tokens=6, batch_size=2) == expected
        texts, logits = generate_greedy_scored(tiny_model, prompts, interventions, max_new_tokens=6, batch_size=2)
        assert texts == expected
        reference = last_logits(tiny_model, prompts, interventions, batch_size=3)[0]
        assert logits.shape == reference.shape and (logits - reference).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------
# Selection on the planted model
# ---------------------------------------------------------------------------------------------


def test_planted_refusal_direction_is_found(planted, planted_fit):
    _, model, r = planted
    fit = planted_fit
    assert all(fit.harmful_refused) and not any(fit.harmless_refused)
    assert fit.refusal_tokens.strings == [REFUSAL_WORD]  # derived from the model's own refusals
    direction = fit.direction
    assert direction.cosine(r) > 0.98
    assert direction.layer < int(4 * 0.8)
    assert "passing all filters" in fit.table.reason
    assert direction.meta["kl"] <= 0.1 and direction.meta["addition_score"] > 0
    assert direction.meta["ablation_score"] < fit.table.baseline_harmful_score - 5
    # The table: layer 0 (same token embedding for every prompt) and the last 20% of layers are not scored.
    table = fit.table
    assert not table.eligible[0].any() and not table.eligible[3].any() and table.eligible[1:3].all()
    assert torch.isnan(table.ablation_score[3]).all() and not torch.isnan(table.kl[1:3]).any()
    assert len(table.rows()) == 4 * 2
    # Selection prompts are disjoint from the prompts of the means.
    assert sum(fit.n_fit) + sum(fit.n_select) == len(HARMFUL) + len(HARMLESS)


def test_lazy_selection_chooses_what_full_scoring_chooses(planted, planted_fit):
    _, model, _ = planted
    table = planted_fit.table
    prompts_harmful, prompts_harmless = format_chats(model, HARMFUL[:4]), format_chats(model, HARMLESS[:4])
    ids = planted_fit.refusal_tokens.ids
    lazy, lazy_table = select_direction(model, table.vectors, table.position_labels, prompts_harmful, prompts_harmless, ids,
                                        SelectionConfig(progress=False))
    full, _ = select_direction(model, table.vectors, table.position_labels, prompts_harmful, prompts_harmless, ids,
                               SelectionConfig(progress=False, score_all=True))
    assert (lazy.layer, lazy.meta["position"]) == (full.layer, full.meta["position"])
    assert torch.isnan(lazy_table.kl).sum() >= torch.isnan(table.kl).sum()


@pytest.mark.parametrize("tokens, chunk", [(1, 1), (120, 4), (100_000, 32)])
def test_candidates_scored_many_per_forward_equal_one_at_a_time(planted, planted_fit, tiny_hooked_transformer,
                                                                  tokens, chunk):
    """Ablation, KL and addition scores of a block of candidates in one forward (tiled prompts, the shared prefix
    once per candidate, prompt chunks when the prompts overflow a forward) equal scoring each with `Ablate`/`Steer`."""
    _, model, _ = planted
    vectors = planted_fit.table.vectors[1:3].flatten(0, 1)
    layers = [1, 1, 2, 2]
    units = vectors / vectors.norm(dim=-1, keepdim=True)
    ids = planted_fit.refusal_tokens.ids
    for hooked in (model, tiny_hooked_transformer):  # the plain-HF prefix path and the full-forward fallback
        prompts = format_chats(hooked, HARMFUL[:3] + HARMLESS[:3])
        batch = tokenize(hooked, prompts)
        base, _ = last_logits(hooked, batch)
        name = model_name(hooked)
        directions = [Direction(v.clone(), layer=l, model=name, source="test") for v, l in zip(vectors, layers)]
        ablated = score_candidates(hooked, batch, lambda block: ablation_hooks(hooked, units[block]), 4,
                                   lambda logits, prompt: torch.stack([refusal_scores(logits, ids),
                                                                       kl_divergence(base[prompt], logits)], 1),
                                   tokens_per_forward=tokens, prompts_per_chunk=chunk)
        added = score_candidates(hooked, batch, lambda block: addition_hooks(hooked, vectors[block], layers[block]), 4,
                                 lambda logits, _: refusal_scores(logits, ids), tokens_per_forward=tokens,
                                 prompts_per_chunk=chunk)
        for c, direction in enumerate(directions):
            one_ablated, _ = last_logits(hooked, batch, [Ablate(direction)])
            one_added, _ = last_logits(hooked, batch, [Steer(direction)])
            torch.testing.assert_close(ablated[c, :, 0], refusal_scores(one_ablated, ids), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ablated[c, :, 1], kl_divergence(base, one_ablated), atol=1e-5, rtol=1e-3)
            torch.testing.assert_close(added[c], refusal_scores(one_added, ids), atol=1e-4, rtol=1e-4)


def test_ablation_subtraction_and_orthogonalisation_stop_planted_refusals(planted, planted_fit, tmp_path):
    folder, model, _ = planted
    direction = planted_fit.direction
    prompts = format_chats(model, HARMFUL)
    rate = lambda completions: refusal_rate(HARMFUL, completions, judge=says_no)  # noqa: E731
    assert rate(generate(model, prompts, max_new_tokens=3, progress=False)) == 1.0
    assert rate(generate(model, prompts, interventions=[Ablate(direction)], max_new_tokens=3, progress=False)) == 0.0
    assert rate(generate(model, prompts, interventions=[subtraction(direction)], max_new_tokens=3, progress=False)) < 0.5
    edited = load_model(abliterate(folder, direction, tmp_path / "abliterated"), device="cpu")
    assert rate(generate(edited, prompts, max_new_tokens=3, progress=False)) == 0.0
    harmless = format_chats(model, HARMLESS)
    base_loss = completion_loss(model, harmless)
    assert abs(completion_loss(model, harmless, [Ablate(direction)]) - base_loss) < 0.05 * base_loss
    assert abs(completion_loss(edited, harmless) - completion_loss(model, harmless, [Ablate(direction)])) < 1e-4


def test_first_token_protection_and_relative_induce_threshold(planted, planted_fit):
    _, model, r = planted
    table = planted_fit.table
    config = SelectionConfig(protect_first_token=True, induce_refusal_threshold=None, screen_prompts=3, screen_keep=2,
                             progress=False)
    harmful, harmless = format_chats(model, HARMFUL[1::2]), format_chats(model, HARMLESS[1::2])
    direction, protected = select_direction(model, table.vectors, table.position_labels, harmful, harmless,
                                            planted_fit.refusal_tokens.ids, config)
    first = {int(tokenize(model, harmful).input_ids[0, 0])}
    basis = first_token_basis(model, first)
    r_protected = r - basis.T @ (basis @ r)  # the planted direction without the first token's span
    assert protected.protected_dims == basis.shape[0] > 0 and direction.cosine(r_protected) > 0.98
    assert protected.induce_threshold == pytest.approx(
        (protected.baseline_harmful_score + protected.baseline_harmless_score) / 2)
    assert (~torch.isnan(protected.screen_score)).sum() == 4 and (~torch.isnan(protected.ablation_score)).sum() == 2
    # The chosen direction is orthogonal to everything the first token writes, so ablation leaves it alone.
    assert (basis @ direction.unit().vector).abs().max() < 1e-5
    seen = []
    record = HookIntervention([("blocks.2.hook_resid_pre", lambda act, hook: seen.append(act[:, 0].clone()))])
    batch = tokenize(model, harmful[:1])
    with apply_all(model, record):
        forward(model, batch)
    with apply_all(model, Ablate(direction), record):
        forward(model, batch)
    assert (seen[0] - seen[1]).abs().max() < 1e-4


def _table(ablation, kl, addition, eligible=None) -> CandidateTable:
    shape = torch.tensor(ablation).shape
    return CandidateTable(
        layers=list(range(shape[0])), positions=list(range(-shape[1], 0)), position_labels=["a"] * shape[1],
        vectors=torch.ones(*shape, 4), ablation_score=torch.tensor(ablation), kl=torch.tensor(kl),
        addition_score=torch.tensor(addition),
        eligible=torch.ones(shape, dtype=torch.bool) if eligible is None else torch.tensor(eligible),
        screen_score=torch.full(shape, float("nan")), baseline_harmful_score=5.0, baseline_harmless_score=-5.0,
    )


def test_filters_exclude_high_kl_no_induction_and_pruned_layers():
    config = SelectionConfig()
    table = _table(
        ablation=[[-9.0, -8.0], [-7.0, -1.0], [-20.0, 0.0]],
        kl=[[0.5, 0.05], [0.01, 0.01], [0.0, 0.0]],
        addition=[[3.0, -1.0], [2.0, 2.0], [5.0, 5.0]],
        eligible=[[True, True], [True, True], [False, False]],  # the last layer is pruned
    )
    assert choose_candidate(table, config)[0] == (1, 0)  # (0,0) fails KL, (0,1) does not induce refusal, (2,0) pruned
    no_induction = _table([[-9.0, -8.0]], [[0.5, 0.05]], [[-1.0, -1.0]])
    chosen, reason = choose_candidate(no_induction, config)
    assert chosen == (0, 1) and reason.startswith("FALLBACK")


# ---------------------------------------------------------------------------------------------
# Abliteration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["qwen2-tied", "llama-biases"])
def test_orthogonalised_weights_equal_hook_ablation_after_save_and_load(tmp_path, kind):
    folder = make_variant_folder(tmp_path / kind, kind)
    base = load_model(folder, device="cpu")
    prompts = format_chats(base, ["hello world", "what is the capital of france ?", "tell me a joke about the sea"])
    batch = tokenize(base, prompts)
    direction = Direction(torch.randn(32, generator=torch.Generator().manual_seed(3)), layer=1,
                          model=model_name(base), source="test")
    with apply_all(base, Ablate(direction)):
        ablated = forward(base, batch)
    assert (ablated - forward(base, batch)).abs().max() > 0.1  # the ablation matters

    saved = abliterate(folder, direction, tmp_path / "abliterated")
    reloaded = load_model(saved, device="cpu")
    assert (forward(reloaded, batch) - ablated).abs().max() < 1e-3
    hf_base, _ = load_hf(folder, device="cpu")
    hf_saved, _ = load_hf(saved, device="cpu")
    # The unembedding is untouched (and untied from the edited embedding, if it was tied).
    assert torch.equal(hf_saved.get_output_embeddings().weight, hf_base.get_output_embeddings().weight)
    assert hf_saved.get_output_embeddings().weight is not hf_saved.get_input_embeddings().weight
    unit = direction.unit().vector
    assert (hf_saved.get_input_embeddings().weight @ unit).abs().max() < 1e-5

    in_place = load_model(folder, device="cpu")  # editing a bridge's own HF weights works too
    report = orthogonalize_weights(in_place, direction)
    assert report["untied_unembedding"] == (kind == "qwen2-tied")
    assert any(name.endswith("bias") for name in report["edited"]) == (kind == "llama-biases")
    assert (forward(in_place, batch) - ablated).abs().max() < 1e-3
    assert generate(in_place, prompts, max_new_tokens=5, progress=False) == generate(
        base, prompts, interventions=[Ablate(direction)], max_new_tokens=5, progress=False
    )


# ---------------------------------------------------------------------------------------------
# Recovery by SVD of weight differences
# ---------------------------------------------------------------------------------------------


def test_quantize_blocks_round_trip():
    weight = torch.randn(8, 70, generator=torch.Generator().manual_seed(0))
    for bits, tolerance in ((8, 0.02), (4, 0.3)):
        restored = quantize_blocks(weight, bits)
        assert restored.shape == weight.shape and not torch.equal(restored, weight)
        assert (restored - weight).abs().max() < tolerance * weight.abs().max()
    with pytest.raises(ValueError, match="bits"):
        quantize_blocks(weight, 7)


def test_svd_recovers_a_planted_orthogonalisation(tiny_model, tiny_folder, tmp_path):
    r = torch.randn(32, generator=torch.Generator().manual_seed(5))
    direction = Direction(r, layer=1, model=model_name(tiny_model), source="planted")
    edited = abliterate(tiny_folder, direction, tmp_path / "edited")
    for weights in (("mlp_out",), ("attn_out", "embed"), ("model.layers.0.mlp.down_proj.weight",)):
        result = weight_diff_directions(tiny_model, edited, weights, k=3, reference=direction)
        top = result.directions[0]
        assert top.cosine(r) >= 0.999  # sign fixed against the reference
        assert result.consistency[0] > 0.99 and result.alignment[0] > 0.99
        assert result.singular_values[1] < 1e-3 * result.singular_values[0]
        assert top.source == "weight_svd" and top.meta["singular_value"] == pytest.approx(float(result.singular_values[0]))


@pytest.mark.parametrize("bits", [8, 4])
def test_svd_recovery_survives_requantisation(planted, tmp_path, bits):
    folder, model, r = planted
    edited, _ = load_hf(abliterate(folder, planted_direction(model, r), tmp_path / "edited"), device="cpu")
    quantize_weights_(edited, ("mlp_out",), bits=bits)
    result = weight_diff_directions(model, edited, ("mlp_out",), k=4)
    # The premise: the top singular vector is quantisation error on the outlier dimension, not r.
    assert abs(result.directions[0].cosine(r)) < 0.1
    assert abs(float(result.directions[0].vector[OUTLIER_DIM])) > 0.99
    refusal_id = [model.tokenizer.convert_tokens_to_ids(REFUSAL_WORD)]
    choice = choose_weight_diff_direction(
        model, result, format_chats(model, HARMFUL[::2]), refusal_id, format_chats(model, HARMLESS[::2])
    )
    assert choice.index != 0 and choice.direction.cosine(r) >= 0.99  # sign fixed by harmful − harmless
    assert "edit consistency" in choice.reason and choice.candidates[0]["structural"] is False
    structure_only = choose_weight_diff_direction(model, result)
    assert structure_only.index == choice.index and abs(structure_only.direction.cosine(r)) >= 0.99


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(tiny_model, tiny_folder, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    wrong_width = Direction(torch.ones(16), layer=1, model=model_name(tiny_model), source="t")
    with pytest.raises(ValueError, match="direction: width"):
        orthogonalize_weights(tiny_model, wrong_width)
    hf, _ = load_hf(tiny_folder, device="cpu")
    other = LlamaForCausalLM(LlamaConfig(**{**hf.config.to_dict(), "intermediate_size": 48}))
    with pytest.raises(ValueError, match="edited: parameter .* has shape"):
        weight_diff_directions(hf, other)
    with pytest.raises(ValueError, match="weights"):
        weight_diff_directions(hf, hf, ("mlp_everything",))
    with pytest.raises(ValueError, match="base: expected an HF model"):
        weight_diff_directions(torch.nn.Linear(4, 4), hf)
    with pytest.raises(ValueError, match="layers"):
        weight_diff_directions(hf, hf, ("mlp_out",), layers=[7])

    no_template = load_model(tiny_folder, device="cpu")
    no_template.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="model: its tokenizer has no chat template"):
        fit_refusal_direction(no_template, HARMFUL, HARMLESS)
    with pytest.raises(ValueError, match="harmful, harmless"):
        fit_refusal_direction(tiny_model, HARMFUL[:1], HARMLESS)
    with pytest.raises(ValueError, match="vectors: expected shape"):
        select_direction(tiny_model, torch.zeros(2, 2, 32), ["a", "b"], ["x"], ["y"], [0])


def test_refusal_experiment_runs_end_to_end_on_the_planted_model(planted, tmp_path):
    import json

    from interp.experiments import load_registry, run_experiment

    assert "refusal" in load_registry()
    folder, _, r = planted
    data = tmp_path / "data"
    data.mkdir()
    for kind, items in (("harmful", HARMFUL), ("harmless", HARMLESS)):
        for split, part in (("train", items[::2] + items[1::4]), ("val", items[1::2])):
            (data / f"{kind}_{split}.json").write_text(json.dumps([{"instruction": i, "category": None} for i in part]))
    out = run_experiment(
        "refusal", tmp_path / "out", model=str(folder), data_dir=str(data), refusal_phrases=(REFUSAL_WORD,), device="cpu",
        n_select_harmful=4, n_select_harmless=4, screen_prompts=2, screen_keep=2, max_new_tokens=3, filter_new_tokens=2,
        n_loss_texts=3, svd_k=2, quantize_bits=(), svd_layers=None, keep_model=False,
        capability=False,  # the planted tokenizer has no answer letters
    )
    result = json.loads((out / "result.json").read_text())
    assert result["refusal_rate"]["harmful"]["baseline"] == 1.0
    assert result["relative_reduction"]["ablated"] == 1.0 and result["relative_reduction"]["orthogonalised"] == 1.0
    assert result["orthogonalised_vs_hooks_max_logit_diff"] < 1e-3
    assert all(record["cosine_with_diff_in_means"] > 0.95 for record in result["svd_recovery"])
    assert Direction.load(out / "direction").cosine(r) > 0.9  # protected: r minus the first token's 8-dim span
    for name in ("candidates_heatmap.png", "refusal_rates.png", "svd_spectrum.png", "summary.md"):
        assert (out / name).is_file()
    assert result["capability"]["rows"] == [] and "not measured" in (out / "summary.md").read_text()


def test_refusal_rates_under_match_hand_judged_generations(tiny_model):
    from interp.chat import format_chats
    from interp.hooked import d_model
    from interp.models import model_name
    from interp.refusal import load_judge, refusal_rates_under
    from interp.runner import generate_greedy
    from interp.steering import Ablate, Steer

    instructions = ["hello", "tell me a joke", "the sea is blue", "what is two plus two"]
    prompts = format_chats(tiny_model, instructions)
    vector = torch.randn(d_model(tiny_model), generator=torch.Generator().manual_seed(3))
    direction = Direction(6.0 * vector / vector.norm(), layer=1, model=model_name(tiny_model), source="planted")

    def judge(instruction: str, completion: str) -> bool:
        return "e" in completion

    rows = refusal_rates_under(tiny_model, {"none": None, "planted": direction}, (instructions, prompts),
                               (instructions, prompts), judge=judge, max_new_tokens=5, batch_size=3, progress=False)
    for row, ablate, add in zip(rows, ([], [Ablate(direction)]), ([], [Steer(direction, scale=1.0)])):
        by_hand = [sum(judge(i, c) for i, c in zip(instructions, generate_greedy(tiny_model, prompts, extra,
                                                                                  max_new_tokens=5)))
                   / len(prompts) for extra in (ablate, add)]
        assert (row.harmful_ablated, row.harmless_added) == pytest.approx(by_hand)
        assert row.n_harmful == row.n_harmless == 4
    assert load_judge(None) is load_judge("phrases")
    for bad in ("nocolon", "os:no_such_function", "os:sep"):
        with pytest.raises(ValueError, match="^judge:"):
            load_judge(bad)
