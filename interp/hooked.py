"""The few places where a TransformerBridge and a HookedTransformer differ, in one module.

Everything else in the toolkit talks to a model through TransformerLens's shared idioms: classic hook
names, `hooks(fwd_hooks=...)`, `run_with_cache`, `cfg.n_layers` / `cfg.d_model`, `model.tokenizer`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.chat import TokenBatch

HookedModel = Any
"""A TransformerLens `TransformerBridge` (what `interp.models.load_model` returns) or a `HookedTransformer`.

An alias, not a Protocol: the two classes share no base, and a user's own hooked model needs only
`cfg.n_layers`, `cfg.d_model`, `tokenizer`, `hook_dict` and a forward taking `attention_mask`."""
HookFn = Callable[[Tensor, Any], Tensor | None]
HookList = list[tuple[str, HookFn]]


def is_bridge(model: HookedModel) -> bool:
    """Whether `model` is a TransformerBridge (it wraps an HF model: `original_model`)."""
    return hasattr(model, "original_model")


def n_layers(model: HookedModel) -> int:
    """The model's number of blocks (`cfg.n_layers`)."""
    return int(model.cfg.n_layers)


def d_model(model: HookedModel) -> int:
    """The model's residual width (`cfg.d_model`)."""
    return int(model.cfg.d_model)


def model_device(model: HookedModel) -> torch.device:
    """Where the model takes its inputs: a model split by accelerate (`device_map`) runs its input embedding
    on one device and moves activations between the others itself; any other model sits on one device."""
    trees = (plain_model(model), model.original_model if is_bridge(model) else None, model)
    for tree in trees:
        if tree is not None and getattr(tree, "hf_device_map", None):
            return input_device(tree)
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------
# Models placed by accelerate (`device_map`): split over devices, some weights offloaded, or quantized
# ---------------------------------------------------------------------------------------------


def _align_hooks(module: torch.nn.Module) -> list[Any]:
    """accelerate's device-alignment hooks on `module` (a SequentialHook holds several)."""
    hook = getattr(module, "_hf_hook", None)
    return list(getattr(hook, "hooks", None) or ([hook] if hook is not None else []))


def input_device(hf: torch.nn.Module) -> torch.device:
    """The device a dispatched HF model's input embedding runs on (where token ids must go).

    Read from accelerate's hook on the embedding: an embedding offloaded to disk or to the CPU holds a meta
    placeholder, while its hook knows the device its weights are brought to for each call.
    """
    embedding = hf.get_input_embeddings()
    for hook in _align_hooks(embedding):
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
    parameter = next(embedding.parameters(), None)
    if parameter is not None and parameter.device.type != "meta":
        return parameter.device
    first = next(iter(hf.hf_device_map.values()))
    return torch.device("cpu" if first in ("cpu", "disk") else first)


def offloaded_weights(hf: torch.nn.Module) -> list[str]:
    """Names of the weights accelerate keeps off the module (on disk, or on the CPU for a GPU model): each
    module holds a meta placeholder that its hook fills for the duration of a call."""
    return [name for name, parameter in hf.named_parameters() if parameter.device.type == "meta"]


def quantization_method(hf: torch.nn.Module) -> str | None:
    """The quantization an HF model was loaded with ("bitsandbytes 8bit", "bitsandbytes 4bit", ...), or None.

    Read from the quantizer transformers attaches; weights that are not floating point count too.
    """
    quantizer = getattr(hf, "hf_quantizer", None)
    if quantizer is None:
        stored = [p.dtype for p in hf.parameters() if not p.is_floating_point() and p.device.type != "meta"]
        return f"{stored[0]} weights" if stored else None
    config = quantizer.quantization_config
    method = getattr(config, "quant_method", "unknown")
    method = str(getattr(method, "value", method))  # an enum in transformers
    for bits in ("8bit", "4bit"):
        if getattr(config, f"load_in_{bits}", False):
            return f"{method} {bits}"
    return method


MATERIALISED_ATTRIBUTE = "_interp_offload_aligned"


def materialise_offloaded_components(bridge: Any) -> int:
    """Let every bridge component see its offloaded HF module's real weights while it runs. Idempotent.

    accelerate fills an offloaded module's weights only around that module's own forward; some bridge
    components read the wrapped module's parameters directly (a normalisation's weight, the unembedding),
    which would then see the meta placeholder. TransformerLens >= 4.3 wraps every component call in
    accelerate's `align_module_device` itself; on older versions this does the same per instance. Returns
    how many components were wrapped.
    """
    from accelerate.utils import align_module_device
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    if "__call__" in GeneralizedComponent.__dict__ or bridge.__dict__.get(MATERIALISED_ATTRIBUTE):
        return 0
    wrapped = 0
    for module in bridge.modules():
        original = module._modules.get("_original_component") if isinstance(module, GeneralizedComponent) else None
        if original is None or not any(getattr(hook, "offload", False) for hook in _align_hooks(original)):
            continue

        def aligned(*args: Any, _forward: Callable = module.forward, _original: Any = original, **kwargs: Any) -> Any:
            with align_module_device(_original):
                return _forward(*args, **kwargs)

        module.__dict__["forward"] = aligned  # not setattr: a component forwards attribute writes to its module
        wrapped += 1
    bridge.__dict__[MATERIALISED_ATTRIBUTE] = True
    return wrapped


def offload_bias_(unembedding: torch.nn.Module) -> None:
    """Register a bias the bridge added to an offloaded unembedding with accelerate's offload store.

    TransformerLens < 4.3 gives a bias-free unembedding a zero bias (b_U) on the weight's device, which is
    meta when the unembedding is offloaded; accelerate would then look the bias up in its store and fail.
    """
    from collections import ChainMap

    bias = getattr(unembedding, "bias", None)
    for hook in _align_hooks(unembedding):
        if not getattr(hook, "offload", False) or bias is None or bias.device.type != "meta":
            continue
        if "bias" not in hook.weights_map:
            zeros = torch.zeros(bias.shape, dtype=bias.dtype)
            hook.weights_map = ChainMap({"bias": zeros}, hook.weights_map)
            hook.original_devices.setdefault("bias", bias.device)


def check_layers(model: HookedModel, layers: list[int] | int, argument: str = "layers") -> list[int]:
    """Validate layer indices (negative ones count from the end) and return them as a list."""
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    if not layer_list:
        raise ValueError(f"{argument}: expected at least one layer")
    count = n_layers(model)
    resolved = []
    for layer in layer_list:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -count <= layer < count:
            raise ValueError(f"{argument}: layer {layer!r} is out of range for a model with {count} layers")
        resolved.append(layer % count)
    return resolved


@torch.no_grad()
def forward(
    model: HookedModel, batch: TokenBatch, *, stop_at_layer: int | None = None
) -> Float[Tensor, "batch seq d_vocab"] | None:
    """One padded forward pass of the hooked model itself, with the attention mask (and, for HF models,
    matching position ids): every hook registered on its hook points fires.

    A forward under interventions goes through `interp.runner.batch_logits` (or `read_activations`), which
    take the plain HF clone instead whenever every hook sits on a residual site (`plain_sites_cover`).
    """
    batch = batch.to(model_device(model))
    if is_bridge(model):
        return model(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            stop_at_layer=stop_at_layer,
        )
    # HookedTransformer derives left-padding offsets from the attention mask itself.
    return model(batch.input_ids, attention_mask=batch.attention_mask, stop_at_layer=stop_at_layer)


HOOK_POINTS_ATTRIBUTE = "_interp_hook_points"


def hook_points(model: HookedModel) -> dict[str, torch.nn.Module]:
    """Name → HookPoint, computed once per model: a bridge rebuilds `hook_dict` (alias resolution
    over ~1,700 points, ~15 ms) on every access, which would dominate a multiplier sweep."""
    cached = model.__dict__.get(HOOK_POINTS_ATTRIBUTE)
    if cached is None:
        cached = dict(model.hook_dict)
        model.__dict__[HOOK_POINTS_ATTRIBUTE] = cached
    return cached


@contextmanager
def hooks_on(model: HookedModel, hooks: HookList) -> Iterator[None]:
    """Register TransformerLens-style `(name, fn(activation, hook))` hooks for the block; remove them after.

    Equivalent to `model.hooks(fwd_hooks=hooks)`, removing exactly the hooks it added.
    """
    points = hook_points(model)
    with ExitStack() as stack:
        for name, function in hooks:
            if name not in points:
                hint = " (a TransformerBridge needs enable_compatibility_mode() for classic names)" if is_bridge(model) else ""
                raise ValueError(f"hook name: {name!r} is not a hook point of this model{hint}")
            point = points[name]
            handle = point.register_forward_hook(
                lambda module, args, output, function=function: function(output, module)
            )
            stack.callback(handle.remove)
        yield


def root_module(model: HookedModel) -> torch.nn.Module:
    """The module whose forward receives the KV cache: the HF model under a bridge, else the model."""
    return model.original_model if is_bridge(model) else model


# ---------------------------------------------------------------------------------------------
# The KV cache across transformers versions
# ---------------------------------------------------------------------------------------------
# transformers <= 5.23 hands the cache to `forward` as `past_key_values` and returns it as
# `output.past_key_values`; 5.24 renames both to `cache` (the old names are deprecated, removed in
# 5.40). Nothing here depends on which name a version uses: positions are read from the cache
# object itself, and calls use the keyword the module's own signature declares.


def accepts(module: torch.nn.Module, argument: str) -> bool:
    """Whether `module.forward` declares `argument` (deprecation wrappers keep the real signature)."""
    return argument in inspect.signature(module.forward).parameters


def cache_kwargs(module: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """`{keyword: cache}` with the KV-cache keyword that `module.forward` declares."""
    return {"cache" if accepts(module, "cache") else "past_key_values": cache}


def output_cache(output: Any) -> Any:
    """The KV cache an HF forward returned, under whichever name this transformers version uses."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _is_kv_cache(value: Any) -> bool:
    return callable(getattr(value, "get_seq_length", None))


def past_length(forward_kwargs: dict[str, Any]) -> int:
    """How many positions precede a forward's first input column (0 without a KV cache).

    Read from what the forward actually receives, whatever the keyword is called: the length of the
    KV cache object, else `cache_position`, else the position ids of the unpadded row (a left-padded
    batch always has one). When a cache and position ids disagree, the model did not write its cache
    (cached decoding would attend to the new token alone), which is an error, not a silent offset.
    """
    cache = next((value for value in forward_kwargs.values() if _is_kv_cache(value)), None)
    positions = forward_kwargs.get("position_ids")
    from_positions = (
        int(positions[:, 0].max()) if isinstance(positions, Tensor) and positions.ndim == 2 and positions.numel() else None
    )
    if cache is not None:
        length = int(cache.get_seq_length())
        if from_positions is not None and from_positions != length:
            raise RuntimeError(
                f"KV cache: the cache holds {length} positions but the position ids start at {from_positions}; "
                "this model did not write its KV cache (generate with use_cache=False, or fast=True)"
            )
        return length
    cache_position = forward_kwargs.get("cache_position")
    if isinstance(cache_position, Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    legacy = forward_kwargs.get("past_kv_cache")  # HookedTransformer (TransformerLens < 4)
    if legacy is not None and legacy.entries and legacy.entries[0].past_keys is not None:
        return int(legacy.entries[0].past_keys.shape[1])
    return from_positions or 0


CACHE_SHIM_ATTRIBUTE = "_interp_cache_shim"


def route_cache_to_bridge_attention(model: HookedModel) -> None:
    """Let a bridge's attention see the KV cache however transformers names it. Idempotent.

    TransformerLens's attention bridges (3.9 and 4.x) re-implement attention and read the cache from
    `past_key_values` only; transformers >= 5.24 passes it as `cache`, so without this the bridge's
    cached decoding writes nothing to the cache and each new token attends to itself alone.
    """
    if not is_bridge(model) or model.__dict__.get(CACHE_SHIM_ATTRIBUTE):
        return
    for module in model.modules():
        if hasattr(type(module), "_update_kv_cache"):
            module.register_forward_pre_hook(_cache_as_past_key_values, with_kwargs=True)
    model.__dict__[CACHE_SHIM_ATTRIBUTE] = True


def _cache_as_past_key_values(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
    if kwargs.get("cache") is None or kwargs.get("past_key_values") is not None:
        return None
    renamed = {key: value for key, value in kwargs.items() if key != "cache"}
    renamed["past_key_values"] = kwargs["cache"]
    return args, renamed


# ---------------------------------------------------------------------------------------------
# Fast path for generation: the same weights, without the bridge's per-module wrappers
# ---------------------------------------------------------------------------------------------
# A bridge calls ~1,700 hook-point modules per forward; at batch sizes where a decoding step costs a
# few milliseconds that overhead dominates. For interventions on the residual-stream sites below, we
# run the HF model's own module tree (sharing every tensor with the bridge) with plain PyTorch hooks.

SITE_PATTERN = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|attn_out|mlp_out|resid_post)$")
PLAIN_ATTRIBUTE = "_interp_plain_hf"


def share_clone(module: torch.nn.Module) -> torch.nn.Module:
    """A structural copy of `module` that shares every parameter and buffer but none of the PyTorch hooks.

    Made before a bridge wraps the model's submodules, it keeps the plain HF module tree. accelerate's
    placement hooks (a model loaded with `device_map`) are kept: they replace `forward` on the instance with
    a function bound to the module, which is rebound to the clone, so the clone runs its own children and
    moves (or fetches offloaded) weights for itself.
    """
    clone = copy.copy(module)
    clone.__dict__ = {
        key: (value.copy() if key.startswith("_") and isinstance(value, dict) else _rebound(value, module, clone))
        for key, value in module.__dict__.items()
    }
    clone._modules = {name: share_clone(child) if child is not None else None for name, child in module._modules.items()}
    return clone


def _rebound(value: Any, module: torch.nn.Module, clone: torch.nn.Module) -> Any:
    """`value` bound to `clone` where it is bound to `module` (a method, or a partial whose first argument it is)."""
    if isinstance(value, types.MethodType) and value.__self__ is module:
        return types.MethodType(value.__func__, clone)
    if isinstance(value, functools.partial) and value.args and value.args[0] is module:
        rebound = functools.partial(value.func, clone, *value.args[1:], **value.keywords)
        rebound.__dict__.update({key: _rebound(item, module, clone) for key, item in value.__dict__.items()})
        return rebound
    return value


def keep_attention_implementation(plain: torch.nn.Module, shared_config: Any, implementation: str) -> None:
    """Give the plain clone its own copy of `shared_config` with `implementation` as its attention.

    TransformerLens 4 switches a pre-loaded HF model to eager attention (its hooks read the pattern); the
    clone shares that config object, so without this the fast path would lose sdpa as well.
    """
    config = copy.deepcopy(shared_config)
    config._attn_implementation = implementation
    for module in plain.modules():
        if getattr(module, "config", None) is shared_config:
            module.config = config


def attach_plain_model(bridge: Any, plain: torch.nn.Module) -> None:
    """Attach the plain HF module tree (sharing every weight) that the fast path runs, to `bridge`.

    It is stored outside `nn.Module`'s registry, so its shared parameters are not counted twice.
    """
    # Stored outside nn.Module's registry so its (shared) parameters are not counted twice.
    bridge.__dict__[PLAIN_ATTRIBUTE] = plain


def plain_model(model: HookedModel) -> torch.nn.Module | None:
    """The plain HF module tree attached to a bridge by `attach_plain_model`, or None."""
    return model.__dict__.get(PLAIN_ATTRIBUTE)


DECODER_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def decoder_layers(hf: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The dotted path of an HF model's decoder layers and the layers, for the common layouts."""
    for path in DECODER_LAYER_PATHS:
        module: Any = hf
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, torch.nn.ModuleList):
            return path, module
    raise ValueError(f"model: no decoder layers found at any of {DECODER_LAYER_PATHS} ({type(hf).__name__})")


def _plain_layers(plain: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The plain clone's decoder layers when they sit at `model.layers`, the layout its site hooks handle."""
    try:
        path, layers = decoder_layers(plain)
    except ValueError:
        return None
    return layers if path == "model.layers" else None


def hf_tree(model: HookedModel, argument: str = "model") -> torch.nn.Module:
    """The plain HF module tree of a bridge (`load_model`), or an HF `PreTrainedModel` itself."""
    from transformers import PreTrainedModel

    if is_bridge(model):
        plain = plain_model(model)
        if plain is None:
            raise ValueError(
                f"{argument}: a TransformerBridge without interp's plain HF clone; load it with "
                "interp.models.load_model, or pass the HF model from interp.models.load_hf"
            )
        return plain
    if isinstance(model, PreTrainedModel):
        return model
    raise ValueError(
        f"{argument}: expected an HF model (interp.models.load_hf), a bridge from interp.models.load_model, "
        f"or a path; got {type(model).__name__} (a HookedTransformer's weights are not HF weights)"
    )


def plain_sites_cover(hook_names: list[str], model: HookedModel) -> bool:
    """True when the fast path can run these hooks: a plain clone exists, every hook is a site, and no hook sits
    on the bridge's own hook points (a caller's `model.hooks(...)`, `hooks_on` or `apply_all` around this call),
    which the plain clone would silently skip."""
    plain = plain_model(model)
    if plain is None or not all(SITE_PATTERN.match(name) for name in hook_names) or has_active_hooks(model):
        return False
    return _plain_layers(plain) is not None


def has_active_hooks(model: HookedModel) -> bool:
    """Whether any hook is registered on the model's hook points, forward or backward (~0.3 ms over a bridge's
    ~1,700 of them)."""
    return any(
        point._forward_hooks or point._forward_pre_hooks or point._backward_hooks or point._backward_pre_hooks
        for point in hook_points(model).values()
    )


class _SiteHook:
    """Stands in for a TransformerLens HookPoint in a hook function's `hook` argument."""

    def __init__(self, name: str) -> None:
        self.name = name


@contextmanager
def plain_hooks(
    model: HookedModel, hooks: HookList
) -> Iterator[torch.nn.Module]:
    """Register TransformerLens-style site hooks as PyTorch hooks on the plain HF clone."""
    plain = plain_model(model)
    layers = _plain_layers(plain)
    if layers is None:
        raise ValueError("model: the plain HF clone has no decoder layers at model.layers")
    with ExitStack() as stack:
        for name, function in hooks:
            match = SITE_PATTERN.match(name)
            layer, site = layers[int(match.group(1))], match.group(2)
            stack.callback(_register_site_hook(layer, site, function, _SiteHook(name)).remove)
        yield plain


def site_module(layer: torch.nn.Module, site: str) -> str | None:
    """The child of an HF decoder layer whose output is `site` ("attn_out" / "mlp_out"), by attribute name;
    None for "resid_pre" (the layer's input) and "resid_post" (its output)."""
    if site in ("resid_pre", "resid_post"):
        return None
    if site not in ("attn_out", "mlp_out"):
        raise ValueError(f"site: expected resid_pre, attn_out, mlp_out or resid_post, got {site!r}")
    if hasattr(layer, "pre_feedforward_layernorm"):
        # Sandwich-norm blocks (Gemma): what reaches the residual is the post-norm's output.
        return "post_attention_layernorm" if site == "attn_out" else "post_feedforward_layernorm"
    return "self_attn" if site == "attn_out" else "mlp"


def _register_site_hook(layer: torch.nn.Module, site: str, function: Callable, hook: _SiteHook) -> Any:
    def replace_first(output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        changed = function(hidden, hook)
        if changed is None:
            return None
        return (changed, *output[1:]) if isinstance(output, tuple) else changed

    if site == "resid_pre":
        def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                changed = function(args[0], hook)
                return None if changed is None else ((changed, *args[1:]), kwargs)
            changed = function(kwargs["hidden_states"], hook)
            return None if changed is None else (args, {**kwargs, "hidden_states": changed})

        return layer.register_forward_pre_hook(pre, with_kwargs=True)
    child = site_module(layer, site)
    target = layer if child is None else getattr(layer, child)
    return target.register_forward_hook(lambda module, args, output: replace_first(output))
