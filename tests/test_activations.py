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


SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_gemma"])
def test_the_plain_path_equals_the_bridge_at_every_site_it_serves(fixture, request):
    """Left-padded prompts of different lengths; Gemma's sandwich norms move attn_out / mlp_out to the post-norms."""
    model = request.getfixturevalue(fixture)
    prompts = format_chats(model, USERS)
    assert len(set(tokenize(model, prompts).lengths.tolist())) > 1  # real left padding
    for site in SITES:
        for positions in (-1, LastK(3), [0, 2, -1]):
            plain = collect_residuals(model, prompts, [0, 1, 2], positions, site=site, batch_size=3, progress=False)
            bridge = collect_residuals(model, prompts, [0, 1, 2], positions, site=site, batch_size=3, progress=False,
                                       fast=False)
            note = f"{site} {positions}"
            torch.testing.assert_close(plain, bridge, atol=3e-5, rtol=1e-5, msg=lambda m, note=note: f"{note}: {m}")


def test_residual_sites_run_on_the_plain_clone_and_stop_after_the_last_read(tiny_model):
    from interp.hooked import plain_model

    plain = plain_model(tiny_model)
    prompts = format_chats(tiny_model, USERS[:2])
    calls: list[str] = []
    watches = [tiny_model.blocks[0].register_forward_hook(lambda *a: calls.append("bridge"))]  # not a hook point
    watches += [plain.model.layers[i].register_forward_hook(lambda *a, i=i: calls.append(f"layer {i}")) for i in range(3)]
    watches.append(plain.lm_head.register_forward_hook(lambda *a: calls.append("unembed")))
    try:
        collect_residuals(tiny_model, prompts, [0, 1], progress=False)
        assert calls == ["layer 0"]  # resid_pre of layer 1 is read before layer 1 runs; nothing after it
        calls.clear()
        collect_residuals(tiny_model, prompts, [0], site="mlp_out", progress=False)
        assert calls == ["layer 0"]
        calls.clear()
        collect_residuals(tiny_model, prompts, [2], site="resid_post", progress=False)
        assert calls == ["layer 0", "layer 1", "layer 2"]
        calls.clear()
        collect_residuals(tiny_model, prompts, [1], site="resid_mid", progress=False)  # not a plain site
        assert calls == ["bridge"]
        calls.clear()
        collect_residuals(tiny_model, prompts, [0], progress=False, fast=False)
        assert calls == ["bridge"]
    finally:
        for watch in watches:
            watch.remove()


@pytest.mark.integration
def test_embedded_model_plain_path_equals_the_bridge(smollm):
    prompts = format_chats(smollm, ["Tell me about the weather today.", "What is a library used for?", "Hi"])
    for site in SITES:
        plain = collect_residuals(smollm, prompts, [0, 15, 29], LastK(2), site=site, progress=False)
        bridge = collect_residuals(smollm, prompts, [0, 15, 29], LastK(2), site=site, progress=False, fast=False)
        # float32 rounding apart (sdpa vs the bridge's attention); residual norms here reach the hundreds
        torch.testing.assert_close(plain, bridge, atol=1e-3, rtol=1e-4, msg=lambda m, site=site: f"{site}: {m}")
