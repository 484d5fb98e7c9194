"""The hooked forward every caller uses (`interp.runner.batch_logits`, `read_activations`): a bridge's plain HF
clone when every hook sits on a residual site, the same numbers as the bridge's own hook points, and the
bridge (or a HookedTransformer) for any other hook point."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from interp.chat import format_chats, tokenize
from interp.directions import Direction
from interp.hooked import forward, hooks_on, plain_model
from interp.models import model_name
from interp.runner import batch_logits, read_activations
from interp.steering import Ablate, HookIntervention, Steer

pytestmark = pytest.mark.usefixtures("single_thread")

USERS = ["hello", "what is the capital of france ?", "tell me a joke about the cat and the dog please", "yes"]


def direction(model, layer: int, seed: int = 0) -> Direction:
    vector = torch.randn(32, generator=torch.Generator().manual_seed(seed)) * 3
    return Direction(vector, layer=layer, model=model_name(model), source="test")


@pytest.fixture
def bridge_calls(tiny_model):
    """Calls of the bridge's first block (a hook on a hook point would itself send the forward to the bridge)."""
    calls: list[str] = []
    handle = tiny_model.blocks[0].register_forward_hook(lambda *a: calls.append("x"))
    yield calls
    handle.remove()


def test_batch_logits_under_residual_interventions_run_the_plain_clone_with_the_bridges_numbers(tiny_model, bridge_calls):
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS))
    real = batch.attention_mask.bool()
    for interventions in ([], [Steer(direction(tiny_model, 1), scale=2.0)], [Ablate(direction(tiny_model, 0, seed=1))],
                          [Steer(direction(tiny_model, 2), scale=-1.0), Ablate(direction(tiny_model, 1, seed=2))]):
        bridge_calls.clear()
        plain = batch_logits(tiny_model, batch, interventions)
        assert not bridge_calls
        bridged = batch_logits(tiny_model, batch, interventions, fast=False)
        assert bridge_calls
        torch.testing.assert_close(plain[real], bridged[real], atol=1e-4, rtol=1e-4)
        with torch.no_grad(), hooks_on(tiny_model, [h for i in interventions for h in i.hooks(tiny_model)]):
            torch.testing.assert_close(bridged, forward(tiny_model, batch))  # fast=False is the old hooked forward
        last = batch_logits(tiny_model, batch, interventions, keep_last=2)
        torch.testing.assert_close(last, plain[:, -2:])


def test_other_hook_points_run_through_the_bridge(tiny_model, bridge_calls):
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS[:2]))
    seen: list[str] = []
    scores = HookIntervention([("blocks.1.attn.hook_attn_scores", lambda activation, hook: seen.append("scores"))])
    batch_logits(tiny_model, batch, [scores])
    assert seen == ["scores"] and bridge_calls
    bridge_calls.clear()
    read = read_activations(tiny_model, batch, ["blocks.1.attn.hook_attn_scores", "blocks.0.hook_resid_pre"])
    assert set(read) == {"blocks.1.attn.hook_attn_scores", "blocks.0.hook_resid_pre"} and bridge_calls


def test_read_activations_equal_run_with_cache_and_stop_early(tiny_model, bridge_calls):
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS))
    real = batch.attention_mask.bool()
    names = ["blocks.2.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.1.hook_resid_post", "blocks.0.hook_attn_out"]
    read = read_activations(tiny_model, batch, names)
    assert list(read) == names[:3] and not bridge_calls  # de-duplicated, in order; the plain clone
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask,
                                             position_ids=batch.position_ids, names_filter=names)
    for name in names:
        torch.testing.assert_close(read[name][real], cache[name][real], atol=1e-5, rtol=1e-5)
    last = plain_model(tiny_model).model.layers[2]
    ran: list[Any] = []
    handle = last.register_forward_hook(lambda *a: ran.append(1))
    try:
        kept = read_activations(tiny_model, batch, ["blocks.2.hook_resid_pre"], lambda act, name: act[:, -1].cpu())
    finally:
        handle.remove()
    assert not ran and kept["blocks.2.hook_resid_pre"].shape == (len(USERS), 32)
    with pytest.raises(ValueError, match="names: expected at least one"):
        read_activations(tiny_model, batch, [])


def test_a_hooked_transformer_takes_the_same_entry_points(tiny_hooked_transformer):
    batch = tokenize(tiny_hooked_transformer, format_chats(tiny_hooked_transformer, USERS[:2]))
    logits = batch_logits(tiny_hooked_transformer, batch, [Steer(direction(tiny_hooked_transformer, 1), scale=2.0)])
    assert logits.shape[:2] == batch.input_ids.shape
    read = read_activations(tiny_hooked_transformer, batch, ["blocks.1.hook_resid_pre"])
    assert read["blocks.1.hook_resid_pre"].shape == (*batch.input_ids.shape, 32)


def test_hooks_already_on_the_bridge_are_respected(tiny_model, bridge_calls):
    """Hooks a caller put on the bridge's hook points (`model.hooks`, `hooks_on`, `apply_all`) would not fire on the
    plain clone: with any present, the forward runs through the bridge."""
    from interp.activations import collect_residuals
    from interp.runner import last_logits

    prompts = format_chats(tiny_model, USERS[:3])
    batch = tokenize(tiny_model, prompts)
    shift = torch.randn(32, generator=torch.Generator().manual_seed(3))
    outer = [("blocks.0.hook_resid_post", lambda activation, hook: activation + shift)]
    steer = [Steer(direction(tiny_model, 2), scale=2.0)]
    clean = collect_residuals(tiny_model, prompts, [1], progress=False)
    with hooks_on(tiny_model, outer):
        shifted = collect_residuals(tiny_model, prompts, [1], progress=False)
        logits = batch_logits(tiny_model, batch, steer)
        last, _ = last_logits(tiny_model, prompts, steer)
    assert bridge_calls
    torch.testing.assert_close(shifted, clean + shift, atol=1e-5, rtol=1e-5)  # resid_pre 1 is resid_post 0
    expected = batch_logits(tiny_model, batch, [*steer, HookIntervention(outer)], fast=False)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(last, expected[:, -1].float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make", [lambda d: [Steer(d, 1.0, positions="new")], lambda d: [Steer(d, 1.0, positions="all")],
                                  lambda d: [Ablate(d)], lambda d: [Steer(d, 1.0, positions=5)], lambda d: []])
def test_greedy_prompt_pass_in_groups_of_similar_length_changes_nothing(tiny_model, monkeypatch, make):
    """`generate_greedy` runs the prompts' own tokens in groups of similar length (`fill_prompt_cache`), not
    padded to the chunk's longest prompt: the texts and the prompts' logits are those of one padded pass."""
    from functools import partial

    import interp.runner.generation as generation
    from interp.runner import generate_greedy_scored
    from interp.runner.prefix import fill_prompt_cache, row_groups

    words = "one two three four five six seven eight nine ten eleven twelve".split()
    prompts = format_chats(tiny_model, [" ".join(words[: 1 + 3 * i % 12]) for i in range(10)])
    interventions = make(direction(tiny_model, layer=1, seed=3))
    runs = []
    monkeypatch.setattr(generation, "fill_prompt_cache", lambda *args, **kwargs: None)  # one padded pass
    padded = generate_greedy_scored(tiny_model, prompts, interventions, max_new_tokens=6, batch_size=8)
    grouped_fill = partial(fill_prompt_cache, min_positions=12)

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(len(row_groups(args[3][:, -args[2].shape[1]:].sum(1), 12)))
        return grouped_fill(*args, **kwargs)

    monkeypatch.setattr(generation, "fill_prompt_cache", counted)
    grouped = generate_greedy_scored(tiny_model, prompts, interventions, max_new_tokens=6, batch_size=8)
    assert max(runs) >= 3  # the chunk of 8 prompts really ran in several groups
    assert grouped[0] == padded[0]
    torch.testing.assert_close(grouped[1], padded[1], atol=1e-4, rtol=1e-4)


def test_row_groups_close_at_the_position_budget():
    from interp.runner.prefix import row_groups

    assert row_groups(torch.tensor([2, 2, 3, 3, 5, 9]), min_positions=6) == [(0, 3), (3, 5), (5, 6)]
    assert row_groups(torch.tensor([1, 1]), min_positions=100) == [(0, 2)]
    assert row_groups(torch.tensor([], dtype=torch.long), min_positions=4) == []
