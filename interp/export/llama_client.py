"""Running exported GGUFs in llama.cpp through llama-cpp-python: control vectors, next-token log-probs, greedy text.

llama-cpp-python's `Llama` has no control-vector option (llama.cpp's `--control-vector` lives in its
`common` library, which the binding does not ship), so `apply_control_vector` builds the buffer that
library would (`interp.export.control_vector_buffer`) and hands it to `llama_set_adapter_cvec`.
Everything here takes token ids as well as text, so a comparison with interp can feed both engines the
same tokens. `import llama_cpp` happens on first use: install it with `pip install llama-cpp-python`.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from interp._checks import whole_number
from interp.export.control_vector import control_vector_buffer


def llama_cpp_module() -> Any:
    """The `llama_cpp` package, or an ImportError that says how to install it."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ImportError(
            "llama-cpp-python is needed to run GGUFs in llama.cpp: pip install llama-cpp-python "
            "(it builds llama.cpp from source with the machine's C++ compiler and cmake)"
        ) from error
    return llama_cpp


def load_llama(path: str | os.PathLike[str], *, n_ctx: int = 1024, n_threads: int | None = None, seed: int = 0,
               repack: bool = False) -> Any:
    """A `llama_cpp.Llama` for the GGUF at `path`, on the CPU, quiet, with last-position logits only.

    `repack`: let llama.cpp repack weights into its extra CPU buffer types (AMX / AVX-512 kernels). Off by
    default: on virtual machines that advertise AMX without preserving its tile state, those kernels die
    with an illegal instruction (seen here, Xeon under Firecracker), and these checks need the plain path.
    """
    llama_cpp = llama_cpp_module()
    whole_number(n_ctx, "n_ctx", minimum=16)
    threads = n_threads if n_threads is not None else max(1, min(4, os.cpu_count() or 1))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: {path} is not a file")
    from llama_cpp import llama as high_level

    # `Llama` takes its model parameters from llama_model_default_params() and has no use_extra_bufts
    # option; the defaults are swapped only while it loads.
    defaults = high_level.llama_cpp.llama_model_default_params

    def without_repacking() -> Any:
        params = defaults()
        params.use_extra_bufts = repack
        return params

    high_level.llama_cpp.llama_model_default_params = without_repacking
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                               n_gpu_layers=0, seed=seed, verbose=False)
    finally:
        high_level.llama_cpp.llama_model_default_params = defaults


def _check_llama(llm: Any) -> None:
    if not hasattr(llm, "ctx") or not hasattr(llm, "n_embd"):
        raise TypeError(f"llm: expected a llama_cpp.Llama, got {type(llm).__name__}")


def apply_control_vector(
    llm: Any,
    control_vector: str | os.PathLike[str] | Mapping[int, np.ndarray],
    *,
    strength: float = 1.0,
    layer_range: tuple[int, int] | None = None,
) -> None:
    """Steer `llm` with a control vector (a GGUF path, or {block k: vector}) × `strength`, as
    `llama-cli --control-vector-scaled path strength` does; `layer_range` = (first, last) block, inclusive."""
    llama_cpp = llama_cpp_module()
    _check_llama(llm)
    buffer, n_embd = control_vector_buffer(control_vector, strength)
    if n_embd != llm.n_embd():
        raise ValueError(f"control_vector: width {n_embd} does not match the model's n_embd {llm.n_embd()}")
    n_layer = llama_cpp.llama_model_n_layer(llm.model)
    blocks = len(buffer) // n_embd  # block k's vector sits at n_embd · (k − 1): the last block k is this
    if blocks > n_layer - 1:
        raise ValueError(f"control_vector: it steers the output of block {blocks}, but the model has {n_layer} blocks "
                         f"(0..{n_layer - 1}); llama.cpp would ignore it")
    first, last = _layer_range(layer_range, n_layer)
    pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    if llama_cpp.llama_set_adapter_cvec(llm.ctx, pointer, buffer.size, n_embd, first, last) != 0:
        raise RuntimeError("llama.cpp refused the control vector (llama_set_adapter_cvec failed)")
    llm.reset()  # cached keys and values were computed without (or with another) vector


def _layer_range(layer_range: Any, n_layer: int) -> tuple[int, int]:
    """`layer_range` (first, last block, inclusive) checked against the model's blocks; None: all it can steer."""
    if layer_range is None:
        return 1, n_layer - 1
    pair = tuple(layer_range) if isinstance(layer_range, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) for b in pair) \
            or not 1 <= pair[0] <= pair[1] < n_layer:
        raise ValueError(f"layer_range: expected (first, last) blocks with 1 <= first <= last <= {n_layer - 1}, "
                         f"got {layer_range!r}")
    return pair


def clear_control_vector(llm: Any) -> None:
    """Remove the control vector from `llm`."""
    llama_cpp = llama_cpp_module()
    _check_llama(llm)
    llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, llm.n_embd(), -1, -1)
    llm.reset()


def tokens_of(llm: Any, prompt: str | Sequence[int]) -> list[int]:
    """Token ids of `prompt`: ids as given, text by llama.cpp's tokenizer (special tokens parsed, no BOS added)."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompts: every prompt must be a non-empty string")
        return llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    ids = [int(token) for token in prompt]
    if not ids:
        raise ValueError("prompts: every prompt needs at least one token")
    return ids


def _last_logits(llm: Any, tokens: list[int]) -> np.ndarray:
    llama_cpp = llama_cpp_module()
    llm.reset()
    llm.eval(tokens)
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float64)


def next_token_logprobs(llm: Any, prompts: Sequence[str | Sequence[int]]) -> Float[np.ndarray, "n d_vocab"]:
    """log-softmax of llama.cpp's next-token logits at the last position of each prompt (float64)."""
    _check_llama(llm)
    rows = []
    for prompt in prompts:
        logits = _last_logits(llm, tokens_of(llm, prompt))
        shifted = logits - logits.max()
        rows.append(shifted - np.log(np.exp(shifted).sum()))
    return np.stack(rows)


def greedy_completions(llm: Any, prompts: Sequence[str | Sequence[int]], *, max_new_tokens: int = 24) -> list[str]:
    """Greedy (argmax) continuations of each prompt, stopped at an end-of-generation token, as text."""
    llama_cpp = llama_cpp_module()
    _check_llama(llm)
    whole_number(max_new_tokens, "max_new_tokens", minimum=1)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    texts = []
    for prompt in prompts:
        tokens = tokens_of(llm, prompt)
        if len(tokens) + max_new_tokens > llm.n_ctx():
            raise ValueError(f"prompts: {len(tokens)} tokens + {max_new_tokens} new exceed the context of {llm.n_ctx()}")
        new: list[int] = []
        logits = _last_logits(llm, tokens)
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            new.append(token)
            llm.eval([token])
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        texts.append(llm.detokenize(new).decode("utf-8", errors="replace"))
    return texts
