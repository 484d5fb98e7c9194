"""Contrastive activation addition (CAA; Rimsky et al. 2024, "Steering Llama 2 via Contrastive Activation
Addition") for A/B behaviour data sets, and the measurements that tell whether steering did anything.

The vector. Each A/B question is put to the model in its chat template with the answer letter as the
start of the assistant turn; the vector at layer L is the mean over pairs of
`resid_pre[L](matching letter) − resid_pre[L](not-matching letter)` at the letter token. Which letter is
the matching one varies from pair to pair (the bundled data is balanced; `shuffle_options` re-draws it
with a seed), and the A-matching and B-matching pairs weigh equally in the mean, so the letter identity
cancels even in an unbalanced subset and what is left is "the answer shows the behaviour".

Where the vector goes. As CAA does, the vector is added after the user's turn: at the last prompt token
and at every token after it (`Steer(positions="new")`), in generation and in scoring alike. Scoring an
answer letter under steering is thus the first step of a steered generation: the prompt (chat template +
assistant prefix such as "My answer is (") is run once with a KV cache (`PromptCache`), and each
steered condition of a layer × multiplier sweep re-runs only its last token.

The measurements live in `interp.evaluators`, the prompt formats in `interp.ab_prompts`, sweeps of a
vector over layers × multipliers and their curve summaries in `interp.sweeps`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp._checks import whole_number
from interp._io import load_tensor_folder, save_tensor_folder
from interp.ab_prompts import (
    AB_LETTERS,
    CANDIDATE_FORMATS,
    ABFormat,
    check_pairs,
    encode_letter_prompts,
    letter_balance,
    mixed_matching_letters,
    shuffle_options,
)
from interp.activations import collect_residuals, mean_difference
from interp.aggregators import AGGREGATORS, aggregate
from interp.datasets import ContrastPair
from interp.directions import RESID_SITES, Direction, hook_name
from interp.display import clip, details, frame, html_table, span
from interp.hooked import HookedModel, check_layers, d_model, n_layers
from interp.models import model_name
from interp.runner import PromptCache, generate_with_row_biases
from interp.steering import Intervention, Steer
from interp.vectors import SteeringVectors

Normalisation = Literal["raw", "unit", "resid"]
NORMALISATIONS: tuple[str, ...] = ("raw", "unit", "resid")
CAA_TENSORS, CAA_JSON = "caa.safetensors", "caa.json"
NORMALISATION_LABELS = {  # what one unit of multiplier adds, for axis labels: "multiplier (× ...)"
    "raw": "× the CAA vector as found",
    "unit": "× the unit vector, residual-stream units",
    "resid": "× mean residual norm at the layer, unit vector",
}


# The CAA vectors
# ---------------------------------------------------------------------------------------------


def caa_vectors_from_activations(
    matching: Float[Tensor, "n_pairs n_layers d_model"],
    not_matching: Float[Tensor, "n_pairs n_layers d_model"],
    matching_letters: Sequence[str] | None = None,
) -> Float[Tensor, "n_layers d_model"]:
    """The CAA core: mean over pairs of (matching − not matching), per layer (float64 accumulation).

    With `matching_letters` (each pair's matching letter, "A" or "B"), the pairs whose matching answer
    is A and those whose matching answer is B are averaged separately and the two means weigh equally.
    Each difference is behaviour ± (A − B letter identity), so this cancels the letter term exactly
    whatever the balance; on a balanced set it equals the plain mean. A subset with 42% A otherwise
    leaves 8% of the letter direction in the vector, which can outweigh a small behavioural difference.
    """
    if matching.shape != not_matching.shape:
        raise ValueError(
            f"not_matching: shape {tuple(not_matching.shape)} differs from matching's {tuple(matching.shape)}"
        )
    if matching.ndim != 3:
        raise ValueError(f"matching: expected [n_pairs, n_layers, d_model], got {tuple(matching.shape)}")
    if matching_letters is None:
        return mean_difference(matching, not_matching)
    letters = list(matching_letters)
    if len(letters) != matching.shape[0] or not set(letters) <= {"A", "B"}:
        raise ValueError(f"matching_letters: expected {matching.shape[0]} letters, each 'A' or 'B'")
    is_a = torch.tensor([letter == "A" for letter in letters], device=matching.device)
    if is_a.all() or not is_a.any():
        raise ValueError("matching_letters: every pair has the same matching letter, so the letter cannot be "
                         "separated from the behaviour; swap the options of some pairs (shuffle_options)")
    return (mean_difference(matching[is_a], not_matching[is_a]) + mean_difference(matching[~is_a], not_matching[~is_a])) / 2


@torch.no_grad()
def caa_activations(
    model: HookedModel,
    pairs: Sequence[ContrastPair],
    fmt: ABFormat = CANDIDATE_FORMATS[0],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    kv_cache: bool | None = None,
    interventions: Sequence[Intervention] = (),
    progress: bool = True,
) -> tuple[Float[Tensor, "n_pairs n_layers d_model"], Float[Tensor, "n_pairs n_layers d_model"]]:
    """resid_pre at the answer letter, every layer (or `layers`), for the matching and not-matching letter.

    Per batch: one pass over the prompts (KV cached), then the tail + letter for A and for B, each a
    few tokens that read every layer at once.
    """
    pairs = check_pairs(pairs)
    layer_list = list(range(n_layers(model))) if layers is None else list(layers)
    encoded = encode_letter_prompts(model, [pair.question for pair in pairs], fmt, AB_LETTERS, argument="pairs")
    is_a = torch.tensor([pair.matching_letter == "A" for pair in pairs])[:, None, None]
    order = sorted(range(len(pairs)), key=lambda i: len(encoded.heads[i]))
    matching = torch.empty(len(pairs), len(layer_list), d_model(model))
    not_matching = torch.empty_like(matching)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="CAA activations", disable=not progress or len(starts) < 2, leave=False):
        rows = torch.tensor(order[start : start + batch_size])
        # One batch at a time, so at most one batch of KV cache is alive.
        cache = PromptCache(
            model, [encoded.heads[i] for i in rows.tolist()], batch_size=len(rows), kv_cache=kv_cache,
            interventions=interventions, progress=False,
        )
        on_a, on_b = (
            cache.run(encoded.tail + [letter_id], record_layers=layer_list).resid for letter_id in encoded.answer_ids
        )
        matching[rows] = torch.where(is_a[rows], on_a, on_b)
        not_matching[rows] = torch.where(is_a[rows], on_b, on_a)
    return matching, not_matching


@dataclass(frozen=True)
class CAAVectors:
    """CAA vectors at every layer of one model, with the residual norms that scale multipliers."""

    vectors: Float[Tensor, "n_layers d_model"]  # mean(matching − not matching) at resid_pre, per layer
    resid_norm: Float[Tensor, "n_layers"]  # mean residual norm at the answer letter, per layer
    model: str
    n_pairs: int
    fmt: ABFormat = CANDIDATE_FORMATS[0]
    site: str = "resid_pre"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.resid_norm.shape != self.vectors.shape[:1]:
            raise ValueError(
                f"vectors: expected [n_layers, d_model] with resid_norm [n_layers], got "
                f"{tuple(self.vectors.shape)} and {tuple(self.resid_norm.shape)}"
            )
        if bool((self.resid_norm < 0).any()):  # a norm scales steering: a negative one would flip its sign
            raise ValueError(f"resid_norm: expected norms >= 0, got {self.resid_norm.min().item():g}")

    @property
    def n_layers(self) -> int:
        return self.vectors.shape[0]

    def __repr__(self) -> str:
        return clip(f"CAAVectors(model={self.model!r}, {self.n_layers} layers × d_model={self.vectors.shape[1]}, "
                    f"{self.n_pairs} pairs, raw norm {span(self.vectors.float().norm(dim=-1).tolist())})")

    def _repr_html_(self) -> str:
        norms = self.vectors.float().norm(dim=-1).tolist()
        rows = [(layer, hook_name(layer, self.site), norm, float(self.resid_norm[layer])) for layer, norm in enumerate(norms)]
        return details(f"CAAVectors · {self.model} · {self.n_pairs} pairs · {self.n_layers} layers",
                       html_table(("layer", "hook", "raw norm", "mean residual norm"), rows))

    def to_frame(self) -> Any:
        """One row per layer: layer, hook, raw norm, mean residual norm (a pandas DataFrame)."""
        return frame([{"layer": layer, "hook": hook_name(layer, self.site), "raw_norm": float(vector.norm()),
                       "mean_resid_norm": float(self.resid_norm[layer])}
                      for layer, vector in enumerate(self.vectors.float())])

    def check_model(self, model: HookedModel, allow_other_model: bool = False) -> None:
        """A ValueError naming `vectors` when they were built on another model (or another width)."""
        if self.vectors.shape[1] != d_model(model) or self.n_layers != n_layers(model):
            raise ValueError(
                f"vectors: built on {self.model!r} ({self.n_layers} layers × {self.vectors.shape[1]}), "
                f"but the model has {n_layers(model)} layers × {d_model(model)}"
            )
        if not allow_other_model and model_name(model) != self.model:
            raise ValueError(
                f"vectors: built on model {self.model!r}, not {model_name(model)!r}; "
                "pass allow_other_model=True if this is intended"
            )

    def direction(self, layer: int, normalisation: Normalisation = "resid") -> Direction:
        """The vector at `layer` as a Direction: raw, unit norm, or unit × the mean residual norm there."""
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation: expected one of {NORMALISATIONS}, got {normalisation!r}")
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer: {layer} is out of range for vectors with {self.n_layers} layers")
        vector = self.vectors[layer].float()
        norm = vector.norm()
        if normalisation != "raw":
            if norm == 0:
                raise ValueError(f"layer: the CAA vector at layer {layer} is zero and has no direction")
            vector = vector / norm * (float(self.resid_norm[layer]) if normalisation == "resid" else 1.0)
        meta = {
            **self.meta, "normalisation": normalisation, "raw_norm": float(norm),
            "mean_resid_norm": float(self.resid_norm[layer]), "n_pairs": self.n_pairs, "format": self.fmt.to_dict(),
        }
        return Direction(vector, layer=layer, model=self.model, source="caa", site=self.site, meta=meta)

    def steer(
        self, layer: int, multiplier: float, normalisation: Normalisation = "resid", *, allow_other_model: bool = False
    ) -> Steer:
        """Add `multiplier` × the (normalised) vector at `layer`, from the last template token on (as CAA)."""
        return Steer(
            self.direction(layer, normalisation), scale=float(multiplier), positions="new",
            allow_other_model=allow_other_model,
        )

    def to_vectors(self, layers: Sequence[int] | None = None, normalisation: Normalisation = "raw") -> SteeringVectors:
        """The vectors at `layers` (default all) as one `SteeringVectors`, each as `direction(layer, normalisation)`."""
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation: expected one of {NORMALISATIONS}, got {normalisation!r}")
        chosen = list(range(self.n_layers)) if layers is None else [whole_number(layer, "layers") for layer in layers]
        if not chosen or not all(layer < self.n_layers for layer in chosen):
            raise ValueError(f"layers: expected layers in [0, {self.n_layers}), got {chosen}")
        vectors, norms = self.vectors[chosen].float(), self.vectors[chosen].float().norm(dim=-1, keepdim=True)
        if normalisation != "raw":
            if bool((norms == 0).any()):
                raise ValueError(f"layers: the CAA vector at layer {chosen[int((norms[:, 0] == 0).nonzero()[0])]} is "
                                 "zero and has no direction")
            target = self.resid_norm[chosen].float()[:, None] if normalisation == "resid" else 1.0
            vectors = vectors / norms * target
        meta = {**self.meta, "normalisation": normalisation, "raw_norms": norms[:, 0].tolist(), "n_pairs": self.n_pairs,
                "mean_resid_norms": self.resid_norm[chosen].tolist(), "format": self.fmt.to_dict()}
        return SteeringVectors(vectors, tuple(chosen), self.model, "caa", self.site, meta)

    def cosine_between_layers(self) -> Float[Tensor, "n_layers n_layers"]:
        unit = self.vectors.double() / self.vectors.double().norm(dim=-1, keepdim=True).clamp_min(1e-300)
        return (unit @ unit.T).float()

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """`caa.safetensors` (vectors, resid_norm) + `caa.json` (provenance) in the folder `path`, atomically.

        `path` must be new or empty, or hold saved CAA vectors (replaced only with `overwrite=True`).
        """
        metadata = {
            "model": self.model, "n_pairs": self.n_pairs, "fmt": self.fmt.to_dict(), "site": self.site, "meta": self.meta,
        }
        return save_tensor_folder(
            path, {"vectors": self.vectors, "resid_norm": self.resid_norm}, metadata, kind="CAA vectors",
            tensors_file=CAA_TENSORS, json_file=CAA_JSON, overwrite=overwrite,
        )

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> CAAVectors:
        """CAA vectors saved in the folder `path`; any damage is an error naming the file.

        The files must match the SHA-256 recorded when they were saved; `verify=False` reads vectors edited
        on purpose (their values are then checked as any new input's are).
        """
        tensors, metadata = load_tensor_folder(
            path, kind="CAA vectors", tensors_file=CAA_TENSORS, json_file=CAA_JSON, tensors=("vectors", "resid_norm"),
            keys=("model", "n_pairs", "fmt"), argument="CAAVectors.load", verify=verify,
        )
        path = Path(path)
        for key in ("vectors", "resid_norm"):
            if not tensors[key].is_floating_point() or not torch.isfinite(tensors[key]).all():
                raise ValueError(f"{path / CAA_TENSORS}: {key}: expected finite floating-point values")
        try:
            fmt, site, meta = metadata["fmt"], metadata.get("site", "resid_pre"), metadata.get("meta", {})
            if not isinstance(metadata["model"], str) or not isinstance(meta, dict):
                raise ValueError(f"model, meta: expected a string and an object, got {metadata['model']!r}, {meta!r}")
            if site not in RESID_SITES:
                raise ValueError(f"site: expected one of {RESID_SITES}, got {site!r}")
            if not isinstance(fmt, dict) or not all(isinstance(fmt.get(k, ""), str) for k in ("name", "assistant_prefix")) \
                    or not isinstance(fmt.get("system"), (str, type(None))):
                raise ValueError(f"fmt: expected {{name, system, assistant_prefix}} strings (system may be null), got {fmt!r}")
            n_pairs = whole_number(metadata["n_pairs"], "n_pairs", minimum=0)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path / CAA_JSON}: {error}") from None
        try:
            return cls(tensors["vectors"], tensors["resid_norm"], metadata["model"], n_pairs, ABFormat(**fmt), site, meta)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None


def build_caa_vectors(
    model: HookedModel,
    pairs: Sequence[ContrastPair],
    fmt: ABFormat = CANDIDATE_FORMATS[0],
    *,
    shuffle_seed: int | None = None,
    batch_size: int = 16,
    kv_cache: bool | None = None,
    interventions: Sequence[Intervention] = (),
    progress: bool = True,
) -> CAAVectors:
    """CAA vectors at every layer from A/B pairs, as Rimsky et al., from one pass per batch.

    `shuffle_seed` swaps the (A)/(B) options of each pair with probability 1/2 first. Whenever both letters
    occur, the A-matching and B-matching pairs weigh equally (see `caa_vectors_from_activations`), so an
    unbalanced set does not make a vector for "A vs B"; a set with one letter only keeps the plain mean.
    """
    pairs = check_pairs(pairs)
    if shuffle_seed is not None:
        pairs = shuffle_options(pairs, shuffle_seed)
    matching, not_matching = caa_activations(
        model, pairs, fmt, batch_size=batch_size, kv_cache=kv_cache, interventions=interventions, progress=progress
    )
    return caa_vectors_of(model_name(model), pairs, fmt, matching, not_matching, shuffle_seed=shuffle_seed)


def caa_vectors_of(
    model: str,
    pairs: Sequence[ContrastPair],
    fmt: ABFormat,
    matching: Float[Tensor, "n_pairs n_layers d_model"],
    not_matching: Float[Tensor, "n_pairs n_layers d_model"],
    *,
    shuffle_seed: int | None = None,
) -> CAAVectors:
    """`build_caa_vectors`' result from activations already read: `caa_activations(model, pairs, fmt)` at every
    layer (`pairs` as they were run, options already shuffled when `shuffle_seed` is recorded)."""
    pairs = check_pairs(pairs)
    if matching.shape[0] != len(pairs):
        raise ValueError(f"matching: expected one row per pair ({len(pairs)}), got shape {tuple(matching.shape)}")
    norms = torch.cat([matching, not_matching]).norm(dim=-1).mean(dim=0)
    letters = mixed_matching_letters(pairs)
    meta = {"letter_balance": letter_balance(pairs), "shuffle_seed": shuffle_seed, "position": "answer letter",
            "letter_weighted": letters is not None}
    return CAAVectors(caa_vectors_from_activations(matching, not_matching, letters), norms, model, len(pairs), fmt, meta=meta)


def _aggregator_names(aggregators: str | Sequence[str]) -> list[str]:
    names = [aggregators] if isinstance(aggregators, str) else list(aggregators)
    unknown = [name for name in names if name not in AGGREGATORS]
    if not names or unknown:
        raise ValueError(f"aggregators: expected names from {sorted(AGGREGATORS)}, got {unknown or names}")
    return names


def build_steering_vectors(
    model: HookedModel,
    pairs: Sequence[ContrastPair],
    fmt: ABFormat = CANDIDATE_FORMATS[0],
    *,
    layers: Sequence[int] | None = None,
    aggregators: str | Sequence[str] = ("mean_difference",),
    shuffle_seed: int | None = None,
    batch_size: int = 16,
    kv_cache: bool | None = None,
    interventions: Sequence[Intervention] = (),
    progress: bool = True,
) -> dict[str, SteeringVectors]:
    """Steering vectors at `layers` (default all) from A/B pairs, one per aggregator of `interp.aggregators`, all
    from one pass over the pairs (the activations at the answer letter, as `build_caa_vectors` reads them).

    `mean_difference` is CAA's letter-weighted mean (the A-matching and B-matching pairs weigh equally), so it
    equals `build_caa_vectors(...).to_vectors(layers)`; the other aggregators see every pair as it is.
    """
    names = _aggregator_names(aggregators)
    pairs = check_pairs(pairs)
    if shuffle_seed is not None:
        pairs = shuffle_options(pairs, shuffle_seed)
    chosen = check_layers(model, list(range(n_layers(model))) if layers is None else list(layers), "layers")
    matching, not_matching = caa_activations(model, pairs, fmt, layers=chosen, batch_size=batch_size,
                                             kv_cache=kv_cache, interventions=interventions, progress=progress)
    letters = mixed_matching_letters(pairs)
    meta = {"letter_balance": letter_balance(pairs), "shuffle_seed": shuffle_seed, "position": "answer letter",
            "n_pairs": len(pairs), "format": fmt.to_dict(),
            "mean_resid_norms": torch.cat([matching, not_matching]).norm(dim=-1).mean(dim=0).tolist()}
    out = {}
    for name in names:
        started = time.perf_counter()
        vectors = (caa_vectors_from_activations(matching, not_matching, letters) if name == "mean_difference"
                   else aggregate(name, matching, not_matching))
        out[name] = SteeringVectors(vectors, tuple(chosen), model_name(model), name,
                                    meta={**meta, "aggregator": name, "seconds": time.perf_counter() - started})
    return out


def contrast_vectors(
    model: HookedModel,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    layers: Sequence[int],
    aggregators: str | Sequence[str] = ("mean_difference",),
    position: int = -1,
    site: str = "resid_pre",
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, SteeringVectors]:
    """Steering vectors from two lists of formatted prompts (row i of each a pair for the paired aggregators), read
    at token `position` (default the last) at `layers`, one per aggregator, from one pass over each list."""
    names = _aggregator_names(aggregators)
    chosen = check_layers(model, list(layers), "layers")
    reads = [collect_residuals(model, list(texts), chosen, position, site=site, batch_size=batch_size,
                               progress=progress)[:, :, 0] for texts in (positive, negative)]
    meta = {"position": position, "n_positive": len(positive), "n_negative": len(negative),
            "mean_resid_norms": torch.cat(reads).norm(dim=-1).mean(dim=0).tolist()}
    return {name: SteeringVectors(aggregate(name, *reads), tuple(chosen), model_name(model), name, site,
                                  {**meta, "aggregator": name}) for name in names}


# ---------------------------------------------------------------------------------------------
# Steered generations
# ---------------------------------------------------------------------------------------------


def steered_generations(
    model: HookedModel, prompts: Sequence[str], vectors: CAAVectors, layer: int, multipliers: Sequence[float], *,
    normalisation: Normalisation = "resid", max_new_tokens: int = 48, batch_size: int = 16, progress: bool = True,
) -> dict[float, list[str]]:
    """Greedy completions of formatted `prompts` with the vector added at every new token, per multiplier.

    Every multiplier's rows decode together (`batch_size` prompts × all multipliers per batch): a CPU decoding
    step costs about the same for 8 rows as for 24.
    """
    vectors.check_model(model)
    prompts, multipliers = list(prompts), [float(m) for m in multipliers]
    if not prompts or not multipliers:
        raise ValueError("prompts, multipliers: expected at least one of each")
    unit = vectors.direction(layer, normalisation)
    biases = torch.stack([m * unit.vector for m in multipliers]).repeat_interleave(len(prompts), 0)
    texts = generate_with_row_biases(
        model, prompts * len(multipliers), hook_name(unit.layer, unit.site), biases, positions="new",
        batch_rows=batch_size * len(multipliers), progress=progress, desc="generations", max_new_tokens=max_new_tokens,
    )
    return {m: texts[i * len(prompts) : (i + 1) * len(prompts)] for i, m in enumerate(multipliers)}
