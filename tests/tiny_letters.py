"""A tiny random Llama whose word-level vocabulary has the answer letters, for the classifier and probe tests.

(conftest's tiny tokenizer has no "A"/"B"/"(" tokens, so every letter would be <unk>.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import WORDS, save_with_large_weights, word_level_tokenizer

LETTER_WORDS = WORDS + ["answer", "choices", "Answer", "Choices", "(", ")", ":", "A", "B", "C", "D", "?", ".", ","]


def make_letter_tokenizer():
    return word_level_tokenizer(LETTER_WORDS)


def make_letter_model_folder(folder: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_letter_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return save_with_large_weights(LlamaForCausalLM(config), tokenizer, folder)
