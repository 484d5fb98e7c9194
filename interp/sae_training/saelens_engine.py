"""SAE-Lens's own training runner on our model and corpus: streaming SAE training for runs larger than memory.

Our trainer (`trainer.train_sae`) holds every activation in memory; `LanguageModelSAETrainingRunner` runs
the model as it trains, keeping only a shuffling buffer of activations. This module feeds that runner
the same model (our `TransformerBridge`, whose classic hook names and `run_with_cache(names_filter=...,
stop_at_layer=...)` are what its activations store calls) and the same tokens, and translates
`SAETrainingConfig` into its config, offline (no hub, no wandb, no checkpoints written).

What the runner sees, and how it differs from `harvest_activations` + `train_sae`:
- Tokens: `tokenize_corpus` of the same texts (same truncation at `max_length`), concatenated and cut
  into rows of `context_size` tokens, SAE-Lens's packing. No separator or BOS is inserted (each transcript
  carries its own chat-template tokens). A transcript may therefore start mid-row and attend to the one
  before it, and a long one may continue at the start of the next row without its earlier context.
- Position 0 of every row is left out (`seqpos_slice=(skip_first, None)`): on SmolLM2 the residual at
  the first position of a sequence has ~100x the norm of the rest, whatever the token; our harvest leaves
  out position 0 of every text instead. SAE-Lens has no outlier filter (ours drops tokens above 10x
  the median norm; after position 0 there are none on SmolLM2).
- Scaling: `normalize_activations="expected_average_only_in"` (mean norm sqrt(d_in), estimated on
  ~32k streamed tokens, folded into the weights at the end), as our trainer does.
- Schedule and losses map where they mean the same: lr, batch size, tokens (epochs x corpus tokens), the
  final linear lr decay, the dead-feature window, the AuxK coefficient (both losses relative to the
  main reconstruction loss). SAE-Lens's own recipe stays otherwise: its initialisation (decoder rows at
  norm 0.1), gradient clipping at norm 1, TopK's decoder norm folded in at save time rather than unit rows
  kept during training, a mixing buffer instead of a global shuffle, and an un-normalised squared error
  (so an L1 coefficient is converted, see `saelens_l1_coefficient`).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from interp._io import atomic_write_dir
from interp.dictionaries import import_sae_lens
from interp.directions import hook_name
from interp.hooked import HookedModel, check_layers, d_model, model_device
from interp.sae_training.harvest import tokenize_corpus
from interp.sae_training.saving import SAVED_BEFORE_MARKERS
from interp.sae_training.trainer import SAETrainingConfig

NORM_ESTIMATE_TOKENS = 32_768  # as many tokens as our trainer samples to set its scale
LLM_BATCH_TOKENS = 8_192  # tokens per model forward, as harvest_activations' default batch_tokens


@dataclass
class SAELensRun:
    """A finished SAE-Lens training run: the runner (its config, model and SAE) and what it cost."""

    runner: Any  # sae_lens.LanguageModelSAETrainingRunner
    sae: Any  # sae_lens TrainingSAE, its activation scale folded in: it reads raw activations
    hook: str
    steps: int
    tokens: int  # SAE training tokens (steps x batch size)
    distinct_tokens: int  # activation tokens in one pass over the packed corpus
    rows: int  # packed rows of `context_size` tokens
    context_size: int
    seconds: float  # the runner's whole run: model forwards, norm estimate, SAE steps
    buffer_tokens: int  # activations the mixing buffer holds at once

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def pack_rows(
    model: HookedModel, texts: Sequence[str], *, context_size: int, max_length: int = 256
) -> Int[np.ndarray, "n_rows context_size"]:
    """The texts' tokens (as `harvest_activations` tokenizes them) concatenated and cut into full rows.

    The same as SAE-Lens's `concat_and_batch_sequences` with no BOS and no separator: the last partial row
    is dropped.
    """
    if context_size < 2:
        raise ValueError(f"context_size: expected >= 2 (position 0 of every row is left out), got {context_size}")
    token_lists = tokenize_corpus(model, texts, max_length=max_length)
    flat = np.fromiter((token for ids in token_lists for token in ids), dtype=np.int64)
    n_rows = len(flat) // context_size
    if n_rows == 0:
        raise ValueError(f"texts: hold {len(flat)} tokens, fewer than one row of context_size={context_size}")
    return flat[: n_rows * context_size].reshape(n_rows, context_size)


def token_dataset(rows: Int[np.ndarray, "n_rows context_size"]) -> Any:
    """The rows as a streaming HF `IterableDataset` with an `input_ids` column (SAE-Lens's pre-tokenized form).

    Streaming (not a `Dataset`) so nothing is copied into Arrow and each pass reads the rows afresh.
    """
    import datasets

    def generate() -> Iterator[dict[str, list[int]]]:
        for row in rows:
            yield {"input_ids": row.tolist()}

    return datasets.IterableDataset.from_generator(generate)


def saelens_l1_coefficient(config: SAETrainingConfig, d_in: int) -> float:
    """Our L1 coefficient in SAE-Lens's units.

    Ours: FVU + λ·Σ a_i‖W_dec,i‖ / √d; SAE-Lens: squared error + λ'·Σ a_i‖W_dec,i‖. Multiplying ours by the
    activation variance V (≈ d at mean norm √d, exactly d when the mean is zero) gives λ' = λ·V/√d ≈ λ·√d.
    """
    return config.l1_coefficient * math.sqrt(d_in)


def runner_config(
    config: SAETrainingConfig,
    *,
    d_in: int,
    hook: str,
    model_label: str,
    model_class: str,
    training_tokens: int,
    context_size: int,
    n_rows: int,
    device: str,
    llm_device: str,
    skip_first: int = 1,
    buffer_batches: int = 8,
) -> Any:
    """`config` as a `LanguageModelSAERunnerConfig`: offline, no wandb, no checkpoints, no output folder."""
    sae_lens = import_sae_lens()
    total_steps = max(1, training_tokens // config.batch_size)
    common: dict[str, Any] = {"d_in": d_in, "d_sae": config.d_sae, "dtype": "float32", "device": device,
                              "normalize_activations": "expected_average_only_in"}
    if config.architecture == "topk":
        sae_config = sae_lens.TopKTrainingSAEConfig(k=config.k, aux_loss_coefficient=config.aux_coefficient, **common)
    else:
        kind = sae_lens.StandardTrainingSAEConfig if config.architecture == "standard" else sae_lens.GatedTrainingSAEConfig
        sae_config = kind(l1_coefficient=saelens_l1_coefficient(config, d_in),
                          l1_warm_up_steps=int(total_steps * config.l1_warmup_fraction), **common)
    training_context = context_size - skip_first
    return sae_lens.LanguageModelSAERunnerConfig(
        sae=sae_config,
        model_name=model_label,
        model_class_name=model_class,
        hook_name=hook,
        dataset_path="",  # the dataset is passed to the runner (override_dataset)
        is_dataset_tokenized=True,
        streaming=True,
        context_size=context_size,
        seqpos_slice=(skip_first, None),
        prepend_bos=False,
        sequence_separator_token=None,
        training_tokens=total_steps * config.batch_size,
        train_batch_size_tokens=config.batch_size,
        store_batch_size_prompts=max(1, min(n_rows, LLM_BATCH_TOKENS // context_size)),
        # SAE-Lens's buffer holds n_batches_in_buffer rows of training_context tokens; it must hold a batch.
        n_batches_in_buffer=max(1, math.ceil(buffer_batches * config.batch_size / training_context)),
        n_batches_for_norm_estimate=max(1, min(NORM_ESTIMATE_TOKENS, training_tokens // 10) // config.batch_size),
        lr=config.lr,
        adam_beta1=0.9,
        adam_beta2=0.999,
        lr_scheduler_name="constant",
        lr_decay_steps=int(total_steps * config.lr_decay_fraction),
        dead_feature_window=max(1, config.dead_after_tokens // config.batch_size),
        device=device,
        llm_device=llm_device,
        act_store_device=device,
        seed=config.seed,
        dtype="float32",
        logger=sae_lens.LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=None,
        verbose=False,
    )


def train_sae_with_saelens(
    model: HookedModel,
    texts: Sequence[str],
    layer: int,
    config: SAETrainingConfig = SAETrainingConfig(),
    *,
    site: str = "resid_pre",
    max_length: int = 256,
    context_size: int | None = None,
    skip_first: int = 1,
    buffer_batches: int = 8,
    device: str | torch.device | None = None,
) -> SAELensRun:
    """Train one SAE on `texts` at `blocks.{layer}.hook_{site}` with SAE-Lens's `LanguageModelSAETrainingRunner`.

    Activations are streamed from the model during training (only a mixing buffer of `buffer_batches`
    training batches is held). The SAE trains on `config.epochs` x the packed corpus's activation tokens.
    `context_size` (default `max_length`) is the packed row length.
    """
    sae_lens = import_sae_lens()
    (layer,) = check_layers(model, [layer])
    context = max_length if context_size is None else context_size
    if not 0 <= skip_first < context:
        raise ValueError(f"skip_first: expected 0 <= skip_first < context_size ({context}), got {skip_first}")
    if buffer_batches < 1:
        raise ValueError(f"buffer_batches: expected >= 1, got {buffer_batches}")
    rows = pack_rows(model, texts, context_size=context, max_length=max_length)
    distinct = rows.shape[0] * (context - skip_first)
    training_tokens = max(1, int(config.epochs * distinct / config.batch_size)) * config.batch_size
    from interp.models import model_name

    hook = hook_name(layer, site)
    device_name = str(device if device is not None else model_device(model))
    cfg = runner_config(
        config, d_in=d_model(model), hook=hook, model_label=model_name(model), model_class=type(model).__name__,
        training_tokens=training_tokens, context_size=context, n_rows=rows.shape[0], device=device_name,
        llm_device=str(model_device(model)), skip_first=skip_first, buffer_batches=buffer_batches,
    )
    torch.manual_seed(config.seed)  # the SAE's initial weights and the mixing buffer's shuffles
    started = time.perf_counter()
    with _quiet_overrides(), _signal_handlers_kept(), warnings.catch_warnings():
        # More than one pass over the corpus (epochs > 1) is what the config asked for, not news.
        warnings.filterwarnings("ignore", message="All samples in the training dataset have been exhausted")
        runner = sae_lens.LanguageModelSAETrainingRunner(cfg, override_dataset=token_dataset(rows),
                                                         override_model=model)
        sae = runner.run()
    seconds = time.perf_counter() - started
    steps = cfg.total_training_steps
    return SAELensRun(runner, sae, hook, steps, steps * config.batch_size, distinct, rows.shape[0], context, seconds,
                      cfg.n_batches_in_buffer * (context - skip_first))


def save_saelens_sae(run: SAELensRun, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write SAE-Lens's own output (cfg.json, sae_weights.safetensors, runner_cfg.json) atomically into `folder`.

    `folder` must be new or empty, or hold a saved SAE (replaced only with `overwrite=True`).
    """
    with atomic_write_dir(Path(folder), "SAE", overwrite=overwrite, legacy=SAVED_BEFORE_MARKERS) as tmp:
        run.runner.save_final_sae(run.sae, str(tmp))
    return Path(folder)


@contextmanager
def _quiet_overrides() -> Iterator[None]:
    # The runner warns that a passed model and dataset make the run irreproducible from its config alone;
    # that is the point here (the report records the command and corpus instead).
    sae_lens_logger = logging.getLogger("sae_lens")
    previous = sae_lens_logger.level
    sae_lens_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        sae_lens_logger.setLevel(previous)


@contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    # The runner installs its own SIGINT/SIGTERM handlers for checkpointing and never restores them;
    # a library call must leave the caller's process as it found it.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
