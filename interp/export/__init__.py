"""GGUF exports for llama.cpp: control vectors from `Direction`s / CAA vectors, and edited (abliterated) models.

- `export_control_vector(direction, "steer.gguf", scale=8.0)`: a llama.cpp control vector that steers as
  `Steer(direction, scale=8.0)` does (resid_pre of layer L is written as `direction.{L-1}`, the output of
  block L − 1, which is where llama.cpp adds it). `read_control_vector` / `load_control_vector` read
  any control-vector GGUF back (repeng's and llama.cpp's `cvector-generator`'s too).
- `abliterate_gguf(source, direction, "abliterated.gguf")`: orthogonalise a GGUF model against a
  direction and write a GGUF with the source's tokenizer and metadata; `export_gguf_model(model,
  source_gguf, path)` writes any weight edit of a model loaded from a GGUF.
- `load_llama`, `apply_control_vector`, `next_token_logprobs`, `greedy_completions`: run those files in
  llama.cpp through llama-cpp-python (an optional dependency, imported on first use).
"""

from interp.export.control_vector import (
    control_vector_buffer,
    control_vector_layers,
    export_control_vector,
    llama_cpp_layer,
    load_control_vector,
    read_control_vector,
)
from interp.export.gguf_model import (
    GGUFExport,
    abliterate_gguf,
    can_quantize,
    dequantize,
    export_gguf_model,
    permute_qk,
    unpermute_qk,
)
from interp.export.llama_client import (
    apply_control_vector,
    clear_control_vector,
    greedy_completions,
    load_llama,
    next_token_logprobs,
)

__all__ = [
    "GGUFExport",
    "abliterate_gguf",
    "apply_control_vector",
    "can_quantize",
    "clear_control_vector",
    "control_vector_buffer",
    "control_vector_layers",
    "dequantize",
    "export_control_vector",
    "export_gguf_model",
    "greedy_completions",
    "llama_cpp_layer",
    "load_control_vector",
    "load_llama",
    "next_token_logprobs",
    "permute_qk",
    "read_control_vector",
    "unpermute_qk",
]
