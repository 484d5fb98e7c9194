"""dictionary_learning (Marks et al.) checkpoints: `ae.pt` + `config.json`, read without the package.

`ae.pt` is a state dict (loaded with `torch.load(weights_only=True)`: data only); `config.json`'s `trainer` block
names the class (`dict_class`) and the layer, model (`lm_name`) and submodule (`submodule_name`). Each class
as dictionary_learning 0.1.0's `dictionary.py` / `trainers/*.py` encode (the checkpoint's weights as they are:
`AutoEncoder.from_pretrained` also rescales an un-normalised decoder by default, which changes the features'
scale, not the reconstruction):

| dict_class | tensors | encode | here |
|---|---|---|---|
| AutoEncoder | encoder.weight/bias, decoder.weight, bias | relu(encoder(x − bias)) | standard |
| AutoEncoderNew | encoder.weight/bias, decoder.weight/bias | relu(encoder(x)) | standard, no centring |
| GatedAutoEncoder | encoder.weight, decoder_bias, gate_bias, mag_bias, r_mag, decoder.weight | gate × relu(magnitude) | gated |
| JumpReluAutoEncoder | W_enc, b_enc, W_dec, b_dec, threshold | relu(pre · (pre > threshold)) | jumprelu, no centring |
| AutoEncoderTopK | encoder.weight/bias, decoder.weight, b_dec, k | top k of relu(encoder(x − b_dec)) | topk |
| BatchTopKSAE | the same, threshold | relu(...) where > threshold (inference) | jumprelu |
| MatryoshkaBatchTopKSAE | W_enc, b_enc, W_dec, b_dec, k, threshold, group_sizes | as BatchTopKSAE | jumprelu |

The hook point comes from `submodule_name` (`resid_post_layer_3` → `blocks.3.hook_resid_post`; likewise
resid_pre, mlp_out, attn_out) with `layer`; another name leaves it unknown (pass `hook_name=`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp._io import read_json_object
from interp.dictionaries.core import Dictionary
from interp.dictionaries.readers import Request, is_path, read_with, register_reader
from interp.dictionaries.weights import build_dictionary, read_torch_state

WEIGHTS_FILE, CONFIG_FILE = "ae.pt", "config.json"
_SITE = re.compile(r"(resid_pre|resid_mid|resid_post|mlp_out|attn_out)")


def _linear(prefix: str) -> dict[str, str]:
    return {"W_enc": f"{prefix}encoder.weight", "W_dec": f"{prefix}decoder.weight"}


# dict_class -> (architecture, centred input, our name -> its tensor name; W_enc/W_dec named by nn.Linear are transposed)
CLASSES: dict[str, tuple[str, bool, dict[str, str]]] = {
    "AutoEncoder": ("standard", True, {**_linear(""), "b_enc": "encoder.bias", "b_dec": "bias"}),
    "AutoEncoderNew": ("standard", False, {**_linear(""), "b_enc": "encoder.bias", "b_dec": "decoder.bias"}),
    "GatedAutoEncoder": ("gated", True, {**_linear(""), "b_enc": "gate_bias", "b_dec": "decoder_bias",
                                         "b_mag": "mag_bias", "r_mag": "r_mag"}),
    "JumpReluAutoEncoder": ("jumprelu", False, {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec",
                                                "threshold": "threshold"}),
    "AutoEncoderTopK": ("topk", True, {**_linear(""), "b_enc": "encoder.bias", "b_dec": "b_dec"}),
    "BatchTopKSAE": ("jumprelu", True, {**_linear(""), "b_enc": "encoder.bias", "b_dec": "b_dec", "threshold": "threshold"}),
    "MatryoshkaBatchTopKSAE": ("jumprelu", True, {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec",
                                                  "threshold": "threshold"}),
}


def _weights(state: dict[str, Tensor], names: dict[str, str], path: Path) -> dict[str, Tensor]:
    missing = [theirs for theirs in names.values() if theirs not in state]
    if missing:
        raise ValueError(f"{path}: missing tensors {missing} (has {sorted(state)})")
    weights = {ours: state[theirs] for ours, theirs in names.items()}
    for ours in ("W_enc", "W_dec"):
        if names[ours].endswith(".weight"):  # nn.Linear stores [out, in]
            weights[ours] = weights[ours].T
    return weights


def read_dictionary_learning(path: Any, request: Request) -> Dictionary:
    """Read a dictionary_learning checkpoint (`ae.pt` + `config.json`) as a `Dictionary`, without importing the library.

    The weights are read with `torch.load(weights_only=True)`; the `trainer` block of the config names the
    class (AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder, AutoEncoderTopK, BatchTopKSAE, ...), its sizes
    and its layer.

    Args:
        path: the checkpoint's folder, or its `ae.pt`.
        request: the placement the caller asked for.

    Returns:
        The `Dictionary`, encoding exactly as the library's class does.

    Raises:
        FileNotFoundError: no `config.json` beside the weights.
        ValueError: a class interp does not read, or tensors that do not match the config.
    """
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    weights_path, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: a dictionary_learning checkpoint needs its config.json beside ae.pt")
    trainer = read_json_object(config_path).get("trainer")
    if not isinstance(trainer, dict):
        raise ValueError(f"{config_path}: expected a 'trainer' object (dict_class, activation_dim, dict_size, ...)")
    dict_class = trainer.get("dict_class")
    if not isinstance(dict_class, str) or dict_class not in CLASSES:
        raise ValueError(f"{config_path}: dict_class: {dict_class!r} is not one interp reads (expected one of {tuple(CLASSES)})")
    architecture, centred, names = CLASSES[dict_class]
    state = read_torch_state(weights_path)
    weights = {name: tensor.float() for name, tensor in _weights(state, names, weights_path).items()}
    k = trainer.get("k", int(state["k"]) if "k" in state else None)
    if architecture == "jumprelu" and weights["threshold"].ndim == 0:  # BatchTopK's one learned threshold
        weights["threshold"] = torch.full((weights["W_dec"].shape[0],), float(weights["threshold"]))
    for key, actual in (("activation_dim", weights["W_dec"].shape[1]), ("dict_size", weights["W_dec"].shape[0])):
        if trainer.get(key) is not None and trainer[key] != actual:
            raise ValueError(f"{config_path}: {key} = {trainer[key]!r} but {weights_path.name} has {actual}")
    layer, submodule = trainer.get("layer"), trainer.get("submodule_name") or ""
    site = _SITE.search(str(submodule))
    hook = f"blocks.{layer}.hook_{site.group(1)}" if site and isinstance(layer, int) and not isinstance(layer, bool) else None
    meta = {"format": "dictionary_learning", "dict_class": dict_class, "submodule_name": submodule}
    if "group_sizes" in state:
        meta["group_sizes"] = state["group_sizes"].tolist()
    # An nn.Linear encoder with a bias computes its score with the bias fused in; the others add it after.
    fused = names["W_enc"].endswith(".weight") and names["b_enc"] == "encoder.bias"
    return build_dictionary(weights, source=str(folder), architecture=architecture, k=k, apply_b_dec_to_input=centred,
                            fused_bias=fused,
                            hook_name=hook, model=request.model or trainer.get("lm_name"), meta=meta)


def from_dictionary_learning(path: str | Path, *, model: Any = None, hook_name: str | None = None,
                             layer: int | None = None) -> Dictionary:
    """A dictionary from a dictionary_learning checkpoint folder (or its `ae.pt`)."""
    return read_with(read_dictionary_learning, path, model=model, hook_name=hook_name, layer=layer)


def _is_checkpoint(source: Any) -> bool:
    if not is_path(source):
        return False
    path = Path(source)
    return (path.is_dir() and (path / WEIGHTS_FILE).is_file()) or (path.is_file() and path.name == WEIGHTS_FILE)


register_reader("dictionary_learning checkpoint", _is_checkpoint, read_dictionary_learning,
                f"a folder with {WEIGHTS_FILE} (a state dict) and {CONFIG_FILE} (its trainer block), or that {WEIGHTS_FILE}")
