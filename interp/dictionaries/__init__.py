"""Every SAE and transcoder a researcher has, as a `Dictionary` that knows where it reads and writes.

| module | job |
|---|---|
| `core` | the `Dictionary` (atoms, norms, encoder, input hook, output hook, skip) and its checks against a model and a `Direction` |
| `encoders` | the `Encoder` and the registry of activation functions (standard, topk, abstopk, jumprelu, gated, groupmax, matching pursuit, ...) |
| `weights` | `build_dictionary`, the one checked path from named tensors to a `Dictionary`; `from_decoder`; safe file reads |
| `readers` | `load_dictionary(source)`: the table of registered readers, placement (`hook_name=` / `layer=` / `output_hook=`) |
| `saelens` | SAE-Lens objects (inference and training), folders, releases |
| `sparsify`, `dictionary_learning`, `gemma_scope`, `circuit_tracer` | other libraries' files, read without importing them |
| `shipped` | the toolkit's own trained SAEs |

Encoding is exact against each source (tests/test_dictionary_exactness.py, tests/test_dictionary_formats.py).
"""

from interp.dictionaries.core import HOOK_HINT, Dictionary, HooklessDictionaryWarning, hook_layer, hook_site
from interp.dictionaries.encoders import ACTIVATIONS, Encoder, register_activation
from interp.dictionaries.readers import READERS, Request, load_dictionary, read_with, register_reader
from interp.dictionaries.saelens import (  # registers the SAE-Lens readers
    ARCHITECTURES,
    GATED_TENSORS,
    SAE_CONFIG_FILE,
    SAE_KIND,
    SAE_WEIGHTS_FILE,
    from_release,
    from_sae,
    from_saelens_folder,
    import_sae_lens,
)
from interp.dictionaries.sparsify import from_sparsify  # noqa: I001  (import order is registration order)
from interp.dictionaries.dictionary_learning import from_dictionary_learning
from interp.dictionaries.gemma_scope import from_gemma_scope
from interp.dictionaries.circuit_tracer import from_circuit_tracer
from interp.dictionaries.shipped import load_shipped_dictionary, shipped_dictionaries, shipped_root
from interp.dictionaries.weights import build_dictionary, from_decoder

__all__ = [
    "ACTIVATIONS", "ARCHITECTURES", "Dictionary", "Encoder", "GATED_TENSORS", "HOOK_HINT", "HooklessDictionaryWarning",
    "READERS", "Request", "SAE_CONFIG_FILE", "SAE_KIND", "SAE_WEIGHTS_FILE", "build_dictionary", "from_circuit_tracer",
    "from_decoder", "from_dictionary_learning", "from_gemma_scope", "from_release", "from_sae", "from_saelens_folder",
    "from_sparsify", "hook_layer", "hook_site", "import_sae_lens", "load_dictionary", "load_shipped_dictionary",
    "read_with", "register_activation", "register_reader", "shipped_dictionaries", "shipped_root",
]
