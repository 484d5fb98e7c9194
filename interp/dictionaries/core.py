"""The `Dictionary`: unit atoms with their norms, an optional encoder, and where it reads and writes.

An SAE reads and writes one hook point (`hook_name`). A transcoder reads its input site (`hook_name`: e.g.
`blocks.L.ln2.hook_normalized`, `blocks.L.hook_resid_mid`) and writes another (`output_hook`: e.g.
`blocks.L.hook_mlp_out`); its atoms are decoder rows in the output site's space, and a skip connection
(`skip`, `[d_out, d_in]`) adds `x @ skip.T` to its prediction. Sparse reconstruction, steering with a feature
and decoder-atom scores use the atoms (the write side); encoding, max-activating examples and encoder scores
read the input side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.directions import RESID_SITES, Direction
from interp.display import clip, details, html_fields, span
from interp.dictionaries.encoders import Encoder

HOOK_NAME = re.compile(r"blocks\.(\d+)\.((?:[A-Za-z0-9_]+\.)*hook_[A-Za-z0-9_]+)")
# Sites whose activations are d_model-wide vectors at every position (what a dictionary may read or write);
# `hook_z` and the attention internals are [.., heads, d_head]-shaped and are refused.
VECTOR_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_mlp_in",
                "ln1.hook_normalized", "ln2.hook_normalized", "ln2.hook_in", "ln2.hook_out", "mlp.hook_in",
                "mlp.hook_out", "attn.hook_out")
HOOK_HINT = ("pass hook_name='blocks.L.hook_resid_pre' (the hook point it was trained on), or layer=L for "
             "resid_pre; a transcoder also needs output_hook='blocks.L.hook_mlp_out'")


class HooklessDictionaryWarning(UserWarning):
    """A dictionary loaded without a hook point: it can code vectors, but cannot read a model's activations."""


def hook_layer(name: str | None) -> int | None:
    """The layer of a TransformerLens hook name (`"blocks.12.hook_resid_pre"` → 12), or None.

    Args:
        name: a hook name, or None.

    Returns:
        The block index, or None when `name` is None or not of the form `blocks.{L}.…`.
    """
    match = HOOK_NAME.fullmatch(name or "")
    return int(match.group(1)) if match else None


def hook_site(name: str | None) -> str | None:
    """The part after `blocks.L.`, without a direct `hook_` prefix: "resid_pre", "ln2.hook_normalized"."""
    match = HOOK_NAME.fullmatch(name or "")
    return match.group(2).removeprefix("hook_") if match else None


def check_hook_name(name: Any, argument: str) -> str | None:
    """`name` if it is None or a TransformerLens block hook name (`blocks.{layer}.hook_...`); else a ValueError."""
    if name is not None and not (isinstance(name, str) and HOOK_NAME.fullmatch(name)):
        raise ValueError(f"{argument}: expected 'blocks.{{layer}}.hook_...', got {name!r}")
    return name


def at_layer(name: str, layer: int) -> str:
    """The same site at another block."""
    return f"blocks.{layer}.{HOOK_NAME.fullmatch(name).group(2)}"


def residual_place(name: str) -> tuple[int, str]:
    """Where a residual-stream hook sits, resid_post of L counted as resid_pre of L + 1 (the same tensor)."""
    layer, site = hook_layer(name), hook_site(name)
    return (layer + 1, "resid_pre") if site == "resid_post" else (layer, site)


@dataclass(frozen=True)
class Dictionary:
    """`n_atoms` unit atoms (`atoms[i] * norms[i]` is decoder row i), read at `hook_name`, written at
    `output_hook` (a transcoder's; an SAE writes where it reads). `encoder` is None for a raw decoder matrix."""

    atoms: Float[Tensor, "n_atoms d_model"]
    norms: Float[Tensor, "n_atoms"]
    hook_name: str | None = None
    model: str | None = None
    source: str = "decoder"
    encoder: Encoder | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    output_hook: str | None = None  # transcoders only
    skip: Float[Tensor, "d_model d_in"] | None = None  # a skip connection: x @ skip.T joins the prediction
    transcoder: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.atoms, Tensor) or self.atoms.ndim != 2:
            shape = tuple(self.atoms.shape) if isinstance(self.atoms, Tensor) else type(self.atoms).__name__
            raise ValueError(f"atoms: expected a [n_atoms, d_model] tensor, got {shape}")
        if self.norms.shape != (self.atoms.shape[0],):
            raise ValueError(f"norms: expected shape [{self.atoms.shape[0]}], got {tuple(self.norms.shape)}")
        check_hook_name(self.hook_name, "hook_name")
        check_hook_name(self.output_hook, "output_hook")
        if self.output_hook is not None and not self.transcoder:
            raise ValueError("output_hook: only a transcoder writes elsewhere than it reads (pass transcoder=True)")
        encoder = self.encoder
        if encoder is not None:
            width = encoder.W_enc.shape
            if not self.transcoder and tuple(width) != (self.d_model, self.n_atoms):
                raise ValueError(f"encoder.W_enc: expected shape [{self.d_model}, {self.n_atoms}], got {tuple(width)}")
            if width[-1] != self.n_atoms or encoder.b_dec.shape != (self.d_model,):
                raise ValueError(f"encoder: W_enc {tuple(width)} and b_dec {tuple(encoder.b_dec.shape)} do not fit "
                                 f"{self.n_atoms} atoms of width {self.d_model}")
        if self.skip is not None and tuple(self.skip.shape) != (self.d_model, self.d_in):
            raise ValueError(f"skip: expected shape [{self.d_model}, {self.d_in}] (d_out, d_in), got {tuple(self.skip.shape)}")

    # -- shape and place ------------------------------------------------------------------------

    @property
    def n_atoms(self) -> int:
        return self.atoms.shape[0]

    @property
    def d_model(self) -> int:
        """The width of the atoms (a transcoder's output space)."""
        return self.atoms.shape[1]

    @property
    def d_in(self) -> int:
        """The width the encoder reads (the atoms' width for an SAE)."""
        return self.encoder.d_in if self.encoder is not None else self.d_model

    @property
    def layer(self) -> int | None:
        """The block it reads at."""
        return hook_layer(self.hook_name)

    @property
    def site(self) -> str | None:
        """The site it reads ("resid_pre", "ln2.hook_normalized", ...)."""
        return hook_site(self.hook_name)

    @property
    def write_hook(self) -> str | None:
        """Where its atoms live: a transcoder's output hook, an SAE's own hook."""
        return self.output_hook if self.transcoder else self.hook_name

    @property
    def kind(self) -> str:
        return "transcoder" if self.transcoder else ("SAE" if self.encoder is not None else "decoder")

    @property
    def decoder(self) -> Float[Tensor, "n_atoms d_model"]:
        return self.atoms * self.norms[:, None]

    def describe(self) -> str:
        architecture = f"{self.encoder.architecture} " if self.encoder is not None else ""
        where = f"reads {self.hook_name or 'no recorded hook'}"
        if self.transcoder:
            where += f", writes {self.output_hook or 'no recorded hook'}" + (" with a skip" if self.skip is not None else "")
        return f"{self.source} ({architecture}{self.kind}, {self.n_atoms} features; {where})"

    def __repr__(self) -> str:
        return clip(f"Dictionary({self.describe()}, d_model={self.d_model}"
                    + (f", d_in={self.d_in}" if self.d_in != self.d_model else "")
                    + (f", model={self.model!r}" if self.model else "") + ")")

    def _repr_html_(self) -> str:
        fields = {"kind": self.kind, "source": self.source, "features": self.n_atoms, "d_model": self.d_model,
                  "d_in": self.d_in, "reads": self.hook_name, "writes": self.write_hook, "model": self.model,
                  "architecture": self.encoder.architecture if self.encoder is not None else None,
                  "atom norms": span(self.norms.tolist()), "skip connection": self.skip is not None,
                  **{f"meta.{key}": value for key, value in self.meta.items()}}
        return details(f"Dictionary {self.describe()}", html_fields(fields))

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Dictionary:
        encoder = self.encoder.to(device, dtype) if self.encoder is not None else None
        skip = self.skip.to(device=device, dtype=dtype) if self.skip is not None else None
        return replace(self, atoms=self.atoms.to(device=device, dtype=dtype),
                       norms=self.norms.to(device=device, dtype=dtype), encoder=encoder, skip=skip)

    # -- what a workflow needs -----------------------------------------------------------------

    def require_encoder(self, what: str = "encode") -> Encoder:
        if self.encoder is None:
            raise ValueError(f"dictionary: {what} needs an encoder, but {self.source!r} is a decoder-only dictionary")
        return self.encoder

    def require_hook(self, what: str) -> str:
        """The hook it reads, or an error saying how to name one (before any model work)."""
        if self.hook_name is None:
            raise ValueError(f"dictionary: {self.source} records no hook point, so {what} has nowhere to read it; {HOOK_HINT}")
        if self.transcoder and self.output_hook is None:
            raise ValueError(f"dictionary: the transcoder {self.source} records no output hook, so {what} cannot place "
                             f"its atoms; {HOOK_HINT}")
        return self.hook_name

    def require_sae(self, what: str, why: str) -> None:
        """Refuse a transcoder where only an SAE fits, saying why."""
        if self.transcoder:
            raise ValueError(f"dictionary: {self.source} is a transcoder, and {what} needs an SAE: {why}")

    # -- numbers ---------------------------------------------------------------------------------

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_atoms"]:
        """Feature activations (the encoder and its activation function) of activations at the input site."""
        self._check_width(x, "x", self.d_in, "input width")
        return self.require_encoder().encode(x)

    def encoder_scores(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... n_atoms"]:
        """Encoder pre-activations: a dense, signed score of every feature (no sparsity)."""
        self._check_width(x, "x", self.d_in, "input width")
        return self.require_encoder("encoder_scores").pre_activation(x)

    def decoder_scores(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... n_atoms"]:
        """Dot products of `x` (in the atoms' space) with the unit atoms (needs no encoder)."""
        self._check_width(x, "x", self.d_model, "width")
        return x @ self.atoms.to(x.dtype).T

    def decode(self, codes: Float[Tensor, "... n_atoms"]) -> Float[Tensor, "... d_model"]:
        """Decoder rows weighted by the codes, plus the decoder bias (no skip: it needs the input)."""
        if codes.shape[-1] != self.n_atoms:
            raise ValueError(f"codes: expected last dimension {self.n_atoms}, got {codes.shape[-1]}")
        out = codes @ self.decoder.to(codes.dtype)
        return out + self.encoder.b_dec.to(codes.dtype) if self.encoder is not None else out

    def skip_term(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_model"] | None:
        return None if self.skip is None else x @ self.skip.to(x.dtype).T

    def reconstruct(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_model"]:
        """The full forward: an SAE's reconstruction of `x`, a transcoder's prediction of its output (skip included)."""
        out = self.decode(self.encode(x))
        skip = self.skip_term(x)
        return out if skip is None else out + skip

    def atom_direction(self, index: int, *, layer: int | None = None, model: str | None = None) -> Direction:
        """Atom `index` as a unit `Direction` where the atoms live (a transcoder's output site)."""
        if not 0 <= index < self.n_atoms:
            raise ValueError(f"index: expected 0 <= index < {self.n_atoms}, got {index}")
        written = self.write_hook
        at = layer if layer is not None else hook_layer(written)
        if at is None:
            raise ValueError(f"layer: this dictionary names no hook point where its atoms live; pass layer= ({HOOK_HINT})")
        site = hook_site(written) or "resid_pre"
        if site not in RESID_SITES:
            raise ValueError(f"dictionary: its atoms live at {written}, not a residual-stream site {RESID_SITES}, so a "
                             "feature is not a Direction there")
        return Direction(self.atoms[index].detach().float().cpu(), layer=at, model=model or self.model or "unknown",
                         source=f"sae_feature({index})", site=site,
                         meta={"feature": index, "dictionary": self.source, "norm": float(self.norms[index])})

    # -- checks against a model and a direction --------------------------------------------------

    def check_dimensions(self, width: int | None, depth: int | None, argument: str = "dictionary") -> None:
        """Widths and layers against a model's d_model and block count (None: unknown, not checked)."""
        from interp._checks import layer_index

        if width is not None and self.d_model != width:
            raise ValueError(f"{argument}: width {self.d_model} does not match the model's d_model {width} ({self.source})")
        if width is not None and self.d_in != width:
            raise ValueError(f"{argument}: input width {self.d_in} does not match the model's d_model {width} "
                             f"({self.source})")
        if depth is not None:
            for name in (self.hook_name, self.output_hook):
                if name is not None:
                    layer_index(hook_layer(name), depth, argument, from_end=False)

    def check_model(self, model: Any) -> None:
        """Raise before any model work if the widths differ from the model's, a layer is beyond it, or the model
        lacks a hook point it reads or writes (or that point's activations are not d_model-wide vectors)."""
        from interp.hooked import check_layers, d_model, hook_points, n_layers

        self.check_dimensions(d_model(model), None)
        for name in (self.hook_name, self.output_hook):
            if name is None:
                continue
            check_layers(model, hook_layer(name), "dictionary")
            if hasattr(model, "hook_dict") and name not in hook_points(model):
                raise ValueError(f"dictionary: the model has no hook point {name!r} (it has {n_layers(model)} blocks; "
                                 "sites such as hook_resid_pre, hook_resid_mid, ln2.hook_normalized, hook_mlp_out)")
            if HOOK_NAME.fullmatch(name).group(2) not in VECTOR_SITES:
                raise ValueError(f"dictionary: {self.source} reads or writes {name}, whose activations are not "
                                 f"d_model-wide vectors; interp uses dictionaries at {VECTOR_SITES}")

    def check_direction(self, direction: Direction, *, allow_other_layer: bool = False) -> None:
        """A Direction coded in (or compared with) these atoms must have their width and live where they live:
        the same layer and site (resid_post of L and resid_pre of L + 1 are one tensor), unless
        `allow_other_layer` (a deliberate cross-layer study)."""
        if direction.d_model != self.d_model:
            raise ValueError(f"direction: width {direction.d_model} does not match the dictionary's {self.d_model}")
        written = self.write_hook
        if allow_other_layer or written is None:
            return
        if residual_place(direction.hook_name) != residual_place(written):
            raise ValueError(f"direction: it lives at {direction.hook_name} but the dictionary's atoms live at {written}; "
                             "pass allow_other_layer=True for a deliberate cross-layer study")

    def _check_width(self, x: Tensor, argument: str, width: int, what: str) -> None:
        if x.shape[-1] != width:
            raise ValueError(f"{argument}: expected last dimension {width} (the dictionary's {what}), got {x.shape[-1]}")
