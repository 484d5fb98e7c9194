"""The gated SAE of Rajamanoharan et al. 2024 in SAE-Lens's parametrisation, and its auxiliary loss.

    π_gate = (x − b_dec) W_enc + b_gate                      which features fire: f_gate = 1[π_gate > 0]
    π_mag  = (x − b_dec) (W_enc ⊙ exp(r_mag)) + b_mag         how strongly (the gate's directions, rescaled)
    f = f_gate ⊙ ReLU(π_mag),    x̂ = f W_dec + b_dec

The L1 penalty acts on ReLU(π_gate) only, so it decides which features fire without shrinking the
magnitudes of those that do (the shrinkage a ReLU + L1 SAE suffers). The parameter names are SAE-Lens's
(`GatedSAE` has no b_enc; b_gate is its gate bias), so `state_dict()` is exactly a saved SAE-Lens gated SAE.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


class GatedSparseAutoencoder(nn.Module):
    """A gated SAE with the trainer's interface: `forward` returns (x̂, f, π_gate)."""

    architecture = "gated"
    k = 0  # no TopK; kept so code that reads `sae.k` for any architecture needs no special case

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__()
        decoder = torch.randn(d_sae, d_in)
        decoder = decoder / decoder.norm(dim=-1, keepdim=True)  # unit rows, kept so by the trainer
        self.W_dec = nn.Parameter(decoder)
        # A small tied encoder: small first codes, so early steps fit directions before magnitudes (on planted
        # dictionaries it recovers the atoms better than a unit-norm start: mean cosine 0.99 against 0.97).
        self.W_enc = nn.Parameter(decoder.T * 0.1)
        self.b_gate = nn.Parameter(torch.zeros(d_sae))
        self.r_mag = nn.Parameter(torch.zeros(d_sae))  # exp(0) = 1: both paths start with the same directions
        self.b_mag = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def gate_pre_activation(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return (x - self.b_dec) @ self.W_enc + self.b_gate

    def magnitude_pre_activation(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return (x - self.b_dec) @ (self.W_enc * self.r_mag.exp()) + self.b_mag

    def decode(self, acts: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_in"]:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "batch d_in"]) -> tuple[Tensor, Tensor, Tensor]:
        gate = self.gate_pre_activation(x)
        # The Heaviside gate passes no gradient: W_enc learns through the magnitudes, b_gate through the
        # sparsity penalty and the auxiliary loss (`gated_auxiliary_loss`).
        acts = (gate > 0).to(x.dtype) * self.magnitude_pre_activation(x).relu()
        return self.decode(acts), acts, gate


def gated_auxiliary_loss(
    sae: GatedSparseAutoencoder,
    x: Float[Tensor, "batch d_in"],
    gate_pre: Float[Tensor, "batch d_sae"],
    variance: float,
) -> Tensor:
    """‖x − (ReLU(π_gate) W_dec + b_dec)‖² / `variance`, through a frozen (detached) decoder.

    Without it nothing asks the gate to open for the features that reconstruct x (the L1 only closes
    gates); freezing the decoder keeps this gate-only reconstruction from pulling on the dictionary
    (the paper's choice; SAE-Lens's trainer lets its gradient reach W_dec and b_dec).
    """
    via_gate = gate_pre.relu() @ sae.W_dec.detach() + sae.b_dec.detach()
    return (x - via_gate).pow(2).sum(-1).mean() / variance
