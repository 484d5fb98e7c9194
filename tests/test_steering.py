import pytest
import torch

from interp.chat import format_chats, tokenize
from interp.directions import Direction
from interp.hooked import forward, past_length
from interp.models import model_name
from interp.runner import generate
from interp.steering import Ablate, HookIntervention, Steer, ablation_hook_names, apply_all, multiplier_sweep

USERS = ["hello", "what is the capital of france ?", "tell me a joke about the sea", "yes"]


def random_direction(model, layer=1, seed=0, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(model.cfg.d_model, generator=generator) * scale
    return Direction(vector, layer=layer, model=model_name(model), source="random")


@pytest.mark.parametrize("positions", ["all", "new"])
def test_steered_generation_same_with_and_without_kv_cache(tiny_model, positions):
    prompts = format_chats(tiny_model, USERS)
    steer = Steer(random_direction(tiny_model), scale=2.0, positions=positions)
    kwargs = dict(interventions=[steer], max_new_tokens=8, stop_at_eos=False, progress=False)
    cached = generate(tiny_model, prompts, use_cache=True, **kwargs)
    uncached = generate(tiny_model, prompts, use_cache=False, **kwargs)
    plain = generate(tiny_model, prompts, max_new_tokens=8, stop_at_eos=False, progress=False)
    assert cached == uncached
    assert cached != plain  # the steering did something, so the equality above means something


def _cache_of_length(length: int):
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.zeros(2, 1, length, 4), torch.zeros(2, 1, length, 4), 0)
    return cache


@pytest.mark.parametrize("keyword", ["past_key_values", "cache", "a_future_name"])
def test_past_length_reads_the_cache_object_whatever_its_keyword(keyword):
    """transformers <= 5.23 passes `past_key_values`, 5.24 `cache`; 5.40 drops the old name."""
    positions = torch.tensor([[5], [3]])  # the second row was left-padded by two
    assert past_length({keyword: _cache_of_length(5), "position_ids": positions}) == 5
    assert past_length({keyword: _cache_of_length(5)}) == 5


def test_cache_keyword_follows_the_model_signature():
    """Calls use the keyword the forward declares: `past_key_values` up to transformers 5.23, `cache` from 5.24."""
    from types import SimpleNamespace

    from interp.hooked import cache_kwargs, output_cache

    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=False):
            return SimpleNamespace(past_key_values="old cache")

    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=False):
            return SimpleNamespace(cache="new cache", past_key_values="new cache")

    assert cache_kwargs(Old(), "c") == {"past_key_values": "c"}
    assert cache_kwargs(New(), "c") == {"cache": "c"}
    assert output_cache(Old()(None)) == "old cache" and output_cache(New()(None)) == "new cache"


def test_past_length_without_a_cache_object():
    assert past_length({}) == 0
    assert past_length({"cache_position": torch.tensor([7])}) == 7
    # Position ids alone: the unpadded row's first position (a left-padded batch always has one).
    assert past_length({"position_ids": torch.tensor([[9, 10], [4, 5]])}) == 9
    assert past_length({"position_ids": torch.tensor([[0, 1, 2], [0, 0, 1]])}) == 0


def test_a_cache_that_was_never_written_is_an_error_not_an_offset():
    with pytest.raises(RuntimeError, match="did not write its KV cache"):
        past_length({"cache": _cache_of_length(0), "position_ids": torch.tensor([[12]])})


def test_the_bridge_path_decodes_with_its_cache(tiny_model):
    """The bridge's own cached decoding (hooks off the residual sites) equals uncached decoding."""
    prompts = format_chats(tiny_model, USERS)
    noop = HookIntervention([("blocks.0.attn.hook_pattern", lambda activation, hook: None)])
    kwargs = dict(interventions=[noop], max_new_tokens=6, stop_at_eos=False, progress=False)
    assert generate(tiny_model, prompts, use_cache=True, **kwargs) == generate(tiny_model, prompts, use_cache=False, **kwargs)


def test_the_plain_clone_keeps_the_attention_it_loaded_with(tiny_folder, tiny_model):
    """TransformerLens 4 switches the bridged model to eager attention; the fast path keeps its own."""
    from interp.hooked import plain_model
    from interp.models import load_hf

    hf_model, _ = load_hf(tiny_folder, device="cpu")
    assert plain_model(tiny_model).config._attn_implementation == hf_model.config._attn_implementation
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS))
    with torch.no_grad():
        plain_logits = plain_model(tiny_model)(
            batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits
    real = batch.attention_mask.bool()
    torch.testing.assert_close(plain_logits[real], forward(tiny_model, batch)[real], atol=1e-4, rtol=1e-4)


def test_batched_generation_equals_one_at_a_time(tiny_model):
    prompts = format_chats(tiny_model, USERS)
    steer = Steer(random_direction(tiny_model), scale=2.0, positions="new")
    batched = generate(tiny_model, prompts, interventions=[steer], max_new_tokens=6, progress=False)
    single = [generate(tiny_model, [p], interventions=[steer], max_new_tokens=6, progress=False)[0] for p in prompts]
    assert batched == single


def test_new_positions_leave_the_prompt_alone(tiny_model):
    """positions='new' steers from the last prompt token on: earlier positions are untouched."""
    prompts = format_chats(tiny_model, USERS[:2])
    direction = random_direction(tiny_model, layer=1)
    seen = {}

    def record(activation, hook):
        seen.setdefault("resid", []).append(activation.detach().clone())

    with apply_all(tiny_model, Steer(direction, 5.0, positions="new"), HookIntervention([("blocks.1.hook_resid_pre", record)])):
        pass
    plain = tokenize(tiny_model, prompts)
    with apply_all(tiny_model, HookIntervention([("blocks.1.hook_resid_pre", record)])):
        forward(tiny_model, plain)
    unsteered = seen["resid"][-1]
    seen.clear()
    with apply_all(tiny_model, Steer(direction, 5.0, positions="new"), HookIntervention([("blocks.1.hook_resid_pre", record)])) as state:
        state.prompt_length = plain.input_ids.shape[1]
        forward(tiny_model, plain)
    steered = seen["resid"][-1]
    assert torch.allclose(steered[:, :-1], unsteered[:, :-1])
    assert torch.allclose(steered[:, -1] - unsteered[:, -1], 5.0 * direction.vector.expand(2, -1), atol=1e-5)


def test_new_positions_outside_generate_is_an_error(tiny_model):
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS[:1]))
    with pytest.raises(RuntimeError, match="only applies inside"):
        with apply_all(tiny_model, Steer(random_direction(tiny_model), 1.0, positions="new")):
            forward(tiny_model, batch)


def test_steer_adds_exactly_scale_times_vector(tiny_model):
    direction = random_direction(tiny_model, layer=2)
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS))
    _, plain = tiny_model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask, names_filter="blocks.2.hook_resid_pre")
    with Steer(direction, scale=-1.5).apply(tiny_model):
        _, steered = tiny_model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask, names_filter="blocks.2.hook_resid_pre")
    delta = steered["blocks.2.hook_resid_pre"] - plain["blocks.2.hook_resid_pre"]
    assert torch.allclose(delta, -1.5 * direction.vector.expand_as(delta), atol=1e-5)
    with Steer(direction, scale=2.0, unit=True).apply(tiny_model):
        _, steered = tiny_model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask, names_filter="blocks.2.hook_resid_pre")
    delta = steered["blocks.2.hook_resid_pre"] - plain["blocks.2.hook_resid_pre"]
    assert torch.allclose(delta.norm(dim=-1), torch.full(delta.shape[:2], 2.0), atol=1e-4)


def ablation_residue(model, direction, prompts):
    components = {}

    def record(name):
        def hook(activation, hook):
            components[name] = float((activation @ direction.unit().vector).abs().max())
        return hook

    names = ablation_hook_names(model) + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    with apply_all(model, Ablate(direction), HookIntervention([(n, record(n)) for n in names])):
        forward(model, tokenize(model, prompts))
    return components, names


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_hooked_transformer"])
def test_ablation_removes_the_component_everywhere(request, model_fixture):
    model = request.getfixturevalue(model_fixture)
    direction = random_direction(model)
    components, names = ablation_residue(model, direction, format_chats(model, USERS))
    assert set(components) == set(names)
    assert max(components.values()) < 1e-4
    # Without the ablation the component is far from zero, so the assertion above is not vacuous.
    batch = tokenize(model, format_chats(model, USERS))
    _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask, names_filter="blocks.1.hook_resid_pre")
    assert float((cache["blocks.1.hook_resid_pre"] @ direction.unit().vector).abs().max()) > 1e-2


def test_hooked_transformer_generation_with_steering(tiny_hooked_transformer):
    model = tiny_hooked_transformer
    prompts = format_chats(model, USERS[:2])
    steer = Steer(random_direction(model, scale=20.0), scale=1.0, positions="new")
    kwargs = dict(max_new_tokens=5, stop_at_eos=False, progress=False)
    cached = generate(model, prompts, interventions=[steer], use_cache=True, **kwargs)
    uncached = generate(model, prompts, interventions=[steer], use_cache=False, **kwargs)
    assert cached == uncached
    assert cached != generate(model, prompts, **kwargs)


def test_multiplier_sweep_is_monotone_in_projection(tiny_model):
    direction = random_direction(tiny_model, layer=1)
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS))

    def projection(model):
        _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask, names_filter="blocks.1.hook_resid_pre")
        return float((cache["blocks.1.hook_resid_pre"] @ direction.unit().vector).mean())

    results = multiplier_sweep(tiny_model, lambda m: Steer(direction, m, unit=True), [-2, 0, 2], projection, progress=False)
    assert [m for m, _ in results] == [-2, 0, 2]
    values = [v for _, v in results]
    assert values[2] - values[1] == pytest.approx(2.0, abs=1e-4) and values[1] - values[0] == pytest.approx(2.0, abs=1e-4)


def test_bad_directions(tiny_model):
    wrong_width = Direction(torch.randn(7), layer=1, model=model_name(tiny_model), source="x")
    with pytest.raises(ValueError, match="width 7 does not match"):
        Steer(wrong_width).hooks(tiny_model)
    other_model = Direction(torch.randn(32), layer=1, model="another-model", source="x")
    with pytest.raises(ValueError, match="belongs to model 'another-model'"):
        Ablate(other_model).hooks(tiny_model)
    Steer(other_model, allow_other_model=True).hooks(tiny_model)
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        Steer(random_direction(tiny_model), layer=9).hooks(tiny_model)
    with pytest.raises(ValueError, match="prompts"):
        generate(tiny_model, [], max_new_tokens=2)


@pytest.mark.parametrize("positions", ["all", "new"])
@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_gemma"])
def test_fast_generation_equals_the_bridge_path(request, model_fixture, positions):
    """The plain-HF fast path and the bridge's own hooks give the same steered and ablated text,
    for a Llama block and a Gemma 3 block (whose attn_out/mlp_out are the post-norms' outputs)."""
    model = request.getfixturevalue(model_fixture)
    prompts = format_chats(model, USERS)
    site_hooks = [("blocks.2.hook_attn_out", lambda x, hook: x * 1.5), ("blocks.1.hook_mlp_out", lambda x, hook: -x)]
    interventions = [
        Steer(random_direction(model), 1.0, positions=positions),
        Ablate(random_direction(model, seed=1)),
        HookIntervention(site_hooks),
    ]
    kwargs = dict(interventions=interventions, max_new_tokens=8, stop_at_eos=False, progress=False)
    fast = generate(model, prompts, fast=True, **kwargs)
    assert fast == generate(model, prompts, fast=False, **kwargs)
    assert fast != generate(model, prompts, max_new_tokens=8, stop_at_eos=False, progress=False)


@pytest.mark.parametrize("index", [2, 6, 9])
def test_token_index_rule_counts_real_tokens_behind_a_cached_prefix(tiny_model, index):
    """A token-index rule (steering-vectors' `min_token_index`) covers the same tokens of a prompt whether it runs
    alone or in a batch through the shared-prefix cache, where padding sits between the prefix and each
    prompt's own tokens (before the fix, that padding advanced the index of every shorter prompt)."""
    from interp.runner import generate_greedy, last_logits

    prompts = format_chats(tiny_model, ["the cat", "a b c d e f g h", "dog", "one two three four five six seven eight"])
    steer = [Steer(random_direction(tiny_model, scale=30.0), 1.0, positions=index)]
    alone = [generate(tiny_model, [p], interventions=steer, max_new_tokens=6, stop_at_eos=False, progress=False)[0]
             for p in prompts]
    assert generate_greedy(tiny_model, prompts, steer, max_new_tokens=6, batch_size=4) == alone
    batched = last_logits(tiny_model, prompts, steer, batch_size=4)[0]
    one_by_one = torch.cat([last_logits(tiny_model, [p], steer)[0] for p in prompts])
    torch.testing.assert_close(batched, one_by_one, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched, last_logits(tiny_model, prompts, batch_size=4)[0], atol=1e-2)


def test_plain_clone_shares_the_weights(tiny_model):
    from interp.hooked import plain_model

    plain = plain_model(tiny_model)
    bridge_tensors = {p.data_ptr() for p in tiny_model.parameters()}
    assert {p.data_ptr() for p in plain.parameters()} <= bridge_tensors
    assert not any(type(m).__name__.endswith("Bridge") for m in plain.modules())


def test_unknown_hook_name_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="not a hook point"):
        with apply_all(tiny_model, HookIntervention([("blocks.0.hook_nowhere", lambda x, hook: x)])):
            pass


@pytest.mark.integration
@pytest.mark.generation
def test_embedded_model_steered_generation_agrees_on_every_path(smollm):
    """SmolLM2: steered greedy generation is the same with and without the KV cache, and through the
    bridge itself; and the steering changed the text."""
    prompts = format_chats(smollm, ["Tell me about the weather today.", "Hi"])
    steer = Steer(random_direction(smollm, layer=10), scale=12.0, unit=True, positions="new")
    kwargs = dict(max_new_tokens=10, stop_at_eos=False, progress=False)
    cached = generate(smollm, prompts, interventions=[steer], use_cache=True, **kwargs)
    assert cached == generate(smollm, prompts, interventions=[steer], use_cache=False, **kwargs)
    assert cached == generate(smollm, prompts, interventions=[steer], fast=False, **kwargs)
    assert cached != generate(smollm, prompts, **kwargs)
