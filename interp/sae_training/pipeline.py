"""The whole job for a model: corpus -> harvest -> train -> evaluate -> save, one SAE per layer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from interp._io import add_to_artifact
from interp.dictionaries import from_saelens_folder
from interp.directions import hook_name
from interp.hooked import HookedModel, model_device
from interp.sae_training.evaluation import SAEEvaluation, evaluate_sae
from interp.sae_training.harvest import Harvest, harvest_activations
from interp.sae_training.saving import REPORT_FILE, check_sae_targets, save_sae
from interp.sae_training.trainer import SAETrainingConfig, TrainingLog, train_sae


def train_saes_for_model(
    model: HookedModel,
    texts: Sequence[str],
    layers: Sequence[int],
    out_root: str | Path,
    *,
    config: SAETrainingConfig = SAETrainingConfig(),
    site: str = "resid_pre",
    max_length: int = 256,
    eval_fraction: float = 0.05,
    train_device: str | torch.device | None = None,
    command: str = "",
    progress: bool = True,
    overwrite: bool = False,
) -> dict[int, dict[str, Any]]:
    """Train one SAE per layer on `texts` (held-out `eval_fraction` of the texts for evaluation).

    Writes `out_root/{hook_name}/` SAE-Lens folders with `training_report.json`; returns the reports.
    Saved SAEs already there are replaced only with `overwrite=True` (checked before any work).
    """
    from interp.models import model_name

    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction: expected a fraction in (0, 1), got {eval_fraction}")
    check_sae_targets(out_root, layers, site=site, overwrite=overwrite)
    train_texts, eval_texts = _split_texts(list(texts), eval_fraction, config.seed)
    device = train_device or model_device(model)
    store = device if torch.device(device).type == "cuda" else "cpu"
    train_harvest = harvest_activations(model, train_texts, layers, site=site, max_length=max_length,
                                        store_device=store, progress=progress)
    eval_harvest = harvest_activations(model, eval_texts, layers, site=site, max_length=max_length,
                                       store_device=store, progress=False)
    label = model_name(model)
    reports = {}
    for layer in layers:
        hook = hook_name(layer, site)
        sae, log = train_sae(train_harvest.activations[layer], config, device=device, progress=progress)
        folder = save_sae(sae, Path(out_root) / hook, hook=hook, model_name=label, overwrite=overwrite)
        dictionary = from_saelens_folder(folder, model=label).to(device)
        evaluation = evaluate_sae(model, dictionary, eval_texts, eval_harvest.activations[layer].to(device),
                                  max_length=max_length)
        report = _training_report(label, hook, config, log, train_harvest, layer, evaluation, device, command)
        add_to_artifact(folder, REPORT_FILE, json.dumps(report, indent=2) + "\n")  # the weights are already saved
        reports[layer] = report
    return reports


def _split_texts(texts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training texts, held-out evaluation texts): a seeded shuffle, at least one text held out."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, int(len(texts) * eval_fraction))
    return [texts[i] for i in order[n_eval:]], [texts[i] for i in order[:n_eval]]


def _training_report(
    label: str,
    hook: str,
    config: SAETrainingConfig,
    log: TrainingLog,
    train_harvest: Harvest,
    layer: int,
    evaluation: SAEEvaluation,
    device: str | torch.device,
    command: str,
) -> dict[str, Any]:
    return {
        "model": label,
        "hook_name": hook,
        "config": asdict(config),
        "training_tokens": log.tokens,
        "distinct_training_tokens": int(train_harvest.activations[layer].shape[0]),
        "steps": log.steps,
        "train_seconds": round(log.seconds, 2),
        "harvest_tokens_per_second": round(train_harvest.tokens_per_second, 1),
        "outliers_dropped": train_harvest.n_outliers[layer],
        "activation_scale": log.scale,
        "evaluation": evaluation.as_dict(),
        "history": log.history,
        "device": str(device),
        "command": command,
    }
