"""One streamed, resumable pass over a corpus that keeps, for every feature of a dictionary, what its page shows.

`harvest_features(model, dictionary, corpus)` reads the corpus `chunk_docs` texts at a time (a list, a
text/JSONL file, gzipped or not, or activation shards), runs each chunk in length-sorted, left-padded
batches up to the dictionary's hook point (as `interp.features.max_activating` does, so the activations
are the ones it computes), encodes every token once for all features, and adds the batch to a
`FeatureState` (`interp.browser.state`): memory is fixed by the options, whatever the corpus size.

Resumable: with `checkpoint=FOLDER` the state is saved there every `checkpoint_seconds` (at a chunk's end)
and when done; a later call with the same dictionary, corpus and options continues after the last saved
chunk (and returns a finished harvest at once). Chunks, batches and the sampling priorities depend only on
the corpus and the seed, so a resumed harvest equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from interp._checks import whole_number
from interp._io import atomic_write_dir, atomic_write_json, check_recorded, read_json_object
from interp.browser.sources import Corpus, check_corpus, text_chunks
from interp.browser.state import Batch, Bins, FeatureState, new_state, update
from interp.dictionaries import Dictionary

HARVEST_KIND = "feature harvest"
STATE_FILE, META_FILE = "state.safetensors", "harvest.json"


@dataclass(frozen=True)
class HarvestConfig:
    """What a harvest keeps per feature and how it batches.

    `n_top` highest contexts; `n_samples` random firings per activation band (`bands_per_decade` log-spaced
    bands over `band_range`); a histogram of `histogram_bins_per_decade` log bins over `histogram_range`;
    a token `window` (before, after) around each kept firing; the `n_coactive` strongest other features there.
    Tokens at positions below `skip_first` are not scored (position 0's residual norm dwarfs the rest).
    Memory is about n_features × (n_top + n_samples × bands) × (window × 8 + 4 × n_coactive + 16) bytes: 118 MiB for
    4,608 features with these defaults (a feature's own range spans one or two decades, so 4 bands per decade
    give each interval of its max a few samples); fewer bands or samples, or a narrower range, shrink it.
    """

    n_top: int = 20
    n_samples: int = 4
    bands_per_decade: int = 4
    band_range: tuple[float, float] = (1e-3, 1e4)
    histogram_bins_per_decade: int = 16
    histogram_range: tuple[float, float] = (1e-4, 1e5)
    window: tuple[int, int] = (12, 4)
    n_coactive: int = 8
    skip_first: int = 1
    max_length: int = 256
    batch_tokens: int = 4096
    chunk_docs: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_top", "n_samples", "bands_per_decade", "histogram_bins_per_decade", "n_coactive",
                     "max_length", "batch_tokens", "chunk_docs"):
            whole_number(getattr(self, name), name, minimum=1)
        whole_number(self.skip_first, "skip_first", minimum=0)
        whole_number(self.seed, "seed", minimum=0)
        for name in ("band_range", "histogram_range"):
            low, high = getattr(self, name)
            if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 < low < high < float("inf")):
                raise ValueError(f"{name}: expected (low, high) with 0 < low < high, got {getattr(self, name)!r}")
        if len(self.window) != 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in self.window):
            raise ValueError(f"window: expected (before, after) with non-negative whole numbers, got {self.window!r}")

    @property
    def bands(self) -> Bins:
        return Bins(*self.band_range, self.bands_per_decade)

    @property
    def histogram(self) -> Bins:
        return Bins(*self.histogram_range, self.histogram_bins_per_decade)

    @property
    def window_size(self) -> int:
        return self.window[0] + self.window[1] + 1

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HarvestConfig:
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


@dataclass(frozen=True)
class Context:
    """One kept firing: its value, where it is, and its token window (ids and the feature's activations)."""

    value: float
    doc: int
    position: int
    ids: list[int]  # the window's token ids (tokens outside the text left out)
    acts: list[float]
    center: int  # index of the firing token in `ids`
    coactive: list[int] = field(default_factory=list)  # strongest other features active at that token


@dataclass
class FeatureHarvest:
    """A harvest: column j of `state` is dictionary feature `features[j]`; `meta` says what was read."""

    features: Int[Tensor, "n"]
    state: FeatureState
    config: HarvestConfig
    meta: dict[str, Any]

    @property
    def n_features(self) -> int:
        return int(self.features.numel())

    @property
    def density(self) -> Float[Tensor, "n"]:
        return self.state.fired.double() / max(self.state.n_tokens, 1)

    @property
    def max_activation(self) -> Float[Tensor, "n"]:
        top = self.state.top
        return torch.where(top.score[:, 0] > float("-inf"), top.value[:, 0], torch.zeros(()))

    @property
    def mean_activation(self) -> Float[Tensor, "n"]:
        return self.state.activation_sum / self.state.fired.clamp_min(1)

    def column(self, feature: int) -> int:
        hits = (self.features == feature).nonzero()
        if hits.numel() == 0:
            raise ValueError(f"feature: {feature} was not harvested")
        return int(hits[0, 0])

    def top_contexts(self, column: int) -> list[Context]:
        """Column `column`'s top firings, highest first (ties in corpus order)."""
        return self._contexts(self.state.top, torch.tensor([column]))

    def band_samples(self, column: int) -> list[Context]:
        """Column `column`'s random firings of every band, lowest band first."""
        n_bands = self.config.bands.n_bins
        return self._contexts(self.state.samples, torch.arange(column * n_bands, (column + 1) * n_bands))

    def _contexts(self, table: Any, groups: Tensor) -> list[Context]:
        score, value, key = (getattr(table, name)[groups].flatten() for name in ("score", "value", "key"))
        kept = (score > float("-inf")).nonzero().squeeze(1)
        if table is self.state.top:  # by value, ties in corpus order (as max_activating lists them)
            kept = kept[key[kept].argsort(stable=True)]
            kept = kept[value[kept].argsort(descending=True, stable=True)]
        ids, acts, coactive = (getattr(table, name)[groups].flatten(0, 1)[kept]
                               for name in ("window_ids", "window_acts", "coactive"))
        real = ids >= 0
        centers = (self.config.window[0] - (~real[:, : self.config.window[0]]).sum(1)).tolist()
        partners = torch.where(coactive >= 0, self.features[coactive.long().clamp_min(0)], -1).tolist()
        stride = self.meta["stride"]
        return [  # a loop over one page's contexts, building its records
            Context(v, k // stride, k % stride, i[r].tolist(), a[r].tolist(), c, [p for p in ps if p >= 0])
            for v, k, i, a, r, c, ps in zip(value[kept].tolist(), key[kept].tolist(), ids, acts, real, centers, partners)
        ]

    def write_files(self, folder: Path, prefix: str = "") -> None:
        """The state (safetensors) and what it was read from (JSON), as `{prefix}state.safetensors` and
        `{prefix}harvest.json`, into an existing folder (`save` writes them atomically as an artifact)."""
        tensors = {"features": self.features.contiguous(), **{k: v.contiguous() for k, v in self.state.tensors().items()}}
        meta = {**self.meta, "config": self.config.to_dict(), "n_tokens": self.state.n_tokens, "n_docs": self.state.n_docs}
        save_file(tensors, str(folder / f"{prefix}{STATE_FILE}"))
        atomic_write_json(folder / f"{prefix}{META_FILE}", meta)

    @classmethod
    def read_files(cls, folder: Path, prefix: str = "") -> FeatureHarvest:
        meta = read_json_object(folder / f"{prefix}{META_FILE}")
        tensors = load_file(str(folder / f"{prefix}{STATE_FILE}"))
        config = HarvestConfig.from_dict(meta.pop("config"))
        state = FeatureState.from_tensors(tensors, int(meta.pop("n_tokens")), int(meta.pop("n_docs")))
        return cls(tensors["features"], state, config, meta)

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write the harvest as an artifact folder (atomically; only over a saved harvest, with `overwrite`)."""
        folder = Path(folder)
        with atomic_write_dir(folder, HARVEST_KIND, overwrite=overwrite, argument="checkpoint") as tmp:
            self.write_files(tmp)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = True) -> FeatureHarvest:
        folder = Path(folder)
        check_recorded(folder, HARVEST_KIND, required=(STATE_FILE, META_FILE), verify=verify)
        return cls.read_files(folder)


def dictionary_fingerprint(dictionary: Dictionary) -> str:
    """SHA-256 of the decoder (float32) and, when there is one, the encoder's weights: which dictionary a
    harvest or a browser belongs to."""
    digest = hashlib.sha256(dictionary.decoder.detach().float().cpu().contiguous().numpy().tobytes())
    if dictionary.encoder is not None:
        digest.update(dictionary.encoder.W_enc.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_features(features: Sequence[int] | Tensor | None, n_atoms: int, argument: str = "features") -> Int[Tensor, "n"]:
    """The features to harvest (all when None), as distinct ints in [0, n_atoms), order kept."""
    if features is None:
        return torch.arange(n_atoms)
    listed = features.flatten().tolist() if isinstance(features, Tensor) else list(features)
    bad = [f for f in listed if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < n_atoms]
    if not listed or bad:
        raise ValueError(f"{argument}: expected feature indices in [0, {n_atoms}), got {bad[:5] or 'none'}")
    return torch.tensor(list(dict.fromkeys(listed)))


def check_harvest_dictionary(model: Any, dictionary: Dictionary, argument: str = "dictionary") -> str:
    """The hook point the dictionary reads; an error when it cannot be harvested on `model`."""
    if dictionary.encoder is None:
        raise ValueError(f"{argument}: a raw decoder has no encoder, so nothing fires on a corpus; "
                         "its weight-based parts need no harvest (interp.browser.build_feature_browser does those)")
    hook = dictionary.require_hook("the feature harvest")
    if model is not None:
        dictionary.check_model(model)
    return hook


def harvest_features(
    model: Any,
    dictionary: Dictionary,
    corpus: Sequence[str] | str | Path | Any,
    *,
    features: Sequence[int] | Tensor | None = None,
    config: HarvestConfig = HarvestConfig(),
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 300.0,
    prompts: Sequence[str] | None = None,
    max_docs: int | None = None,
    progress: bool = True,
) -> FeatureHarvest:
    """Harvest every feature (or `features`) of `dictionary` over `corpus` in one streamed pass.

    `corpus`: texts, a text/JSONL(.gz) file, or activation shards (a folder or `ResidualShards`, read at the
    dictionary's layer; `model` may then be None, and `prompts`, the texts the shards were collected from,
    give the context tokens). `max_docs` stops after that many texts (or shard rows).
    """
    if not isinstance(config, HarvestConfig):
        raise TypeError(f"config: expected a HarvestConfig, got {type(config).__name__}")
    source = check_corpus(corpus)
    if source.kind != "shards" and model is None:
        raise ValueError("model: a text corpus needs the model to run")
    hook = check_harvest_dictionary(model, dictionary)
    columns = check_features(features, dictionary.n_atoms)
    if max_docs is not None:
        whole_number(max_docs, "max_docs", minimum=1)
    device = _device(model)
    meta = {**_meta(model, dictionary, source, config, columns, hook), "max_docs": max_docs}
    state, done = _start(checkpoint, meta, config, columns, device)
    if state is None:
        return done  # type: ignore[return-value]
    encoder = dictionary.to(device)
    column_index = None if features is None else columns.to(device)

    def encode(activation: Tensor) -> Tensor:
        acts = encoder.encode(activation.float())  # every atom (a TopK encoder needs them all)
        return acts if column_index is None else acts[..., column_index]

    chunks_done = int(done)
    last_save = time.monotonic()
    steps = _text_steps if source.kind != "shards" else _shard_steps
    for chunk_index, batches in steps(model, source, hook, config, encode, chunks_done, max_docs, prompts, progress):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + chunk_index)
        for batch in batches:
            update(state, batch, histogram=config.histogram, bands=config.bands, window=config.window,
                   stride=meta["stride"], generator=generator)
            state.n_docs += int(batch.docs.numel())
        chunks_done = chunk_index + 1
        if checkpoint is not None and time.monotonic() - last_save >= checkpoint_seconds:
            _harvest(columns, state, config, meta, chunks_done, complete=False).save(checkpoint, overwrite=True)
            last_save = time.monotonic()
    result = _harvest(columns, state, config, meta, chunks_done, complete=True)
    if checkpoint is not None:
        result.save(checkpoint, overwrite=True)
    return result


def _device(model: Any) -> torch.device:
    from interp.hooked import model_device

    return model_device(model) if model is not None else torch.device("cpu")


def _meta(model: Any, dictionary: Dictionary, source: Corpus, config: HarvestConfig, columns: Tensor, hook: str) -> dict[str, Any]:
    from interp.models import model_name

    n_positions = source.shards.row_shape[1] if source.kind == "shards" else None
    return {
        "model": model_name(model) if model is not None else source.shards.manifest.get("model"),
        "hook_name": hook, "n_atoms": int(dictionary.n_atoms),
        "dictionary": dictionary.source, "fingerprint": dictionary_fingerprint(dictionary),
        "corpus": source.describe(), "n_features": int(columns.numel()),
        "stride": n_positions if n_positions is not None else config.max_length + 1,
    }


def _start(checkpoint: str | Path | None, meta: dict[str, Any], config: HarvestConfig, columns: Tensor,
           device: torch.device) -> tuple[FeatureState | None, Any]:
    """A new state, or the checkpoint's (with the chunks it covers); (None, harvest) when it is complete."""
    fresh = new_state(int(columns.numel()), n_top=config.n_top, n_samples=config.n_samples, histogram=config.histogram,
                      bands=config.bands, window=config.window_size, n_coactive=config.n_coactive, device=device)
    if checkpoint is None or not (Path(checkpoint) / META_FILE).is_file():
        if checkpoint is not None:
            from interp._io import check_target

            check_target(Path(checkpoint), HARVEST_KIND, overwrite=True, argument="checkpoint")  # before any work
        return fresh, 0
    saved = FeatureHarvest.load(checkpoint)
    mismatched = [key for key in ("fingerprint", "hook_name", "corpus", "stride", "max_docs")
                  if saved.meta.get(key) != meta[key]]
    if saved.config != config:
        mismatched.append("config")
    if not torch.equal(saved.features, columns):
        mismatched.append("features")
    if mismatched:
        raise ValueError(f"checkpoint: {checkpoint} holds a harvest of another {', '.join(mismatched)}; "
                         "use another folder (or remove it) to start over")
    if saved.meta.get("complete"):
        return None, saved
    return saved.state.to(device), saved.meta["chunks_done"]


def _harvest(columns: Tensor, state: FeatureState, config: HarvestConfig, meta: dict[str, Any], chunks_done: int,
             *, complete: bool) -> FeatureHarvest:
    return FeatureHarvest(columns.cpu(), state.to("cpu"), config, {**meta, "chunks_done": chunks_done, "complete": complete})


def _text_steps(model: Any, source: Corpus, hook: str, config: HarvestConfig, encode: Any, skip: int,
                max_docs: int | None, prompts: Any, progress: bool) -> Any:
    """(chunk index, batches) for each chunk of texts after the first `skip`; each batch runs the model once."""
    from interp.chat import tokenizer_of
    from interp.features import length_sorted_batches, token_ids

    tokenizer = tokenizer_of(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = len(source.texts) if source.kind == "texts" else None
    if total is not None and max_docs is not None:
        total = min(total, max_docs)
    bar = tqdm(total=total, desc="harvest", unit="doc", disable=not progress)
    first_doc = 0
    for chunk_index, texts in enumerate(text_chunks(source, config.chunk_docs, max_docs)):
        if chunk_index < skip:  # resumed: these chunks are in the checkpoint's state
            first_doc += len(texts)
            bar.update(len(texts))
            continue
        token_lists = token_ids(model, texts, config.max_length)
        docs = [d for d, ids in enumerate(token_lists) if len(ids) > config.skip_first]
        batches = length_sorted_batches(token_lists, docs, config.batch_tokens, pad_id) if docs else []
        yield chunk_index, (_text_batch(model, hook, batch, rows + first_doc, encode, config.skip_first)
                            for rows, batch in batches)
        first_doc += len(texts)
        bar.update(len(texts))
    bar.close()


def _text_batch(model: Any, hook: str, batch: Any, docs: Tensor, encode: Any, skip_first: int) -> Batch:
    from interp.hooked import model_device
    from interp.runner import read_activations

    device = model_device(model)
    batch = batch.to(device)
    acts = read_activations(model, batch, [hook], lambda activation, name: encode(activation))[hook]
    real = batch.attention_mask.bool()
    positions = torch.where(real, batch.position_ids, -1)
    scored = real & (positions >= skip_first)
    return Batch(acts.mul_(scored[..., None]), scored, docs.to(device), positions,  # in place: acts is ours
                 torch.where(real, batch.input_ids, -1))


def _shard_steps(model: Any, source: Corpus, hook: str, config: HarvestConfig, encode: Any, skip: int,
                 max_docs: int | None, prompts: Sequence[str] | None, progress: bool) -> Any:
    """(chunk index, batches) over shard rows at the dictionary's layer: no model run at all."""
    shards = source.shards
    layer = int(hook.split(".")[1])
    site = hook.rsplit("hook_", 1)[-1]
    if shards.manifest.get("site") != site or layer not in shards.layers:
        raise ValueError(f"corpus: the shards hold {shards.manifest.get('site')} at layers {shards.layers}, "
                         f"not the dictionary's {hook}")
    n_rows = len(shards) if max_docs is None else min(len(shards), max_docs)
    n_positions = shards.row_shape[1]
    ids = _shard_token_ids(model, shards, prompts, n_rows)
    rows_per_batch = max(1, config.batch_tokens // n_positions)
    bar = tqdm(total=n_rows, desc="harvest (shards)", unit="row", disable=not progress)
    layer_index = shards.layers.index(layer)
    for chunk_index, start in enumerate(range(0, n_rows, config.chunk_docs)):
        stop = min(start + config.chunk_docs, n_rows)
        if chunk_index >= skip:
            yield chunk_index, (_shard_batch(shards, layer_index, low, min(low + rows_per_batch, stop), ids, encode,
                                             _device(model)) for low in range(start, stop, rows_per_batch))
        bar.update(stop - start)
    bar.close()


def _shard_batch(shards: Any, layer_index: int, low: int, high: int, ids: Tensor, encode: Any,
                 device: torch.device) -> Batch:
    residuals = shards[low:high][:, layer_index].to(device)  # [rows, positions, d_model], read from disk
    acts = encode(residuals)
    rows, cols = acts.shape[:2]
    positions = torch.arange(cols, device=acts.device).expand(rows, -1)
    return Batch(acts, torch.ones((rows, cols), dtype=torch.bool, device=acts.device),
                 torch.arange(low, high, device=acts.device), positions, ids[low:high].to(acts.device))


def _shard_token_ids(model: Any, shards: Any, prompts: Sequence[str] | None, n_rows: int) -> Int[Tensor, "rows positions"]:
    """Token ids at the shards' positions, from the prompts they were collected from (-1 without them)."""
    n_positions = shards.row_shape[1]
    if prompts is None:
        return torch.full((len(shards), n_positions), -1, dtype=torch.long)
    if model is None:
        raise ValueError("prompts: turning prompts into tokens needs the model's tokenizer; pass model=")
    if len(prompts) != len(shards):
        raise ValueError(f"prompts: the shards hold {len(shards)} rows, got {len(prompts)} prompts")
    from interp.activations import LastK, position_index
    from interp.chat import tokenize

    described = shards.manifest.get("positions")
    if isinstance(described, dict) and "last_k" in described:
        positions: Any = LastK(int(described["last_k"]))
    elif isinstance(described, (int, list)):
        positions = described
    else:
        raise ValueError(f"prompts: the shards' positions {described!r} cannot be matched to the prompts' tokens")
    out = []
    for start in range(0, len(prompts), 256):  # tokenised in slices: a harvest's prompts may be many
        batch = tokenize(model, list(prompts[start:start + 256]))
        out.append(batch.input_ids.gather(1, position_index(batch, positions)))
    return torch.cat(out)
