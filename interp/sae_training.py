"""Train sparse autoencoders on a model's residual stream, evaluate them, save them in SAE-Lens format.

Our own small trainer (TopK with the AuxK dead-feature loss of Gao et al. 2024, and the standard
ReLU SAE with an L1 penalty weighted by decoder norms) on in-memory activations: it runs on any
device and is several times faster than SAE-Lens's runner on CPU. The result is written as an
SAE-Lens folder (`cfg.json` + `sae_weights.safetensors`) that `sae_lens.SAE.load_from_disk` and
`interp.dictionaries.from_saelens_folder` both load, with a training report beside it.

Choices, and why:
- Position 0 is never harvested (its residual norm is ~100x the rest) and tokens whose norm exceeds
  `outlier_ratio` x the median are dropped (counted in the report): a few such tokens dominate MSE.
- Training runs on activations scaled to mean norm sqrt(d_model) (so one learning rate suits every
  model and layer); the scale is folded back into the saved weights, which read raw activations.
- TopK decoder rows stay unit norm (renormalised after each step, with the gradient component
  along each row removed), so TopK activations are directly comparable across features.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from interp._io import add_to_artifact, atomic_write_dir, atomic_write_json, check_target, fixed_files
from interp.chat import TokenBatch, tokenizer_of
from interp.dictionaries import SAE_CONFIG_FILE, SAE_WEIGHTS_FILE, Dictionary, from_saelens_folder
from interp.hooked import check_layers, d_model, forward, hook_name, hooks_on, model_device

REPORT_FILE = "training_report.json"
SAVED_BEFORE_MARKERS = fixed_files(SAE_CONFIG_FILE, SAE_WEIGHTS_FILE, REPORT_FILE)  # how older SAE folders look


# ---------------------------------------------------------------------------------------------
# Harvesting activations
# ---------------------------------------------------------------------------------------------


def tokenize_corpus(model: Any, texts: Sequence[str], *, max_length: int = 256) -> list[list[int]]:
    """Token ids of each text, truncated to `max_length` (no special tokens added: transcripts carry their own)."""
    tokenizer = tokenizer_of(model)
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    return [ids for ids in encoded if len(ids) > 1]


def _batches(token_lists: list[list[int]], batch_tokens: int, pad_id: int) -> list[TokenBatch]:
    # Sort by length so each batch pads little; left-pad like interp.chat.tokenize.
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    batches, start = [], 0
    while start < len(order):
        width = len(token_lists[order[start]])
        end = start
        while end < len(order) and (end - start + 1) * max(width, len(token_lists[order[end]])) <= batch_tokens:
            width = max(width, len(token_lists[order[end]]))
            end += 1
        end = max(end, start + 1)
        rows = [token_lists[i] for i in order[start:end]]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
        batches.append(TokenBatch(ids, mask))
        start = end
    return batches


@dataclass
class Harvest:
    """Activations of every kept token, per layer, and what was left out."""

    activations: dict[int, Float[Tensor, "n_tokens d_model"]]
    site: str
    n_tokens_seen: int
    n_outliers: dict[int, int]
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens_seen / max(self.seconds, 1e-9)


@torch.no_grad()
def harvest_activations(
    model: Any,
    texts: Sequence[str],
    layers: Sequence[int] | int,
    *,
    site: str = "resid_pre",
    max_length: int = 256,
    batch_tokens: int = 8192,
    skip_first: int = 1,
    outlier_ratio: float | None = 10.0,
    store_dtype: torch.dtype = torch.float16,
    store_device: str | torch.device = "cpu",
    progress: bool = True,
) -> Harvest:
    """Residual activations at every layer in `layers` for every real token after the first `skip_first`.

    One forward per batch (stopping after the last layer needed) reads every layer.
    """
    layer_list = check_layers(model, [layers] if isinstance(layers, int) else list(layers))
    if skip_first < 0:
        raise ValueError(f"skip_first: expected >= 0, got {skip_first}")
    tokenizer = tokenizer_of(model)
    token_lists = tokenize_corpus(model, texts, max_length=max_length)
    if not token_lists:
        raise ValueError("texts: no text holds two or more tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    names = {layer: hook_name(layer, site) for layer in layer_list}
    stop_at = max(layer_list) + 1
    stop = stop_at if stop_at < model.cfg.n_layers else None
    kept: dict[int, list[Tensor]] = {layer: [] for layer in layer_list}
    seen = 0
    started = time.perf_counter()
    batches = _batches(token_lists, batch_tokens, pad_id)
    for batch in tqdm(batches, desc="harvest", disable=not progress, leave=False):
        batch = batch.to(model_device(model))
        keep_mask = (batch.attention_mask.bool() & (batch.position_ids >= skip_first))
        seen += int(keep_mask.sum())
        captured: dict[int, Tensor] = {}

        def keeper(layer: int) -> Any:
            def keep(activation: Tensor, hook: Any) -> None:
                captured[layer] = activation[keep_mask].to(store_dtype).to(store_device)

            return keep

        with hooks_on(model, [(names[layer], keeper(layer)) for layer in layer_list]):
            forward(model, batch, stop_at_layer=stop)
        for layer in layer_list:
            kept[layer].append(captured[layer])
    activations, outliers = {}, {}
    for layer in layer_list:
        stacked = torch.cat(kept[layer])
        outliers[layer] = 0
        if outlier_ratio is not None:
            norms = stacked.float().norm(dim=-1)
            normal = norms <= outlier_ratio * norms.median()
            outliers[layer] = int((~normal).sum())
            stacked = stacked[normal]
        activations[layer] = stacked
    return Harvest(activations, site, seen, outliers, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# The SAE and its trainer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SAETrainingConfig:
    """Hyperparameters; the defaults train a 4,608-feature TopK SAE (8x d_model for SmolLM2)."""

    architecture: str = "topk"  # "topk" or "standard" (ReLU + L1)
    d_sae: int = 4608
    k: int = 32  # topk
    l1_coefficient: float = 2.0  # standard: weight of sum_i a_i * ||W_dec[i]|| on scaled activations
    l1_warmup_fraction: float = 0.05
    lr: float = 4e-4
    batch_size: int = 4096
    epochs: float = 1.0
    aux_k: int | None = None  # topk: dead features used by the AuxK loss (None: d_model // 2)
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 500_000  # a feature silent this long counts as dead for AuxK
    lr_decay_fraction: float = 0.2  # linear decay to 0 over the last part of training
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "standard"):
            raise ValueError(f"architecture: expected 'topk' or 'standard', got {self.architecture!r}")
        for name in ("d_sae", "k", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.architecture == "topk" and self.k > self.d_sae:
            raise ValueError(f"k: expected <= d_sae ({self.d_sae}), got {self.k}")
        if self.epochs <= 0 or self.lr <= 0:
            raise ValueError("epochs and lr: expected positive values")


class SparseAutoencoder(nn.Module):
    """x̂ = act((x − b_dec) W_enc + b_enc) W_dec + b_dec, SAE-Lens's parametrisation."""

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int = 32) -> None:
        super().__init__()
        self.architecture, self.k = architecture, k
        decoder = torch.randn(d_sae, d_in)
        decoder = decoder / decoder.norm(dim=-1, keepdim=True)
        if architecture == "standard":
            decoder = decoder * 0.1
        self.W_dec = nn.Parameter(decoder)
        self.W_enc = nn.Parameter(decoder.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre_activation(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        if self.architecture == "topk":
            values, indices = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        return pre.relu()

    def decode(self, acts: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_in"]:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "batch d_in"]) -> tuple[Tensor, Tensor, Tensor]:
        pre = self.pre_activation(x)
        acts = self.activate(pre)
        return self.decode(acts), acts, pre

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        # Keeps unit-norm decoder rows on the sphere: only the tangential part of the gradient moves them.
        if self.W_dec.grad is not None:
            rows = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            self.W_dec.grad -= (self.W_dec.grad * rows).sum(-1, keepdim=True) * rows


@dataclass
class TrainingLog:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    scale: float = 1.0  # activations were multiplied by this during training
    history: list[dict[str, float]] = field(default_factory=list)


def _geometric_median(points: Tensor, iterations: int = 50) -> Tensor:
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1 / (points - median).norm(dim=-1).clamp_min(1e-6)
        median = (weights[:, None] * points).sum(0) / weights.sum()
    return median


def train_sae(
    activations: Float[Tensor, "n_tokens d_in"],
    config: SAETrainingConfig = SAETrainingConfig(),
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[SparseAutoencoder, TrainingLog]:
    """Train on in-memory activations (any dtype; each batch is cast to float32 on `device`).

    Returns the SAE with the training scale already folded in (it reads raw activations).
    """
    if activations.ndim != 2 or activations.shape[0] < config.batch_size // 8:
        raise ValueError(f"activations: expected [n_tokens, d_model] with n_tokens >= {config.batch_size // 8}, "
                         f"got {tuple(activations.shape)}")
    if not torch.isfinite(activations[: 65_536].float()).all():
        raise ValueError("activations: contain NaN or inf")
    device = torch.device(device) if device is not None else activations.device
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    n_tokens, d_in = activations.shape
    sample = activations[torch.randperm(n_tokens, generator=generator)[: min(n_tokens, 32_768)]].float().to(device)
    scale = math.sqrt(d_in) / float(sample.norm(dim=-1).mean())
    sae = SparseAutoencoder(d_in, config.d_sae, config.architecture, config.k).to(device)
    with torch.no_grad():
        sae.b_dec.copy_(_geometric_median(sample * scale))
    optimiser = torch.optim.Adam(sae.parameters(), lr=config.lr, betas=(0.9, 0.999))
    total_steps = max(1, int(config.epochs * n_tokens / config.batch_size))
    decay_start = int(total_steps * (1 - config.lr_decay_fraction))
    aux_k = config.aux_k or d_in // 2
    steps_to_dead = max(1, config.dead_after_tokens // config.batch_size)
    last_fired = torch.zeros(config.d_sae, dtype=torch.long, device=device)
    variance = float(((sample * scale) - (sample * scale).mean(0)).pow(2).sum(-1).mean())
    log = TrainingLog(scale=scale)
    started = time.perf_counter()
    order = torch.randperm(n_tokens, generator=generator)
    position = 0
    bar = tqdm(range(total_steps), desc=f"train {config.architecture} SAE", disable=not progress)
    for step in bar:
        if position + config.batch_size > n_tokens:
            order, position = torch.randperm(n_tokens, generator=generator), 0
        index = order[position : position + config.batch_size]
        position += config.batch_size
        x = activations[index].to(device, non_blocking=True).float() * scale
        recon, acts, pre = sae(x)
        error = x - recon
        mse = error.pow(2).sum(-1).mean() / variance
        loss = mse
        fired = (acts > 0).any(0)
        last_fired = torch.where(fired, torch.zeros_like(last_fired), last_fired + 1)
        aux = torch.zeros((), device=device)
        if config.architecture == "topk":
            dead = last_fired >= steps_to_dead
            n_dead = int(dead.sum())
            if n_dead:
                # AuxK: the dead features' top pre-activations try to explain the main model's error.
                dead_pre = pre.masked_fill(~dead, float("-inf"))
                values, indices = dead_pre.topk(min(aux_k, n_dead), dim=-1)
                aux_acts = torch.zeros_like(pre).scatter_(-1, indices, values.relu())
                aux_recon = aux_acts @ sae.W_dec
                aux = (error.detach() - aux_recon).pow(2).sum(-1).mean() / variance
                loss = loss + config.aux_coefficient * aux
        else:
            warmup = min(1.0, (step + 1) / max(1, int(total_steps * config.l1_warmup_fraction)))
            sparsity = (acts * sae.W_dec.norm(dim=-1)).sum(-1).mean() / math.sqrt(d_in)
            loss = loss + warmup * config.l1_coefficient * sparsity
        lr = config.lr if step < decay_start else config.lr * (total_steps - step) / max(1, total_steps - decay_start)
        for group in optimiser.param_groups:
            group["lr"] = lr
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if config.architecture == "topk":
            sae.remove_parallel_gradient()
        optimiser.step()
        if config.architecture == "topk":
            sae.normalise_decoder()
        if step % 50 == 0 or step == total_steps - 1:
            entry = {"step": step, "fvu": mse.item(), "aux": aux.item(), "l0": float((acts > 0).sum(-1).float().mean()),
                     "dead_fraction": float((last_fired >= steps_to_dead).float().mean())}
            log.history.append(entry)
            bar.set_postfix(fvu=f"{entry['fvu']:.3f}", l0=f"{entry['l0']:.0f}", dead=f"{entry['dead_fraction']:.2f}")
    log.steps, log.tokens, log.seconds = total_steps, total_steps * config.batch_size, time.perf_counter() - started
    _fold_scale(sae, scale)
    return sae, log


@torch.no_grad()
def _fold_scale(sae: SparseAutoencoder, scale: float) -> None:
    # Trained on s·x: pre = (s·x − b)W + c = (x − b/s)(sW) + c; x̂ = (aW_dec + b)/s = a(W_dec/s) + b/s.
    sae.W_enc.mul_(scale)
    sae.W_dec.div_(scale)
    sae.b_dec.div_(scale)


# ---------------------------------------------------------------------------------------------
# Saving in SAE-Lens format
# ---------------------------------------------------------------------------------------------


def save_sae(
    sae: SparseAutoencoder,
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
    weights = {name: getattr(sae, name).detach().to("cpu", dtype).contiguous() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    with atomic_write_dir(Path(folder), "SAE", overwrite=overwrite, legacy=SAVED_BEFORE_MARKERS) as tmp:
        (tmp / SAE_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_file(weights, str(tmp / SAE_WEIGHTS_FILE))
        if report is not None:
            atomic_write_json(tmp / REPORT_FILE, report)
    return Path(folder)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class SAEEvaluation:
    variance_explained: float
    l0: float
    dead_fraction: float  # features that never fired on the evaluation tokens
    ce_clean: float
    ce_spliced: float
    ce_zero_ablated: float
    ce_mean_ablated: float
    n_tokens: int

    @property
    def ce_loss_recovered(self) -> float:
        """(CE zero-ablated − CE spliced) / (CE zero-ablated − CE clean), SAE-Lens's definition."""
        return (self.ce_zero_ablated - self.ce_spliced) / (self.ce_zero_ablated - self.ce_clean)

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "ce_loss_recovered": self.ce_loss_recovered}


@torch.no_grad()
def reconstruction_stats(
    dictionary: Dictionary, activations: Float[Tensor, "n_tokens d_model"], *, batch_size: int = 8192
) -> tuple[float, float, float]:
    """(variance explained, mean L0, fraction of features never active) over `activations`."""
    device = dictionary.atoms.device
    error_sum, l0_sum = 0.0, 0.0
    fired = torch.zeros(dictionary.n_atoms, dtype=torch.bool, device=device)
    x_all = activations.float()
    mean = x_all.mean(0).to(device)
    total_variance = 0.0
    for start in range(0, activations.shape[0], batch_size):
        x = activations[start : start + batch_size].to(device).float()
        codes = dictionary.encode(x)
        error_sum += float((x - dictionary.decode(codes)).pow(2).sum())
        total_variance += float((x - mean).pow(2).sum())
        l0_sum += float((codes > 0).sum())
        fired |= (codes > 0).any(0)
    n = activations.shape[0]
    return 1 - error_sum / total_variance, l0_sum / n, float((~fired).float().mean())


@torch.no_grad()
def spliced_losses(
    model: Any,
    dictionary: Dictionary,
    texts: Sequence[str],
    *,
    max_length: int = 256,
    batch_tokens: int = 4096,
    skip_first: int = 1,
    mean_activation: Float[Tensor, "d_model"] | None = None,
) -> dict[str, float]:
    """Next-token CE (nats/token) clean, with the SAE's reconstruction spliced in, zero- and mean-ablated.

    Only positions >= `skip_first` are replaced (the SAE never saw position 0).
    """
    if dictionary.hook_name is None:
        raise ValueError("dictionary: names no hook point; cannot splice it into the model")
    tokenizer = tokenizer_of(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = _batches(tokenize_corpus(model, texts, max_length=max_length), batch_tokens, pad_id)
    device = model_device(model)
    encoder_device = dictionary.atoms.device
    totals = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "mean": 0.0}
    count = 0
    for batch in batches:
        batch = batch.to(device)
        replace_mask = (batch.attention_mask.bool() & (batch.position_ids >= skip_first))[..., None]
        targets = batch.input_ids[:, 1:]
        target_mask = batch.attention_mask[:, 1:].bool() & batch.attention_mask[:, :-1].bool()
        for condition in totals:
            def splice(activation: Tensor, hook: Any, condition: str = condition) -> Tensor:
                if condition == "spliced":
                    flat = activation.reshape(-1, activation.shape[-1]).to(encoder_device).float()
                    new = dictionary.reconstruct(flat).reshape(activation.shape).to(activation.device, activation.dtype)
                elif condition == "zero":
                    new = torch.zeros_like(activation)
                else:
                    fill = mean_activation if mean_activation is not None else torch.zeros(activation.shape[-1])
                    new = fill.to(activation.device, activation.dtype).expand_as(activation)
                return torch.where(replace_mask, new, activation)

            hooks = [] if condition == "clean" else [(dictionary.hook_name, splice)]
            with hooks_on(model, hooks):
                logits = forward(model, batch)
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).reshape(targets.shape)
            totals[condition] += float(losses[target_mask].sum())
        count += int(target_mask.sum())
    return {name: value / count for name, value in totals.items()}


def evaluate_sae(
    model: Any,
    dictionary: Dictionary,
    texts: Sequence[str],
    activations: Float[Tensor, "n_tokens d_model"],
    *,
    max_length: int = 256,
) -> SAEEvaluation:
    """Variance explained, L0 and dead features on held-out `activations`; CE losses on held-out `texts`."""
    dictionary.check_model(model)
    variance_explained, l0, dead = reconstruction_stats(dictionary, activations)
    losses = spliced_losses(model, dictionary, texts, max_length=max_length,
                            mean_activation=activations.float().mean(0))
    return SAEEvaluation(variance_explained, l0, dead, losses["clean"], losses["spliced"], losses["zero"],
                         losses["mean"], int(activations.shape[0]))


# ---------------------------------------------------------------------------------------------
# The whole job: corpus -> harvest -> train -> evaluate -> save
# ---------------------------------------------------------------------------------------------


def check_sae_targets(
    out_root: str | Path, layers: Sequence[int], *, site: str = "resid_pre", overwrite: bool = False,
    argument: str = "out_root",
) -> None:
    """Raise before any work unless an SAE may be saved at `out_root/{hook_name}/` for every layer."""
    for layer in layers:
        check_target(Path(out_root) / hook_name(layer, site), "SAE", overwrite=overwrite, argument=argument,
                     legacy=SAVED_BEFORE_MARKERS)


def train_saes_for_model(
    model: Any,
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
    texts = list(texts)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_eval = max(1, int(len(texts) * eval_fraction))
    eval_texts = [texts[i] for i in order[:n_eval]]
    train_texts = [texts[i] for i in order[n_eval:]]
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
        report = {
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
        add_to_artifact(folder, REPORT_FILE, json.dumps(report, indent=2) + "\n")  # the weights are already saved
        reports[layer] = report
    return reports
