"""Many candidate directions scored in one forward: each candidate gets its own copy of the prompts.

Scoring refusal candidates one at a time runs ~100 small forwards whose cost is mostly fixed overhead
(hook registration, the shared prefix, thin matrix products). Here a forward carries a block of
candidates: the prompt chunk is tiled once per candidate (candidate-major rows), every hook applies
row c's own candidate, and the shared chat-template prefix is run once per candidate (its cache
depends on the intervention) and reused by that candidate's prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp._checks import whole_number
from interp.chat import TokenBatch
from interp.directions import hook_name
from interp.hooked import HookedModel, HookList, model_device, plain_model
from interp.runner import last_logits_chunk
from interp.steering import HookIntervention, ablation_hook_names, apply_all

RowValues = Callable[[Float[Tensor, "rows d_vocab"], Int[Tensor, "rows"]], Float[Tensor, "rows *values"]]
"""Reduces last-position logits to a number (or a vector) per row, given each row's prompt index."""


def per_row(values: Float[Tensor, "k d_model"], rows: int) -> Float[Tensor, "rows d_model"]:
    """`values` (one per candidate) spread over a forward's rows: the prefix pass has one row per
    candidate, the prompt pass `rows / k` consecutive rows per candidate."""
    k = values.shape[0]
    if rows % k:
        raise RuntimeError(f"a forward of {rows} rows cannot hold {k} candidate copies")
    return values if rows == k else values.repeat_interleave(rows // k, 0)


def ablation_hooks(model: HookedModel, units: Float[Tensor, "k d_model"]) -> HookList:
    """Directional ablation of row-block c's own unit vector at every ablation site (as `Ablate`)."""
    units = units.to(model_device(model))

    def project_out(activation: Tensor, hook: object) -> Tensor:
        r = per_row(units, activation.shape[0]).to(activation.dtype)[:, :, None]
        return activation - torch.bmm(activation, r) * r.transpose(1, 2)

    return [(name, project_out) for name in ablation_hook_names(model)]


def addition_hooks(model: HookedModel, vectors: Float[Tensor, "k d_model"], layers: Sequence[int]) -> HookList:
    """Activation addition of row-block c's vector at resid_pre of its own layer, every position (as `Steer`)."""
    vectors = vectors.to(model_device(model))
    layer_of = torch.as_tensor(list(layers), device=vectors.device)
    hooks: HookList = []
    for layer in sorted(set(int(layer) for layer in layers)):
        added = vectors * (layer_of == layer)[:, None].to(vectors.dtype)

        def add(activation: Tensor, hook: object, added: Tensor = added) -> Tensor:
            return activation + per_row(added, activation.shape[0]).to(activation.dtype)[:, None, :]

        hooks.append((hook_name(layer, "resid_pre"), add))
    return hooks


@torch.no_grad()
def score_candidates(
    model: HookedModel,
    batch: TokenBatch,
    hooks_for: Callable[[slice], HookList],
    n_candidates: int,
    row_values: RowValues,
    *,
    tokens_per_forward: int = 1536,
    prompts_per_chunk: int = 32,
    progress: bool = False,
    desc: str = "candidates",
) -> Float[Tensor, "n_candidates n_prompts *values"]:
    """`row_values` of every prompt under every candidate; `hooks_for(block)` builds the hooks of a block
    of candidates (row-block c of a forward belongs to candidate `block.start + c`).

    Prompts are taken in length-sorted chunks of `prompts_per_chunk`; a forward holds as many candidates'
    copies of a chunk as fit in `tokens_per_forward` padded tokens (at least one). On a CPU a few hundred
    tokens per forward leave the cores idle between small kernels, while a few thousand spill the caches:
    the default sits between (see benchmarks/bench_refusal.py); a GPU wants far more.
    """
    whole_number(tokens_per_forward, "tokens_per_forward", minimum=1)
    whole_number(prompts_per_chunk, "prompts_per_chunk", minimum=1)
    n_prompts = batch.input_ids.shape[0]
    order = torch.argsort(batch.lengths.cpu(), stable=True)
    sorted_batch = TokenBatch(batch.input_ids[order.to(batch.input_ids.device)],
                              batch.attention_mask[order.to(batch.input_ids.device)])
    steps = []
    for prompt_start in range(0, n_prompts, prompts_per_chunk):
        rows = order[prompt_start : prompt_start + prompts_per_chunk]
        padded = len(rows) * int(batch.lengths.cpu()[rows].max())
        block = max(1, tokens_per_forward // padded)
        steps += [(prompt_start, start, block) for start in range(0, n_candidates, block)]
    out: Tensor | None = None
    for prompt_start, start, block in tqdm(steps, desc=desc, disable=not progress or len(steps) < 4, leave=False):
        chunk = sorted_batch[prompt_start : prompt_start + prompts_per_chunk].to(model_device(model))
        candidates = slice(start, min(start + block, n_candidates))
        k, n = candidates.stop - candidates.start, chunk.input_ids.shape[0]
        tiled = TokenBatch(chunk.input_ids.repeat(k, 1), chunk.attention_mask.repeat(k, 1))
        with apply_all(model, HookIntervention(hooks_for(candidates)), plain=True) as state:
            runner = plain_model(model)
            runner = runner if runner is not None and state.runner is runner else None
            logits = last_logits_chunk(model, runner, tiled, None, 1, copies=k)
        prompt_index = order[prompt_start : prompt_start + n].repeat(k)
        values = row_values(logits, prompt_index.to(logits.device)).float().cpu()
        values = values.view(k, n, *values.shape[1:])
        if out is None:
            out = torch.full((n_candidates, n_prompts, *values.shape[2:]), float("nan"))
        out[candidates, order[prompt_start : prompt_start + n]] = values
    if out is None:
        raise ValueError("batch, n_candidates: expected at least one prompt and one candidate")
    return out
