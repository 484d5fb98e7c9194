"""Activations read at hook points of a padded batch, the forward stopped once the last of them is read.

On a bridge loaded by `load_model`, when every hook point is a residual site (`blocks.L.hook_resid_pre`,
`hook_attn_out`, `hook_mlp_out`, `hook_resid_post`), this runs the bridge's plain HF clone (the same weight
tensors) with the reads as PyTorch hooks: none of the bridge's ~1,700 hook-point modules, and nothing after the
last read (not the rest of that layer's block when it reads resid_pre, nor the final norm and the unembedding).
Other hook points, and a HookedTransformer, run the hooked model itself, stopped before the block after the last
one read (TransformerLens's `stop_at_layer`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.chat import TokenBatch
from interp.hooked import SITE_PATTERN, HookedModel, decoder_layers, forward, model_device, n_layers, plain_model
from interp.steering import HookIntervention, apply_all

Reduce = Callable[[Float[Tensor, "batch seq d"], str], Tensor]
"""What to keep of an activation (on its layer's device), given it and its hook name: e.g. some positions, moved
to the CPU."""

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
# The order in which a decoder layer's sites are reached: its input, the attention's write, the MLP's, its output.
_SITE_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid_post": 3}


class _Read(Exception):
    """Raised once the last activation is read on the plain-HF path: nothing after it needs to run."""


@contextmanager
def _stop_after(plain: torch.nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Stop the plain clone's forward right after the last of these residual sites is reached.

    The stop is a hook on the decoder layer itself (a pre-hook for resid_pre, else a forward hook), registered
    after the reads: it fires after every read at that layer, and outside the layer's own forward, so a layer
    placed by accelerate has finished its device round trip (offloaded weights go back) before the run stops.
    """
    sites = [SITE_PATTERN.match(name) for name in names]
    layer, site = max(((int(m.group(1)), m.group(2)) for m in sites), key=lambda item: (item[0], _SITE_ORDER[item[1]]))
    module = decoder_layers(plain)[1][layer]

    def stop(*args: Any) -> None:
        raise _Read

    if site == "resid_pre":
        handle = module.register_forward_pre_hook(stop)
    else:
        handle = module.register_forward_hook(stop)
    try:
        yield
    finally:
        handle.remove()


def _stop_at_layer(model: HookedModel, names: Sequence[str]) -> int | None:
    """The block a hooked model's forward may stop before: the one after the last block read (None: run it all)."""
    blocks = [_BLOCK.match(name) for name in names]
    if not all(blocks):
        return None
    stop = max(int(block.group(1)) for block in blocks) + 1
    return stop if stop < n_layers(model) else None


@torch.no_grad()
def read_activations(
    model: HookedModel, batch: TokenBatch, names: Sequence[str], reduce: Reduce | None = None, *, fast: bool = True
) -> dict[str, Tensor]:
    """`{name: reduce(activation, name)}` at each hook point in `names` (in that order, once each) for one padded
    batch (attention mask and matching position ids), the forward stopped after the last read.

    `reduce` sees each activation on its own layer's device (a model split by accelerate keeps each layer on its
    device) and returns what to keep; None keeps the whole activation. `fast`: on a bridge, use its plain HF clone
    when every name is a residual site and no other hook sits on the bridge (the same activations, up to float
    rounding); `False` runs the bridge's own hook points.
    """
    unique = list(dict.fromkeys(names))
    if not unique:
        raise ValueError("names: expected at least one hook point to read")
    batch = batch.to(model_device(model))
    kept: dict[str, Tensor] = {}

    def keeper(name: str) -> Callable[[Tensor, Any], None]:
        # Keyed by our name, not hook.name: a bridge reports aliased hooks by their canonical name.
        def keep(activation: Tensor, hook: Any) -> None:
            kept[name] = reduce(activation, name) if reduce is not None else activation

        return keep

    reads = HookIntervention([(name, keeper(name)) for name in unique])
    with apply_all(model, reads, plain=fast) as state:
        plain = plain_model(model)
        if plain is not None and state.runner is plain:
            with _stop_after(plain, unique):
                try:
                    plain(
                        input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids, use_cache=False,
                    )
                except _Read:
                    pass
        else:
            forward(model, batch, stop_at_layer=_stop_at_layer(model, unique))
    missing = [name for name in unique if name not in kept]
    if missing:  # e.g. a hook point the forward never reaches
        raise RuntimeError(f"names: the forward did not reach {missing}")
    return {name: kept[name] for name in unique}
