"""SAE-Lens, whole: every class of its inference registry but `temporal`, in memory, as folders, from releases.

| SAE-Lens architecture | here |
|---|---|
| standard, topk, abstopk, jumprelu, gated, matching_pursuit | an SAE with the activation of the same name |
| transcoder, jumprelu_transcoder | a transcoder (standard / jumprelu), `hook_name` → `hook_name_out` |
| skip_transcoder, jumprelu_skip_transcoder | the same with its skip connection `W_skip` |
| training objects (BatchTopK, Matryoshka, TopK, ...) | converted by SAE-Lens's own `process_state_dict_for_saving_inference`: what `save_inference_model` writes (BatchTopK and Matryoshka become JumpReLU with the learned threshold) |
| temporal | refused: its code of a token depends on the earlier tokens' |

A top-k SAE trained with `rescale_acts_by_decoder_norm` has its decoder norms folded into the encoder on
reading (as SAE-Lens folds them when it saves one): the same codes and reconstructions. A folder is read
without SAE-Lens (`cfg.json` + `sae_weights.safetensors`); objects and releases need the package.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp._io import check_recorded, read_json_object, read_tensors
from interp.dictionaries.core import Dictionary
from interp.dictionaries.readers import Request, folder_with, read_with, register_reader
from interp.dictionaries.weights import build_dictionary

SAE_CONFIG_FILE = "cfg.json"
SAE_WEIGHTS_FILE = "sae_weights.safetensors"
SAE_KIND = "SAE"  # the artifact kind interp's SAE folders are saved as (interp.sae_training)
# SAE-Lens architecture -> (activation, transcoder, skip connection)
KINDS: dict[str, tuple[str, bool, bool]] = {
    "standard": ("standard", False, False), "topk": ("topk", False, False), "abstopk": ("abstopk", False, False),
    "jumprelu": ("jumprelu", False, False), "gated": ("gated", False, False),
    "matching_pursuit": ("matching_pursuit", False, False), "transcoder": ("standard", True, False),
    "skip_transcoder": ("standard", True, True), "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}
ARCHITECTURES = tuple(KINDS)
GATED_TENSORS = ("W_dec", "W_enc", "b_gate", "b_mag", "r_mag", "b_dec")
REFUSED = {
    "temporal": "a temporal SAE's code of a token depends on the codes of the tokens before it, which no "
                "position-wise dictionary can hold",
    "batchtopk": "a BatchTopK training config; save the SAE with save_inference_model (SAE-Lens writes it as "
                 "jumprelu), or pass the training object itself",
    "matryoshka_batchtopk": "a Matryoshka training config; save the SAE with save_inference_model (SAE-Lens writes it "
                            "as jumprelu), or pass the training object itself",
}
MP_OPTIONS = ("residual_threshold", "max_iterations", "stop_on_duplicate_support")


def required_tensors(architecture: str) -> tuple[str, ...]:
    """The tensor names an SAE-Lens architecture's weights file must hold.

    Args:
        architecture: an SAE-Lens architecture name (`"standard"`, `"topk"`, `"jumprelu"`, `"gated"`, ...).

    Returns:
        The names, e.g. `("W_dec", "W_enc", "b_enc", "b_dec", "threshold")` for JumpReLU.
    """
    activation, _, skip = KINDS[architecture]
    if architecture == "gated":
        return GATED_TENSORS
    if architecture == "matching_pursuit":
        return ("W_dec", "b_dec")
    return ("W_dec", "W_enc", "b_enc", "b_dec") + (("threshold",) if activation == "jumprelu" else ()) + (
        ("W_skip",) if skip else ())


def dictionary_from_saelens(weights: dict[str, Tensor], config: dict[str, Any], source: str,
                            request: Request) -> Dictionary:
    """A dictionary from SAE-Lens's state dict and config (what `cfg.json` and `SAEConfig.to_dict` hold)."""
    architecture = config.get("architecture", "standard")
    if not isinstance(architecture, str):
        raise ValueError(f"{source}: architecture: expected the name of an SAE-Lens architecture (one of {ARCHITECTURES}), "
                         f"got {architecture!r}")
    if architecture in REFUSED:
        raise ValueError(f"{source}: architecture: {architecture!r} is not supported: {REFUSED[architecture]}")
    if architecture not in KINDS:
        raise ValueError(f"{source}: architecture: {architecture!r} is not supported (expected one of {ARCHITECTURES})")
    if config.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{source}: normalize_activations: {config['normalize_activations']!r} SAEs rescale their input; fold the scaling "
            "into the weights first (SAE-Lens: sae.fold_activation_norm_scaling_factor)")
    if config.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"{source}: reshape_activations: {config['reshape_activations']!r} SAEs read per-head "
                         "activations ([.., heads, d_head]); interp reads d_model-wide sites only")
    metadata = config.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{source}: metadata: expected an object, got {metadata!r}")
    activation, transcoder, _ = KINDS[architecture]
    weights = dict(weights)
    for name in required_tensors(architecture):
        if name not in weights:
            raise ValueError(f"{source}: a {architecture} SAE needs tensor {name!r} (has {sorted(weights)})")
    if architecture == "gated":
        weights["b_enc"] = weights.pop("b_gate")
    options: dict[str, Any] = {}
    if architecture == "matching_pursuit":
        # Tied: the encoder is the decoder's transpose; its decode adds b_dec only when the input is centred by it.
        weights["W_enc"], weights["b_enc"] = weights["W_dec"].T, torch.zeros(weights["W_dec"].shape[0])
        if not config.get("apply_b_dec_to_input", True):
            weights["b_dec"] = torch.zeros_like(weights["b_dec"])
        options = {name: config[name] for name in MP_OPTIONS if name in config}
    if config.get("rescale_acts_by_decoder_norm") and architecture in ("topk", "abstopk"):
        weights = fold_decoder_norms(weights)
    n_atoms, d_in = weights["W_dec"].shape[0], weights["W_enc"].shape[0]
    for key, actual in (("d_in", d_in), ("d_sae", n_atoms)):
        if config.get(key) is not None and config[key] != actual:
            raise ValueError(f"{source}: the config says {key} = {config[key]!r} but the weights have {actual}")
    def recorded(key: str) -> Any:
        # SAE-Lens 6 writes these under "metadata", older versions at the top level; two different values
        # mean the file was edited by hand, and neither can be trusted over the other.
        inner, outer = metadata.get(key), config.get(key)
        if inner is not None and outer is not None and inner != outer:
            raise ValueError(f"{source}: {key} is {outer!r} at the top level but {inner!r} under metadata; "
                             "make them agree (or remove one)")
        return inner if inner is not None else outer

    extra = {key: value for key, value in metadata.items() if key not in ("hook_name", "hook_name_out", "model_name")}
    return build_dictionary(
        weights, source=source, architecture=activation, k=config.get("k"), options=options,
        apply_b_dec_to_input=config.get("apply_b_dec_to_input", True), hook_name=recorded("hook_name"),
        output_hook=recorded("hook_name_out"), transcoder=transcoder, model=request.model or recorded("model_name"),
        meta={"architecture": architecture, "format": "sae-lens", **extra})


def fold_decoder_norms(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Decoder norms into the encoder: the scores SAE-Lens multiplies by ‖W_dec‖, the codes it divides by it."""
    norms = weights["W_dec"].float().norm(dim=-1)
    return {**weights, "W_enc": weights["W_enc"].float() * norms, "b_enc": weights["b_enc"].float() * norms,
            "W_dec": weights["W_dec"].float() / norms[:, None]}


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------


def is_saelens_object(source: Any) -> bool:
    """Whether `source` looks like an SAE-Lens SAE in memory (`W_dec`, `b_dec`, `cfg`; not a sparsify coder)."""
    return hasattr(source, "W_dec") and hasattr(source, "cfg") and hasattr(source, "b_dec") and not hasattr(source, "encoder")


def object_weights(sae: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The weights and config SAE-Lens would save: a training SAE converted by its own inference-saving code."""
    if callable(getattr(sae, "process_state_dict_for_saving_inference", None)) and callable(
            getattr(sae.cfg, "get_inference_sae_cfg_dict", None)):
        state = {name: tensor.detach().clone() for name, tensor in sae.state_dict().items()}
        sae.process_state_dict_for_saving_inference(state)
        return state, sae.cfg.get_inference_sae_cfg_dict()
    config = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else dict(vars(sae.cfg))
    if callable(getattr(sae.cfg, "architecture", None)):
        config["architecture"] = sae.cfg.architecture()
    metadata = config.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        config["metadata"] = metadata.to_dict() if hasattr(metadata, "to_dict") else dict(vars(metadata))
    names = ("W_dec", "W_enc", "b_enc", "b_dec", "threshold", "b_gate", "b_mag", "r_mag", "W_skip")
    weights = {name: getattr(sae, name).detach() for name in names
               if isinstance(getattr(sae, name, None), Tensor) and not (config.get("architecture") == "matching_pursuit"
                                                                         and name == "W_enc")}
    return weights, config


def read_saelens_object(sae: Any, request: Request) -> Dictionary:
    """Read an SAE-Lens SAE object (inference or training class) as a `Dictionary`.

    Args:
        sae: the SAE-Lens object.
        request: the placement the caller asked for.

    Returns:
        The `Dictionary` (weights copied to float32).

    Raises:
        TypeError: the object lacks `W_dec`, `b_dec` or `cfg`.
    """
    missing = [name for name in ("W_dec", "b_dec", "cfg") if not hasattr(sae, name)]
    if missing:
        raise TypeError(f"sae: expected an SAE-Lens SAE (with W_dec, W_enc, b_enc, b_dec, cfg); missing {missing}")
    weights, config = object_weights(sae)
    return dictionary_from_saelens({k: v.float() for k, v in weights.items()}, config,
                                   f"sae-lens {config.get('architecture', 'standard')}", request)


def from_sae(sae: Any, *, model: Any = None, source: str | None = None, hook_name: str | None = None,
             layer: int | None = None, output_hook: str | None = None) -> Dictionary:
    """A dictionary from an SAE-Lens SAE, transcoder or training SAE object (see the module's table)."""
    def read(sae: Any, request: Request) -> Dictionary:
        dictionary = read_saelens_object(sae, request)
        return dictionary if source is None else replace(dictionary, source=source)

    return read_with(read, sae, model=model, hook_name=hook_name, layer=layer, output_hook=output_hook)


# ---------------------------------------------------------------------------------------------
# Folders and releases
# ---------------------------------------------------------------------------------------------


def read_saelens_folder(path: Any, request: Request) -> Dictionary:
    """Read an SAE-Lens folder (`cfg.json` + `sae_weights.safetensors`) as a `Dictionary`.

    Args:
        path: the folder.
        request: the placement the caller asked for (the config's `hook_name` otherwise).

    Returns:
        The `Dictionary`, encoding exactly as SAE-Lens's `encode` does.

    Raises:
        FileNotFoundError: one of the two files is missing.
        ValueError: an architecture interp does not read, a recorded SHA-256 that does not match (edited
            or corrupt), or config and tensors that disagree.
    """
    folder = Path(path)
    config_path, weights_path = folder / SAE_CONFIG_FILE, folder / SAE_WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"path: {folder} is not an SAE-Lens folder (expected {SAE_CONFIG_FILE} and {SAE_WEIGHTS_FILE})")
    check_recorded(folder, SAE_KIND, required=(SAE_CONFIG_FILE, SAE_WEIGHTS_FILE), verify=request.verify)
    config = read_json_object(config_path)
    architecture = config.get("architecture", "standard")
    known = isinstance(architecture, str) and architecture in KINDS  # anything else is refused, by name, below
    tensors = read_tensors(weights_path, required_tensors(architecture) if known else ())
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{weights_path}: {name}: expected floating-point values, got {tensor.dtype}")
    return dictionary_from_saelens({name: tensor.float() for name, tensor in tensors.items()}, config, str(folder),
                                   request)


def from_saelens_folder(path: str | Path, *, model: Any = None, verify: bool = True, hook_name: str | None = None,
                        layer: int | None = None, output_hook: str | None = None) -> Dictionary:
    """A dictionary from an SAE-Lens folder (`cfg.json` + `sae_weights.safetensors`), read without SAE-Lens.

    A folder interp saved must match the SHA-256 its marker records; `verify=False` reads one edited on
    purpose (its config is then checked as any new input's is). Folders SAE-Lens wrote have no marker.
    """
    return read_with(read_saelens_folder, path, model=model, hook_name=hook_name, layer=layer,
                     output_hook=output_hook, verify=verify)


def import_sae_lens() -> Any:
    """The `sae_lens` module, or an ImportError that names the extra to install."""
    try:
        import sae_lens
    except ImportError as error:
        raise ImportError(
            "SAE-Lens releases need the optional dependency sae-lens: pip install 'interp[sae]' "
            f"(it requires transformer-lens<4); the import failed with: {error}"
        ) from error
    return sae_lens


def from_release(release: str, sae_id: str, *, device: str = "cpu", model: Any = None, hook_name: str | None = None,
                 layer: int | None = None, output_hook: str | None = None) -> Dictionary:
    """A dictionary from a SAE-Lens pretrained release (downloads from the hub: needs a network)."""
    sae = import_sae_lens().SAE.from_pretrained(release, sae_id, device=device)
    return from_sae(sae, model=model, source=f"{release}/{sae_id}", hook_name=hook_name, layer=layer,
                    output_hook=output_hook)


register_reader("SAE-Lens object", is_saelens_object, read_saelens_object,
                "an SAE-Lens SAE, transcoder or training SAE in memory (W_enc, W_dec, b_dec, cfg)", order=10)
register_reader("SAE-Lens folder", folder_with(SAE_CONFIG_FILE, SAE_WEIGHTS_FILE), read_saelens_folder,
                f"a folder with {SAE_CONFIG_FILE} and {SAE_WEIGHTS_FILE} (SAE-Lens save_model; interp's trained SAEs)")
