"""The encoder half of a dictionary, and the registry of activation functions it may end in.

Every encoder computes the same dense score, `pre = (x - b_dec·apply_b_dec_to_input) @ W_enc + b_enc` (for a
gated SAE, the gate's score), then its architecture's activation turns scores into feature activations. A new
architecture is one function `(encoder, sae_input, pre) -> codes` and one `register_activation` line.

The activations, each exactly as its source computes it (tests/test_dictionary_exactness.py checks each
against the source library's own code):
- "standard": relu(pre) (SAE-Lens standard and transcoders, dictionary_learning AutoEncoder / AutoEncoderNew,
  circuit-tracer's ReLU transcoders);
- "topk": the k largest scores, relu'd (SAE-Lens topk; sparsify's "topk" and dictionary_learning's
  AutoEncoderTopK relu first and then pick, which keeps the same values);
- "topk_signed": the k largest scores kept as they are, negative ones included (circuit-tracer's TopK);
- "abstopk": the k scores largest in magnitude, with their signs (SAE-Lens abstopk);
- "jumprelu": relu(pre) where pre > threshold (SAE-Lens jumprelu and what its BatchTopK / Matryoshka trainers
  save; Gemma Scope; dictionary_learning JumpReluAutoEncoder, BatchTopKSAE, MatryoshkaBatchTopKSAE);
- "threshold": pre where pre > threshold, with no relu (circuit-tracer's JumpReLU: a negative threshold lets
  negative scores through);
- "gated": the gate's sign times relu of the magnitude path `sae_in @ (W_enc·exp(r_mag)) + b_mag` (SAE-Lens gated,
  dictionary_learning GatedAutoEncoder);
- "groupmax": the scores split into k equal contiguous groups, the relu'd maximum of each (sparsify "groupmax");
- "matching_pursuit": greedy non-negative pursuit over the tied decoder rows `W_enc.T` (SAE-Lens matching_pursuit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

Activate = Callable[["Encoder", Tensor, Tensor], Tensor]
"""`(encoder, sae_input, pre) -> codes`: feature activations from the encoder's dense score `pre`."""


@dataclass(frozen=True)
class ActivationKind:
    """A registered activation function of an encoder (standard, topk, jumprelu, gated, ...).

    Attributes:
        activate: pre-activations (and the encoder) → codes.
        needs: the `Encoder` fields it reads beyond `W_enc` / `b_enc` / `b_dec` (e.g. `("threshold",)`).
        description: one line for errors and listings.
    """

    activate: Activate
    needs: tuple[str, ...]  # the Encoder fields it reads beyond W_enc / b_enc / b_dec
    description: str


ACTIVATIONS: dict[str, ActivationKind] = {}


def register_activation(name: str, activate: Activate, *, needs: tuple[str, ...] = (), description: str = "") -> None:
    """Make `architecture=name` available to every `Encoder` (one line per architecture)."""
    if name in ACTIVATIONS:
        raise ValueError(f"architecture: {name!r} is already registered")
    ACTIVATIONS[name] = ActivationKind(activate, needs, description)


@dataclass(frozen=True)
class Encoder:
    """Scores `pre = (x - b_dec·apply_b_dec_to_input) @ W_enc + b_enc`, then `architecture`'s activation.

    `b_dec` is the decoder's bias (in the output space: a transcoder never subtracts it from its input).
    Architecture-specific values: `k` (top-k kinds, groupmax), `threshold` (jumprelu, threshold), `r_mag` and
    `b_mag` (gated: `b_enc` is the gate's bias), `options` (matching pursuit: residual_threshold,
    max_iterations, stop_on_duplicate_support). `fused_bias`: the bias added inside the matmul, as nn.Linear does.
    """

    W_enc: Float[Tensor, "d_in n_atoms"]
    b_enc: Float[Tensor, "n_atoms"]
    b_dec: Float[Tensor, "d_out"]
    architecture: str = "standard"
    k: int | None = None
    threshold: Float[Tensor, "n_atoms"] | None = None
    apply_b_dec_to_input: bool = True
    r_mag: Float[Tensor, "n_atoms"] | None = None
    b_mag: Float[Tensor, "n_atoms"] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # The score as an nn.Linear computes it, the bias fused into the matmul (sparsify, dictionary_learning's
    # Linear encoders, circuit-tracer): the source's own rounding, and its speed. SAE-Lens adds it after.
    fused_bias: bool = False

    def __post_init__(self) -> None:
        if self.architecture not in ACTIVATIONS:
            raise ValueError(f"architecture: expected one of {tuple(ACTIVATIONS)}, got {self.architecture!r}")
        missing = [name for name in ACTIVATIONS[self.architecture].needs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)}: a {self.architecture} encoder needs {' and '.join(missing)}")
        n_atoms = self.W_enc.shape[-1]
        if "k" in ACTIVATIONS[self.architecture].needs and (
                isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= n_atoms):
            raise ValueError(f"k: a {self.architecture} encoder needs a whole k from 1 to {n_atoms}, got {self.k!r}")
        if self.apply_b_dec_to_input and self.b_dec.shape[-1] != self.W_enc.shape[0]:
            raise ValueError(f"apply_b_dec_to_input: b_dec has width {self.b_dec.shape[-1]} but the input has "
                             f"{self.W_enc.shape[0]} (a transcoder's decoder bias is never subtracted from its input)")

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    def sae_input(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        return x - self.b_dec.to(x.dtype) if self.apply_b_dec_to_input else x

    def pre_activation(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_atoms"]:
        """The encoder's dense score (for a gated SAE, the gate's pre-activation)."""
        return self._scores(self.sae_input(x))

    def _scores(self, sae_in: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_atoms"]:
        if self.fused_bias:
            return torch.nn.functional.linear(sae_in, self.W_enc.T.to(sae_in.dtype), self.b_enc.to(sae_in.dtype))
        return sae_in @ self.W_enc.to(sae_in.dtype) + self.b_enc.to(sae_in.dtype)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_atoms"]:
        """Feature activations, as the source library's `encode` of the same architecture."""
        sae_in = self.sae_input(x)
        return ACTIVATIONS[self.architecture].activate(self, sae_in, self._scores(sae_in))

    def activate(self, pre: Float[Tensor, "... n_atoms"]) -> Float[Tensor, "... n_atoms"]:
        """The activation of scores alone (the kinds that need nothing but the scores)."""
        if self.architecture in ("gated", "matching_pursuit"):
            raise ValueError(f"architecture: a {self.architecture} encoder needs its input, not only its scores")
        return ACTIVATIONS[self.architecture].activate(self, pre, pre)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Encoder:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(self, W_enc=move(self.W_enc), b_enc=move(self.b_enc), b_dec=move(self.b_dec),
                       threshold=move(self.threshold), r_mag=move(self.r_mag), b_mag=move(self.b_mag))


def _relu(encoder: Encoder, sae_in: Tensor, pre: Tensor) -> Tensor:
    return pre.relu()


def _scatter(pre: Tensor, indices: Tensor, values: Tensor) -> Tensor:
    return torch.zeros_like(pre).scatter_(-1, indices, values)


def _topk(encoder: Encoder, sae_in: Tensor, pre: Tensor) -> Tensor:
    values, indices = pre.topk(encoder.k, dim=-1)
    return _scatter(pre, indices, values.relu())


def _topk_signed(encoder: Encoder, sae_in: Tensor, pre: Tensor) -> Tensor:
    values, indices = pre.topk(encoder.k, dim=-1)
    return _scatter(pre, indices, values)


def _abstopk(encoder: Encoder, sae_in: Tensor, pre: Tensor) -> Tensor:
    indices = pre.abs().topk(encoder.k, dim=-1).indices
    return _scatter(pre, indices, pre.gather(-1, indices))


def _jumprelu(encoder: Encoder, sae_in: Tensor, pre: Tensor) -> Tensor:
    return pre.relu() * (pre > encoder.threshold.to(pre.dtype))


def _threshold(encoder: Encoder, sae_in: Tensor, pre: Tensor) -> Tensor:
    return pre * (pre > encoder.threshold.to(pre.dtype))


def _gated(encoder: Encoder, sae_in: Tensor, pre: Tensor) -> Tensor:
    magnitude = sae_in @ (encoder.W_enc * encoder.r_mag.exp()).to(sae_in.dtype) + encoder.b_mag.to(sae_in.dtype)
    return (pre > 0).to(sae_in.dtype) * magnitude.relu()


def _groupmax(encoder: Encoder, sae_in: Tensor, pre: Tensor) -> Tensor:
    n_atoms = pre.shape[-1]
    if n_atoms % encoder.k:
        raise ValueError(f"k: groupmax splits {n_atoms} features into k = {encoder.k} equal groups; it does not divide")
    values, within = pre.relu().unflatten(-1, (encoder.k, -1)).max(dim=-1)
    offsets = torch.arange(0, n_atoms, n_atoms // encoder.k, device=pre.device)
    return _scatter(pre, within + offsets, values)


@torch.no_grad()
def _matching_pursuit(encoder: Encoder, sae_in: Tensor, pre: Tensor) -> Tensor:
    """Greedy pursuit with the tied decoder rows, every row of the batch at once; a row stops when its support
    stops changing (`stop_on_duplicate_support`) or its residual norm falls below `residual_threshold`. The loop
    is over pursuit steps (at most `max_iterations`, default d_in), never over tokens."""
    rows = encoder.W_enc.T.to(sae_in.dtype)
    options = encoder.options
    limit = options.get("max_iterations") or sae_in.shape[-1]
    residual_floor = float(options.get("residual_threshold", 1e-2))
    stop_on_support = bool(options.get("stop_on_duplicate_support", True))
    residual = sae_in.reshape(-1, sae_in.shape[-1]).clone()
    codes = residual.new_zeros(residual.shape[0], rows.shape[0])
    support_before = torch.zeros_like(codes, dtype=torch.bool)
    finished = torch.zeros(residual.shape[0], dtype=torch.bool, device=residual.device)
    for _ in range(limit):
        chosen = (residual @ rows.T).relu().max(dim=1, keepdim=True).indices
        atom = rows[chosen[:, 0]]
        step = (residual * atom).sum(-1, keepdim=True).relu() * (~finished)[:, None].to(residual.dtype)
        codes.scatter_add_(1, chosen, step)
        residual = residual - step * atom
        support = codes != 0
        if stop_on_support:
            finished |= (support == support_before).all(dim=1)
            support_before = support
        if residual_floor > 0:
            finished |= residual.norm(dim=-1) < residual_floor
        if (stop_on_support or residual_floor > 0) and bool(finished.all()):
            break
    return codes.reshape(*sae_in.shape[:-1], rows.shape[0])


register_activation("standard", _relu, description="relu(pre)")
register_activation("topk", _topk, needs=("k",), description="the k largest scores, relu'd")
register_activation("topk_signed", _topk_signed, needs=("k",), description="the k largest scores, as they are")
register_activation("abstopk", _abstopk, needs=("k",), description="the k scores largest in magnitude, signed")
register_activation("jumprelu", _jumprelu, needs=("threshold",), description="relu(pre) where pre > threshold")
register_activation("threshold", _threshold, needs=("threshold",), description="pre where pre > threshold")
register_activation("gated", _gated, needs=("r_mag", "b_mag"), description="gate × relu(magnitude path)")
register_activation("groupmax", _groupmax, needs=("k",), description="relu'd maximum of each of k groups")
register_activation("matching_pursuit", _matching_pursuit, description="greedy pursuit over the tied decoder")
