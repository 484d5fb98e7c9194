"""Forward passes with gradients: the residual at one layer (stopping there), or the logits (from any layer on).

Learning a steering vector (MELBO, an optimised vector) needs the activation at a target layer, or the
model's predictions, as a function of a bias added lower down, many times, with the model's own
parameters held fixed (`frozen`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.chat import TokenBatch
from interp.hooked import (
    HookedModel,
    HookFn,
    hooks_on,
    is_bridge,
    n_layers,
    plain_hooks,
    plain_model,
    plain_sites_cover,
)

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class _ReachedLayer(Exception):
    """Raised by the read hook on the plain-HF path: nothing after the read layer needs to run."""


def _unmask_padding_rows(scores: Float[Tensor, "batch head q k"], hook: Any) -> Tensor:
    """Give fully masked attention rows (left-padding queries) finite scores.

    TransformerLens masks scores with -inf and zeroes the NaN pattern of a fully masked row in the
    forward, but the softmax backward still multiplies by that NaN, and a bias added at every position
    collects it. Padding queries are never attended to by real tokens, so their (now uniform)
    attention changes nothing that counts in a loss over real tokens.
    """
    finite = torch.isfinite(scores).any(dim=-1, keepdim=True)
    return torch.where(finite, scores, torch.zeros_like(scores))


def run_to_layer(
    model: HookedModel,
    batch: TokenBatch,
    read_hook: str,
    *,
    stop_at_layer: int | None,
    steer: tuple[str, HookFn] | None = None,
    fast: bool = True,
) -> Float[Tensor, "batch seq d_model"]:
    """The activation at `read_hook` for a padded batch, with the hook `steer = (name, fn)` if given.

    Gradients are left to the caller (`interp.hooked.forward` runs under no_grad). `stop_at_layer`:
    the block the forward stops before (None: run to the end); `read_hook` must lie below it.
    `fast`: on a bridge, run its plain HF module tree (the same weight tensors) with the hooks as
    PyTorch hooks at the same sites, without the bridge's per-module hook points and re-implemented
    attention. The plain forward is stopped by an exception once the activation is read (HF owns that
    loop; the model keeps no state without a KV cache).
    """
    captured: dict[str, Tensor] = {}
    names = [read_hook] + ([steer[0]] if steer is not None else [])
    plain = fast and is_bridge(model) and plain_sites_cover(names, model)

    def read(activation: Tensor, hook: Any) -> None:
        captured["read"] = activation
        if plain:
            raise _ReachedLayer

    hooks: list[tuple[str, HookFn]] = [(read_hook, read)] + ([steer] if steer is not None else [])
    if plain:
        with plain_hooks(model, hooks) as runner:
            try:
                runner(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    use_cache=False,
                )
            except _ReachedLayer:
                pass
        return captured["read"]
    if steer is not None and bool((batch.attention_mask == 0).any()):
        first = int(_BLOCK.match(steer[0]).group(1)) if _BLOCK.match(steer[0]) else 0
        last = stop_at_layer if stop_at_layer is not None else n_layers(model)
        hooks += [(f"blocks.{layer}.attn.hook_attn_scores", _unmask_padding_rows) for layer in range(first, last)]
    with hooks_on(model, hooks):
        if is_bridge(model):
            model(
                batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                stop_at_layer=stop_at_layer,
            )
        else:  # HookedTransformer derives left-padding offsets from the attention mask itself
            model(batch.input_ids, attention_mask=batch.attention_mask, stop_at_layer=stop_at_layer)
    return captured["read"]


@contextmanager
def frozen(model: HookedModel) -> Iterator[None]:
    """Parameters without gradients for the block (only the learned vector is); previous flags restored after.

    Flags are kept per module slot, and the plain HF clone's slots too: accelerate replaces an offloaded
    weight's placeholder on every call (copying its flag), so the objects seen now are not the ones after.
    """
    plain = plain_model(model) if is_bridge(model) else None
    slots = [
        (module, name, parameter.requires_grad)
        for tree in (model, plain) if tree is not None
        for module in tree.modules()
        for name, parameter in module._parameters.items() if parameter is not None
    ]
    try:
        for module, name, _ in slots:
            module._parameters[name].requires_grad_(False)
        yield
    finally:
        for module, name, flag in slots:
            module._parameters[name].requires_grad_(flag)


def differentiable_logits(
    model: HookedModel, batch: TokenBatch, hooks: Sequence[tuple[str, HookFn]] = (), *, fast: bool = True,
    keep_last: int = 0,
) -> Float[Tensor, "batch keep d_vocab"]:
    """Logits of a padded batch with `hooks` active, gradients left to the caller.

    `keep_last`: only the last positions' logits (0: all). The unembedding of a large vocabulary is much
    of a small model's cost, so on the plain HF path only those positions are unembedded.

    `fast`: on a bridge whose hooks all sit on residual sites, run its plain HF module tree (the same
    weights). Elsewhere, fully masked attention rows (left padding) get finite scores from the first
    hooked layer on, so a bias added at every position collects no NaN gradient.
    """
    hooks = list(hooks)
    if fast and is_bridge(model) and plain_sites_cover([name for name, _ in hooks], model):
        with plain_hooks(model, hooks) as runner:
            return runner(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=False, logits_to_keep=keep_last,
            ).logits
    if hooks and bool((batch.attention_mask == 0).any()):
        first = min(int(_BLOCK.match(name).group(1)) if _BLOCK.match(name) else 0 for name, _ in hooks)
        hooks += [
            (f"blocks.{layer}.attn.hook_attn_scores", _unmask_padding_rows) for layer in range(first, n_layers(model))
        ]
    with hooks_on(model, hooks):
        if is_bridge(model):
            logits = model(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
        else:
            logits = model(batch.input_ids, attention_mask=batch.attention_mask)
    return logits[:, -keep_last:] if keep_last else logits


def can_start_at_layer(model: HookedModel) -> bool:
    """Whether the decoder can be run from a layer's resid_pre on (`logits_from_layer`): a bridge whose plain
    HF clone keeps its layers in `model.layers`, all of one attention type (mixed types are indexed by
    position in the layer list, which a shortened list would shift)."""
    plain = plain_model(model) if is_bridge(model) else None
    if plain is None or not hasattr(getattr(plain, "model", None), "layers"):
        return False
    layer_types = getattr(getattr(plain, "config", None), "layer_types", None) or []
    return len(set(layer_types)) <= 1


@contextmanager
def layers_from(runner: Any, start: int) -> Iterator[None]:
    """Run only the decoder layers from `start` on (the HF model's inputs_embeds are then resid_pre there).

    Each attention keeps its own `layer_idx`, so it reads and writes its own layer of a KV cache.
    """
    if not start:
        yield
        return
    inner = runner.model
    layers = inner.layers
    inner.layers = torch.nn.ModuleList(list(layers)[start:])
    try:
        yield
    finally:
        inner.layers = layers


def logits_from_layer(
    model: HookedModel, batch: TokenBatch, layer: int, resid_pre: Float[Tensor, "batch seq d_model"], *,
    keep_last: int = 0,
) -> Float[Tensor, "batch keep d_vocab"]:
    """Logits of a padded batch whose resid_pre at `layer` is `resid_pre`: the layers below are not run.

    Gradients flow into `resid_pre`. `keep_last` as in `differentiable_logits`. Needs `can_start_at_layer(model)`.
    """
    if not can_start_at_layer(model):
        raise ValueError("model: running from a layer needs a bridge with a plain HF clone of one attention type")
    runner = plain_model(model)
    with layers_from(runner, layer):
        return runner(
            inputs_embeds=resid_pre, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
            use_cache=False, logits_to_keep=keep_last,
        ).logits
