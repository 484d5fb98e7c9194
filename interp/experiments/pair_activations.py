"""The sycophancy experiment's per-pair activations at the layers with a shipped SAE, kept beside its vectors.

The sparse experiment reconstructs the same CAA vector (same pairs, format and model) in the SAE at one of
those layers; it reads them here instead of running the 234 training prompts again. `interp reproduce all`
runs sycophancy before sparse (`register(..., reads=...)`). A run whose model, format or pairs differ finds
nothing to reuse and reads the activations itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from jaxtyping import Float
from torch import Tensor

from interp._io import load_tensor_folder, save_tensor_folder
from interp._timing import progress_on
from interp.ab_prompts import ABFormat
from interp.caa import CAAVectors, caa_activations, caa_vectors_of
from interp.datasets import ContrastPair
from interp.dictionaries import hook_layer, shipped_dictionaries
from interp.hooked import HookedModel
from interp.models import REGISTRY, model_name

KIND = "pair-activations"
FOLDER = "pair_activations"
TENSORS_FILE = "activations.safetensors"
JSON_FILE = "activations.json"


def model_folder(out: Path, name: str) -> Path:
    """The sycophancy experiment's folder for model `name` inside its output folder `out`."""
    return out / (name if name in REGISTRY else Path(name).stem)


def pairs_digest(pairs: Sequence[ContrastPair]) -> str:
    """A fingerprint of the pairs as run: each question (with its options) and its matching answer, in order."""
    text = json.dumps([[pair.question, pair.answer_matching, pair.answer_not_matching] for pair in pairs])
    return hashlib.sha256(text.encode()).hexdigest()


def shipped_sae_layers(name: str) -> list[int]:
    """The resid_pre layers at which interp ships an SAE for model `name`."""
    return sorted({layer for hook in shipped_dictionaries(name) if hook.endswith("hook_resid_pre")
                   for layer in [hook_layer(hook)] if layer is not None})


def caa_vectors_keeping_activations(
    model: HookedModel, pairs: Sequence[ContrastPair], fmt: ABFormat, folder: Path, *, batch_size: int = 16,
) -> CAAVectors:
    """`build_caa_vectors(model, pairs, fmt)`, and the per-pair activations at the shipped SAEs' layers saved in
    `folder / FOLDER` (replacing an earlier run's)."""
    matching, not_matching = caa_activations(model, pairs, fmt, batch_size=batch_size, progress=progress_on())
    name = model_name(model)
    layers = shipped_sae_layers(name)
    if layers:
        metadata = {"model": name, "layers": layers, "format": fmt.to_dict(), "pairs": pairs_digest(pairs),
                    "n_pairs": len(pairs)}
        save_tensor_folder(folder / FOLDER, {"matching": matching[:, layers], "not_matching": not_matching[:, layers]},
                           metadata, kind=KIND, tensors_file=TENSORS_FILE, json_file=JSON_FILE, overwrite=True)
    return caa_vectors_of(name, pairs, fmt, matching, not_matching)


def saved_pair_activations(
    folder: Path, name: str, pairs: Sequence[ContrastPair], fmt: ABFormat, layer: int,
) -> tuple[Float[Tensor, "n_pairs 1 d_model"], Float[Tensor, "n_pairs 1 d_model"]] | None:
    """The (matching, not matching) activations at `layer` that `caa_vectors_keeping_activations` saved in `folder`
    for this model, format and these very pairs; None when there are none, or they are of another run."""
    try:
        tensors, meta = load_tensor_folder(folder / FOLDER, kind=KIND, tensors_file=TENSORS_FILE, json_file=JSON_FILE,
                                           tensors=("matching", "not_matching"), keys=("model", "layers", "format", "pairs"))
    except (OSError, ValueError):
        return None
    same_format = meta["format"] == json.loads(json.dumps(fmt.to_dict()))
    if meta["model"] != name or not same_format or meta["pairs"] != pairs_digest(pairs) or layer not in meta["layers"]:
        return None
    index = list(meta["layers"]).index(layer)
    matching, not_matching = (tensors[key][:, index : index + 1] for key in ("matching", "not_matching"))
    if matching.shape[0] != len(pairs) or matching.shape != not_matching.shape:
        return None
    return matching, not_matching
