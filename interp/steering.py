"""Interventions with a `Direction`: add it (activation addition) or project it out (ablation).

An intervention is a small frozen dataclass with `hooks(model)` (TransformerLens `(name, fn)` pairs)
and `apply(model)` (a context manager). `apply_all(model, *interventions)` applies several at once;
`interp.runner.generate` runs batched generation with them active.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp._checks import check_direction, finite_number, scaled, whole_number
from interp.directions import Direction, hook_name
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

T = TypeVar("T")


@dataclass
class StepState:
    """Where the current forward's first position sits in the whole sequence, and the prompt length.

    A KV-cached decoding step sees only the new token; the steering hook needs its absolute
    position to know whether it is a prompt or a generated token.
    """

    offset: int = 0
    prompt_length: int | None = None
    runner: Any = None  # the module whose forward/generate runs with the hooks active


class Intervention(Protocol):
    def hooks(self, model: HookedModel, state: StepState) -> HookList: ...


def _check_direction(model: HookedModel, direction: Direction, allow_other_model: bool, layer: int | None = None) -> None:
    check_direction(direction, None if allow_other_model else model_name(model), d_model(model), n_layers(model),
                    layer=layer)


@dataclass(frozen=True)
class Steer:
    """Add `scale * direction.vector` to the residual stream at the direction's hook point.

    `positions="all"` adds at every position; `positions="new"` adds from the last prompt token on
    (every position that predicts a generated token, as CAA does), which needs `generate`.
    `unit=True` adds `scale` times the unit vector instead of the vector as found.
    """

    direction: Direction
    scale: float = 1.0
    positions: Literal["all", "new"] = "all"
    unit: bool = False
    layer: int | None = None  # override the direction's own layer
    allow_other_model: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.direction, Direction):
            raise TypeError(f"direction: expected a Direction, got {type(self.direction).__name__}")
        finite_number(self.scale, "scale")
        if self.positions not in ("all", "new"):
            raise ValueError(f"positions: expected 'all' or 'new', got {self.positions!r}")
        if self.layer is not None:
            whole_number(self.layer, "layer")

    def hooks(self, model: HookedModel, state: StepState | None = None) -> HookList:
        _check_direction(model, self.direction, self.allow_other_model, self.layer)
        layer = check_layers(model, self.layer if self.layer is not None else self.direction.layer)[0]
        direction = self.direction.unit() if self.unit else self.direction
        vector = direction.vector.to(model_device(model))
        addition = scaled(vector, self.scale)
        state = state if state is not None else StepState()
        only_new = self.positions == "new"

        def add(activation: Tensor, hook: Any) -> Tensor:
            delta = addition.to(activation.device, activation.dtype)  # a split model: the layer's device
            if not only_new:
                return activation + delta
            if state.prompt_length is None:
                raise RuntimeError("Steer(positions='new') only applies inside interp.runner.generate")
            first_steered = state.prompt_length - 1 - state.offset
            positions = torch.arange(activation.shape[1], device=activation.device)
            mask = (positions >= first_steered).to(activation.dtype)[None, :, None]
            return activation + mask * delta

        return [(hook_name(layer, self.direction.site), add)]

    @contextmanager
    def apply(self, model: HookedModel) -> Iterator[StepState]:
        with apply_all(model, self) as state:
            yield state


def ablation_hook_names(model: HookedModel) -> list[str]:
    """Every point where the residual stream is read or written: each layer's input and both outputs."""
    return [hook_name(layer, site) for layer in range(n_layers(model)) for site in ("resid_pre", "attn_out", "mlp_out")]


@dataclass(frozen=True)
class Ablate:
    """Directional ablation: x ← x − (x·r̂) r̂ at `hook_names` (default: every layer's resid_pre,
    attn_out and mlp_out, as Arditi et al.), at all positions."""

    direction: Direction
    hook_names: tuple[str, ...] | None = None
    allow_other_model: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.direction, Direction):
            raise TypeError(f"direction: expected a Direction, got {type(self.direction).__name__}")
        if self.hook_names is None:
            return
        names = (self.hook_names,) if isinstance(self.hook_names, str) else tuple(self.hook_names)  # one name
        if not names or not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"hook_names: expected hook point names, got {self.hook_names!r}")
        object.__setattr__(self, "hook_names", names)

    def hooks(self, model: HookedModel, state: StepState | None = None) -> HookList:
        _check_direction(model, self.direction, self.allow_other_model)
        unit = self.direction.unit().vector.to(model_device(model))
        names = list(self.hook_names) if self.hook_names is not None else ablation_hook_names(model)
        if not names:
            raise ValueError("hook_names: expected at least one hook point")

        def project_out(activation: Tensor, hook: Any) -> Tensor:
            r = unit.to(activation.device, activation.dtype)
            return activation - (activation @ r)[..., None] * r

        return [(name, project_out) for name in names]

    @contextmanager
    def apply(self, model: HookedModel) -> Iterator[StepState]:
        with apply_all(model, self) as state:
            yield state


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
