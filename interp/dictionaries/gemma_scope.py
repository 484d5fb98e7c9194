"""Gemma Scope `params.npz` files (JumpReLU SAEs and transcoders), read without pickle.

The arrays: `W_enc [d_model, d_sae]`, `W_dec [d_sae, d_model]`, `b_enc`, `b_dec`, `threshold`. Gemma Scope's
reference encoder is `pre = x @ W_enc + b_enc` (the input is not centred by `b_dec`), then
`relu(pre)` where `pre > threshold`; the decoder adds `b_dec`.

Where it reads comes from the release's layout, `.../layer_{L}/width_.../average_l0_.../params.npz`, in a
repository named `gemma-scope-*-res` (`blocks.L.hook_resid_post`), `-mlp` (`hook_mlp_out`) or `-transcoders`
(from `ln2.hook_normalized`, the MLP's input, to `hook_mlp_out`); attention SAEs (`-att`) read the heads'
`hook_z` and are refused. Anything else leaves the hook to `hook_name=` (and `output_hook=`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from interp.dictionaries.core import Dictionary
from interp.dictionaries.readers import Request, is_path, read_with, register_reader
from interp.dictionaries.weights import build_dictionary, read_npz

PARAMS_FILE = "params.npz"
TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
_LAYER = re.compile(r"layer_(\d+)")


def release_path(path: Path) -> str:
    """The release's own part of a path: repository / layer / width / l0 / file (what names the hook)."""
    return "/".join(path.resolve().parts[-5:]).lower()


def release_hooks(path: Path, transcoder: bool) -> tuple[str | None, str | None]:
    """(reads, writes) from the release's folder names, or (None, None)."""
    text = release_path(path)
    layers = _LAYER.findall(text)
    if not layers:
        return None, None
    layer = int(layers[-1])
    if transcoder:
        return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    if "-att" in text:
        raise ValueError(f"{path}: a Gemma Scope attention SAE reads the heads' hook_z ([.., heads, d_head]); interp "
                         "reads d_model-wide sites only")
    for tag, site in (("-res", "hook_resid_post"), ("-mlp", "hook_mlp_out")):
        if tag in text:
            return f"blocks.{layer}.{site}", None
    return None, None


def read_gemma_scope(path: Any, request: Request) -> Dictionary:
    """Read a Gemma Scope `params.npz` (SAE or transcoder) as a JumpReLU `Dictionary`.

    Args:
        path: the `params.npz`, or its folder.
        request: the placement the caller asked for; the release path (`layer_12/...`) supplies a layer when
            the request does not.

    Returns:
        The `Dictionary`; as Gemma Scope's reference encoder, it does not subtract `b_dec` before encoding.

    Raises:
        ValueError: an array is missing (`W_enc`, `W_dec`, `b_enc`, `b_dec`, `threshold`) or shapes disagree.
    """
    file = Path(path) / PARAMS_FILE if Path(path).is_dir() else Path(path)
    arrays = read_npz(file)
    missing = [name for name in TENSORS if name not in arrays]
    if missing:
        raise ValueError(f"{file}: missing arrays {missing} (has {sorted(arrays)}); a Gemma Scope params.npz holds {TENSORS}")
    transcoder = "transcoder" in release_path(file) or request.output_hook is not None
    reads, writes = release_hooks(file, transcoder)
    return build_dictionary({name: arrays[name].float() for name in TENSORS}, source=str(file), architecture="jumprelu",
                            apply_b_dec_to_input=False, hook_name=reads, output_hook=writes, transcoder=transcoder,
                            model=request.model, meta={"format": "gemma-scope"})


def from_gemma_scope(path: str | Path, *, model: Any = None, hook_name: str | None = None, layer: int | None = None,
                     output_hook: str | None = None) -> Dictionary:
    """A dictionary from a Gemma Scope `params.npz` (or its folder); `output_hook=` marks a transcoder."""
    return read_with(read_gemma_scope, path, model=model, hook_name=hook_name, layer=layer, output_hook=output_hook)


def _is_params(source: Any) -> bool:
    if not is_path(source):
        return False
    path = Path(source)
    return (path.is_file() and path.suffix == ".npz") or (path.is_dir() and (path / PARAMS_FILE).is_file())


register_reader("Gemma Scope params", _is_params, read_gemma_scope,
                f"a {PARAMS_FILE} (W_enc, W_dec, b_enc, b_dec, threshold), or its folder")
