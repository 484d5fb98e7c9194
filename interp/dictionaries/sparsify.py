"""EleutherAI sparsify (`SparseCoder`): folders of `cfg.json` + `sae.safetensors`, read without the package.

The format (sparsify 1.3, `SparseCoder.save_to_disk`): `cfg.json` holds its `SparseCoderConfig` (activation
"topk" or "groupmax", k, num_latents, transcode, skip_connection, ...) plus `d_in`; `sae.safetensors` holds
`encoder.weight [num_latents, d_in]`, `encoder.bias`, `W_dec [num_latents, d_out]`, `b_dec [d_out]` and
`W_skip [d_out, d_in]` with a skip connection. `encode` subtracts `b_dec` unless it transcodes, then
relu(linear) and the top k (or the maximum of each of k groups). Published repositories hold one folder per
hookpoint, named after the HF module: `layers.12` (that layer's output: `blocks.12.hook_resid_post`),
`layers.12.mlp` (the MLP: an SAE on `hook_mlp_out`, a transcoder from `ln2.hook_normalized`, the MLP's input,
to `hook_mlp_out`); a folder of several is read with `hook_name=` or `layer=` choosing one. An in-memory
`SparseCoder` is read the same way from its state dict.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from interp._io import read_json_object, read_tensors
from interp.dictionaries.core import Dictionary
from interp.dictionaries.readers import Request, folder_with, is_path, read_with, register_reader
from interp.dictionaries.weights import build_dictionary

CONFIG_FILE, WEIGHTS_FILE = "cfg.json", "sae.safetensors"
ACTIVATIONS = {"topk": "topk", "groupmax": "groupmax"}
_HOOKPOINT = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?$")


def hookpoint_hooks(hookpoint: str, transcoder: bool) -> tuple[str | None, str | None]:
    """(reads, writes) for a sparsify hookpoint name, or (None, None) when the name says nothing we know."""
    match = _HOOKPOINT.search(hookpoint)
    if match is None:
        return None, None
    layer, module = match.group(1), match.group(2)
    if module is None:
        return (None, None) if transcoder else (f"blocks.{layer}.hook_resid_post", None)
    if module == "mlp":
        if transcoder:
            return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
        return f"blocks.{layer}.hook_mlp_out", None
    return (None, None) if transcoder else (f"blocks.{layer}.hook_attn_out", None)


def dictionary_from_sparsify(tensors: dict[str, Tensor], config: dict[str, Any], source: str, hookpoint: str,
                             request: Request) -> Dictionary:
    """A `Dictionary` from sparsify's tensors and config (an SAE or a transcoder, with or without a skip).

    Args:
        tensors: `encoder.weight` [num_latents, d_in], `encoder.bias`, `W_dec` [num_latents, d_in], `b_dec`,
            optionally `W_skip`.
        config: sparsify's `cfg.json` (with `d_in`).
        source: a label for errors and `Dictionary.source`.
        hookpoint: sparsify's hookpoint name (e.g. `"layers.12"`), or `""`.
        request: the placement the caller asked for.

    Returns:
        The `Dictionary`, encoding as `SparseCoder.encode` does (top-k or groupmax).

    Raises:
        ValueError: an activation interp does not read, or a tensor missing or of the wrong shape.
    """
    activation = config.get("activation", "topk")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:  # a list in an edited cfg is refused, not a TypeError
        raise ValueError(f"{source}: activation: {activation!r} is not a sparsify activation interp reads "
                         f"(expected one of {tuple(ACTIVATIONS)})")
    transcoder = bool(config.get("transcode", False))
    for name in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"):
        if name not in tensors:
            raise ValueError(f"{source}: missing tensor {name!r} (has {sorted(tensors)}); a decoder-less SparseCoder "
                             "cannot be a dictionary")
    if bool(config.get("skip_connection", False)) != ("W_skip" in tensors):
        raise ValueError(f"{source}: skip_connection is {config.get('skip_connection')!r} but W_skip is "
                         f"{'present' if 'W_skip' in tensors else 'missing'}")
    if config.get("d_in") is not None and config["d_in"] != tensors["encoder.weight"].shape[-1]:
        raise ValueError(f"{source}: the config says d_in = {config['d_in']!r} but encoder.weight has "
                         f"{tensors['encoder.weight'].shape[-1]}")
    weights = {"W_enc": tensors["encoder.weight"].T, "b_enc": tensors["encoder.bias"], "W_dec": tensors["W_dec"],
               "b_dec": tensors["b_dec"], **({"W_skip": tensors["W_skip"]} if "W_skip" in tensors else {})}
    reads, writes = hookpoint_hooks(hookpoint, transcoder)
    return build_dictionary(
        weights, source=source, architecture=ACTIVATIONS[activation], k=config.get("k"), fused_bias=True,
        apply_b_dec_to_input=not transcoder, hook_name=reads, output_hook=writes, transcoder=transcoder,
        model=request.model, meta={"format": "sparsify", "hookpoint": hookpoint, "activation": activation})


def hookpoint_folders(root: Path) -> dict[str, Path]:
    """The sparsify hookpoint folders under `root` (each with `cfg.json` and `sae.safetensors`), by name."""
    return {folder.name: folder for folder in sorted(root.iterdir())
            if folder.is_dir() and (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()}


def choose_hookpoint(root: Path, request: Request) -> Path:
    """The hookpoint folder of a multi-hookpoint folder that reads at the requested hook or layer."""
    folders = hookpoint_folders(root)
    if request.hook_name is None and request.layer is None and len(folders) == 1:
        return next(iter(folders.values()))
    wanted = []
    for name, folder in folders.items():
        transcoder = bool(read_json_object(folder / CONFIG_FILE).get("transcode", False))
        reads, _ = hookpoint_hooks(name, transcoder)
        layer = int(_HOOKPOINT.search(name).group(1)) if _HOOKPOINT.search(name) else None
        if (request.hook_name is not None and reads == request.hook_name) or (
                request.hook_name is None and request.layer is not None and layer == request.layer):
            wanted.append(folder)
    if len(wanted) != 1:
        asked = f"hook_name={request.hook_name!r}" if request.hook_name else f"layer={request.layer!r}"
        found = "none" if not wanted else f"{len(wanted)} ({[folder.name for folder in wanted]})"
        raise ValueError(f"{root}: holds sparsify hookpoints {sorted(folders)}; {asked} matches {found}: pass the "
                         "hookpoint's folder, or hook_name= / layer= naming exactly one")
    return wanted[0]


def read_sparsify_folder(path: Any, request: Request) -> Dictionary:
    """Read a sparsify folder (one hookpoint, or a run of several: `request` chooses) as a `Dictionary`.

    Args:
        path: a hookpoint folder (`cfg.json` + `sae.safetensors`) or the run folder holding them.
        request: the placement the caller asked for.

    Returns:
        The `Dictionary`.

    Raises:
        ValueError: a run folder with several hookpoints and none chosen.
    """
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        folder = choose_hookpoint(folder, request)
    config = read_json_object(folder / CONFIG_FILE)
    tensors = read_tensors(folder / WEIGHTS_FILE)
    return dictionary_from_sparsify({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()},
                                    config, str(folder), folder.name, request)


def is_sparse_coder(source: Any) -> bool:
    """Whether `source` looks like a sparsify `SparseCoder` in memory."""
    return hasattr(source, "encoder") and hasattr(source, "W_dec") and hasattr(getattr(source, "cfg", None), "transcode")


def read_sparse_coder(coder: Any, request: Request) -> Dictionary:
    """Read a sparsify `SparseCoder` object as a `Dictionary`.

    Raises:
        ValueError: the coder was loaded without its decoder (`decoder=False`).
    """
    if coder.W_dec is None:
        raise ValueError("source: this SparseCoder was loaded without its decoder (decoder=False)")
    config = {**(coder.cfg.to_dict() if hasattr(coder.cfg, "to_dict") else dict(vars(coder.cfg))), "d_in": coder.d_in}
    tensors = {name: tensor.detach().float() for name, tensor in coder.state_dict().items()}
    return dictionary_from_sparsify(tensors, config, f"sparsify {config.get('activation', 'topk')}", "", request)


def from_sparsify(path: str | Path, *, model: Any = None, hook_name: str | None = None, layer: int | None = None,
                  output_hook: str | None = None) -> Dictionary:
    """A dictionary from a sparsify folder (one hookpoint, or several with `hook_name=` / `layer=` choosing)."""
    return read_with(read_sparsify_folder, path, model=model, hook_name=hook_name, layer=layer, output_hook=output_hook)


def _is_sparsify_folder(source: Any) -> bool:
    return folder_with(CONFIG_FILE, WEIGHTS_FILE)(source) or (
        is_path(source) and Path(source).is_dir() and bool(hookpoint_folders(Path(source))))


register_reader("sparsify object", is_sparse_coder, read_sparse_coder,
                "an EleutherAI sparsify SparseCoder in memory", order=11)
register_reader("sparsify folder", _is_sparsify_folder, read_sparsify_folder,
                f"a folder with {CONFIG_FILE} and {WEIGHTS_FILE} (sparsify save_to_disk), or a folder of such "
                "hookpoint folders (choose one with hook_name= or layer=)")
