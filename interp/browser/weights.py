"""What a feature's page says from the weights alone (no corpus): logit effects, neighbours, and on request the
model's self-explanation and a steering preview.

- Logit effects: the decoder row passed through the model's own final norm module and unembedding, minus the
  same for a zero vector (which removes a LayerNorm's bias and the unembedding's bias): the logits a residual
  made of this direction alone would give. The norm module itself is called, so RMSNorm, LayerNorm (centring)
  and Gemma's (1 + weight) scaling are all handled as the model handles them. The direct path only: the layers
  after the dictionary's are not run.
- Neighbours: the features whose unit decoder rows have the highest cosine with this one.
- Self-explanation (`interp.selfexplain.self_explain`) and a steering preview (fixed prompts generated with the
  unit decoder row added at a few multiples of the residual norm, every feature × scale × prompt in batches of
  rows) are slow, so they run only for the features asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.dictionaries import Dictionary
from interp.hooked import HookedModel, hf_tree, is_bridge, model_device

FINAL_NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")
STEER_PROMPTS = ("Tell me something about yourself.", "Write one sentence about the weather.")


@dataclass(frozen=True)
class WeightAnalysis:
    """Per feature (rows in the order of `features`): top promoted and suppressed tokens, nearest features."""

    features: Int[Tensor, "n"]
    promoted_ids: Int[Tensor, "n k"]
    promoted: Float[Tensor, "n k"]
    suppressed_ids: Int[Tensor, "n k"]
    suppressed: Float[Tensor, "n k"]
    neighbour_ids: Int[Tensor, "n k"]
    neighbour_cosines: Float[Tensor, "n k"]

    def tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).contiguous() for name in self.__dataclass_fields__}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> WeightAnalysis:
        return cls(**{name: tensors[name] for name in cls.__dataclass_fields__})


def final_norm_and_unembedding(model: HookedModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The module the model applies to its last residual, and the unembedding after it."""
    if not is_bridge(model) and hasattr(model, "ln_final") and hasattr(model, "unembed"):
        return model.ln_final, model.unembed  # a HookedTransformer
    tree = hf_tree(model)
    for path in FINAL_NORM_PATHS:
        module: Any = tree
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, torch.nn.Module):
            return module, tree.get_output_embeddings()
    raise ValueError(f"model: no final norm found at any of {FINAL_NORM_PATHS} ({type(tree).__name__})")


@torch.no_grad()
def logit_effects(
    model: HookedModel, rows: Float[Tensor, "n d_model"], k: int = 10, *, chunk: int = 256, progress: bool = True
) -> tuple[Int[Tensor, "n k"], Float[Tensor, "n k"], Int[Tensor, "n k"], Float[Tensor, "n k"]]:
    """Top-k promoted and suppressed token ids (and their logits) of each row, through the final norm."""
    norm, unembed = final_norm_and_unembedding(model)
    parameter = next(unembed.parameters())
    device, dtype = parameter.device, parameter.dtype
    baseline = unembed(norm(torch.zeros((1, 1, rows.shape[1]), device=device, dtype=dtype)))[0, 0].float()
    outputs: list[list[Tensor]] = [[], [], [], []]
    for start in tqdm(range(0, rows.shape[0], chunk), desc="logit effects", disable=not progress, leave=False):
        block = rows[start : start + chunk].to(device, dtype)[None]  # [1, chunk, d]: a "sequence" of rows
        logits = unembed(norm(block))[0].float() - baseline
        top = logits.topk(k, dim=1)
        bottom = logits.topk(k, dim=1, largest=False)
        for out, tensor in zip(outputs, (top.indices, top.values, bottom.indices, bottom.values)):
            out.append(tensor.cpu())
    promoted_ids, promoted, suppressed_ids, suppressed = (torch.cat(out) for out in outputs)
    return promoted_ids, promoted, suppressed_ids, suppressed


@torch.no_grad()
def nearest_features(
    decoder: Float[Tensor, "n_atoms d_model"], features: Int[Tensor, "n"], k: int = 10, *, chunk: int = 1024
) -> tuple[Int[Tensor, "n k"], Float[Tensor, "n k"]]:
    """For each of `features`, the `k` other atoms of `decoder` with the highest cosine."""
    units = decoder.float() / decoder.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(k, units.shape[0] - 1)
    ids, cosines = [], []
    for start in range(0, features.numel(), chunk):
        index = features[start : start + chunk].to(units.device)
        similarity = units[index] @ units.T
        similarity[torch.arange(index.numel(), device=units.device), index] = float("-inf")  # not itself
        top = similarity.topk(k, dim=1)
        ids.append(top.indices.cpu())
        cosines.append(top.values.cpu())
    return torch.cat(ids), torch.cat(cosines)


def analyse_weights(model: HookedModel | None, dictionary: Dictionary, features: Int[Tensor, "n"], *, n_logits: int = 10,
                    n_neighbours: int = 10, progress: bool = True) -> WeightAnalysis:
    """Logit effects (when there is a model) and decoder neighbours of `features`."""
    decoder = dictionary.decoder.detach()
    neighbour_ids, neighbour_cosines = nearest_features(decoder, features, n_neighbours)
    if model is None:
        empty_ids = torch.zeros((features.numel(), 0), dtype=torch.long)
        empty = torch.zeros((features.numel(), 0))
        return WeightAnalysis(features, empty_ids, empty, empty_ids, empty, neighbour_ids, neighbour_cosines)
    promoted_ids, promoted, suppressed_ids, suppressed = logit_effects(model, decoder[features], n_logits,
                                                                           progress=progress)
    return WeightAnalysis(features, promoted_ids, promoted, suppressed_ids, suppressed, neighbour_ids, neighbour_cosines)


def explain_features(model: HookedModel, dictionary: Dictionary, features: Sequence[int], *, config: Any = None,
                     progress: bool = True) -> dict[int, dict[str, Any]]:
    """The model's own explanation of each feature's decoder row at a sweep of scales (`interp.selfexplain`)."""
    from interp.selfexplain import SelfExplainConfig, self_explain

    if not features:
        return {}
    names = {f"feature {f}": f for f in features}
    table = self_explain(model, {name: dictionary.decoder[f].detach().float() for name, f in names.items()},
                         config or SelfExplainConfig(), progress=progress)
    return {
        feature: {"best_scale": table.best[name], "text": table.best_row(name).text,
                  "rows": [{"scale": row.scale, "text": row.text, "self_similarity": row.self_similarity,
                            "entropy": row.entropy} for row in table.for_name(name)]}
        for name, feature in names.items()
    }


def steering_preview(
    model: HookedModel,
    dictionary: Dictionary,
    features: Sequence[int],
    *,
    prompts: Sequence[str] = STEER_PROMPTS,
    scales: Sequence[float] = (0.5, 1.0, 2.0),
    max_new_tokens: int = 24,
    batch_rows: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy completions of `prompts` with each feature's unit decoder row added at every position, at each
    multiple in `scales` of the typical residual norm at the dictionary's layer; the unsteered ones as a baseline.
    """
    from interp.chat import format_chat
    from interp.runner import generate, generate_with_row_biases
    from interp.selfexplain import residual_norm

    if not features:
        return {"unsteered": [], "features": {}}
    tokenizer = getattr(model, "tokenizer", None)
    formatted = [format_chat(model, p) if getattr(tokenizer, "chat_template", None) else p for p in prompts]
    dictionary.require_hook("a steering preview")  # it names where it reads and where its atoms are written
    hook = dictionary.write_hook
    # The residual norm at the block the atoms are written in: what a scale of 1 stands for.
    unit_norm = residual_norm(model, formatted[0], int(hook.split(".")[1]))  # blocks.{layer}.hook_...
    units = dictionary.decoder.detach().float()[list(features)]
    units = units / units.norm(dim=1, keepdim=True)
    factors = torch.tensor([float(s) for s in scales]) * unit_norm
    # Rows: feature outermost, then scale, then prompt.
    biases = (units[:, None, None, :] * factors[None, :, None, None]).expand(-1, -1, len(formatted), -1)
    rows = [p for _ in features for _ in scales for p in formatted]
    texts = generate_with_row_biases(model, rows, hook, biases.reshape(-1, units.shape[1]).to(model_device(model)),
                                     batch_rows=batch_rows, progress=progress, desc="steering preview",
                                     max_new_tokens=max_new_tokens, do_sample=False)
    unsteered = generate(model, formatted, max_new_tokens=max_new_tokens, do_sample=False, progress=False)
    n_scales, n_prompts = len(scales), len(formatted)
    return {
        "prompts": list(prompts), "scales": [float(s) for s in scales], "unit_norm": unit_norm, "hook": hook,
        "unsteered": unsteered,
        "features": {int(f): [[texts[(i * n_scales + s) * n_prompts + p] for p in range(n_prompts)]
                              for s in range(n_scales)] for i, f in enumerate(features)},
    }
