"""interp: interpretability on TransformerLens and SAE-Lens, offline.

The one-call recipes load on first use (`interp.steering_vector`, `interp.compare`), so `import interp` and the
`interp` command stay fast; everything else lives in its module (`interp.models`, `interp.steering`, ...).
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import Any

try:
    __version__ = metadata.version("interp")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {"steering_vector": "interp.recipes", "compare": "interp.recipes", "Comparison": "interp.recipes"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'interp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
