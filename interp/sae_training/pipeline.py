"""The whole job for a model: corpus -> activations -> train -> evaluate -> save, one SAE per layer.

Two engines train: ours (`engine="ours"`, the default) harvests every training activation into memory
once and trains on it, the fast choice for runs that fit; SAE-Lens's runner (`engine="saelens"`) streams
activations from the model while it trains, for runs larger than memory. Both save an SAE-Lens folder
and evaluate it the same way on the same held-out texts, into the same `training_report.json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from interp._checks import layer_index, whole_number
from interp._io import add_to_artifact
from interp.dictionaries import from_saelens_folder, import_sae_lens
from interp.directions import hook_name
from interp.hooked import HookedModel, model_device, n_layers
from interp.sae_training.evaluation import SAEEvaluation, evaluate_sae
from interp.sae_training.harvest import Harvest, harvest_activations
from interp.sae_training.saelens_engine import SAELensRun, save_saelens_sae, train_sae_with_saelens
from interp.sae_training.saving import REPORT_FILE, check_sae_targets, save_sae
from interp.sae_training.trainer import SAETrainingConfig, TrainingLog, train_sae, warn_if_undertrained

ENGINES = ("ours", "saelens")


def check_engine(engine: str, argument: str = "engine") -> None:
    """Raise unless `engine` is known and, for "saelens", sae-lens imports (before any work)."""
    if engine not in ENGINES:
        raise ValueError(f"{argument}: expected one of {ENGINES}, got {engine!r}")
    if engine == "saelens":
        import_sae_lens()


def train_saes_for_model(
    model: HookedModel,
    texts: Sequence[str],
    layers: Sequence[int],
    out_root: str | Path,
    *,
    config: SAETrainingConfig = SAETrainingConfig(),
    engine: str = "ours",
    site: str = "resid_pre",
    max_length: int = 256,
    context_size: int | None = None,
    eval_fraction: float = 0.05,
    train_device: str | torch.device | None = None,
    command: str = "",
    progress: bool = True,
    overwrite: bool = False,
) -> dict[int, dict[str, Any]]:
    """Train one SAE per layer on `texts` (held-out `eval_fraction` of the texts for evaluation).

    `engine="ours"` trains in memory; `engine="saelens"` runs SAE-Lens's `LanguageModelSAETrainingRunner`,
    streaming (`context_size`, default `max_length`, is its packed row length; see
    `interp.sae_training.saelens_engine` for what it sees differently). Writes `out_root/{hook_name}/`
    SAE-Lens folders with `training_report.json`; returns the reports. Saved SAEs already there are
    replaced only with `overwrite=True` (checked before any work).
    """
    from interp.models import model_name, within_context

    check_engine(engine)
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction: expected a fraction in (0, 1), got {eval_fraction}")
    if context_size is not None and engine != "saelens":
        raise ValueError("context_size: only the saelens engine packs rows; leave it None for engine='ours'")
    if not isinstance(config, SAETrainingConfig):
        raise TypeError(f"config: expected an SAETrainingConfig, got {type(config).__name__}")
    layers = [layer_index(layer, n_layers(model), "layers", from_end=False) for layer in layers]
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers: expected distinct layers, at least one, got {layers}")
    whole_number(max_length, "max_length", minimum=2)
    if engine == "saelens":  # rows of exactly this many tokens are packed: past the context they cannot run
        within_context(max_length if context_size is None else whole_number(context_size, "context_size", minimum=2),
                       model, "max_length" if context_size is None else "context_size")
    texts = list(texts)
    if len(texts) < 2 or not all(isinstance(text, str) and text.strip() for text in texts):
        raise ValueError(f"texts: expected at least 2 non-blank texts (some are held out for evaluation), got {len(texts)}")
    check_sae_targets(out_root, layers, site=site, overwrite=overwrite)
    train_texts, eval_texts = _split_texts(list(texts), eval_fraction, config.seed)
    device = train_device or model_device(model)
    store = device if torch.device(device).type == "cuda" else "cpu"
    train_harvest = None
    if engine == "ours":
        train_harvest = harvest_activations(model, train_texts, layers, site=site, max_length=max_length,
                                            store_device=store, progress=progress)
    eval_harvest = harvest_activations(model, eval_texts, layers, site=site, max_length=max_length,
                                       store_device=store, progress=False)
    label = model_name(model)
    reports = {}
    for layer in layers:
        hook = hook_name(layer, site)
        folder = Path(out_root) / hook
        if train_harvest is not None:
            sae, log = train_sae(train_harvest.activations[layer], config, device=device, progress=progress)
            save_sae(sae, folder, hook=hook, model_name=label, overwrite=overwrite)
            details = _our_details(log, train_harvest, layer)
        else:
            run = train_sae_with_saelens(model, train_texts, layer, config, site=site, max_length=max_length,
                                         context_size=context_size, device=device)
            save_saelens_sae(run, folder, overwrite=overwrite)
            details = _saelens_details(run)
        dictionary = from_saelens_folder(folder, model=label).to(device)
        evaluation = evaluate_sae(model, dictionary, eval_texts, eval_harvest.activations[layer].to(device),
                                  max_length=max_length)
        report = _training_report(label, hook, config, engine, details, evaluation, device, command)
        # train_sae warned about our engine's step count before it trained
        warn_if_undertrained(hook, None if engine == "ours" else details["steps"], evaluation.variance_explained)
        add_to_artifact(folder, REPORT_FILE, json.dumps(report, indent=2) + "\n")  # the weights are already saved
        reports[layer] = report
    return reports


def _split_texts(texts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training texts, held-out evaluation texts): a seeded shuffle, at least one text held out."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, int(len(texts) * eval_fraction))
    return [texts[i] for i in order[n_eval:]], [texts[i] for i in order[:n_eval]]


def _our_details(log: TrainingLog, harvest: Harvest, layer: int) -> dict[str, Any]:
    # The harvest reads every layer in one pass, so each layer's SAE is charged the whole harvest time.
    seconds = harvest.seconds + log.seconds
    return {
        "training_tokens": log.tokens,
        "distinct_training_tokens": int(harvest.activations[layer].shape[0]),
        "steps": log.steps,
        "train_seconds": round(log.seconds, 2),
        "harvest_seconds": round(harvest.seconds, 2),
        "seconds": round(seconds, 2),
        "tokens_per_second": round(log.tokens / max(seconds, 1e-9), 1),
        "harvest_tokens_per_second": round(harvest.tokens_per_second, 1),
        "outliers_dropped": harvest.n_outliers[layer],
        "activation_scale": log.scale,
        "history": log.history,
    }


def _saelens_details(run: SAELensRun) -> dict[str, Any]:
    metadata = run.sae.cfg.metadata
    return {
        "training_tokens": run.tokens,
        "distinct_training_tokens": run.distinct_tokens,
        "steps": run.steps,
        "train_seconds": round(run.seconds, 2),  # model forwards included: the runner streams them
        "seconds": round(run.seconds, 2),
        "tokens_per_second": round(run.tokens_per_second, 1),
        "context_size": run.context_size,
        "packed_rows": run.rows,
        "buffer_tokens": run.buffer_tokens,  # activations held in memory at once
        "final_l0": getattr(metadata, "l0", None),  # SAE-Lens's last sparsity window
        "final_dead_features": getattr(metadata, "num_dead_features", None),
        "sae_lens_version": import_sae_lens().__version__,
    }


def _training_report(
    label: str,
    hook: str,
    config: SAETrainingConfig,
    engine: str,
    details: dict[str, Any],
    evaluation: SAEEvaluation,
    device: str | torch.device,
    command: str,
) -> dict[str, Any]:
    return {
        "model": label,
        "hook_name": hook,
        "engine": engine,
        "config": asdict(config),
        **details,
        "evaluation": evaluation.as_dict(),
        "device": str(device),
        "command": command,
    }
