"""SAE dictionaries: unit atoms (decoder rows) with their norms, an optional encoder, and where they read.

A `Dictionary` is what sparse coding (`interp.sparse`), max-activating examples and the feature
classifiers consume. Build one from any SAE-Lens SAE object, an SAE-Lens folder on disk (our own
trained SAEs are saved in that format), a SAE-Lens release/id (needs the hub), or a raw decoder
matrix (a tensor or a safetensors file). Every constructor refuses NaNs and zero atoms, and
`check_model` compares the width with a model's d_model.

Encoding follows SAE-Lens exactly for its inference architectures "standard" (ReLU), "topk", "jumprelu"
(which SAE-Lens's batchtopk and matryoshka trainers save as) and "gated":
`pre = (x - b_dec·apply_b_dec_to_input) @ W_enc + b_enc`, then the activation; a gated SAE's `b_enc` is its
gate bias, and a feature that passes the gate takes the magnitude `relu(sae_in @ (W_enc·exp(r_mag)) + b_mag)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp._io import check_recorded, read_json_object, read_tensors
from interp.directions import Direction

SAE_CONFIG_FILE = "cfg.json"
SAE_WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
GATED_TENSORS = ("W_dec", "W_enc", "b_gate", "b_mag", "r_mag", "b_dec")
_HOOK_LAYER = re.compile(r"blocks\.(\d+)\.")
_HOOK_NAME = re.compile(r"blocks\.\d+\.(?:[A-Za-z0-9_]+\.)*hook_[A-Za-z0-9_]+")
SAE_KIND = "SAE"  # the artifact kind interp's SAE folders are saved as (interp.sae_training)


@dataclass(frozen=True)
class Encoder:
    """The encoder half of an SAE, in SAE-Lens's conventions."""

    W_enc: Float[Tensor, "d_model n_atoms"]
    b_enc: Float[Tensor, "n_atoms"]
    b_dec: Float[Tensor, "d_model"]
    architecture: str = "standard"
    k: int | None = None  # topk only
    threshold: Float[Tensor, "n_atoms"] | None = None  # jumprelu only
    apply_b_dec_to_input: bool = True
    r_mag: Float[Tensor, "n_atoms"] | None = None  # gated only: magnitude path scales W_enc by exp(r_mag)
    b_mag: Float[Tensor, "n_atoms"] | None = None  # gated only: magnitude path bias

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.architecture == "topk" and (self.k is None or self.k < 1):
            raise ValueError(f"k: a topk encoder needs a positive k, got {self.k!r}")
        if self.architecture == "jumprelu" and self.threshold is None:
            raise ValueError("threshold: a jumprelu encoder needs its threshold vector")
        if self.architecture == "gated" and (self.r_mag is None or self.b_mag is None):
            raise ValueError("r_mag, b_mag: a gated encoder needs its magnitude-path parameters")

    def sae_input(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return x - self.b_dec.to(x.dtype) if self.apply_b_dec_to_input else x

    def pre_activation(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... n_atoms"]:
        """The encoder's dense score (for a gated SAE, the gate's pre-activation)."""
        return self.sae_input(x) @ self.W_enc.to(x.dtype) + self.b_enc.to(x.dtype)

    def encode(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... n_atoms"]:
        """Feature activations, as SAE-Lens's `encode` of the same architecture."""
        pre = self.pre_activation(x)
        if self.architecture != "gated":
            return self.activate(pre)
        assert self.r_mag is not None and self.b_mag is not None
        magnitude = self.sae_input(x) @ (self.W_enc * self.r_mag.exp()).to(x.dtype) + self.b_mag.to(x.dtype)
        return (pre > 0).to(x.dtype) * magnitude.relu()

    def activate(self, pre: Float[Tensor, "... n_atoms"]) -> Float[Tensor, "... n_atoms"]:
        if self.architecture == "topk":
            values, indices = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        if self.architecture == "jumprelu":
            assert self.threshold is not None
            return pre.relu() * (pre > self.threshold.to(pre.dtype))
        return pre.relu()

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Encoder:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(self, W_enc=move(self.W_enc), b_enc=move(self.b_enc), b_dec=move(self.b_dec),
                       threshold=move(self.threshold), r_mag=move(self.r_mag), b_mag=move(self.b_mag))


@dataclass(frozen=True)
class Dictionary:
    """`n_atoms` unit atoms in the residual stream at `hook_name`, with the decoder norms they came with.

    `atoms[i] * norms[i]` is the SAE's decoder row i. `encoder` is None for a raw decoder matrix.
    """

    atoms: Float[Tensor, "n_atoms d_model"]
    norms: Float[Tensor, "n_atoms"]
    hook_name: str | None = None
    model: str | None = None
    source: str = "decoder"
    encoder: Encoder | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.atoms, Tensor) or self.atoms.ndim != 2:
            shape = tuple(self.atoms.shape) if isinstance(self.atoms, Tensor) else type(self.atoms).__name__
            raise ValueError(f"atoms: expected a [n_atoms, d_model] tensor, got {shape}")
        if self.norms.shape != (self.atoms.shape[0],):
            raise ValueError(f"norms: expected shape [{self.atoms.shape[0]}], got {tuple(self.norms.shape)}")
        if self.encoder is not None and tuple(self.encoder.W_enc.shape) != (self.d_model, self.n_atoms):
            raise ValueError(
                f"encoder.W_enc: expected shape [{self.d_model}, {self.n_atoms}], got {tuple(self.encoder.W_enc.shape)}"
            )

    @property
    def n_atoms(self) -> int:
        return self.atoms.shape[0]

    @property
    def d_model(self) -> int:
        return self.atoms.shape[1]

    @property
    def layer(self) -> int | None:
        match = _HOOK_LAYER.match(self.hook_name or "")
        return int(match.group(1)) if match else None

    @property
    def site(self) -> str | None:
        return self.hook_name.rsplit(".hook_", 1)[-1] if self.hook_name and ".hook_" in self.hook_name else None

    @property
    def decoder(self) -> Float[Tensor, "n_atoms d_model"]:
        return self.atoms * self.norms[:, None]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Dictionary:
        encoder = self.encoder.to(device, dtype) if self.encoder is not None else None
        return replace(self, atoms=self.atoms.to(device=device, dtype=dtype),
                       norms=self.norms.to(device=device, dtype=dtype), encoder=encoder)

    def require_encoder(self, what: str = "encode") -> Encoder:
        if self.encoder is None:
            raise ValueError(f"dictionary: {what} needs an encoder, but {self.source!r} is a decoder-only dictionary")
        return self.encoder

    def encode(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... n_atoms"]:
        """SAE feature activations (the encoder and its activation function)."""
        self._check_width(x, "x")
        return self.require_encoder().encode(x)

    def encoder_scores(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... n_atoms"]:
        """Encoder pre-activations: a dense, signed score of every feature (no sparsity)."""
        self._check_width(x, "x")
        return self.require_encoder("encoder_scores").pre_activation(x)

    def decoder_scores(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... n_atoms"]:
        """Dot products of `x` with the unit atoms (needs no encoder)."""
        self._check_width(x, "x")
        return x @ self.atoms.to(x.dtype).T

    def decode(self, codes: Float[Tensor, "... n_atoms"]) -> Float[Tensor, "... d_model"]:
        """The SAE's reconstruction from activations (decoder rows with their norms, plus b_dec)."""
        if codes.shape[-1] != self.n_atoms:
            raise ValueError(f"codes: expected last dimension {self.n_atoms}, got {codes.shape[-1]}")
        out = codes @ self.decoder.to(codes.dtype)
        return out + self.encoder.b_dec.to(codes.dtype) if self.encoder is not None else out

    def reconstruct(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return self.decode(self.encode(x))

    def atom_direction(self, index: int, *, layer: int | None = None, model: str | None = None) -> Direction:
        """Atom `index` as a unit `Direction` at this dictionary's layer."""
        if not 0 <= index < self.n_atoms:
            raise ValueError(f"index: expected 0 <= index < {self.n_atoms}, got {index}")
        at_layer = layer if layer is not None else self.layer
        if at_layer is None:
            raise ValueError("layer: this dictionary names no hook point; pass layer=")
        return Direction(self.atoms[index].detach().float().cpu(), layer=at_layer, model=model or self.model or "unknown",
                         source=f"sae_feature({index})", site=self.site or "resid_pre",
                         meta={"feature": index, "dictionary": self.source, "norm": float(self.norms[index])})

    def check_model(self, model: Any) -> None:
        """Raise if the dictionary's width differs from the model's d_model, or its layer is not in the model."""
        from interp.hooked import check_layers, d_model

        width = d_model(model)
        if width != self.d_model:
            raise ValueError(f"dictionary: width {self.d_model} does not match the model's d_model {width}")
        if self.layer is not None:
            check_layers(model, self.layer, "dictionary")

    def check_direction(self, direction: Direction) -> None:
        if direction.d_model != self.d_model:
            raise ValueError(f"direction: width {direction.d_model} does not match the dictionary's {self.d_model}")

    def _check_width(self, x: Tensor, argument: str) -> None:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"{argument}: expected last dimension {self.d_model} (the dictionary's width), got {x.shape[-1]}")


def _check_finite(tensor: Tensor, argument: str) -> None:
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
    decoder = decoder.detach().float()
    _check_finite(decoder, "decoder")
    norms = decoder.norm(dim=-1)
    if (norms == 0).any():
        raise ValueError(f"decoder: {int((norms == 0).sum())} atoms are zero vectors")
    if not torch.isfinite(norms).all():
        raise ValueError(f"decoder: {int((~torch.isfinite(norms)).sum())} atoms have norms beyond float32's range")
    return Dictionary(decoder / norms[:, None], norms, hook_name=hook_name, model=model, source=label or "decoder")


def _dictionary_from_weights(
    weights: dict[str, Tensor], config: dict[str, Any], *, source: str, model: str | None = None
) -> Dictionary:
    architecture = config.get("architecture", "standard")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{source}: architecture: {architecture!r} is not supported (expected one of {ARCHITECTURES})")
    if config.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{source}: normalize_activations: {config['normalize_activations']!r} SAEs rescale their input; fold the scaling "
            "into the weights first (SAE-Lens: sae.fold_activation_norm_scaling_factor)"
        )
    for name, tensor in weights.items():
        _check_finite(tensor, f"{source}: {name}")
    _check_shapes(weights, config, architecture, source)
    metadata = config.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{source}: metadata: expected an object, got {metadata!r}")
    hook_name = metadata.get("hook_name") or config.get("hook_name")
    if hook_name is not None and not (isinstance(hook_name, str) and _HOOK_NAME.fullmatch(hook_name)):
        raise ValueError(f"{source}: hook_name: expected 'blocks.{{layer}}.hook_...', got {hook_name!r}")
    label = model or metadata.get("model_name") or config.get("model_name")
    if label is not None and not isinstance(label, str):
        raise ValueError(f"{source}: model_name: expected a string, got {label!r}")
    if not isinstance(config.get("apply_b_dec_to_input", True), bool):
        raise ValueError(f"{source}: apply_b_dec_to_input: expected true or false, got {config['apply_b_dec_to_input']!r}")
    def optional(name: str) -> Tensor | None:
        return weights[name].detach().float() if name in weights else None

    try:
        dictionary = from_decoder(weights["W_dec"], hook_name=hook_name, model=label, source=source)
        encoder = Encoder(
            W_enc=weights["W_enc"].detach().float(),
            b_enc=weights["b_gate" if architecture == "gated" else "b_enc"].detach().float(),
            b_dec=weights["b_dec"].detach().float(),
            architecture=architecture,
            k=config.get("k"),
            threshold=optional("threshold"),
            apply_b_dec_to_input=bool(config.get("apply_b_dec_to_input", True)),
            r_mag=optional("r_mag"),
            b_mag=optional("b_mag"),
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    extra = {key: value for key, value in metadata.items() if key not in ("hook_name", "model_name")}
    return replace(dictionary, encoder=encoder, meta={"architecture": architecture, **extra})


def _check_shapes(weights: dict[str, Tensor], config: dict[str, Any], architecture: str, source: str) -> None:
    """Every tensor's shape agrees with W_dec [d_sae, d_in] and with the config's d_in / d_sae / k."""
    if weights["W_dec"].ndim != 2:
        raise ValueError(f"{source}: W_dec: expected [d_sae, d_in], got {tuple(weights['W_dec'].shape)}")
    d_sae, d_in = weights["W_dec"].shape
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,), "b_gate": (d_sae,),
                "b_mag": (d_sae,), "r_mag": (d_sae,)}
    for name, shape in expected.items():
        if name in weights and tuple(weights[name].shape) != shape:
            raise ValueError(f"{source}: {name}: expected shape {list(shape)} (from W_dec), got {list(weights[name].shape)}")
    for key, actual in (("d_in", d_in), ("d_sae", d_sae)):
        if key in config and config[key] is not None and config[key] != actual:
            raise ValueError(f"{source}: the config says {key} = {config[key]!r} but the weights have {actual}")
    if architecture == "topk":
        k = config.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ValueError(f"{source}: k: expected a whole number from 1 to d_sae = {d_sae}, got {k!r}")


def from_sae(sae: Any, *, model: str | None = None, source: str | None = None) -> Dictionary:
    """A dictionary from an SAE-Lens SAE object (the architectures we encode: standard, topk, jumprelu, gated)."""
    missing = [name for name in ("W_dec", "W_enc", "b_dec", "cfg") if not hasattr(sae, name)]
    if not hasattr(sae, "b_enc") and not hasattr(sae, "b_gate"):
        missing.append("b_enc (or a gated SAE's b_gate)")
    if missing:
        raise TypeError(f"sae: expected an SAE-Lens SAE (with W_dec, W_enc, b_enc, b_dec, cfg); missing {missing}")
    config = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else dict(vars(sae.cfg))
    config["architecture"] = sae.cfg.architecture() if callable(getattr(sae.cfg, "architecture", None)) else config.get(
        "architecture", "standard")
    metadata = config.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        config["metadata"] = metadata.to_dict() if hasattr(metadata, "to_dict") else dict(vars(metadata))
    names = ("W_dec", "W_enc", "b_enc", "b_dec", "threshold", "b_gate", "b_mag", "r_mag")
    weights = {name: getattr(sae, name).detach() for name in names if getattr(sae, name, None) is not None}
    return _dictionary_from_weights(weights, config, source=source or f"sae-lens {config['architecture']}", model=model)


def from_saelens_folder(path: str | Path, *, model: str | None = None, verify: bool = True) -> Dictionary:
    """A dictionary from an SAE-Lens folder (`cfg.json` + `sae_weights.safetensors`), read without SAE-Lens.

    A folder interp saved must match the SHA-256 its marker records; `verify=False` reads one edited on
    purpose (its config is then checked as any new input's is). Folders SAE-Lens wrote have no marker.
    """
    folder = Path(path)
    config_path, weights_path = folder / SAE_CONFIG_FILE, folder / SAE_WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"path: {folder} is not an SAE-Lens folder (expected {SAE_CONFIG_FILE} and {SAE_WEIGHTS_FILE})")
    check_recorded(folder, SAE_KIND, required=(SAE_CONFIG_FILE, SAE_WEIGHTS_FILE), verify=verify)
    config = read_json_object(config_path)
    gated = config.get("architecture") == "gated"
    tensors = read_tensors(weights_path, GATED_TENSORS if gated else ("W_dec", "W_enc", "b_enc", "b_dec"))
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{weights_path}: {name}: expected floating-point values, got {tensor.dtype}")
    weights = {name: tensor.float() for name, tensor in tensors.items()}
    return _dictionary_from_weights(weights, config, source=str(folder), model=model)


def import_sae_lens() -> Any:
    """The `sae_lens` module, or an ImportError that names the extra to install."""
    try:
        import sae_lens
    except ImportError as error:
        raise ImportError(
            "SAE-Lens releases need the optional dependency sae-lens: pip install 'interp[sae]' "
            f"(it requires transformer-lens<4); the import failed with: {error}"
        ) from error
    return sae_lens


def from_release(release: str, sae_id: str, *, device: str = "cpu", model: str | None = None) -> Dictionary:
    """A dictionary from a SAE-Lens pretrained release (downloads from the hub: needs a network)."""
    sae = import_sae_lens().SAE.from_pretrained(release, sae_id, device=device)
    return from_sae(sae, model=model, source=f"{release}/{sae_id}")


def load_dictionary(
    source: Any, *, model: str | None = None, hook_name: str | None = None, verify: bool = True
) -> Dictionary:
    """Whatever a user holds: a `Dictionary`, an SAE-Lens SAE, an SAE-Lens folder, a safetensors decoder, a tensor.

    `verify=False` reads a folder interp saved that was edited on purpose (see `from_saelens_folder`).
    """
    if isinstance(source, Dictionary):
        return source
    if isinstance(source, Tensor):
        return from_decoder(source, hook_name=hook_name, model=model)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return from_saelens_folder(path, model=model, verify=verify)
        if path.is_file():
            return from_decoder(path, hook_name=hook_name, model=model)
        raise FileNotFoundError(f"source: {path} is neither an SAE-Lens folder nor a safetensors file")
    if hasattr(source, "W_dec") and hasattr(source, "cfg"):
        return from_sae(source, model=model)
    raise TypeError(
        f"source: expected a Dictionary, SAE-Lens SAE, SAE-Lens folder, safetensors file or tensor, got {type(source).__name__}"
    )


def shipped_root() -> Path:
    """Where the toolkit's own trained SAEs live: `interp/data/saes/{model}/{hook_name}/` (SAE-Lens folders)."""
    return Path(__file__).resolve().parent / "data" / "saes"


def shipped_dictionaries(model: str) -> dict[str, Path]:
    """The shipped SAE folders for registry model `model`, by hook name (empty when none ships)."""
    folder = shipped_root() / model
    if not folder.is_dir():
        return {}
    return {path.name: path for path in sorted(folder.iterdir()) if (path / SAE_CONFIG_FILE).is_file()}


def load_shipped_dictionary(model: str, layer: int | None = None, *, site: str = "resid_pre") -> Dictionary:
    """The shipped SAE of `model` at `blocks.{layer}.hook_{site}` (default: the only one, or the middle one)."""
    available = shipped_dictionaries(model)
    if not available:
        raise FileNotFoundError(f"model: no SAE ships for {model!r} (looked in {shipped_root() / model}); "
                                "train one with `interp train-sae`")
    if layer is None:
        names = sorted(available, key=lambda name: int(_HOOK_LAYER.match(name).group(1)) if _HOOK_LAYER.match(name) else 0)
        hook = names[len(names) // 2]
    else:
        hook = f"blocks.{layer}.hook_{site}"
        if hook not in available:
            raise ValueError(f"layer: no shipped SAE for {model!r} at {hook}; available: {sorted(available)}")
    return from_saelens_folder(available[hook], model=model)
