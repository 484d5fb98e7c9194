"""What a model is without loading its weights: name, width, depth and context, from a loaded model, a registry
entry, an HF folder's config.json or a GGUF file's metadata; the checks that use them before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf

from interp.models.registry import REGISTRY


def model_context(model: Any) -> int | None:
    """A model's context length without loading its weights: a loaded model's `cfg.n_ctx`, a registry entry's,
    a local HF folder's config.json (`max_position_embeddings`), a .gguf file's `{arch}.context_length`; None
    where unknown (a hub name) or unreadable (`model_dimensions` names such a file)."""
    if hasattr(model, "cfg") and hasattr(model.cfg, "n_ctx"):
        return int(model.cfg.n_ctx)
    path = Path(model).expanduser() if isinstance(model, (str, os.PathLike)) else None
    if path is None or str(model) in REGISTRY:
        return REGISTRY[str(model)].n_ctx if path is not None else None
    try:
        if path.is_file() and path.suffix == ".gguf":
            reader = gguf.GGUFReader(path)
            arch = reader.get_field("general.architecture").contents()
            value = reader.get_field(f"{arch}.context_length").contents()
        else:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            config = config.get("text_config") or config
            value = next(config[key] for key in ("max_position_embeddings", "n_positions", "n_ctx") if key in config)
    except Exception:  # noqa: BLE001 (absent, unreadable or without the field: unknown)
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def within_context(tokens: int, model: Any, argument: str) -> None:
    """Raise (naming `argument`) when `tokens` positions do not fit the context of `model`, where it is known."""
    context = model_context(model)
    if context is not None and tokens > context:
        name = model if isinstance(model, (str, os.PathLike)) else model_name(model)
        raise ValueError(f"{argument}: {tokens:,} tokens exceed the context of {str(name)!r} ({context:,} positions)")


def model_name(model: Any) -> str:
    """The name `Direction`s record for `model`: `interp_name` if we loaded it, else its cfg name."""
    return getattr(model, "interp_name", None) or str(getattr(model.cfg, "model_name", "unknown"))


def model_dimensions(model: Any, argument: str = "model") -> tuple[str | None, int | None, int | None]:
    """(name, d_model, n_layers) of a model without loading its weights: a loaded model (hooked or HF), a
    registry name, a local HF folder (its config.json) or a .gguf file (its metadata); None where unknown
    (a hub name). The name is the one `Direction`s record (None for files: a path can be spelled many ways).
    A folder or file that cannot be read is an error naming `argument`."""
    if hasattr(model, "cfg") and hasattr(model.cfg, "n_layers"):  # a bridge or HookedTransformer
        return model_name(model), int(model.cfg.d_model), int(model.cfg.n_layers)
    if hasattr(model, "config") and hasattr(model, "named_parameters"):  # an HF model
        config = getattr(model.config, "text_config", None) or model.config
        return getattr(model, "interp_name", None), config.hidden_size, config.num_hidden_layers
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"{argument}: expected a model name, a folder, a .gguf file or a loaded model, got "
                        f"{type(model).__name__}")
    if str(model) in REGISTRY:
        spec = REGISTRY[str(model)]
        return spec.name, spec.d_model, spec.n_layers
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return (None, *gguf_dimensions(path, argument))
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{argument}: {path} is not an HF model folder (config.json: {error})") from None
        config = config.get("text_config") or config if isinstance(config, dict) else {}
        width = next((config[key] for key in ("hidden_size", "n_embd", "d_model") if key in config), None)
        depth = next((config[key] for key in ("num_hidden_layers", "n_layer", "num_layers") if key in config), None)
        return (None, width if isinstance(width, int) else None, depth if isinstance(depth, int) else None)
    return None, None, None


def open_gguf(path: str | os.PathLike[str], argument: str) -> gguf.GGUFReader:
    """A memory-mapped reader of the GGUF at `path`; a missing or unreadable file is an error naming `argument`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument}: expected the path of a .gguf file, got {type(path).__name__}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{argument}: {path} is not a file")
    try:
        return gguf.GGUFReader(path)
    except Exception as error:  # the reader raises ValueError, struct.error, IndexError ... on damaged files
        raise ValueError(f"{argument}: {path} is not a readable GGUF file ({type(error).__name__}: {error})") from None


def field_value(reader: gguf.GGUFReader, key: str, argument: str) -> object:
    """The value of metadata `key`; a GGUF that lacks it is an error naming `argument`."""
    field = reader.get_field(key)
    if field is None:
        raise ValueError(f"{argument}: the GGUF has no {key!r} metadata")
    return field.contents()


def gguf_dimensions(path: str | os.PathLike[str], argument: str) -> tuple[int, int]:
    """(d_model, n_layers) of a model GGUF, from its `{arch}.embedding_length` and `{arch}.block_count`."""
    reader = open_gguf(path, argument)
    arch = str(field_value(reader, "general.architecture", argument))
    width, blocks = (field_value(reader, f"{arch}.{key}", argument) for key in ("embedding_length", "block_count"))
    if isinstance(width, bool) or not isinstance(width, int) or isinstance(blocks, bool) or not isinstance(blocks, int):
        raise ValueError(f"{argument}: {path}: {arch}.embedding_length / block_count are not whole numbers")
    return width, blocks
