"""`SteeringVectors`: arithmetic laws and refusals, per-layer geometry, the artifact, one intervention equal to
the single-layer ones, clamping and the positions rule in generation, and the peers' files and objects."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from interp._io import ArtifactExistsError
from interp.caa import CAAVectors, build_caa_vectors, build_steering_vectors
from interp.chat import format_chats, tokenize
from interp.directions import Direction
from interp.export import export_control_vector, load_control_vector, read_control_vector
from interp.hooked import forward
from interp.models import model_name
from interp.runner import generate
from interp.steering import Ablate, Clamp, HookIntervention, Steer, apply_all
from interp.vectors import SteeringVectors, from_peer

USERS = ["hello", "what is the capital of france ?", "tell me a joke about the sea", "yes"]


def vectors(layers=(0, 2), width=8, seed=0, model="m", site="resid_pre", source="test") -> SteeringVectors:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVectors(torch.randn(len(layers), width, generator=generator), tuple(layers), model, source, site)


def model_vectors(model, layers=(0, 2), seed=0, scale=3.0) -> SteeringVectors:
    v = vectors(layers, model.cfg.d_model, seed, model=model_name(model))
    return v * scale


# ---------------------------------------------------------------------------------------------
# The object, arithmetic and geometry (no model)
# ---------------------------------------------------------------------------------------------


def test_layers_are_kept_sorted_and_distinct_and_the_repr_is_short():
    v = SteeringVectors(torch.stack([torch.ones(4), 2 * torch.ones(4)]), (5, 3), "m", "caa")
    assert v.layers == (3, 5) and torch.equal(v.vectors[0], 2 * torch.ones(4))
    assert v.direction(5).vector.tolist() == [1.0] * 4 and [d.layer for d in v] == [3, 5] and len(v) == 2
    assert repr(v) == "SteeringVectors('caa', model='m', resid_pre layers [3, 5], d_model=4, norm 2–4)"
    assert "blocks.5.hook_resid_pre" in v._repr_html_()
    assert "layers [0–9]" in repr(vectors(range(10)))
    with pytest.raises(ValueError, match="at most once"):
        SteeringVectors(torch.zeros(2, 4), (1, 1), "m", "x")
    with pytest.raises(ValueError, match="one layer each"):
        SteeringVectors(torch.zeros(3, 4), (1, 2), "m", "x")
    with pytest.raises(ValueError, match="NaN"):
        SteeringVectors(torch.full((1, 4), float("nan")), (1,), "m", "x")
    with pytest.raises(ValueError, match="site"):
        SteeringVectors(torch.zeros(1, 4), (1,), "m", "x", site="resid_somewhere")


def test_arithmetic_laws():
    v, w = vectors((0, 2), seed=0), vectors((2, 3), seed=1)
    back = v + w - w
    assert back.layers == (0, 2, 3)  # the union of the layers; w's own layer is exactly zero again
    torch.testing.assert_close(back.select(v.layers).vectors, v.vectors)
    assert not back.select(3).vectors.any()
    torch.testing.assert_close(((2.0 + 3.5) * v).vectors, (2.0 * v + 3.5 * v).vectors)  # scalar distributivity
    torch.testing.assert_close((1.5 * (v + w)).vectors, (1.5 * v + 1.5 * w).vectors)
    torch.testing.assert_close((v + w).vectors, (w + v).vectors)
    torch.testing.assert_close((v / 4).vectors, (0.25 * v).vectors)
    assert torch.equal((-v).vectors, (v * -1).vectors) and torch.equal((v - v).vectors, torch.zeros_like(v.vectors))
    assert torch.equal(sum([v, w]).vectors, (v + w).vectors)
    d = Direction(torch.ones(8), layer=2, model="m", source="d")
    torch.testing.assert_close((v + d).direction(2).vector, v.direction(2).vector + 1)
    assert (v * np.float32(2.0)).vectors.dtype == torch.float32


def test_refusals_name_what_differs():
    v = vectors()
    with pytest.raises(ValueError, match="refused across models"):
        v + vectors(model="other")
    with pytest.raises(ValueError, match="refused across sites"):
        v - vectors(site="resid_post")
    with pytest.raises(ValueError, match="refused across widths"):
        v + vectors(width=9)
    with pytest.raises(ValueError, match="refused across models"):
        v.cosine(vectors(model="other"))
    with pytest.raises(TypeError, match="expected a number"):
        v * v
    with pytest.raises(TypeError, match="expected a number"):
        v * True
    with pytest.raises(ZeroDivisionError):
        v / 0
    with pytest.raises(ValueError, match="finite"):
        v * float("inf")
    with pytest.raises(ValueError, match="overflows"):
        v * 1e39
    with pytest.raises(ValueError, match="same layers"):
        v.cosine(vectors((0, 1)))
    with pytest.raises(ValueError, match="is zero"):
        (v - v).unit()


def test_geometry_per_layer():
    v, w = vectors(seed=0), vectors(seed=1)
    expected = torch.nn.functional.cosine_similarity(v.vectors, w.vectors, dim=-1)
    torch.testing.assert_close(v.cosine(w), expected)
    torch.testing.assert_close(v.norms(), v.vectors.norm(dim=-1))
    torch.testing.assert_close(v.unit().norms(), torch.ones(2))
    torch.testing.assert_close(v.with_norms(torch.tensor([2.0, 5.0])).norms(), torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(v.with_norms(3.0).cosine(v), torch.ones(2))
    removed = v.project_out(w)
    torch.testing.assert_close(removed.cosine(w), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close((removed + v.component_along(w)).vectors, v.vectors)
    one = torch.zeros(8)
    one[0] = 1.0
    assert not v.project_out(one).vectors[:, 0].any()  # a plain vector: the same direction at every layer
    assert torch.allclose(v.cosine(v), torch.ones(2))


def test_save_load_round_trip_and_damage(tmp_path):
    v = vectors((1, 4, 6))
    v = SteeringVectors(v.vectors, v.layers, "m", "pca_diff", "resid_post", {"dataset": "x"})
    v.save(tmp_path / "v")
    back = SteeringVectors.load(tmp_path / "v")
    assert torch.equal(back.vectors, v.vectors) and back.layers == v.layers and back.site == "resid_post"
    assert back.meta == {"dataset": "x"} and back.source == "pca_diff"
    with pytest.raises(ArtifactExistsError):
        v.save(tmp_path / "v")
    v.save(tmp_path / "v", overwrite=True)
    (tmp_path / "v" / "vectors.json").write_text((tmp_path / "v" / "vectors.json").read_text().replace('"m"', '"n"'))
    with pytest.raises(ValueError, match="vectors.json"):
        SteeringVectors.load(tmp_path / "v")
    assert SteeringVectors.load(tmp_path / "v", verify=False).model == "n"
    with pytest.raises(FileNotFoundError, match="vectors.safetensors"):
        SteeringVectors.load(Direction(torch.ones(3), 1, "m", "x").save(tmp_path / "d"))


def test_from_directions_and_sites():
    a, b = (Direction(torch.randn(8), layer=layer, model="m", source="caa") for layer in (3, 1))
    v = SteeringVectors.from_directions([a, b])
    assert v.layers == (1, 3) and v.source == "caa" and torch.equal(v.direction(3).vector, a.vector)
    with pytest.raises(ValueError, match="differ in model"):
        SteeringVectors.from_directions([a, Direction(torch.randn(8), layer=2, model="n", source="caa")])
    post = v.as_site("resid_post")
    assert post.layers == (0, 2) and post.as_site("resid_pre").layers == (1, 3)
    with pytest.raises(ValueError, match="same tensor"):
        v.as_site("mlp_out")


# ---------------------------------------------------------------------------------------------
# Interventions on a tiny model
# ---------------------------------------------------------------------------------------------


def residuals(model, batch, names, *interventions):
    seen = {}

    def record(name):
        def hook(activation, hook):
            seen[name] = activation.detach().clone()
        return hook

    with apply_all(model, *interventions, HookIntervention([(name, record(name)) for name in names])):
        logits = forward(model, batch)
    return seen, logits


def test_one_steer_of_vectors_equals_the_sum_of_single_layer_steers(tiny_model):
    v = model_vectors(tiny_model, (0, 2))
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS))
    names = v.hook_names
    plain, _ = residuals(tiny_model, batch, names)
    together, logits = residuals(tiny_model, batch, names, Steer(v, 1.5))
    _, separate = residuals(tiny_model, batch, names, *[Steer(d, 1.5) for d in v])
    assert torch.equal(logits, separate)
    # At the first steered layer the change is exactly 1.5 × that layer's vector (later ones also carry its effect).
    torch.testing.assert_close(together[names[0]] - plain[names[0]], 1.5 * v.vectors[0].expand_as(plain[names[0]]))
    prompts = format_chats(tiny_model, USERS)
    kwargs = dict(max_new_tokens=6, stop_at_eos=False, progress=False)
    one = generate(tiny_model, prompts, interventions=[Steer(v, 1.5, positions="new")], **kwargs)
    assert one == generate(tiny_model, prompts, interventions=[Steer(d, 1.5, positions="new") for d in v], **kwargs)
    assert one != generate(tiny_model, prompts, **kwargs)


def test_clamp_sets_the_projection_and_ablate_removes_it(tiny_model):
    v = model_vectors(tiny_model, (1, 2))
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS))
    clamped, _ = residuals(tiny_model, batch, v.hook_names, Clamp(v, (2.0, -3.0)))
    for value, name, unit in zip((2.0, -3.0), v.hook_names, v.unit().vectors):
        torch.testing.assert_close(clamped[name] @ unit, torch.full(clamped[name].shape[:2], value), atol=1e-4, rtol=0)
    ablated, _ = residuals(tiny_model, batch, v.hook_names, Ablate(v))
    for name, unit in zip(v.hook_names, v.unit().vectors):
        assert float((ablated[name] @ unit).abs().max()) < 1e-4
    assert torch.equal(residuals(tiny_model, batch, v.hook_names, Ablate(v))[1],
                       residuals(tiny_model, batch, v.hook_names, *[Ablate(d, hook_names=(d.hook_name,)) for d in v])[1])
    with pytest.raises(ValueError, match="one per layer"):
        Clamp(v, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="select"):
        Steer(v, layer=1)


def test_a_token_index_counts_on_each_prompts_real_tokens(tiny_model):
    """positions=i changes every token from each prompt's i-th real token on, past its left padding."""
    d = model_vectors(tiny_model, (1,)).direction(1)
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS))
    plain, _ = residuals(tiny_model, batch, [d.hook_name])
    clamped, _ = residuals(tiny_model, batch, [d.hook_name], Clamp(d, 5.0, positions=3))
    projection = clamped[d.hook_name] @ d.unit().vector
    changed = (clamped[d.hook_name] - plain[d.hook_name]).norm(dim=-1) > 1e-6
    for row, length in enumerate(batch.lengths.tolist()):
        first = batch.input_ids.shape[1] - length  # the first real column of a left-padded row
        assert not changed[row, : first + 3].any() and changed[row, first + 3 :].all()
        torch.testing.assert_close(projection[row, first + 3 :], torch.full((length - 3,), 5.0), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="token index"):
        Steer(d, positions=-1)


@pytest.mark.parametrize("make", [lambda v: Steer(v, 2.0, positions=4), lambda v: Clamp(v, 4.0, positions="new"),
                                  lambda v: Ablate(v, positions=2)])
def test_operators_in_generation_agree_on_every_path(tiny_model, make):
    """With and without the KV cache, batched and one at a time, on the plain-HF fast path and the bridge."""
    intervention = make(model_vectors(tiny_model, (0, 2), scale=6.0))
    prompts = format_chats(tiny_model, USERS)
    kwargs = dict(interventions=[intervention], max_new_tokens=6, stop_at_eos=False, progress=False)
    cached = generate(tiny_model, prompts, **kwargs)
    assert cached == generate(tiny_model, prompts, use_cache=False, **kwargs)
    assert cached == generate(tiny_model, prompts, fast=False, **kwargs)
    assert cached == [generate(tiny_model, [p], **kwargs)[0] for p in prompts]
    assert cached != generate(tiny_model, prompts, max_new_tokens=6, stop_at_eos=False, progress=False)


def test_operators_on_a_split_model_equal_the_unsplit_model(tmp_path_factory):
    """Layer 1, the embedding, the final norm and the head offloaded to disk: the vectors follow each layer's device."""
    from test_split_model import split_map
    from tiny_letters import make_letter_model_folder

    from interp.models import load_model

    folder = make_letter_model_folder(tmp_path_factory.mktemp("split-vectors"))
    unsplit = load_model(folder, device="cpu")
    split = load_model(folder, device_map=split_map(3, {1}, embed="disk"), offload_folder=tmp_path_factory.mktemp("off"))
    v = model_vectors(unsplit, (1, 2), scale=6.0)
    prompts = format_chats(unsplit, USERS)
    for intervention in (Steer(v, 1.0, positions=2), Clamp(v, 3.0, positions="new"), Ablate(v)):
        kwargs = dict(interventions=[intervention], max_new_tokens=5, stop_at_eos=False, progress=False)
        expected = generate(unsplit, prompts, **kwargs)
        for fast, use_cache in ((True, True), (False, False)):
            assert generate(split, prompts, fast=fast, use_cache=use_cache, **kwargs) == expected


# ---------------------------------------------------------------------------------------------
# Building: CAA yields one; every aggregator from one pass
# ---------------------------------------------------------------------------------------------


def test_caa_vectors_yield_steering_vectors():
    caa = CAAVectors(torch.randn(4, 8), torch.full((4,), 10.0), model="m", n_pairs=3)
    v = caa.to_vectors([1, 3], "resid")
    assert v.layers == (1, 3) and v.source == "caa"
    torch.testing.assert_close(v.norms(), torch.full((2,), 10.0))
    torch.testing.assert_close(v.direction(3).vector, caa.direction(3, "resid").vector)
    assert torch.equal(caa.to_vectors().vectors, caa.vectors)


def test_build_steering_vectors_in_one_pass(letter_model):
    from test_caa import LETTER_FORMAT, tiny_pairs

    pairs = tiny_pairs(12)
    built = build_steering_vectors(letter_model, pairs, LETTER_FORMAT, layers=[1, 3],
                                   aggregators=["mean_difference", "pca_center", "logistic"], progress=False)
    caa = build_caa_vectors(letter_model, pairs, LETTER_FORMAT, progress=False)
    torch.testing.assert_close(built["mean_difference"].vectors, caa.to_vectors([1, 3]).vectors)
    assert built["pca_center"].layers == (1, 3) and torch.allclose(built["logistic"].norms(), torch.ones(2))
    assert (built["pca_center"].cosine(built["mean_difference"]) > 0).all()  # oriented like the mean difference
    with pytest.raises(ValueError, match="aggregators"):
        build_steering_vectors(letter_model, pairs, LETTER_FORMAT, aggregators=["nope"], progress=False)


@pytest.fixture(scope="module")
def letter_model(tmp_path_factory):
    from test_caa import make_agreement_letter_folder

    from interp.models import load_model

    return load_model(make_agreement_letter_folder(tmp_path_factory.mktemp("letters")), device="cpu")


# ---------------------------------------------------------------------------------------------
# The peers' files and objects
# ---------------------------------------------------------------------------------------------


def write_peer_gguf(path, directions: dict, *, count_type=gguf.GGUFValueType.UINT32, hint="llama"):
    """A control vector as repeng's `export_gguf` (and, with an int32 layer count, llama.cpp's cvector-generator)
    writes it: no interp keys, `direction.{k}` in the writer's own order, numbered by block output."""
    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_string("controlvector.model_hint", hint)
    writer.add_key_value("controlvector.layer_count", len(directions), count_type)
    for k, vector in directions.items():
        writer.add_tensor(f"direction.{k}", vector)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_repeng_layout_file_imports_with_the_right_layers(tiny_model, tmp_path):
    """repeng trains the outputs of decoder layers n−1 … 1 (its default) and writes them last first."""
    width = tiny_model.cfg.d_model
    rng = np.random.default_rng(0)
    directions = {2: rng.normal(size=width).astype(np.float32), 1: rng.normal(size=width).astype(np.float32)}
    path = write_peer_gguf(tmp_path / "repeng.gguf", directions)
    v = load_control_vector(path, tiny_model)  # 3 blocks: block 2 is the last, so resid_post names them
    assert v.site == "resid_post" and v.layers == (1, 2) and v.meta["blocks"] == [1, 2]
    assert v.model == model_name(tiny_model) and v.meta["model_hint"] == "llama"
    assert np.array_equal(v.direction(2).vector.numpy(), directions[2])
    # The output of block 1 is resid_post of 1 and resid_pre of 2: the same steering either way.
    batch = tokenize(tiny_model, format_chats(tiny_model, USERS))
    one = v.select(1)
    assert torch.allclose(residuals(tiny_model, batch, [], Steer(one, 2.0))[1],
                          residuals(tiny_model, batch, [], Steer(one.as_site("resid_pre"), 2.0))[1], atol=1e-5)
    earlier = load_control_vector(write_peer_gguf(tmp_path / "one.gguf", {1: directions[1]}), "m")
    assert earlier.site == "resid_pre" and earlier.layers == (2,)  # no block count known: our usual naming
    with pytest.raises(ValueError, match="no resid_pre"):
        load_control_vector(path, tiny_model, site="resid_pre")


def test_llama_cpp_and_repeng_arithmetic_layouts(tmp_path):
    width = 6
    cvector = {k: np.full(width, float(k), dtype=np.float32) for k in (1, 2, 3)}
    path = write_peer_gguf(tmp_path / "cvector.gguf", cvector, count_type=gguf.GGUFValueType.INT32, hint="")
    assert sorted(read_control_vector(path)) == [1, 2, 3]  # llama.cpp's own checks pass
    v = load_control_vector(path, "m", n_layers=4)
    assert v.site == "resid_post" and v.layers == (1, 2, 3)
    # repeng after `vector * np.float64(...)` writes F64, and with hidden_layers including 0, direction.0.
    arithmetic = {0: np.ones(width), 1: np.arange(width, dtype=np.float64)}
    path = write_peer_gguf(tmp_path / "f64.gguf", arithmetic)
    with pytest.raises(ValueError, match="direction.0"):
        read_control_vector(path)
    with pytest.warns(UserWarning, match="llama.cpp refuses"):
        v = load_control_vector(path, "m")
    assert v.layers == (1, 2) and v.vectors.dtype == torch.float32
    assert v.direction(2).vector.tolist() == list(range(width))


def test_our_export_round_trips_bit_for_bit(tmp_path):
    v = vectors((2, 5), width=16, seed=3)
    path = export_control_vector(v, tmp_path / "ours.gguf", n_layers=8)
    back = load_control_vector(path, "m", n_layers=8)
    assert back.layers == v.layers and back.site == "resid_pre" and torch.equal(back.vectors, v.vectors)
    assert back.meta["interp"]["directions"][0]["layer"] == 2


def test_peer_objects_by_duck_typing():
    class SteeringVector:  # steering-vectors' shape: {layer: tensor}, the decoder block's output
        def __init__(self, layer_activations, layer_type="decoder_block"):
            self.layer_activations, self.layer_type = layer_activations, layer_type

    class ControlVector:  # repeng's shape: {layer: numpy array}, model_type
        def __init__(self, directions):
            self.model_type, self.directions = "llama", directions

    sv = from_peer(SteeringVector({3: torch.ones(4), 1: torch.zeros(4)}), "m")
    assert sv.layers == (2, 4) and sv.site == "resid_pre" and sv.source == "steering-vectors"
    cv = from_peer(ControlVector({5: np.ones(4, dtype=np.float32)}), "m", n_layers=6)
    assert cv.layers == (5,) and cv.site == "resid_post" and cv.meta["model_type"] == "llama"
    with pytest.raises(ValueError, match="layer_type 'mlp'"):
        from_peer(SteeringVector({1: torch.ones(4)}, "mlp"), "m")
    with pytest.raises(TypeError, match="layer_activations"):
        from_peer(object(), "m")
