"""The one way weights become a `Dictionary`, whatever file or object they came from, and safe file reads.

Every reader hands `build_dictionary` named tensors in one convention (SAE-Lens's: `W_enc [d_in, n]`,
`W_dec [n, d_out]`, `b_enc [n]`, `b_dec [d_out]`, `threshold [n]`, `r_mag`/`b_mag [n]`, `W_skip [d_out, d_in]`)
and gets the same checks: floating point, finite, shapes that agree with `W_dec`, no zero atoms, norms
within float32, a valid k and hook names, each error naming the source. Files are read as data only:
safetensors, `.npz` without pickle, and `.pt` through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp._io import read_tensors
from interp.dictionaries.core import Dictionary, check_hook_name
from interp.dictionaries.encoders import ACTIVATIONS, Encoder

OPTIONAL = ("W_enc", "b_enc", "b_dec", "threshold", "r_mag", "b_mag", "W_skip")


def check_finite(tensor: Tensor, argument: str) -> None:
    """Refuse a tensor holding NaN or inf.

    Raises:
        ValueError: naming `argument`.
    """
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{argument}: contains NaN or inf")


def from_decoder(
    decoder: Float[Tensor, "n_atoms d_model"] | str | Path,
    *,
    hook_name: str | None = None,
    model: str | None = None,
    key: str | None = None,
    source: str | None = None,
) -> Dictionary:
    """A decoder-only dictionary from a raw [n_atoms, d_model] matrix or a safetensors file holding one.

    A file with several tensors needs `key` (e.g. "W_dec"); one with a single tensor needs none.
    """
    label = source
    if isinstance(decoder, (str, Path)):
        path = Path(decoder)
        if not path.is_file():
            raise FileNotFoundError(f"decoder: no such file {path}")
        tensors = read_tensors(path)
        if key is None:
            if "W_dec" in tensors:
                key = "W_dec"
            elif len(tensors) == 1:
                key = next(iter(tensors))
            else:
                raise ValueError(f"key: {path} holds {sorted(tensors)}; say which tensor is the decoder")
        if key not in tensors:
            raise ValueError(f"key: {key!r} is not in {path} (it holds {sorted(tensors)})")
        decoder, label = tensors[key], label or f"{path}:{key}"
    if not isinstance(decoder, Tensor) or decoder.ndim != 2:
        raise ValueError("decoder: expected a [n_atoms, d_model] tensor or a safetensors path")
    if not decoder.is_floating_point():
        raise ValueError(f"decoder: expected floating-point values, got {decoder.dtype}")
    decoder = decoder.detach().float()
    check_finite(decoder, "decoder")
    norms = decoder.norm(dim=-1)
    if (norms == 0).any():
        raise ValueError(f"decoder: {int((norms == 0).sum())} atoms are zero vectors")
    if not torch.isfinite(norms).all():
        raise ValueError(f"decoder: {int((~torch.isfinite(norms)).sum())} atoms have norms beyond float32's range")
    return Dictionary(decoder / norms[:, None], norms, hook_name=check_hook_name(hook_name, "hook_name"), model=model,
                      source=label or "decoder")


def check_shapes(weights: Mapping[str, Tensor], source: str, *, transcoder: bool) -> tuple[int, int, int]:
    """(n_atoms, d_in, d_out), every tensor's shape checked against W_dec [n_atoms, d_out] (and W_enc's d_in)."""
    if "W_dec" not in weights or weights["W_dec"].ndim != 2:
        found = tuple(weights["W_dec"].shape) if "W_dec" in weights else "none"
        raise ValueError(f"{source}: W_dec: expected [n_atoms, d_out], got {found}")
    n_atoms, d_out = weights["W_dec"].shape
    d_in = weights["W_enc"].shape[0] if transcoder and "W_enc" in weights and weights["W_enc"].ndim == 2 else d_out
    expected = {"W_enc": (d_in, n_atoms), "b_enc": (n_atoms,), "b_dec": (d_out,), "threshold": (n_atoms,),
                "r_mag": (n_atoms,), "b_mag": (n_atoms,), "W_skip": (d_out, d_in)}
    for name, shape in expected.items():
        if name in weights and tuple(weights[name].shape) != shape:
            raise ValueError(f"{source}: {name}: expected shape {list(shape)} (from W_dec), got {list(weights[name].shape)}")
    return n_atoms, d_in, d_out


def build_dictionary(
    weights: Mapping[str, Tensor],
    *,
    source: str,
    architecture: str | None = "standard",
    k: Any = None,
    apply_b_dec_to_input: Any = True,
    options: dict[str, Any] | None = None,
    fused_bias: bool = False,
    hook_name: Any = None,
    output_hook: Any = None,
    transcoder: bool = False,
    model: Any = None,
    meta: dict[str, Any] | None = None,
) -> Dictionary:
    """A checked `Dictionary` from SAE-Lens-convention tensors (`architecture=None`: decoder only; `fused_bias`:
    the source computes its scores as nn.Linear does)."""
    for name, tensor in weights.items():
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            what = tensor.dtype if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"{source}: {name}: expected floating-point values, got {what}")
        check_finite(tensor, f"{source}: {name}")
    n_atoms, _, _ = check_shapes(weights, source, transcoder=transcoder)
    if architecture is not None and architecture not in ACTIVATIONS:
        raise ValueError(f"{source}: architecture: {architecture!r} is not supported (expected one of {tuple(ACTIVATIONS)})")
    if architecture is not None and "k" in ACTIVATIONS[architecture].needs and (
            isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_atoms):
        raise ValueError(f"{source}: k: expected a whole number from 1 to d_sae = {n_atoms}, got {k!r}")
    if not isinstance(apply_b_dec_to_input, bool):
        raise ValueError(f"{source}: apply_b_dec_to_input: expected true or false, got {apply_b_dec_to_input!r}")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"{source}: model_name: expected a string, got {model!r}")
    for argument, name in (("hook_name", hook_name), ("output_hook", output_hook)):
        try:
            check_hook_name(name, argument)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    def optional(name: str) -> Tensor | None:
        return weights[name].detach().float() if name in weights else None

    try:
        dictionary = from_decoder(weights["W_dec"], model=model, source=source)
        encoder = None
        if architecture is not None:
            missing = [name for name in ("W_enc", "b_enc", "b_dec") if name not in weights]
            if missing:
                raise ValueError(f"missing {missing}")
            encoder = Encoder(W_enc=weights["W_enc"].detach().float(), b_enc=weights["b_enc"].detach().float(),
                              b_dec=weights["b_dec"].detach().float(), architecture=architecture,
                              k=k if architecture is not None and "k" in ACTIVATIONS[architecture].needs else None,
                              threshold=optional("threshold"), apply_b_dec_to_input=apply_b_dec_to_input,
                              r_mag=optional("r_mag"), b_mag=optional("b_mag"), options=dict(options or {}),
                              fused_bias=fused_bias)
        return Dictionary(dictionary.atoms, dictionary.norms, hook_name=hook_name, model=model, source=source,
                          encoder=encoder, meta=dict(meta or {}), output_hook=output_hook if transcoder else None,
                          skip=optional("W_skip"), transcoder=transcoder)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(f"{source}:") else f"{source}: {message}") from None


def read_torch_state(path: Path) -> dict[str, Tensor]:
    """The tensors of a `.pt` state dict, loaded with `weights_only=True` (data only, never pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for damaged or unsafe files
        raise ValueError(f"{path}: not a readable PyTorch state dict with weights_only=True "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(key, str) and isinstance(value, Tensor)
                                              for key, value in state.items()):
        raise ValueError(f"{path}: expected a state dict of named tensors, got {type(state).__name__}")
    return state


def read_npz(path: Path) -> dict[str, Tensor]:
    """The arrays of an `.npz` file as float tensors (pickled objects refused)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: torch.from_numpy(np.array(arrays[name])) for name in arrays.files}
    except Exception as error:  # zipfile / numpy errors for truncated or edited files
        raise ValueError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None

