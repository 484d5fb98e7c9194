"""Writing a trained SAE as an SAE-Lens folder (cfg.json + sae_weights.safetensors) and checking targets first."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from interp._io import atomic_write_dir, atomic_write_json, check_target, fixed_files
from interp.dictionaries import SAE_CONFIG_FILE, SAE_WEIGHTS_FILE
from interp.directions import hook_name
from interp.sae_training.trainer import AnySAE

REPORT_FILE = "training_report.json"
SAVED_BEFORE_MARKERS = fixed_files(SAE_CONFIG_FILE, SAE_WEIGHTS_FILE, REPORT_FILE)  # how older SAE folders look


def save_sae(
    sae: AnySAE,
    folder: str | Path,
    *,
    hook: str,
    model_name: str,
    report: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
    overwrite: bool = False,
) -> Path:
    """Write an SAE-Lens folder (cfg.json, sae_weights.safetensors) plus our training report, atomically.

    `folder` must be new or empty, or hold a saved SAE (replaced only with `overwrite=True`).
    """
    config: dict[str, Any] = {
        "d_in": sae.W_dec.shape[1],
        "d_sae": sae.W_dec.shape[0],
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"hook_name": hook, "model_name": model_name, "trained_with": "interp.sae_training"},
        "architecture": sae.architecture,
    }
    if sae.architecture == "topk":
        config.update({"k": sae.k, "rescale_acts_by_decoder_norm": False})
    # Parameter names are SAE-Lens's for every architecture (a gated SAE: W_enc, b_gate, r_mag, b_mag, W_dec, b_dec).
    weights = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in sae.state_dict().items()}
    with atomic_write_dir(Path(folder), "SAE", overwrite=overwrite, legacy=SAVED_BEFORE_MARKERS) as tmp:
        (tmp / SAE_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_file(weights, str(tmp / SAE_WEIGHTS_FILE))
        if report is not None:
            atomic_write_json(tmp / REPORT_FILE, report)
    return Path(folder)


def check_sae_targets(
    out_root: str | Path, layers: Sequence[int], *, site: str = "resid_pre", overwrite: bool = False,
    argument: str = "out_root",
) -> None:
    """Raise before any work unless an SAE may be saved at `out_root/{hook_name}/` for every layer."""
    for layer in layers:
        check_target(Path(out_root) / hook_name(layer, site), "SAE", overwrite=overwrite, argument=argument,
                     legacy=SAVED_BEFORE_MARKERS)
