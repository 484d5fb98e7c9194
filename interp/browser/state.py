"""What a harvest keeps per feature, in memory fixed by the options, never by the corpus size.

Every token a batch scores updates, for all features at once (tensor ops over the batch's non-zero
activations, no loop over features or tokens):

- counts: tokens that fired, the sum of their activations, and a histogram of the non-zero values in
  log-spaced bins (fixed edges, so batches and resumed runs add up exactly);
- `top`: the `n_top` highest activations ("slots"), each with its token window's ids and activations
  and the strongest other features active at that token (the co-occurrence sample);
- `samples`: a uniform random sample of each feature's firings *per activation band* (log-spaced bands,
  `n_samples` per band): each firing draws a random priority and each band keeps the lowest priorities
  (a bottom-k sketch), which is a uniform sample of that band whatever the corpus size. At the end the
  samples falling into an interval of the feature's max (say 10–25%) are a uniform sample of it.

A `SlotTable` holds `width` slots per group (a feature, or a feature × band), sorted best first; a
batch's candidates are first cut to what can enter (above the group's worst kept score, and among its
group's best `width` in this batch), so after the first batches only a few tokens per batch cost more
than a comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

# Slot payloads: what a kept firing carries besides its score.
PAYLOAD = ("value", "key", "window_ids", "window_acts", "coactive")


@dataclass
class SlotTable:
    """`width` slots for each of `n_groups` groups, best score first; empty slots score -inf."""

    score: Float[Tensor, "groups width"]
    value: Float[Tensor, "groups width"]  # the activation
    key: Int[Tensor, "groups width"]  # doc * stride + position
    window_ids: Int[Tensor, "groups width window"]  # token ids around the firing; -1 outside the text
    window_acts: Float[Tensor, "groups width window"]  # the feature's activation at each window token
    coactive: Int[Tensor, "groups width n_coactive"]  # strongest other features active there; -1 none

    @classmethod
    def empty(cls, n_groups: int, width: int, window: int, n_coactive: int, device: torch.device) -> SlotTable:
        return cls(
            score=torch.full((n_groups, width), float("-inf"), device=device),
            value=torch.zeros((n_groups, width), device=device),
            key=torch.full((n_groups, width), -1, dtype=torch.long, device=device),
            window_ids=torch.full((n_groups, width, window), -1, dtype=torch.int32, device=device),
            window_acts=torch.zeros((n_groups, width, window), device=device),
            coactive=torch.full((n_groups, width, n_coactive), -1, dtype=torch.int32, device=device),
        )

    @property
    def width(self) -> int:
        return self.score.shape[1]

    def dense(self) -> list[Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        """The filled slots only, with where they sit (most band slots of a rare feature stay empty)."""
        where = (self.score > float("-inf")).nonzero()  # [filled, 2]: group, slot
        shape = torch.tensor([*self.window_ids.shape, self.coactive.shape[2]])
        return {f"{prefix}.where": where, f"{prefix}.shape": shape,
                **{f"{prefix}.{f.name}": getattr(self, f.name)[where[:, 0], where[:, 1]] for f in fields(self)}}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str, device: torch.device | str = "cpu") -> SlotTable:
        groups, width, window, n_coactive = tensors[f"{prefix}.shape"].tolist()
        table = cls.empty(groups, width, window, n_coactive, torch.device(device))
        where = tensors[f"{prefix}.where"].to(device)
        for f in fields(cls):
            getattr(table, f.name)[where[:, 0], where[:, 1]] = tensors[f"{prefix}.{f.name}"].to(device)
        return table

    def to(self, device: torch.device | str) -> SlotTable:
        return SlotTable(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def entrants(self, groups: Int[Tensor, "n"], scores: Float[Tensor, "n"]) -> Int[Tensor, "m"]:
        """Indices of the candidates that would enter their group: better than its worst kept slot, and
        among the group's best `width` candidates of this batch (ties: the earlier candidate)."""
        above = (scores > self.score[groups, -1]).nonzero().squeeze(1)
        if above.numel() == 0:
            return above
        # Best first, then grouped (stable): each group's candidates in score order.
        order = above[scores[above].argsort(descending=True, stable=True)]
        order = order[groups[order].argsort(stable=True)]
        _, counts = groups[order].unique_consecutive(return_counts=True)
        starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        rank = torch.arange(order.numel(), device=order.device) - starts
        return order[rank < self.width]

    def insert(self, groups: Int[Tensor, "m"], scores: Float[Tensor, "m"], payload: dict[str, Tensor]) -> None:
        """Merge entrants (at most `width` per group, as `entrants` returns them) into their groups."""
        if groups.numel() == 0:
            return
        touched, local = groups.unique(return_inverse=True)
        order = local.argsort(stable=True)
        counts = torch.bincount(local, minlength=touched.numel())
        starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        rank = torch.empty_like(local)
        rank[order] = torch.arange(local.numel(), device=local.device) - starts
        width = self.width
        new_score = torch.full((touched.numel(), width), float("-inf"), device=scores.device)
        new_score[local, rank] = scores
        # Kept slots first, so a tie keeps the firing already held (earlier in the corpus).
        keep = torch.cat([self.score[touched], new_score], 1).sort(dim=1, descending=True, stable=True).indices[:, :width]
        self.score[touched] = torch.cat([self.score[touched], new_score], 1).gather(1, keep)
        for name in PAYLOAD:
            held = getattr(self, name)
            fresh = torch.zeros((touched.numel(), width, *held.shape[2:]), dtype=held.dtype, device=held.device)
            fresh[local, rank] = payload[name].to(held.dtype)
            merged = torch.cat([held[touched], fresh], 1)
            index = keep.view(*keep.shape, *([1] * (held.ndim - 2))).expand(-1, -1, *held.shape[2:])
            held[touched] = merged.gather(1, index)


@dataclass(frozen=True)
class Bins:
    """Log-spaced bins: `per_decade` per power of ten from `low` to `high`, plus an under- and an overflow bin."""

    low: float
    high: float
    per_decade: int

    @property
    def n_inner(self) -> int:
        return max(1, round(math.log10(self.high / self.low) * self.per_decade))

    @property
    def n_bins(self) -> int:
        return self.n_inner + 2

    def index(self, values: Float[Tensor, "n"]) -> Int[Tensor, "n"]:
        """Bin of each positive value: 0 below `low`, n_inner + 1 from `high` on."""
        inner = torch.floor((values.log10() - math.log10(self.low)) * self.per_decade).long()
        return (inner + 1).clamp(0, self.n_inner + 1)

    def edges(self) -> list[float]:
        """The n_inner + 1 inner edges (the under/overflow bins extend them to 0 and infinity)."""
        return [self.low * 10 ** (i / self.per_decade) for i in range(self.n_inner + 1)]


@dataclass
class FeatureState:
    """Everything a harvest accumulates: counts, histogram, top slots and band samples of every feature."""

    fired: Int[Tensor, "n_features"]
    activation_sum: Float[Tensor, "n_features"]  # float64: sums over millions of tokens
    histogram: Int[Tensor, "n_features n_bins"]
    top: SlotTable
    samples: SlotTable  # groups = feature * n_bands + band
    n_tokens: int = 0
    n_docs: int = 0

    def tensors(self) -> dict[str, Tensor]:
        return {"fired": self.fired, "activation_sum": self.activation_sum, "histogram": self.histogram,
                **self.top.tensors("top"), **self.samples.tensors("samples")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], n_tokens: int, n_docs: int,
                     device: torch.device | str = "cpu") -> FeatureState:
        return cls(tensors["fired"].to(device), tensors["activation_sum"].to(device), tensors["histogram"].to(device),
                   SlotTable.from_tensors(tensors, "top", device), SlotTable.from_tensors(tensors, "samples", device),
                   n_tokens, n_docs)

    def to(self, device: torch.device | str) -> FeatureState:
        return FeatureState(self.fired.to(device), self.activation_sum.to(device), self.histogram.to(device),
                            self.top.to(device), self.samples.to(device), self.n_tokens, self.n_docs)

    def nbytes(self) -> int:
        """Bytes held in memory (fixed by the options and the number of features)."""
        held = [self.fired, self.activation_sum, self.histogram, *self.top.dense(), *self.samples.dense()]
        return sum(t.numel() * t.element_size() for t in held)


def new_state(n_features: int, *, n_top: int, n_samples: int, histogram: Bins, bands: Bins, window: int,
              n_coactive: int, device: torch.device) -> FeatureState:
    """An empty `FeatureState` for `n_features` features (the harvest's bounded memory).

    Args:
        n_features: how many features are tracked.
        n_top: top contexts kept per feature.
        n_samples: random firings kept per feature and activation band.
        histogram: the bins of each feature's activation histogram.
        bands: the activation bands sampled from (fractions of each feature's max).
        window: tokens kept around each context's firing token.
        n_coactive: co-occurring features kept per context.
        device: where the state's tensors live.

    Returns:
        A state whose size depends only on these numbers, not on the corpus.
    """
    return FeatureState(
        fired=torch.zeros(n_features, dtype=torch.long, device=device),
        activation_sum=torch.zeros(n_features, dtype=torch.float64, device=device),
        histogram=torch.zeros((n_features, histogram.n_bins), dtype=torch.long, device=device),
        top=SlotTable.empty(n_features, n_top, window, n_coactive, device),
        samples=SlotTable.empty(n_features * bands.n_bins, n_samples, window, n_coactive, device),
    )


@dataclass(frozen=True)
class Batch:
    """One batch of a feature's view of the corpus: activations at every (row, column), which of them count,
    and where each row and column sits in the corpus."""

    acts: Float[Tensor, "rows cols n_features"]  # 0 wherever `scored` is False
    scored: Bool[Tensor, "rows cols"]
    docs: Int[Tensor, "rows"]  # corpus index of each row
    positions: Int[Tensor, "rows cols"]  # token position in the document; -1 at padding
    ids: Int[Tensor, "rows cols"]  # token ids; -1 where unknown (padding, or shards without prompts)


def update(state: FeatureState, batch: Batch, *, histogram: Bins, bands: Bins, window: tuple[int, int],
           stride: int, generator: torch.Generator | None = None) -> None:
    """Add one batch to `state` (in place)."""
    acts = batch.acts
    n_features = acts.shape[-1]
    flat = acts.reshape(-1, n_features)
    token, feature = (flat > 0).nonzero(as_tuple=True)  # firings, in token order
    value = flat[token, feature]
    state.n_tokens += int(batch.scored.sum())
    state.fired += torch.bincount(feature, minlength=n_features)
    state.activation_sum += torch.bincount(feature, weights=value.double(), minlength=n_features)
    n_bins = histogram.n_bins
    state.histogram += torch.bincount(feature * n_bins + histogram.index(value), minlength=n_features * n_bins).view(
        n_features, n_bins)
    # Drawn on the CPU from the seeded generator: the same sample on every device, and after a resume.
    priorities = torch.rand(value.numel(), generator=generator).to(value.device)
    band = feature * bands.n_bins + bands.index(value)
    to_top = state.top.entrants(feature, value)
    to_samples = state.samples.entrants(band, -priorities)
    # Co-active features, only at the tokens that enter a table (after the first batches, few).
    tokens, inverse = torch.cat([token[to_top], token[to_samples]]).unique(return_inverse=True)
    k = state.top.coactive.shape[2] + 1  # the feature itself may be among them
    strongest_values, strongest = flat[tokens].topk(min(k, n_features), dim=1)
    strongest = torch.nn.functional.pad(torch.where(strongest_values > 0, strongest, -1), (0, k - strongest.shape[1]),
                                        value=-1)
    state.top.insert(feature[to_top], value[to_top], _payload(
        batch, token[to_top], feature[to_top], value[to_top], window, stride, strongest[inverse[: to_top.numel()]]))
    state.samples.insert(band[to_samples], -priorities[to_samples], _payload(
        batch, token[to_samples], feature[to_samples], value[to_samples], window, stride,
        strongest[inverse[to_top.numel():]]))


def _payload(batch: Batch, token: Int[Tensor, "m"], feature: Int[Tensor, "m"], value: Float[Tensor, "m"],
             window: tuple[int, int], stride: int, strongest: Int[Tensor, "m k"]) -> dict[str, Tensor]:
    """Each entrant's key, token window (ids and this feature's activations) and strongest co-active features."""
    cols = batch.acts.shape[1]
    row, col = token // cols, token % cols
    before, after = window
    offsets = torch.arange(-before, after + 1, device=token.device)
    window_cols = col[:, None] + offsets[None, :]  # [m, window]
    inside = (window_cols >= 0) & (window_cols < cols)
    clamped = window_cols.clamp(0, cols - 1)
    rows = row[:, None].expand_as(clamped)
    real = inside & (batch.positions[rows, clamped] >= 0)
    window_acts = batch.acts[rows, clamped, feature[:, None].expand_as(clamped)] * real
    window_ids = torch.where(real, batch.ids[rows, clamped], -1)
    # Co-active features: the strongest at the same token, this feature itself left out (valid ids first,
    # strongest first: a stable sort on "is missing").
    top_ids = torch.where(strongest != feature[:, None], strongest, -1)
    order = (top_ids < 0).to(torch.int8).argsort(dim=1, stable=True)[:, : strongest.shape[1] - 1]
    coactive = top_ids.gather(1, order)
    key = batch.docs[row] * stride + batch.positions[row, col]
    return {"value": value, "key": key, "window_ids": window_ids, "window_acts": window_acts, "coactive": coactive}

