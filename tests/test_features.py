"""Max-activating examples: a planted feature (an atom along one token's residual) finds that token."""

from __future__ import annotations

import pytest
import torch

from interp.dictionaries import Dictionary, Encoder, from_decoder
from interp.features import MARK_CLOSE, MARK_OPEN, max_activating, max_activating_each, plot_max_activating, render_text

TEXTS = [
    "the cat sat on the mat",  # doc 0: cat at position 1
    "hello world",  # doc 1: no cat
    "cat dog sat",  # doc 2: cat only at position 0, which is skipped
    "what is the capital of france ? paris . the cat",  # doc 3: cat at position 10
    "one two three four five six seven eight nine ten",  # doc 4: long, no cat
    "",  # doc 5: empty, ignored (indices of later docs still hold)
    "a dog and a cat and a cat",  # doc 6: "and" is unknown -> <unk>; cats at 4 and 7
]


def planted_dictionary(model, token: str = "cat", n_atoms: int = 8) -> Dictionary:
    """Atom 0 = the unit embedding of `token` (resid_pre of layer 0 is the embedding); its encoder fires
    only there (bias at half the token's own projection). The other atoms are random and never fire."""
    embedding = model.original_model.get_input_embeddings().weight.detach().float()
    token_id = model.tokenizer.convert_tokens_to_ids(token)
    generator = torch.Generator().manual_seed(0)
    atoms = torch.randn(n_atoms, embedding.shape[1], generator=generator)
    atoms[0] = embedding[token_id]
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    own = float(embedding[token_id] @ atoms[0])
    b_enc = torch.full((n_atoms,), -1e6)
    b_enc[0] = -own / 2
    encoder = Encoder(W_enc=atoms.T.clone(), b_enc=b_enc, b_dec=torch.zeros(embedding.shape[1]))
    return Dictionary(atoms, torch.ones(n_atoms), hook_name="blocks.0.hook_resid_pre", model="tiny", encoder=encoder)


def test_planted_feature_tops_its_token(tiny_model):
    dictionary = planted_dictionary(tiny_model)
    result = max_activating(tiny_model, dictionary, TEXTS, [0, 3], n_top=6, window=(3, 1), progress=False)
    contexts = result.contexts[0]
    assert {(c.doc, c.position) for c in contexts} == {(0, 1), (3, 10), (6, 4), (6, 7)}
    assert all(c.tokens[c.center].strip() == "cat" for c in contexts)
    assert all(c.value > 0 for c in contexts)
    assert [c.value for c in contexts] == sorted((c.value for c in contexts), reverse=True)
    # All four are the same embedding, so the same activation; the window marks the max token.
    assert contexts[0].value == pytest.approx(contexts[-1].value, rel=1e-5)
    assert MARK_OPEN + " cat" + MARK_CLOSE in contexts[0].text() or MARK_OPEN + "cat" + MARK_CLOSE in contexts[0].text()
    context = next(c for c in contexts if c.doc == 3)
    assert len(context.tokens) == 4 and context.center == 3  # window (3 before, 1 after) cut at the text's end
    assert context.activations[-1] == pytest.approx(context.value) and max(context.activations[:-1]) == 0
    # Position 0 is skipped: doc 2 starts with "cat" and never appears.
    assert 2 not in result.docs[0][result.values[0] > 0].tolist()
    assert result.contexts[3] == [] and float(result.frequency[1]) == 0
    n_cat_scored = 4
    assert float(result.frequency[0]) == pytest.approx(n_cat_scored / result.n_tokens)
    text = render_text(result)
    assert "feature 0" in text and "never active" in text and MARK_OPEN in text


def test_batching_does_not_change_the_top_list(tiny_model):
    dictionary = planted_dictionary(tiny_model)
    # A random-ish feature so many tokens compete: the encoder's pre-activation of atom 1, with no bias.
    encoder = dictionary.encoder
    b_enc = encoder.b_enc.clone()
    b_enc[1] = 0.0
    dictionary = Dictionary(dictionary.atoms, dictionary.norms, dictionary.hook_name, encoder=Encoder(
        encoder.W_enc, b_enc, encoder.b_dec))
    one = max_activating(tiny_model, dictionary, TEXTS, [1, 0], n_top=5, batch_tokens=8, progress=False)
    many = max_activating(tiny_model, dictionary, TEXTS, [1, 0], n_top=5, batch_tokens=4096, progress=False)
    assert torch.allclose(one.values, many.values, atol=1e-5)
    assert [(c.doc, c.position) for c in one.contexts[1]] == [(c.doc, c.position) for c in many.contexts[1]]


def test_one_pass_for_several_dictionaries_equals_each_alone(tiny_model):
    """Dictionaries at two layers (and two at one hook point) in one corpus pass: each result is its own run's."""
    planted = planted_dictionary(tiny_model)
    generator = torch.Generator().manual_seed(1)
    width = planted.atoms.shape[1]
    atoms = torch.randn(6, width, generator=generator)
    deeper = Dictionary(atoms / atoms.norm(dim=1, keepdim=True), torch.ones(6), hook_name="blocks.1.hook_resid_pre",
                        encoder=Encoder(atoms.T.clone(), torch.zeros(6), torch.zeros(width)))
    same_hook = Dictionary(deeper.atoms, deeper.norms, "blocks.0.hook_resid_pre", encoder=deeper.encoder)
    requests = [(deeper, [2, 0, 5]), (planted, [0, 3]), (same_hook, [1])]
    together = max_activating_each(tiny_model, requests, TEXTS, n_top=4, window=(2, 1), progress=False)
    for (dictionary, features), result in zip(requests, together):
        alone = max_activating(tiny_model, dictionary, TEXTS, features, n_top=4, window=(2, 1), progress=False)
        assert result.features == alone.features and result.n_tokens == alone.n_tokens
        assert torch.equal(result.values, alone.values) and torch.equal(result.docs, alone.docs)
        assert torch.equal(result.positions, alone.positions) and torch.equal(result.frequency, alone.frequency)
        for feature in features:
            assert [(c.doc, c.position, c.tokens) for c in result.contexts[feature]] == [
                (c.doc, c.position, c.tokens) for c in alone.contexts[feature]]
            for mine, theirs in zip(result.contexts[feature], alone.contexts[feature]):
                assert mine.activations == pytest.approx(theirs.activations, abs=1e-5)
    with pytest.raises(ValueError, match="^requests:"):
        max_activating_each(tiny_model, (planted, [0]), TEXTS)
    with pytest.raises(ValueError, match="^requests:"):
        max_activating_each(tiny_model, [], TEXTS)


def test_figure(tiny_model, tmp_path):
    result = max_activating(tiny_model, planted_dictionary(tiny_model), TEXTS, [0, 2], n_top=3, progress=False)
    plot_max_activating(result, tmp_path / "features.png", title="planted")
    assert (tmp_path / "features.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="^features:"):
        plot_max_activating(result, tmp_path / "x.png", features=[5])


def test_bad_inputs(tiny_model):
    dictionary = planted_dictionary(tiny_model)
    with pytest.raises(ValueError, match="^dictionary: width 16"):
        wrong = from_decoder(torch.randn(4, 16), hook_name="blocks.0.hook_resid_pre")
        max_activating(tiny_model, Dictionary(wrong.atoms, wrong.norms, wrong.hook_name, encoder=Encoder(
            wrong.atoms.T.clone(), torch.zeros(4), torch.zeros(16))), TEXTS, [0])
    with pytest.raises(ValueError, match="^dictionary: .*encoder"):
        max_activating(tiny_model, from_decoder(dictionary.atoms, hook_name="blocks.0.hook_resid_pre"), TEXTS, [0])
    with pytest.raises(ValueError, match="^features:"):
        max_activating(tiny_model, dictionary, TEXTS, [8])
    with pytest.raises(ValueError, match="^features:"):
        max_activating(tiny_model, dictionary, TEXTS, [])
    with pytest.raises(ValueError, match="^texts:"):
        max_activating(tiny_model, dictionary, [], [0])
    with pytest.raises(ValueError, match="^texts:"):
        max_activating(tiny_model, dictionary, "the cat", [0])
    with pytest.raises(ValueError, match="^texts:"):
        max_activating(tiny_model, dictionary, ["cat", ""], [0])  # nothing after position 0
    with pytest.raises(ValueError, match="^n_top:"):
        max_activating(tiny_model, dictionary, TEXTS, [0], n_top=0)
    with pytest.raises(ValueError, match="^dictionary: layer"):
        max_activating(tiny_model, Dictionary(dictionary.atoms, dictionary.norms, "blocks.7.hook_resid_pre",
                                              encoder=dictionary.encoder), TEXTS, [0])
