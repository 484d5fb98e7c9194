"""The toolkit's own trained SAEs: `interp/data/saes/{model}/{hook_name}/`, SAE-Lens folders."""

from __future__ import annotations

from pathlib import Path

from interp.dictionaries.core import Dictionary, hook_layer
from interp.dictionaries.saelens import SAE_CONFIG_FILE, from_saelens_folder


def shipped_root() -> Path:
    """Where the toolkit's own trained SAEs live: `interp/data/saes/{model}/{hook_name}/` (SAE-Lens folders)."""
    return Path(__file__).resolve().parents[1] / "data" / "saes"


def shipped_dictionaries(model: str) -> dict[str, Path]:
    """The shipped SAE folders for registry model `model`, by hook name (empty when none ships)."""
    folder = shipped_root() / model
    if not folder.is_dir():
        return {}
    return {path.name: path for path in sorted(folder.iterdir()) if (path / SAE_CONFIG_FILE).is_file()}


def load_shipped_dictionary(model: str, layer: int | None = None, *, site: str = "resid_pre") -> Dictionary:
    """The shipped SAE of `model` at `blocks.{layer}.hook_{site}` (default: the only one, or the middle one)."""
    available = shipped_dictionaries(model)
    if not available:
        raise FileNotFoundError(f"model: no SAE ships for {model!r} (looked in {shipped_root() / model}); "
                                "train one with `interp train-sae`")
    if layer is None:
        names = sorted(available, key=lambda name: hook_layer(name) or 0)
        hook = names[len(names) // 2]
    else:
        hook = f"blocks.{layer}.hook_{site}"
        if hook not in available:
            raise ValueError(f"layer: no shipped SAE for {model!r} at {hook}; available: {sorted(available)}")
    return from_saelens_folder(available[hook], model=model)
