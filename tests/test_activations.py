import pytest
import torch

from interp.activations import LastK, collect_residuals, mean_difference, position_index
from interp.chat import format_chats, tokenize

USERS = ["hello", "what is the capital of france ?", "tell me a joke about the cat and the dog please", "yes"]


def test_batched_left_padded_equals_one_at_a_time(tiny_model):
    prompts = format_chats(tiny_model, USERS)
    layers = [0, 1, 2]
    for positions in (-1, LastK(3), [0, 1, -2]):
        batched = collect_residuals(tiny_model, prompts, layers, positions, batch_size=4, progress=False)
        single = torch.cat([collect_residuals(tiny_model, [p], layers, positions, progress=False) for p in prompts])
        assert batched.shape == (len(prompts), 3, len(single[0, 0]), 32)
        assert torch.allclose(batched, single, atol=1e-4), (positions, (batched - single).abs().max())


def test_hooked_transformer_is_accepted(tiny_hooked_transformer):
    prompts = format_chats(tiny_hooked_transformer, USERS)
    batched = collect_residuals(tiny_hooked_transformer, prompts, [1, 2], -1, batch_size=4, progress=False)
    single = torch.cat([collect_residuals(tiny_hooked_transformer, [p], [1, 2], -1, progress=False) for p in prompts])
    assert torch.allclose(batched, single, atol=1e-4)


def test_positions_are_counted_on_real_tokens(tiny_model):
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS[:2]))
    lengths = batch.lengths.tolist()
    seq = batch.input_ids.shape[1]
    index = position_index(batch, [0, -1])
    assert index[:, 1].tolist() == [seq - 1, seq - 1]
    assert index[:, 0].tolist() == [seq - lengths[0], seq - lengths[1]]
    per_prompt = torch.tensor([[1], [2]])
    assert position_index(batch, per_prompt)[:, 0].tolist() == [seq - lengths[0] + 1, seq - lengths[1] + 2]


def test_per_prompt_positions_read_the_right_token(tiny_model):
    prompts = format_chats(tiny_model, USERS[:3])
    batch = tokenize(tiny_model, prompts)
    explicit = (batch.lengths - 1)[:, None]  # the last token, given explicitly per prompt
    assert torch.allclose(
        collect_residuals(tiny_model, prompts, [2], explicit, progress=False),
        collect_residuals(tiny_model, prompts, [2], -1, progress=False),
    )


def test_mean_difference():
    positive, negative = torch.ones(3, 2, 1, 4), torch.zeros(5, 2, 1, 4)
    assert torch.equal(mean_difference(positive, negative), torch.ones(2, 1, 4))
    with pytest.raises(ValueError, match="at least one prompt"):
        mean_difference(positive[:0], negative)
    with pytest.raises(ValueError, match="shapes differ"):
        mean_difference(positive, torch.zeros(5, 2, 1, 3))


def test_bad_input(tiny_model):
    prompts = format_chats(tiny_model, USERS[:2])
    with pytest.raises(ValueError, match="layer 3 is out of range"):
        collect_residuals(tiny_model, prompts, [3], progress=False)
    with pytest.raises(ValueError, match="prompts: expected a non-empty list"):
        collect_residuals(tiny_model, [], [0], progress=False)
    with pytest.raises(ValueError, match="out of range for prompt"):
        collect_residuals(tiny_model, prompts, [0], -100, progress=False)
    with pytest.raises(ValueError, match="site"):
        collect_residuals(tiny_model, prompts, [0], site="resid_sideways", progress=False)
