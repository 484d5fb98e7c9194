"""A `Direction` inside an nnsight trace: steering and directional ablation, as `Steer` and `Ablate` do here.

nnsight (https://nnsight.net) runs interventions written in a `with model.trace(...)` block interleaved with
the model's own forward, locally or, with `remote=True`, on NDIF for models no single machine holds. The
functions below act on the HF decoder layers at the sites our hook names mean: `blocks.L.hook_resid_pre` is
layer L's input, `hook_resid_post` its output, `hook_attn_out` / `hook_mlp_out` what its attention / MLP
writes into the residual stream (the post-norms of sandwich-norm blocks). Tested equal to `Steer` and
`Ablate` on the same weights (tests/test_nnsight_adapter.py).

Call `steer` / `ablate` inside the trace block, in the order the model runs (nnsight requires that); in a
`generate` block, inside `for _ in tracer.iter[:n]:` they act on every step, as `Steer(positions="all")` and
`Ablate` do in `interp.runner.generate`. `nnsight_inputs` tokenizes formatted prompts as we do (one BOS).
`add_vector` and `project_out` take plain tensors and the layer layout (`layout(model)`, read locally, e.g.
from the weightless copy `TransformersModel(repo_id)` builds) and call nothing else of interp inside the
trace: with `nnsight.register(interp.nnsight_adapter)` they can be shipped to NDIF by value (not tried here:
NDIF is out of reach), and the README shows the same few lines inline, which needs nothing of interp there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp._checks import finite_number, scaled
from interp.chat import tokenize, tokenizer_of
from interp.directions import Direction, check_direction
from interp.hooked import HookedModel, decoder_layers, hf_tree, share_clone, site_module

SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")


@dataclass(frozen=True)
class Layout:
    """Where the residual sites of an HF decoder sit: the layers' dotted path and, per site, the child of a
    layer whose output it is (None: the layer's own input for resid_pre, output for resid_post); the width
    and the name `Direction`s record for the model (None: not known, not checked)."""

    layers_path: str
    n_layers: int
    children: dict[str, str | None]
    d_model: int | None = None
    model: str | None = None


def layout(model: Any) -> Layout:
    """The `Layout` of an HF causal LM, of our hooked model's HF tree, or of the module an nnsight model wraps."""
    module = getattr(model, "_module", None)
    hf = module if isinstance(module, torch.nn.Module) else hf_tree(model)
    path, layers = decoder_layers(hf)
    width = getattr(getattr(hf, "config", None), "hidden_size", None)
    name = getattr(hf if module is not None else model, "interp_name", None)
    return Layout(path, len(layers), {site: site_module(layers[0], site) for site in SITES},
                  int(width) if isinstance(width, int) else None, name if isinstance(name, str) else None)


def nnsight_model(model: HookedModel, tokenizer: Any = None) -> Any:
    """An nnsight `TransformersModel` over `model`'s HF weights (a bridge from `load_model`, or an HF model from
    `load_hf`): a structural copy of the module tree, sharing every tensor, so nnsight's wrapping leaves `model`
    as it is. Needs `pip install nnsight`."""
    from nnsight import TransformersModel

    tokenizer = tokenizer if tokenizer is not None else tokenizer_of(model)
    clone = share_clone(hf_tree(model))
    name = getattr(model, "interp_name", None)
    if name is not None:
        clone.interp_name = name  # so `steer` / `ablate` check a Direction's model, as `Steer` does
    return TransformersModel(clone, tokenizer=tokenizer, task="text-generation")


def nnsight_inputs(model_or_tokenizer: Any, prompts: str | Sequence[str]) -> dict[str, Tensor]:
    """Formatted prompts as the encoding an nnsight trace, invoke or generate takes: our tokenization (left
    padding, one BOS). A string given to nnsight goes through its own tokenizer call, which adds a second BOS
    to a chat prompt whose template already wrote one. Tensors only: fine to send to NDIF."""
    batch = tokenize(tokenizer_of(model_or_tokenizer), prompts)
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}


def _layer(lm: Any, plan: Layout, layer: int) -> Any:
    envoy = lm
    for part in plan.layers_path.split("."):
        envoy = getattr(envoy, part)
    return envoy[layer]


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, tuple) else value


def _with_first(value: Any, first: Tensor) -> Any:
    return (first, *value[1:]) if isinstance(value, tuple) else first


def add_vector(lm: Any, plan: Layout, layer: int, site: str, vector: Float[Tensor, "d_model"]) -> None:
    """Inside a trace: add `vector` to the residual stream at `site` of `layer`, at every position."""
    if site not in SITES:
        raise ValueError(f"site: expected one of {SITES}, got {site!r}")
    _check_plain(plan, vector, [layer], "vector")
    block = _layer(lm, plan, layer)
    if site == "resid_pre":
        hidden = block.input
        block.input = hidden + vector.to(hidden.device, hidden.dtype)
        return
    child = plan.children[site]
    envoy = block if child is None else getattr(block, child)
    output = envoy.output
    first = _first(output)
    envoy.output = _with_first(output, first + vector.to(first.device, first.dtype))


def _check_plain(plan: Layout, vector: Any, layers: Sequence[Any], argument: str) -> None:
    """The plain-tensor primitives' checks, in torch alone (they may be shipped to NDIF by value): a finite
    [d_model] float vector and block indices 0..n_layers − 1, before nnsight sees anything."""
    if not isinstance(vector, Tensor) or not vector.is_floating_point() or vector.ndim != 1:
        raise ValueError(f"{argument}: expected a 1-D floating-point tensor, got {getattr(vector, 'shape', type(vector))}")
    if plan.d_model is not None and vector.shape[0] != plan.d_model:
        raise ValueError(f"{argument}: width {vector.shape[0]} does not match the model's d_model {plan.d_model}")
    if not bool(torch.isfinite(vector).all()):
        raise ValueError(f"{argument}: contains NaN or inf")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < plan.n_layers:
            raise ValueError(f"layers: layer {layer!r} is out of range for a model with {plan.n_layers} layers")


def project_out(lm: Any, plan: Layout, unit: Float[Tensor, "d_model"], layers: Sequence[int] | None = None) -> None:
    """Inside a trace: x ← x − (x·r̂) r̂ at every listed layer's resid_pre, attn_out and mlp_out (`unit` is r̂)."""

    layers = list(range(plan.n_layers) if layers is None else layers)
    _check_plain(plan, unit, layers, "unit")
    norm = float(unit.float().norm())
    if abs(norm - 1.0) > 1e-2:  # x − (x·r) r removes the component along r only when |r| = 1
        raise ValueError(f"unit: expected a unit vector (norm 1), got norm {norm:.4g}; pass r / r.norm()")

    def projected(x: Tensor) -> Tensor:
        r = unit.to(x.device, x.dtype)
        return x - (x @ r)[..., None] * r

    for layer in layers:
        block = _layer(lm, plan, layer)
        block.input = projected(block.input)
        for site in ("attn_out", "mlp_out"):  # the order they run in
            envoy = getattr(block, plan.children[site])
            output = envoy.output
            envoy.output = _with_first(output, projected(_first(output)))


def steer(
    lm: Any, direction: Direction, scale: float = 1.0, *, unit: bool = False, layer: int | None = None,
    plan: Layout | None = None, allow_other_model: bool = False,
) -> None:
    """Inside a trace: add `scale` × the direction (its unit vector with `unit=True`) at its hook point, every
    position, as `Steer(direction, scale, unit=unit, layer=layer)`, after the same checks (finite scale and
    vector, the model's width, layer range, and the model the direction belongs to unless `allow_other_model`)."""
    plan = plan if plan is not None else layout(lm)
    scale = finite_number(scale, "scale")
    _check(plan, direction, allow_other_model, layer)
    layer = direction.layer if layer is None else layer % plan.n_layers
    vector = (direction.unit() if unit else direction).vector
    add_vector(lm, plan, layer, direction.site, scaled(vector, scale))


def ablate(lm: Any, direction: Direction, *, layers: Sequence[int] | None = None, plan: Layout | None = None,
           allow_other_model: bool = False) -> None:
    """Inside a trace: directional ablation of the direction at every layer's resid_pre, attn_out and mlp_out
    (or only `layers`), at all positions, as `Ablate(direction)` (with its checks)."""
    plan = plan if plan is not None else layout(lm)
    _check(plan, direction, allow_other_model)
    project_out(lm, plan, direction.unit().vector, layers)


def _check(plan: Layout, direction: Direction, allow_other_model: bool, layer: int | None = None) -> None:
    """`Steer`'s and `Ablate`'s checks of a direction (`interp._checks.check_direction`) against the layout."""
    check_direction(direction, None if allow_other_model else plan.model,
                    direction.d_model if plan.d_model is None else plan.d_model, plan.n_layers, layer=layer)
