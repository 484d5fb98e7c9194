"""Evaluating an SAE: variance explained, L0, dead features, and next-token CE with it spliced in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.chat import tokenizer_of
from interp.dictionaries import Dictionary
from interp.hooked import HookedModel, model_device
from interp.runner import batch_logits
from interp.sae_training.harvest import token_batches, tokenize_corpus
from interp.steering import HookIntervention


@dataclass
class SAEEvaluation:
    """How well an SAE reconstructs held-out activations, and what splicing it in costs.

    Attributes:
        variance_explained: 1 − residual variance / activation variance.
        l0: mean number of active features per token.
        dead_fraction: features that never fired on the evaluation tokens.
        ce_clean: next-token cross-entropy of the model as it is.
        ce_spliced: with the SAE's reconstruction in place of the activation.
        ce_zero_ablated: with the activation zeroed.
        ce_mean_ablated: with the activation replaced by its mean.
        n_tokens: evaluation tokens.
    """

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
    dictionary.require_sae("reconstruction_stats", "variance explained compares a reconstruction with its own input")
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
    model: HookedModel,
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
    dictionary.require_hook("splicing")
    dictionary.require_sae("this evaluation", "it replaces the activation an SAE reads with its reconstruction of it "
                           "(a transcoder's is a prediction of another site: use interp.splice.Splice)")
    tokenizer = tokenizer_of(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = token_batches(tokenize_corpus(model, texts, max_length=max_length), batch_tokens, pad_id)
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
            logits = batch_logits(model, batch, [HookIntervention(hooks)])
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).reshape(targets.shape)
            totals[condition] += float(losses[target_mask].sum())
        count += int(target_mask.sum())
    return {name: value / count for name, value in totals.items()}


def evaluate_sae(
    model: HookedModel,
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
