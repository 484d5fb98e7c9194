"""circuit-tracer per-layer transcoders (PLTs), read without the package; cross-layer transcoders refused.

A transcoder set is a folder of `layer_{i}.safetensors` files (circuit-tracer's `TranscoderSet.to_safetensors`)
with, in published sets, a `config.yaml` naming `feature_input_hook` / `feature_output_hook` (TransformerLens
names inside a block: `hook_resid_mid`, `ln2.hook_normalized`, `mlp.hook_in` → `hook_mlp_out`, `mlp.hook_out`),
`model_name`, and for top-k sets `activation: topk` and `k`. Each file holds `W_enc [d_transcoder, d_model]`
(rows, unlike SAE-Lens), `W_dec [d_transcoder, d_model]`, `b_enc`, `b_dec`, and optionally
`activation_function.threshold`, `k` and `W_skip [d_model, d_model]`. circuit-tracer encodes
`pre = x @ W_enc.T + b_enc` (no centring), then JumpReLU `pre · (pre > threshold)` (no relu: the "threshold"
activation), TopK (the k largest kept as they are: "topk_signed") or relu; it decodes `acts @ W_dec + b_dec`
plus `x @ W_skip.T`. One layer is read: the file's, or `layer=` / `hook_name=` choosing in a folder.

Cross-layer transcoders (`W_enc_{i}.safetensors` / `W_dec_{i}.safetensors`: each layer's features write to
every later layer's MLP output) are refused: a `Dictionary` reads one site and writes one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from interp._io import read_tensors
from interp.dictionaries.core import Dictionary, hook_layer
from interp.dictionaries.readers import Request, is_path, read_with, register_reader
from interp.dictionaries.weights import build_dictionary

CONFIG_FILE = "config.yaml"
_LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors$")
_CLT_FILE = re.compile(r"W_(?:enc|dec)_\d+\.safetensors$")
THRESHOLD = "activation_function.threshold"
CROSS_LAYER = ("cross-layer transcoders are not supported: each layer's features write to every later layer's MLP "
               "output, while a Dictionary reads one site and writes one (load the per-layer transcoders instead)")


def read_config(folder: Path) -> dict[str, Any]:
    """circuit-tracer's `config.yaml` in `folder` as a dict (empty when there is none).

    Raises:
        ValueError: the file is not valid YAML, or not a mapping.
    """
    path = folder / CONFIG_FILE
    if not path.is_file():
        return {}
    import yaml  # a dependency of transformers

    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping (feature_input_hook, feature_output_hook, transcoders, ...)")
    return config


def layer_files(folder: Path) -> dict[int, Path]:
    """The per-layer transcoder files in `folder`, by layer number (read from each file's name)."""
    return {int(_LAYER_FILE.search(path.name).group(1)): path for path in sorted(folder.iterdir())
            if _LAYER_FILE.search(path.name)}


def choose_file(path: Path, request: Request) -> tuple[Path, int | None]:
    """The per-layer transcoder file a request names, and its layer.

    Args:
        path: a layer file, or a folder of them (`layer_N.safetensors` and the like).
        request: what the caller asked for (`layer=` or `hook_name=`).

    Returns:
        The file and its layer (None when neither the file name nor the request gives one).

    Raises:
        ValueError: a folder of several layers and no layer asked for, or the asked layer is not there.
    """
    if path.is_file():
        match = _LAYER_FILE.search(path.name)
        return path, int(match.group(1)) if match else request.layer
    files = layer_files(path)
    wanted = request.layer if request.layer is not None else hook_layer(request.hook_name)
    if wanted is None and len(files) == 1:
        wanted = next(iter(files))
    if wanted not in files:
        raise ValueError(f"{path}: holds per-layer transcoders for layers {sorted(files)}; pass layer= (or hook_name=) "
                         f"naming one of them, got {wanted!r}")
    return files[wanted], wanted


def read_circuit_tracer(path: Any, request: Request) -> Dictionary:
    """Read a circuit-tracer per-layer transcoder (ReLU, JumpReLU or TopK, with or without a skip) as a `Dictionary`.

    Args:
        path: a layer file or a folder of them (with its `config.yaml`, if any).
        request: the placement the caller asked for (`layer=`, `hook_name=`, `output_hook=`).

    Returns:
        A transcoder `Dictionary` reading the MLP input and writing `blocks.L.hook_mlp_out`.

    Raises:
        ValueError: a cross-layer transcoder (its features write to every later layer: refused), or missing
            or malformed tensors.
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    config = read_config(folder)
    if any(_CLT_FILE.search(file.name) for file in folder.iterdir()) or "cross" in str(config.get("model_kind", "")):
        raise ValueError(f"{folder}: {CROSS_LAYER}")
    file, layer = choose_file(path, request)
    tensors = read_tensors(file, ("W_enc", "W_dec", "b_enc", "b_dec"))
    weights = {"W_enc": tensors["W_enc"].float().T, "W_dec": tensors["W_dec"].float(), "b_enc": tensors["b_enc"].float(),
               "b_dec": tensors["b_dec"].float()}
    if "W_skip" in tensors:
        weights["W_skip"] = tensors["W_skip"].float()
    architecture, k = "standard", None
    if THRESHOLD in tensors:
        architecture, weights["threshold"] = "threshold", tensors[THRESHOLD].float()
    elif "k" in tensors or config.get("activation") == "topk":
        architecture, k = "topk_signed", int(tensors["k"]) if "k" in tensors else config.get("k")
    reads = writes = None
    if layer is not None and config.get("feature_input_hook") and config.get("feature_output_hook"):
        reads = f"blocks.{layer}.{config['feature_input_hook']}"
        writes = f"blocks.{layer}.{config['feature_output_hook']}"
    return build_dictionary(weights, source=str(file), architecture=architecture, k=k, apply_b_dec_to_input=False,
                            fused_bias=True,
                            hook_name=reads, output_hook=writes, transcoder=True,
                            model=request.model or config.get("model_name"),
                            meta={"format": "circuit-tracer", "layer": layer})


def from_circuit_tracer(path: str | Path, *, model: Any = None, hook_name: str | None = None, layer: int | None = None,
                        output_hook: str | None = None) -> Dictionary:
    """A per-layer transcoder from a circuit-tracer `layer_{i}.safetensors` or a transcoder-set folder."""
    return read_with(read_circuit_tracer, path, model=model, hook_name=hook_name, layer=layer, output_hook=output_hook)


def _is_circuit_tracer(source: Any) -> bool:
    if not is_path(source):
        return False
    path = Path(source)
    if path.is_dir():
        return (path / CONFIG_FILE).is_file() or bool(layer_files(path)) or any(
            _CLT_FILE.search(file.name) for file in path.iterdir())
    return path.is_file() and bool(_LAYER_FILE.search(path.name) or _CLT_FILE.search(path.name))


register_reader("circuit-tracer transcoders", _is_circuit_tracer, read_circuit_tracer,
                f"a folder of layer_{{i}}.safetensors per-layer transcoders (with its {CONFIG_FILE}), or one such file")
