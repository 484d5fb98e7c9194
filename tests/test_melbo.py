"""MELBO: planted linear maps (the answer is the SVD), the constraints, determinism, the bad inputs,
the helpers, and one small run of the experiment on SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch

from interp.chat import TokenBatch, format_chats, tokenize
from interp.directions import Direction
from interp.hooked import forward
from interp.melbo import (
    MelboConfig,
    learn_melbo,
    learn_on_sphere,
    melbo_loss,
    next_token_probability,
    pick_radius,
    radius_sweep,
    resolve_layers,
    sparse_reconstruction,
    steered_generations,
    target_changes,
    target_layer_vectors,
    text_features,
)
from interp.runner import generate
from interp.steering import Steer

from conftest import hooked_transformer_classes

USERS = ["hello", "what is the capital of france ?", "tell me a joke about the sea"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is faster, and leaves the other core to the rest of the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def singular_map(d: int, singular_values: list[float], seed: int) -> torch.Tensor:
    """A d × d matrix with the given leading singular values (the rest 0.5) and random singular vectors."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    s = torch.tensor(singular_values + [0.5] * (d - len(singular_values)), dtype=torch.float64)
    return (u * s) @ v.T


def assert_top_singular_vectors(vectors: torch.Tensor, operator: torch.Tensor, count: int) -> None:
    """Row i of `vectors` is ± the i-th right-singular vector of `operator` (cosine >= 0.99)."""
    _, _, vh = torch.linalg.svd(operator.double())
    units = vectors.double() / vectors.double().norm(dim=1, keepdim=True)
    cosines = (units[:count] @ vh[:count].T).abs()
    assert torch.all(cosines.diagonal() >= 0.99), cosines


# ------------------------------------------------------------------------------------------------
# Planted: a linear source → target map, so the maximiser of ‖Δh‖ on the sphere is its SVD


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_linear_stand_in_finds_singular_vectors_in_order(mode):
    d = 24
    operator = singular_map(d, [8.0, 6.0, 4.5, 3.5], seed=1).float()  # Δh = operator @ θ at every token
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 0] = False

    def backward(theta):
        delta = (theta @ operator.T)[:, None, None, :].expand(-1, 2, 5, -1)
        losses = melbo_loss(delta, mask, p=2.0)
        losses.sum().backward()
        return losses.detach()

    config = MelboConfig(0, 1, radius=3.0, n_vectors=4, steps=300, lr=0.05, mode=mode)
    vectors, curves = learn_on_sphere(backward, d, config, progress=False)
    assert_top_singular_vectors(vectors, operator, 4)
    assert torch.allclose(vectors.norm(dim=1), torch.full((4,), 3.0), atol=1e-5)
    assert len(curves) == 4 and all(len(curve) == 300 for curve in curves)
    assert curves[0][-1] < curves[0][0]  # the loss went down


@pytest.fixture(scope="module")
def linear_hooked_transformer():
    """attn-only, no normalisation, W_Q = W_K = 0 in blocks 1 and 2: uniform causal attention, so a bias
    added to resid_pre of block 1 at every position changes the final residual stream by θ @ M at every
    position, M = (I + OV₁)(I + OV₂) — linear. Block 0 stays random (before the source, it cannot matter)."""
    HookedTransformer, HookedTransformerConfig = hooked_transformer_classes()
    d = 16
    config = HookedTransformerConfig(
        n_layers=3, d_model=d, n_ctx=32, d_head=d, n_heads=1, d_vocab=20, attn_only=True,
        normalization_type=None, act_fn="relu", seed=0, default_prepend_bos=False,
    )
    model = HookedTransformer(config)
    generator = torch.Generator().manual_seed(7)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    second = singular_map(d, [5.0, 3.5, 2.5, 1.8], seed=3)  # rotation @ second has the same singular values
    with torch.no_grad():
        for layer, ov in ((1, rotation - torch.eye(d)), (2, second - torch.eye(d))):
            block = model.blocks[layer].attn
            block.W_Q.zero_()
            block.W_K.zero_()
            block.W_V.copy_(ov.float()[None])
            block.W_O.copy_(torch.eye(d)[None])
    model.eval()
    operator = (rotation @ second).T  # Δh (column) = operator @ θ
    return model, operator


def test_linear_model_finds_singular_vectors_in_order(linear_hooked_transformer):
    model, operator = linear_hooked_transformer
    ids = torch.randint(0, 20, (3, 6), generator=torch.Generator().manual_seed(0))
    batch = TokenBatch(ids, torch.ones_like(ids))
    config = MelboConfig(1, 3, radius=2.0, n_vectors=3, steps=150, lr=0.05, mode="sequential")
    result = learn_melbo(model, batch, config, progress=False)
    assert_top_singular_vectors(result.matrix, operator, 3)
    # The reported loss is the objective at the vector: −Σ_prompts sqrt(n_tokens) ‖operator θ‖ at p = q = 2.
    counted = 6 - 1  # first token left out
    expected = -3 * counted**0.5 * (operator.float() @ result.matrix[0]).norm()
    assert result.losses[0] == pytest.approx(float(expected), rel=1e-4)


# ------------------------------------------------------------------------------------------------
# The objective and the constraints


def test_norm_axes_agree_at_p2_and_match_their_formulas():
    delta = torch.randn(1, 1, 7, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 7, dtype=torch.bool)
    token = melbo_loss(delta, mask, p=2.0, norm_axis="token")
    hidden = melbo_loss(delta, mask, p=2.0, norm_axis="hidden")
    assert torch.allclose(token, hidden)
    x = delta[0]  # [1, tokens, hidden], as the original code's tensors
    for p, q in ((4.0, 4.0), (3.0, 1.0)):
        original = -(x.norm(dim=1).pow(p).sum()).pow(1 / q)  # the original: norm over tokens per unit
        per_token = -(x.norm(dim=-1).pow(p).sum()).pow(1 / q)  # the paper's formula
        assert melbo_loss(delta, mask, p, q, "hidden")[0] == pytest.approx(float(original), rel=1e-5)
        assert melbo_loss(delta, mask, p, q, "token")[0] == pytest.approx(float(per_token), rel=1e-5)
        assert float(original) != pytest.approx(float(per_token), rel=1e-3)


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_vectors_have_norm_r_and_are_mutually_orthogonal(tiny_model, mode):
    prompts = format_chats(tiny_model, USERS)
    config = MelboConfig(0, 2, radius=4.0, n_vectors=3, steps=6, lr=0.02, mode=mode)
    result = learn_melbo(tiny_model, prompts, config, progress=False)
    gram = result.matrix @ result.matrix.T
    assert torch.allclose(gram, 16.0 * torch.eye(3), atol=1e-3)
    assert [v.source for v in result.vectors] == ["melbo"] * 3
    assert all(v.layer == 0 and v.hook_name == "blocks.0.hook_resid_pre" for v in result.vectors)
    assert len(result.losses) == 3 and all(len(c) == 6 for c in result.curves)
    assert all(p.requires_grad for p in tiny_model.parameters())  # frozen only while learning


def test_seeded_runs_are_identical_and_seeds_differ(tiny_model):
    prompts = format_chats(tiny_model, USERS[:2])
    config = MelboConfig(0, 2, radius=3.0, n_vectors=2, steps=4, lr=0.02)
    first = learn_melbo(tiny_model, prompts, config, progress=False)
    again = learn_melbo(tiny_model, prompts, config, progress=False)
    other = learn_melbo(tiny_model, prompts, MelboConfig(0, 2, radius=3.0, n_vectors=2, steps=4, lr=0.02, seed=1), progress=False)
    assert torch.equal(first.matrix, again.matrix)
    assert first.losses == again.losses
    assert not torch.allclose(first.matrix, other.matrix)


@pytest.mark.parametrize("fast", [True, False])
def test_padded_batch_equals_one_prompt_at_a_time(tiny_model, fast):
    """Prompts of different lengths (left padding) give the vectors that one-at-a-time accumulation gives,
    with finite gradients (on the bridge's own forward, fully masked padding rows would make them NaN)."""
    prompts = format_chats(tiny_model, USERS)
    batched = learn_melbo(
        tiny_model, prompts, MelboConfig(0, 2, radius=3.0, n_vectors=2, steps=5, lr=0.02, fast=fast), progress=False
    )
    single = learn_melbo(
        tiny_model, prompts, MelboConfig(0, 2, radius=3.0, n_vectors=2, steps=5, lr=0.02, prompt_batch_size=1, fast=fast),
        progress=False,
    )
    assert torch.isfinite(batched.matrix).all()
    assert torch.allclose(batched.matrix, single.matrix, atol=1e-4)
    assert batched.losses == pytest.approx(single.losses, rel=1e-4)


@pytest.mark.parametrize(("site", "target"), [("resid_pre", 2), ("mlp_out", 3)])
def test_plain_fast_path_equals_bridge_hooks(tiny_model, site, target):
    """The default fast path (PyTorch hooks on the plain HF modules) learns what the bridge's TL hooks learn,
    including a target at the final residual stream (layer n_layers), and leaves the model usable."""
    prompts = format_chats(tiny_model, USERS)
    batch = tokenize(tiny_model, prompts)
    logits_before = forward(tiny_model, batch)
    runs = [
        learn_melbo(
            tiny_model, prompts,
            MelboConfig(0, target, radius=3.0, n_vectors=2, steps=4, lr=0.02, site=site, mode="parallel", fast=fast),
            progress=False,
        )
        for fast in (True, False)
    ]
    assert torch.allclose(runs[0].matrix, runs[1].matrix, atol=1e-4)
    assert runs[0].losses == pytest.approx(runs[1].losses, rel=1e-4)
    assert torch.equal(forward(tiny_model, batch), logits_before)  # no hook or state left behind


def test_mlp_out_bias_equals_resid_pre_bias_one_layer_later(tiny_model):
    prompts = format_chats(tiny_model, USERS[:2])
    mlp = learn_melbo(tiny_model, prompts, MelboConfig(0, 2, radius=3.0, n_vectors=2, steps=4, lr=0.02, site="mlp_out"), progress=False)
    resid = learn_melbo(tiny_model, prompts, MelboConfig(1, 2, radius=3.0, n_vectors=2, steps=4, lr=0.02), progress=False)
    assert mlp.vectors[0].hook_name == "blocks.0.hook_mlp_out"
    assert torch.allclose(mlp.matrix, resid.matrix, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(source_layer=2, target_layer=2, radius=1.0), "source_layer"),
        (dict(source_layer=2, target_layer=1, radius=1.0), "source_layer"),
        (dict(source_layer=0, target_layer=2, radius=0.0), "radius"),
        (dict(source_layer=0, target_layer=2, radius=-3.0), "radius"),
        (dict(source_layer=0, target_layer=2, radius=1.0, n_vectors=0), "n_vectors"),
        (dict(source_layer=0, target_layer=2, radius=1.0, norm_axis="tokens"), "norm_axis"),
        (dict(source_layer=0, target_layer=2, radius=1.0, site="attn_out"), "site"),
    ],
)
def test_bad_config_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        MelboConfig(**kwargs)


def test_bad_layers_and_prompts_name_the_argument(tiny_model):
    prompts = format_chats(tiny_model, USERS[:1])
    with pytest.raises(ValueError, match="source_layer"):
        learn_melbo(tiny_model, prompts, MelboConfig(-1, 1, radius=1.0), progress=False)  # -1 is layer 2 >= 1
    with pytest.raises(ValueError, match="target_layer"):
        learn_melbo(tiny_model, prompts, MelboConfig(0, 7, radius=1.0), progress=False)
    with pytest.raises(ValueError, match="prompts"):
        learn_melbo(tiny_model, [], MelboConfig(0, 2, radius=1.0), progress=False)
    assert resolve_layers(tiny_model, 0, 3).stop_at_layer is None  # the final residual stream is a valid target


# ------------------------------------------------------------------------------------------------
# Helpers


def test_target_layer_vectors_subtract_the_others(tiny_model):
    prompts = format_chats(tiny_model, USERS[:2])
    result = learn_melbo(tiny_model, prompts, MelboConfig(0, 2, radius=3.0, n_vectors=3, steps=3, lr=0.02), progress=False)
    changes = target_changes(tiny_model, prompts, result)
    targets = target_layer_vectors(tiny_model, prompts, result)
    assert [t.hook_name for t in targets] == ["blocks.2.hook_resid_pre"] * 3
    assert torch.allclose(targets[0].vector, changes[0] - (changes[1] + changes[2]) / 2, atol=1e-5)
    assert torch.allclose(torch.stack([t.vector for t in targets]).sum(0), torch.zeros(32), atol=1e-4)
    with pytest.raises(ValueError, match="result"):
        single = learn_melbo(tiny_model, prompts, MelboConfig(0, 2, radius=3.0, n_vectors=1, steps=1), progress=False)
        target_layer_vectors(tiny_model, prompts, single)

    # Reconstruction in a dictionary that holds the vector's direction among random atoms: one atom suffices.
    atoms = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    atoms[17] = targets[0].vector
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    rebuilt = sparse_reconstruction(targets[0], atoms, k=2)
    assert isinstance(rebuilt, Direction) and rebuilt.layer == 2
    assert rebuilt.meta["features"][0] == 17
    assert rebuilt.meta["cosine_to_parent"] > 0.999


def test_batched_steered_generations_equal_one_steer_at_a_time(tiny_model):
    prompts = format_chats(tiny_model, USERS[:2])
    result = learn_melbo(tiny_model, prompts, MelboConfig(0, 2, radius=3.0, n_vectors=2, steps=2, lr=0.02), progress=False)
    scales = [0.0, 1.0, 2.0]
    texts = steered_generations(tiny_model, prompts, result.vectors, scales, max_new_tokens=5, batch_rows=5, progress=False)
    for v, direction in enumerate(result.vectors):
        for s, scale in enumerate(scales):
            expected = generate(tiny_model, prompts, interventions=[Steer(direction, scale)] if scale else [], max_new_tokens=5, progress=False)
            assert [texts[v][s][p][0] for p in range(2)] == expected
    probabilities = next_token_probability(tiny_model, prompts, result.vectors, scales, [5, 6])
    assert probabilities.shape == (2, 3) and torch.all((probabilities >= 0) & (probabilities <= 1))


def test_radius_sweep_and_pick_radius(tiny_model):
    # Linear, then a superlinear step between 4 and 8, then saturation: the regime changes at 8.
    assert pick_radius([1, 2, 4, 8, 16], [1, 2, 4, 20, 25]) == 8
    assert pick_radius([1, 2, 4], [1, 2, 4]) in (2, 4)  # no regime change: the steepest segment's end
    with pytest.raises(ValueError, match="radii"):
        pick_radius([1.0], [1.0])
    prompts = format_chats(tiny_model, USERS[:2])
    sweep = radius_sweep(tiny_model, prompts, MelboConfig(0, 2, radius=1.0, lr=0.02), [0.5, 1.0, 2.0], steps=2, progress=False)
    assert sweep.radii == (0.5, 1.0, 2.0) and sweep.chosen in sweep.radii
    assert all(change > 0 for change in sweep.mean_change)


def test_text_features():
    assert text_features("First, we multiply.")["contains_First"]
    assert not text_features("At first sight")["contains_First"]
    assert text_features("I'm sorry, but I can't help with that.")["refuses"]
    assert text_features("1. one\n2. two\n")["list"]
    assert text_features("*** ---")["starts_with_symbol"]
    assert text_features("the the the the the the the the the the the the the the")["degenerate"]
    assert text_features("It is 15,334,480.", answer="15334480")["correct_answer"]
    assert not text_features("It is 15,334,481.", answer="15334480")["correct_answer"]


# ------------------------------------------------------------------------------------------------
# The experiment, small, on the embedded model


@pytest.mark.integration
@pytest.mark.generation
def test_experiment_runs_on_smollm(smollm, tmp_path, monkeypatch):
    import interp.experiments.melbo as experiment
    from interp.experiments import run_experiment

    monkeypatch.setattr(experiment, "experiment_model", lambda name, device=None: smollm)
    folder = run_experiment(
        "melbo", tmp_path, n_vectors=2, steps=2, sweep_radii=(8.0, 16.0), sweep_steps=1, scales=(1.0,),
        max_new_tokens=3, word_scales=(0.0, 1.0), word_samples=1,
    )
    result = json.loads((folder / "result.json").read_text())
    assert result["radius"] in (8.0, 16.0) and result["target_layer"] == 22
    assert len(result["losses"]) == 2 and len(result["labels"]) == 2
    assert set(result["word_first_token_probability"]) == {"0", "1"}
    summary = (folder / "summary.md").read_text()
    # No dictionary: the SAE shipped for SmolLM2 at the target layer (22) reconstructs the vector.
    assert "SAE reconstruction" in summary and "data/saes" in summary
    shipped = result["sae_reconstruction"]
    assert shipped["status"] == "done" and "blocks.22.hook_resid_pre" in shipped["dictionary"]
    assert len(shipped["features"]) == 8 and 0 < shipped["cosine"] <= 1
    for name in ("radius_sweep.png", "loss_curves.png", "word_vs_scale.png", "word_first_token_all_vectors.png"):
        assert (folder / name).stat().st_size > 0
    vector = Direction.load(folder / "vectors" / "vector0")
    assert vector.source == "melbo" and vector.norm == pytest.approx(result["radius"], rel=1e-4)
    assert Direction.load(folder / "target_vectors" / "vector1").layer == 22

    # With a dictionary (here random atoms standing in for an SAE decoder) the reconstruction runs.
    from safetensors.torch import save_file

    save_file({"W_dec": torch.randn(256, 576, generator=torch.Generator().manual_seed(0))}, str(tmp_path / "sae.safetensors"))
    folder = run_experiment(
        "melbo", tmp_path / "with_sae", radius=16.0, n_vectors=2, steps=1, scales=(1.0,), max_new_tokens=2,
        word_scales=(1.0,), word_samples=1, dictionary=str(tmp_path / "sae.safetensors"), sae_k=4,
    )
    reconstruction = json.loads((folder / "result.json").read_text())["sae_reconstruction"]
    assert reconstruction["status"] == "done" and len(reconstruction["features"]) == 4
    assert 0 < reconstruction["cosine"] <= 1
    assert "cosine" in (folder / "summary.md").read_text()


def test_load_atoms_checks_the_hook(tmp_path):
    from safetensors.torch import save_file

    from interp.experiments.melbo import load_atoms

    (tmp_path / "sae").mkdir()
    save_file({"W_dec": 3 * torch.ones(4, 8)}, str(tmp_path / "sae" / "sae_weights.safetensors"))
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({"hook_name": "blocks.5.hook_resid_pre"}))
    (tmp_path / "sae6").mkdir()  # SAE-Lens 6 layout: the hook under "metadata"
    save_file({"W_dec": torch.ones(4, 8)}, str(tmp_path / "sae6" / "sae_weights.safetensors"))
    (tmp_path / "sae6" / "cfg.json").write_text(json.dumps({"metadata": {"hook_name": "blocks.5.hook_resid_pre"}}))
    assert load_atoms(tmp_path / "sae6", "blocks.22.hook_resid_pre")[0] is None
    atoms, where = load_atoms(tmp_path / "sae", "blocks.5.hook_resid_pre")
    assert atoms.shape == (4, 8) and torch.allclose(atoms.norm(dim=1), torch.ones(4))
    atoms, why = load_atoms(tmp_path / "sae", "blocks.22.hook_resid_pre")
    assert atoms is None and "blocks.5.hook_resid_pre" in why
    assert load_atoms(tmp_path / "missing.safetensors", "x")[0] is None
