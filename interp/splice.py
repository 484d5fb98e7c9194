"""Features as interventions: a dictionary spliced into the forward pass, its features edited by id.

SAE-Lens's `HookedSAETransformer` is the model: `Splice(dictionary)` replaces the activation at the
dictionary's hook with its reconstruction (a transcoder: the output site with its prediction from the input
site, skip connection included). `error_term=True` keeps what the dictionary misses, so the forward is
unchanged, bit for bit, until a feature is edited; an edit then changes the activation by exactly the edited
features' decoder contributions. Edits, by feature id: `ablate(i)` (zero), `clamp(i, v)`, `scale(i, c)`,
`add(i, c)` (adds `c ×` the unit atom to the output, like steering with the feature). Codes are edited in the
order scale, then ablate/clamp; a `FeatureRecord` reads the unedited activations of the same run.

A `Splice` is an intervention like `Steer` and `Ablate` (`hooks()` / `apply()`, `interp.steering`): it
composes with them in `apply_all` (hooks run in the order given), on prompts (`interp.runner.batch_logits`,
`last_logits`) and in batched generation with the KV cache (`interp.runner.generate`), every position of each
forward spliced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from interp._checks import finite_number, whole_number
from interp.dictionaries import Dictionary
from interp.hooked import HookedModel, HookList
from interp.steering import StepState, apply_all

Operation = Literal["ablate", "clamp", "scale", "add"]
OPERATIONS = ("ablate", "clamp", "scale", "add")


@dataclass(frozen=True)
class FeatureEdit:
    """One edit of one feature: "ablate" (to 0), "clamp" (to `value`), "scale" (× `value`), "add" (`value` × atom)."""

    feature: int
    operation: Operation
    value: float = 0.0

    def __post_init__(self) -> None:
        whole_number(self.feature, "feature", minimum=0)
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation: expected one of {OPERATIONS}, got {self.operation!r}")
        finite_number(self.value, "value")


def ablate(feature: int) -> FeatureEdit:
    """An edit that sets feature `feature`'s code to 0 (its decoder contribution removed).

    Example:
        >>> ablate(7)
        FeatureEdit(feature=7, operation='ablate', value=0.0)
    """
    return FeatureEdit(feature, "ablate")


def clamp(feature: int, value: float) -> FeatureEdit:
    """An edit that sets feature `feature`'s code to `value` at every position.

    Example:
        >>> clamp(42, 5.0)
        FeatureEdit(feature=42, operation='clamp', value=5.0)
    """
    return FeatureEdit(feature, "clamp", value)


def scale(feature: int, factor: float) -> FeatureEdit:
    """An edit that multiplies feature `feature`'s code by `factor`.

    Example:
        >>> scale(5, 0.5)
        FeatureEdit(feature=5, operation='scale', value=0.5)
    """
    return FeatureEdit(feature, "scale", factor)


def add(feature: int, coefficient: float) -> FeatureEdit:
    """An edit that adds `coefficient` × the feature's decoder atom, whether or not it fired.

    Example:
        >>> add(3, 2.0)
        FeatureEdit(feature=3, operation='add', value=2.0)
    """
    return FeatureEdit(feature, "add", coefficient)


class FeatureRecord:
    """Feature activations read by a `Splice` (before its edits), one `[batch, seq, n]` tensor per forward, on the
    CPU; `features` keeps only those columns (a wide dictionary's full codes fill memory fast)."""

    def __init__(self, features: Sequence[int] | None = None) -> None:
        self.features = None if features is None else [whole_number(i, "features", minimum=0) for i in features]
        self.chunks: list[Float[Tensor, "batch seq n"]] = []

    def keep(self, codes: Tensor) -> None:
        kept = codes if self.features is None else codes[..., self.features]
        self.chunks.append(kept.detach().cpu())

    def clear(self) -> None:
        self.chunks.clear()


@dataclass(frozen=True)
class _Edits:
    """The edits as index tensors, applied to a whole code tensor at once."""

    scale_at: Tensor
    factors: Tensor
    set_at: Tensor
    values: Tensor
    added: Tensor  # Σ c × unit atom, [d_model]

    def apply(self, codes: Tensor) -> Tensor:
        edited = codes.clone()
        if self.scale_at.numel():
            edited[..., self.scale_at] *= self.factors.to(codes.dtype)
        if self.set_at.numel():
            edited[..., self.set_at] = self.values.to(codes.dtype)
        return edited


def _compile_edits(edits: Sequence[FeatureEdit], dictionary: Dictionary) -> _Edits:
    by_kind: dict[str, list[FeatureEdit]] = {"scale": [], "set": [], "add": []}
    for edit in edits:
        by_kind["set" if edit.operation in ("ablate", "clamp") else edit.operation].append(edit)
    for kind, group in by_kind.items():
        features = [edit.feature for edit in group]
        if len(set(features)) != len(features):
            raise ValueError(f"edits: a feature is edited twice in one way ({kind}): {sorted(features)}")
    adds = by_kind["add"]
    added = torch.zeros(dictionary.d_model)
    if adds:
        coefficients = torch.tensor([edit.value for edit in adds], dtype=torch.float32)
        added = coefficients @ dictionary.atoms[[edit.feature for edit in adds]].float().cpu()
    return _Edits(torch.tensor([e.feature for e in by_kind["scale"]], dtype=torch.long),
                  torch.tensor([e.value for e in by_kind["scale"]], dtype=torch.float32),
                  torch.tensor([e.feature for e in by_kind["set"]], dtype=torch.long),
                  torch.tensor([0.0 if e.operation == "ablate" else e.value for e in by_kind["set"]], dtype=torch.float32),
                  added)


class _OnDevice:
    """The dictionary and edits in float32 on each device an activation arrives on, moved once."""

    def __init__(self, dictionary: Dictionary, edits: _Edits) -> None:
        self.dictionary, self.edits = dictionary, edits
        self.copies: dict[torch.device, tuple[Dictionary, _Edits]] = {}

    def on(self, device: torch.device) -> tuple[Dictionary, _Edits]:
        if device not in self.copies:
            edits = _Edits(*(getattr(self.edits, name).to(device) for name in ("scale_at", "factors", "set_at", "values",
                                                                                 "added")))
            self.copies[device] = (self.dictionary.to(device, torch.float32), edits)
        return self.copies[device]


@dataclass(frozen=True)
class Splice:
    """Splice `dictionary` in at its hook; edit features by id; optionally keep the error term; record codes."""

    dictionary: Dictionary
    edits: tuple[FeatureEdit, ...] = ()
    error_term: bool = False
    record: FeatureRecord | None = None
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.dictionary, Dictionary):
            raise TypeError(f"dictionary: expected an interp.dictionaries.Dictionary, got {type(self.dictionary).__name__}")
        self.dictionary.require_encoder("splicing")
        self.dictionary.require_hook("splicing")
        edits = (self.edits,) if isinstance(self.edits, FeatureEdit) else tuple(self.edits)
        for index, edit in enumerate(edits):
            if not isinstance(edit, FeatureEdit):
                raise TypeError(f"edits[{index}]: expected a FeatureEdit (ablate, clamp, scale, add), got {type(edit).__name__}")
            if edit.feature >= self.dictionary.n_atoms:
                raise ValueError(f"edits[{index}]: feature {edit.feature} is out of range for {self.dictionary.n_atoms} features")
        if not isinstance(self.error_term, bool):
            raise ValueError(f"error_term: expected True or False, got {self.error_term!r}")
        if self.record is not None and not isinstance(self.record, FeatureRecord):
            raise TypeError(f"record: expected a FeatureRecord, got {type(self.record).__name__}")
        object.__setattr__(self, "edits", edits)
        object.__setattr__(self, "_compiled", _compile_edits(edits, self.dictionary))

    def hooks(self, model: HookedModel, state: StepState | None = None) -> HookList:
        self.dictionary.check_model(model)
        devices = _OnDevice(self.dictionary, self._compiled)
        edited_any = bool(self.edits)
        record, error_term = self.record, self.error_term

        def replace_output(activation: Tensor, x_in: Tensor) -> Tensor | None:
            dictionary, edits = devices.on(activation.device)
            if error_term and not edited_any and record is None:
                return None  # nothing to change, nothing to read: the forward stays the model's own
            codes = dictionary.encode(x_in.float())
            if record is not None:
                record.keep(codes)
            if error_term:
                if not edited_any:
                    return None
                delta = (edits.apply(codes) - codes) @ dictionary.decoder + edits.added
                return activation + delta.to(activation.dtype)
            out = dictionary.decode(edits.apply(codes)) + edits.added
            skip = dictionary.skip_term(x_in.float())
            return (out if skip is None else out + skip).to(activation.dtype)

        if not self.dictionary.transcoder:
            return [(self.dictionary.hook_name, lambda activation, hook: replace_output(activation, activation))]
        inputs: list[Tensor] = []

        def read_input(activation: Tensor, hook: Any) -> None:
            inputs.append(activation)

        def write_output(activation: Tensor, hook: Any) -> Tensor | None:
            if not inputs:
                raise RuntimeError(f"Splice: {self.dictionary.output_hook} ran before {self.dictionary.hook_name}; a "
                                   "transcoder must read its input site before the site it writes")
            return replace_output(activation, inputs.pop())

        return [(self.dictionary.hook_name, read_input), (self.dictionary.output_hook, write_output)]

    @contextmanager
    def apply(self, model: HookedModel) -> Iterator[StepState]:
        with apply_all(model, self) as state:
            yield state
