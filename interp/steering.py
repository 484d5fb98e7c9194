"""Interventions with a `Direction` or `SteeringVectors`: add it (activation addition), project it out
(ablation) or set the component along it (clamping), at the positions a rule says ("all", "new", from token i).

An intervention is a small frozen dataclass with `hooks(model)` (TransformerLens `(name, fn)` pairs)
and `apply(model)` (a context manager). `apply_all(model, *interventions)` applies several at once;
`interp.runner.generate` runs batched generation with them active.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from interp._checks import finite_number, scaled, whole_number
from interp.directions import Direction, check_direction, hook_name
from interp.hooked import (
    HookedModel,
    HookList,
    check_layers,
    d_model,
    hooks_on,
    model_device,
    n_layers,
    past_length,
    plain_hooks,
    plain_sites_cover,
    root_module,
    route_cache_to_bridge_attention,
)
from interp.models import model_name
from interp.vectors import SteeringVectors

T = TypeVar("T")


@dataclass
class StepState:
    """Where the current forward's first position sits in the whole sequence, and the prompt length.

    A KV-cached decoding step sees only the new token; the steering hook needs its absolute
    position to know whether it is a prompt or a generated token.
    """

    offset: int = 0
    prompt_length: int | None = None
    # Each row's count of real tokens before every column of the forward's attention mask ([batch, past + new]): a
    # token index, which padding between a cached prefix and the suffix must not advance either.
    token_index: Tensor | None = None
    runner: Any = None  # the module whose forward/generate runs with the hooks active


class Intervention(Protocol):
    """What every intervention is: something that gives TransformerLens hooks for a model and a decoding step.

    `Steer`, `Ablate`, `Clamp`, `HookIntervention` and `interp.splice.Splice` are interventions; `apply_all`
    and `interp.runner.generate` take any of them.
    """

    def hooks(self, model: HookedModel, state: StepState) -> HookList: ...


def _check_direction(model: HookedModel, direction: Direction, allow_other_model: bool, layer: int | None = None) -> None:
    check_direction(direction, None if allow_other_model else model_name(model), d_model(model), n_layers(model),
                    layer=layer)


Positions = Union[Literal["all", "new"], int]


def check_positions(positions: Any) -> Positions:
    """`positions` if it is a positions rule: "all", "new" (from the last prompt token on, inside `generate`) or a
    token index i >= 0 (every token from the i-th of each prompt on, counted on its real tokens, as
    steering-vectors' `min_token_index`); else a ValueError."""
    if positions in ("all", "new") and isinstance(positions, str):
        return positions
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 0:
        raise ValueError(f"positions: expected 'all', 'new' or a token index >= 0, got {positions!r}")
    return positions


def position_mask(positions: Positions, activation: Tensor, state: StepState) -> Bool[Tensor, "batch seq 1"] | None:
    """Which positions of this forward's `activation` [batch, seq, d] the rule covers; None for all of them.

    A KV-cached decoding step sees only its new columns, so columns are placed by `state.offset`; a token index
    counts each row's real tokens only (`state.token_index`), past its left padding and past the padding between
    a cached shared prefix and the row's own tokens (`interp.runner.generate_greedy`, `last_logits`).
    """
    if positions == "all":
        return None
    columns = torch.arange(activation.shape[1], device=activation.device)
    if positions == "new":
        if state.prompt_length is None:
            raise RuntimeError("positions='new' only applies inside interp.runner.generate")
        return (columns >= state.prompt_length - 1 - state.offset)[None, :, None]
    index = state.offset + columns[None, :]
    if state.token_index is not None:
        token_index = state.token_index.to(activation.device)
        if token_index.shape[1] == state.offset + activation.shape[1]:
            index = token_index[:, state.offset :]
        else:  # a mask that is not [past + new] wide: count past its left padding only
            index = index - (token_index < 0).sum(-1, keepdim=True)
    return (index >= positions)[..., None]


def _site_hook(change: Callable[[Tensor], Tensor], positions: Positions, state: StepState) -> Callable[[Tensor, Any], Tensor]:
    """A hook that replaces the activation by `change(activation)` at the positions the rule covers."""
    def hook(activation: Tensor, hook: Any) -> Tensor:
        mask = position_mask(positions, activation, state)
        changed = change(activation)
        return changed if mask is None else torch.where(mask, changed, activation)

    return hook


def _directions(target: Any, argument: str = "direction") -> list[Direction]:
    """A Direction, or each layer's Direction of `SteeringVectors` (one intervention then acts at every layer)."""
    if isinstance(target, Direction):
        return [target]
    if isinstance(target, SteeringVectors):
        return list(target)
    raise TypeError(f"{argument}: expected a Direction or SteeringVectors, got {type(target).__name__}")


class _Applied:
    """`apply(model)`: the intervention active for the duration of a `with` block."""

    @contextmanager
    def apply(self, model: HookedModel) -> Iterator[StepState]:
        with apply_all(model, self) as state:
            yield state


@dataclass(frozen=True)
class Steer(_Applied):
    """Add `scale * direction.vector` to the residual stream at the direction's hook point.

    `positions="all"` adds at every position; `positions="new"` adds from the last prompt token on
    (every position that predicts a generated token, as CAA does), which needs `generate`; a token index i
    adds from each prompt's i-th token on. `unit=True` adds `scale` times the unit vector instead of the
    vector as found. `SteeringVectors` add each layer's vector at its own layer: the same as one `Steer` per layer.
    """

    direction: Direction | SteeringVectors
    scale: float = 1.0
    positions: Positions = "all"
    unit: bool = False
    layer: int | None = None  # override the direction's own layer (a single Direction only)
    allow_other_model: bool = False

    def __post_init__(self) -> None:
        _directions(self.direction)
        finite_number(self.scale, "scale")
        check_positions(self.positions)
        if self.layer is not None:
            whole_number(self.layer, "layer")
            if isinstance(self.direction, SteeringVectors):
                raise ValueError("layer: SteeringVectors carry a layer per vector; select() them instead")

    def hooks(self, model: HookedModel, state: StepState | None = None) -> HookList:
        state = state if state is not None else StepState()
        hooks: HookList = []
        for direction in _directions(self.direction):
            _check_direction(model, direction, self.allow_other_model, self.layer)
            layer = check_layers(model, self.layer if self.layer is not None else direction.layer)[0]
            vector = (direction.unit() if self.unit else direction).vector.to(model_device(model))
            addition = scaled(vector, self.scale)
            # .to per call: a split model's layer may sit on another device than the input embedding
            hooks.append((hook_name(layer, direction.site),
                          _site_hook(lambda x, a=addition: x + a.to(x.device, x.dtype), self.positions, state)))
        return hooks

def ablation_hook_names(model: HookedModel) -> list[str]:
    """Every point where the residual stream is read or written: each layer's input and both outputs."""
    return [hook_name(layer, site) for layer in range(n_layers(model)) for site in ("resid_pre", "attn_out", "mlp_out")]


def _projection_hooks(model: HookedModel, state: StepState | None, targets: list[tuple[Direction, float, list[str]]],
                      positions: Positions, allow_other_model: bool) -> HookList:
    """Hooks that set the component along each direction's unit vector r̂ to its value at its hook points:
    x ← x + (value − x·r̂) r̂ (value 0 is ablation, bit for bit x − (x·r̂) r̂)."""
    state = state if state is not None else StepState()
    hooks: HookList = []
    for direction, value, names in targets:
        _check_direction(model, direction, allow_other_model)
        unit = direction.unit().vector.to(model_device(model))

        def change(activation: Tensor, r: Tensor = unit, value: float = float(value)) -> Tensor:
            r = r.to(activation.device, activation.dtype)
            return activation + (value - activation @ r)[..., None] * r

        hooks.extend((name, _site_hook(change, positions, state)) for name in names)
    return hooks


@dataclass(frozen=True)
class Ablate(_Applied):
    """Directional ablation: x ← x − (x·r̂) r̂ at `hook_names` (default: every layer's resid_pre,
    attn_out and mlp_out, as Arditi et al.), at `positions` (default all).

    `SteeringVectors` ablate each layer's vector at its own hook point (as steering-vectors' ablation operator).
    """

    direction: Direction | SteeringVectors
    hook_names: tuple[str, ...] | None = None
    allow_other_model: bool = False
    positions: Positions = "all"

    def __post_init__(self) -> None:
        _directions(self.direction)
        check_positions(self.positions)
        if self.hook_names is None:
            return
        if isinstance(self.direction, SteeringVectors):
            raise ValueError("hook_names: SteeringVectors are ablated at their own layers; pass a Direction for others")
        names = (self.hook_names,) if isinstance(self.hook_names, str) else tuple(self.hook_names)  # one name
        if not names or not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"hook_names: expected hook point names, got {self.hook_names!r}")
        object.__setattr__(self, "hook_names", names)

    def hooks(self, model: HookedModel, state: StepState | None = None) -> HookList:
        if isinstance(self.direction, SteeringVectors):
            targets = [(direction, 0.0, [direction.hook_name]) for direction in self.direction]
        else:
            names = list(self.hook_names) if self.hook_names is not None else ablation_hook_names(model)
            if not names:
                raise ValueError("hook_names: expected at least one hook point")
            targets = [(self.direction, 0.0, names)]
        return _projection_hooks(model, state, targets, self.positions, self.allow_other_model)


@dataclass(frozen=True)
class Clamp(_Applied):
    """Set the component along the direction to `value`: x ← x + (value − x·r̂) r̂ at the direction's hook
    point, at `positions` (as feature clamping sets a feature's activation). `value` is in residual-stream
    units along the unit vector; for `SteeringVectors` one value for every layer, or one per layer.
    """

    direction: Direction | SteeringVectors
    value: float | tuple[float, ...] = 0.0
    positions: Positions = "all"
    allow_other_model: bool = False

    def __post_init__(self) -> None:
        count = len(_directions(self.direction))
        check_positions(self.positions)
        if isinstance(self.value, (list, tuple)):
            if len(self.value) != count:
                raise ValueError(f"value: expected one number or {count} (one per layer), got {len(self.value)}")
            object.__setattr__(self, "value", tuple(finite_number(v, "value") for v in self.value))
        else:
            finite_number(self.value, "value")

    def hooks(self, model: HookedModel, state: StepState | None = None) -> HookList:
        directions = _directions(self.direction)
        values = self.value if isinstance(self.value, tuple) else (self.value,) * len(directions)
        targets = [(direction, value, [direction.hook_name]) for direction, value in zip(directions, values)]
        return _projection_hooks(model, state, targets, self.positions, self.allow_other_model)


@dataclass(frozen=True)
class HookIntervention:
    """Any list of TransformerLens hooks, so custom hooks compose with `apply_all` and `generate`."""

    hook_list: HookList = field(default_factory=list)

    def hooks(self, model: HookedModel, state: StepState | None = None) -> HookList:
        return list(self.hook_list)


@contextmanager
def apply_all(model: HookedModel, *interventions: Intervention, plain: bool = False) -> Iterator[StepState]:
    """Apply interventions for the duration of the block; yields the shared `StepState`.

    `plain=True` (used by `generate`) puts residual-site hooks on the bridge's plain HF clone instead,
    when every hook is on such a site; `state.runner` is then that clone, and only it is hooked.
    """
    state = StepState()
    hooks: HookList = []
    for intervention in interventions:
        hooks.extend(intervention.hooks(model, state))

    def track_offset(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        state.offset = past_length(kwargs)
        mask = kwargs.get("attention_mask")  # [batch, past + new] in HF and bridge forwards
        state.token_index = mask.long().cumsum(-1) - 1 if isinstance(mask, Tensor) and mask.ndim == 2 else None

    route_cache_to_bridge_attention(model)
    with ExitStack() as stack:
        if plain and plain_sites_cover([name for name, _ in hooks], model):
            state.runner = stack.enter_context(plain_hooks(model, hooks))
        else:
            state.runner = root_module(model)
            stack.enter_context(hooks_on(model, hooks))
        handle = state.runner.register_forward_pre_hook(track_offset, with_kwargs=True)
        stack.callback(handle.remove)
        yield state


def multiplier_sweep(
    model: HookedModel,
    make_intervention: Callable[[float], Intervention],
    multipliers: Sequence[float],
    measure: Callable[[Any], T],
    *,
    progress: bool = True,
) -> list[tuple[float, T]]:
    """`measure(model)` under `make_intervention(m)` for each multiplier m (0 means no intervention)."""
    results = []
    for multiplier in tqdm(list(multipliers), desc="multipliers", disable=not progress, leave=False):
        if multiplier == 0:
            results.append((multiplier, measure(model)))
            continue
        with apply_all(model, make_intervention(multiplier)):
            results.append((multiplier, measure(model)))
    return results


def projection(
    activations: Float[Tensor, "... d_model"], direction: Direction
) -> Float[Tensor, "..."]:
    """Component of activations along the direction's unit vector."""
    return activations @ direction.unit().vector.to(activations.device, activations.dtype)
