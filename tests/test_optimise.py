"""The optimised ("skyline") vector: planted behaviour on a tiny model, the NLL it reports, and bad input."""

from __future__ import annotations

import pytest
import torch

from interp.chat import format_chats
from interp.directions import Direction, hook_name
from interp.hooked import d_model, n_layers
from interp.models import model_name
from interp.optimise import OptimiseConfig, completion_batch, completion_nll, optimise_vector
from interp.runner import differentiable_logits, generate, run_to_layer
from interp.runner.layers import can_start_at_layer
from interp.steering import Steer

USERS = ["hello", "what is the capital of france ?", "tell me a joke about the sea", "the sea is blue"]


@pytest.fixture(scope="module")
def planted(tiny_model):
    """A random vector at layer 1 that changes every greedy completion, and the completions it produces."""
    prompts = format_chats(tiny_model, USERS)
    vector = torch.randn(d_model(tiny_model), generator=torch.Generator().manual_seed(2))
    direction = Direction(8.0 * vector / vector.norm(), layer=1, model=model_name(tiny_model), source="planted")
    targets = generate(tiny_model, prompts, interventions=[Steer(direction)], max_new_tokens=4, progress=False)
    baseline = generate(tiny_model, prompts, max_new_tokens=4, progress=False)
    assert all(targets) and sum(t != b for t, b in zip(targets, baseline)) >= 3  # a behaviour to find
    return prompts, direction, targets, baseline


def agreement(model, prompts, targets, direction) -> float:
    """Share of target tokens that are the argmax of the model's next-token logits, steered by `direction`."""
    batch, scored = completion_batch(model, prompts, targets)
    hooks = [] if direction is None else Steer(direction).hooks(model)
    with torch.no_grad():
        logits = differentiable_logits(model, batch, hooks)
    hits = logits[:, :-1].argmax(-1) == batch.input_ids[:, 1:]
    return float(hits[scored[:, :-1]].float().mean())


def test_the_optimised_vector_reproduces_a_planted_behaviour(tiny_model, planted):
    prompts, direction, targets, baseline = planted
    result = optimise_vector(tiny_model, prompts, targets, OptimiseConfig(layer=1, steps=120, lr=0.2), progress=False)
    # Teacher-forced: the learned vector makes the target tokens the model's top choice wherever the planted
    # one does (not every one: decoding and re-tokenizing a completion can change a token), and the unsteered
    # model does so far less often.
    planted_share = agreement(tiny_model, prompts, targets, direction)
    assert planted_share >= 0.8
    # It minimises the NLL, not the argmax count: one target token in ten may still lose to another.
    assert agreement(tiny_model, prompts, targets, result.direction) >= planted_share - 0.1
    assert agreement(tiny_model, prompts, targets, None) <= planted_share - 0.2
    assert result.losses[-1] < 0.5 * result.losses[0]
    # It does at least as well on its objective as the vector that made the targets.
    batch, scored = completion_batch(tiny_model, prompts, targets)
    with torch.no_grad():
        planted_sum, count = completion_nll(tiny_model, batch, scored, direction.vector, direction.hook_name)
    assert result.losses[-1] <= float(planted_sum) / count + 1e-3
    assert result.direction.layer == 1 and result.direction.source == "optimised"
    assert all(p.requires_grad for p in tiny_model.parameters())  # frozen only while training


def test_reported_losses_are_the_mean_completion_nll_and_chunking_changes_nothing(tiny_model, planted):
    prompts, _, targets, _ = planted
    whole = optimise_vector(tiny_model, prompts, targets, OptimiseConfig(layer=2, steps=3, lr=0.1), progress=False)
    chunked = optimise_vector(tiny_model, prompts, targets, OptimiseConfig(layer=2, steps=3, lr=0.1, batch_size=1),
                              progress=False)
    assert torch.allclose(whole.direction.vector, chunked.direction.vector, atol=1e-5)
    assert whole.losses == pytest.approx(chunked.losses, rel=1e-5)
    # The first loss is the unsteered model's mean NLL per completion token, computed by hand here.
    batch, _ = completion_batch(tiny_model, prompts, targets)
    tokenizer = tiny_model.tokenizer
    total, count = 0.0, 0
    for prompt, target in zip(prompts, targets):
        head = tokenizer(prompt, add_special_tokens=not prompt.startswith(tokenizer.bos_token or "\0"))["input_ids"]
        tail = tokenizer(target, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + tail])
        with torch.no_grad():
            log_probs = tiny_model(ids).float().log_softmax(-1)[0]
        total -= sum(float(log_probs[len(head) + j - 1, tail[j]]) for j in range(len(tail)))
        count += len(tail)
    assert whole.losses[0] == pytest.approx(total / count, rel=1e-4)


def test_starting_at_the_vectors_layer_gives_the_full_forwards_loss_and_gradient(tiny_model, planted):
    prompts, _, targets, _ = planted
    assert can_start_at_layer(tiny_model)
    batch, scored = completion_batch(tiny_model, prompts, targets)
    hook = hook_name(2)
    with torch.no_grad():
        base = run_to_layer(tiny_model, batch, hook, stop_at_layer=3)
    results = []
    for resid_pre in (None, base):
        theta = torch.randn(d_model(tiny_model), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        nll, count = completion_nll(tiny_model, batch, scored, theta, hook, resid_pre=resid_pre)
        nll.backward()
        results.append((float(nll.detach()), count, theta.grad.clone()))
    (full, n_full, grad_full), (skipped, n_skipped, grad_skipped) = results
    assert n_full == n_skipped and skipped == pytest.approx(full, rel=1e-5)
    assert torch.allclose(grad_skipped, grad_full, rtol=1e-4, atol=1e-6)


def test_max_norm_bounds_the_vector(tiny_model, planted):
    prompts, _, targets, _ = planted
    result = optimise_vector(tiny_model, prompts, targets, OptimiseConfig(layer=1, steps=20, lr=0.5, max_norm=1.5),
                             progress=False)
    assert float(result.direction.vector.norm()) <= 1.5 + 1e-4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (OptimiseConfig(layer=99), "layer"),
        (OptimiseConfig(layer=1, site="hook_z"), "site"),
        (OptimiseConfig(layer=1, steps=0), "steps"),
        (OptimiseConfig(layer=1, lr=-1.0), "lr"),
        (OptimiseConfig(layer=1, max_norm=0.0), "max_norm"),
    ],
)
def test_bad_settings_are_named(tiny_model, config, message):
    with pytest.raises(ValueError, match=message):
        optimise_vector(tiny_model, ["hello"], ["hi"], config, progress=False)


def test_bad_completions_are_named(tiny_model):
    with pytest.raises(ValueError, match="completions: expected one per prompt"):
        optimise_vector(tiny_model, ["hello", "sea"], ["hi"], OptimiseConfig(layer=0), progress=False)
    with pytest.raises(ValueError, match="init"):
        optimise_vector(tiny_model, ["hello"], ["hi"], OptimiseConfig(layer=0), init=torch.zeros(3), progress=False)
    assert n_layers(tiny_model) > 1
