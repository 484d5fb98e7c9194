"""Self-explanation of a direction: the model says in words what a vector in its residual stream means.

As SelfIE / Patchscopes and "Self-explaining SAE features" (Kharlapenko, neverix, Conmy, Nanda, 2024):
the chat prompt asks what a placeholder word means and pre-fills the start of the answer
(`What is the meaning of the word "X"?` / `The meaning of the word "X" is "`); the residual at every
placeholder token is replaced by `scale × unit(direction)` at an early layer and the model continues
greedily. The scale matters a lot (too small and the layers after the patch wash it out; too large
and the model reads noise), so every direction is explained at a sweep of scales, each scored so a
reader can pick one without reading every explanation:

- self-similarity: cosine between the final residual (`blocks.{n_layers-1}.hook_resid_post`, the
  input of the final norm) at the (last) placeholder and the direction: does the direction survive
  to the last layer, or has the model's reading of the placeholder replaced it?
- entropy (nats) of the next-token distribution at the last prompt position, the explanation's
  first token: low when the model is confident what to say.

All rows (directions × scales) are scored in one batched forward pass per `batch_rows` rows and
generated in one `generate_with_row_patches` call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp._checks import finite_number, finite_tensor, whole_number
from interp.chat import TokenBatch, format_chat, tokenize, tokenizer_of
from interp.directions import Direction, check_direction, hook_name
from interp.display import clip, details, frame, html_table
from interp.hooked import HookedModel, check_layers, d_model, model_device, n_layers
from interp.models import model_name
from interp.runner import batch_last_logits, generate_with_row_patches

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLACEHOLDER_FIELD = "{placeholder}"


@dataclass(frozen=True)
class SelfExplainConfig:
    """How to explain: where to patch, at which scales, and the explanation prompt.

    `layer`: the residual stream (`blocks.{layer}.hook_resid_pre`) the vector is written into,
    whatever layer the direction was found at; negative values count from the end. Early, as in the
    write-up, so that the layers after it still read the patched token as a word: in SmolLM2-135M
    (30 layers) and Qwen2.5-0.5B (24) a word's own layer-2 residual is explained as that word. At
    layer 0 the residual is the token embedding, so only embedding-like vectors read as words there.
    `scales`: multiples of the typical residual norm at `layer` (the median over the explanation
    prompt's tokens, the first one left out: attention-sink tokens carry norms ten to a hundred
    times larger), so the same sweep means the same thing in every model and layer. A word's own
    residual sits at about 1; the sweep runs from a quarter to eight times that.
    `template` (the user turn) holds `{placeholder}` exactly once; `answer_prefix` pre-fills the
    assistant's turn and may repeat it; every occurrence is patched, since a bare "X" left in the
    answer pulls a small model back to explaining the letter.
    `placeholder` must be one token where it stands in the prompt.
    """

    layer: int = 2
    scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    template: str = 'What is the meaning of the word "{placeholder}"?'
    answer_prefix: str = 'The meaning of the word "{placeholder}" is "'
    placeholder: str = "X"
    max_new_tokens: int = 24
    batch_rows: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise TypeError(f"layer: expected a whole number (a block index), got {self.layer!r}")
        scales = (self.scales,) if isinstance(self.scales, (int, float)) else tuple(self.scales)
        if not scales:
            raise ValueError("scales: expected at least one scale, got none")
        for scale in scales:
            if finite_number(scale, "scales") <= 0:
                raise ValueError(f"scales: expected positive numbers (multiples of the residual norm), got {scale!r}")
        if len(set(scales)) != len(scales):
            raise ValueError(f"scales: expected distinct values, got {scales}")
        object.__setattr__(self, "scales", tuple(float(scale) for scale in scales))
        if not isinstance(self.placeholder, str) or not self.placeholder.strip():
            raise ValueError(f"placeholder: expected a non-blank string, got {self.placeholder!r}")
        if not isinstance(self.template, str) or self.template.count(PLACEHOLDER_FIELD) != 1:
            raise ValueError(f"template: expected exactly one {PLACEHOLDER_FIELD} field, got {self.template!r}")
        if not isinstance(self.answer_prefix, str):
            raise TypeError(f"answer_prefix: expected a string, got {type(self.answer_prefix).__name__}")
        whole_number(self.max_new_tokens, "max_new_tokens", minimum=1)
        whole_number(self.batch_rows, "batch_rows", minimum=1)


@dataclass(frozen=True)
class SelfExplanation:
    """One direction at one scale: the explanation and its two scores."""

    name: str
    scale: float
    text: str
    self_similarity: float
    entropy: float


@dataclass(frozen=True)
class SelfExplanationTable:
    """Every direction at every scale (`rows`, directions in input order, scales ascending within one),
    the suggested scale per direction (`best`), where the vectors went (`hook`) and the residual norm
    a scale of 1 stands for (`unit_norm`)."""

    rows: tuple[SelfExplanation, ...]
    best: dict[str, float]
    hook: str = ""
    unit_norm: float = 1.0

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(row.name for row in self.rows))

    def for_name(self, name: str) -> list[SelfExplanation]:
        rows = [row for row in self.rows if row.name == name]
        if not rows:
            raise ValueError(f"name: expected one of {self.names}, got {name!r}")
        return rows

    def best_row(self, name: str) -> SelfExplanation:
        return next(row for row in self.for_name(name) if row.scale == self.best[name])

    def __repr__(self) -> str:
        best = ", ".join(f"{name}: {scale:g}" for name, scale in list(self.best.items())[:4])
        return clip(f"SelfExplanationTable({len(self.names)} directions × {len(self.rows) // max(len(self.names), 1)} "
                    f"scales at {self.hook or '?'}, suggested scales {best}" + (", …" if len(self.best) > 4 else "") + ")")

    def _repr_html_(self) -> str:
        rows = [(row.name + (" ★" if self.best.get(row.name) == row.scale else ""), row.scale, row.self_similarity,
                 row.entropy, row.text) for row in self.rows]
        return details(repr(self), html_table(("direction", "scale", "self-similarity", "entropy", "explanation"), rows))

    def to_frame(self) -> Any:
        """One row per direction × scale, with a `suggested` column (a pandas DataFrame)."""
        return frame([{**asdict(row), "suggested": self.best.get(row.name) == row.scale} for row in self.rows])

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(row) for row in self.rows], "best": dict(self.best), "hook": self.hook,
                "unit_norm": self.unit_norm}

    def markdown(self) -> str:
        """One line per direction and scale; the suggested scale's line is marked with ★."""
        lines = ["| direction | scale | self-sim | entropy | explanation |", "|---|---:|---:|---:|---|"]
        for row in self.rows:
            mark = " ★" if self.best.get(row.name) == row.scale else ""
            text = " ".join(row.text.split()).replace("|", "\\|")
            lines.append(f"| {row.name}{mark} | {row.scale:g} | {row.self_similarity:.3f} | {row.entropy:.2f} | {text} |")
        return "\n".join(lines)


def suggest_scale(
    scales: Sequence[float], self_similarity: Sequence[float], entropy: Sequence[float]
) -> float:
    """The scale with the lowest entropy among those with positive self-similarity (all, if none has).

    Entropy is the quality signal: over a sweep it is U-shaped, high where the patch is too weak to
    be read (the layers after it wash it out) or too strong (the model reads noise), lowest where
    the model is sure what the word means. Self-similarity is no use for ranking, as it grows with
    the scale almost monotonically (a larger patch dominates the residual up to the last layer);
    it serves as a gate: at or below zero the direction did not reach the last layer at all, and a
    confident answer there is about something else. Ties go to the smaller scale.
    """
    if not len(scales) == len(self_similarity) == len(entropy) or not scales:
        raise ValueError("scales, self_similarity, entropy: expected equal non-empty lengths")
    candidates = [i for i, value in enumerate(self_similarity) if value > 0] or list(range(len(scales)))
    best = min(candidates, key=lambda i: (entropy[i], scales[i]))
    return float(scales[best])


def explanation_prompt(model: HookedModel, config: SelfExplainConfig) -> tuple[str, list[int]]:
    """The formatted explanation prompt and the token index of every placeholder in it.

    Placeholders are found by character span (token offsets), not by token id, so the same string
    elsewhere in the template (a system prompt, say) is never taken for one.
    """
    user = config.template.replace(PLACEHOLDER_FIELD, config.placeholder)
    answer = config.answer_prefix.replace(PLACEHOLDER_FIELD, config.placeholder)
    head = format_chat(model, user)
    prompt = head + answer
    user_start = head.rfind(user)
    if user_start < 0:
        raise ValueError(f"template: the model's chat template does not keep the user turn verbatim ({user!r})")
    spans = [user_start + _field_starts(config.template, config.placeholder)[0]]
    spans += [len(head) + start for start in _field_starts(config.answer_prefix, config.placeholder)]
    offsets = _token_offsets(model, prompt)
    positions = []
    for start in spans:
        stop = start + len(config.placeholder)
        covering = [i for i, (a, b) in enumerate(offsets) if a < stop and b > start and b > a]
        pieces = [prompt[offsets[i][0] : offsets[i][1]] for i in covering]
        if len(covering) != 1 or pieces[0].strip() != config.placeholder.strip():
            raise ValueError(
                f"placeholder: expected {config.placeholder!r} to be exactly one token where it stands in the prompt, "
                f"got the tokens {pieces} (choose a placeholder the tokenizer keeps whole, e.g. 'X')"
            )
        positions.append(covering[0])
    if len(set(positions)) != len(positions):
        raise ValueError(f"placeholder: two occurrences of {config.placeholder!r} share one token")
    return prompt, positions


def _field_starts(text: str, placeholder: str) -> list[int]:
    """Character offsets of each `{placeholder}` field once the fields are filled in."""
    parts = text.split(PLACEHOLDER_FIELD)
    starts, cursor = [], 0
    for part in parts[:-1]:
        cursor += len(part)
        starts.append(cursor)
        cursor += len(placeholder)
    return starts


def _token_offsets(model: HookedModel, prompt: str) -> list[tuple[int, int]]:
    """The character span of each token of the prompt as `interp.chat.tokenize` makes it."""
    tokenizer = tokenizer_of(model)
    ids = tokenize(tokenizer, prompt).input_ids[0].tolist()
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("model: finding the placeholder needs a fast tokenizer (one that reports character offsets)")
    for add_special in (False, True):  # whichever reproduces `tokenize`'s ids (a template may write its own BOS)
        encoded = tokenizer(prompt, add_special_tokens=add_special, return_offsets_mapping=True)
        if encoded["input_ids"] == ids:
            return [tuple(span) for span in encoded["offset_mapping"]]
    raise ValueError("model: the tokenizer's offsets do not match interp.chat.tokenize; cannot place the placeholder")


def direction_matrix(
    model: HookedModel, directions: Mapping[str, Direction | Tensor], *, allow_other_model: bool = False
) -> tuple[list[str], Float[Tensor, "n_directions d_model"]]:
    """Names and unit vectors of `directions`, each checked for width, finiteness and a non-zero norm; a
    `Direction` as `Steer` checks it (its model, unless `allow_other_model`, and its layer's range)."""
    if not isinstance(directions, Mapping) or not directions:
        raise ValueError("directions: expected a non-empty mapping of name -> Direction or [d_model] tensor")
    width = d_model(model)
    names, vectors = [], []
    for name, direction in directions.items():
        argument = f"directions[{name!r}]"
        if not isinstance(name, str) or not name:
            raise ValueError(f"directions: expected non-empty string names, got {name!r}")
        if isinstance(direction, Direction):
            check_direction(direction, None if allow_other_model else model_name(model), width, n_layers(model),
                            argument=argument)
        vector = direction.vector if isinstance(direction, Direction) else direction
        finite_tensor(vector, argument)
        if vector.shape != (width,):
            raise ValueError(f"{argument}: expected shape [d_model={width}], got {tuple(vector.shape)}")
        vector = vector.detach().float().cpu()
        norm = vector.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError(f"{argument}: expected a finite, non-zero vector (its float32 norm is {float(norm)})")
        names.append(name)
        vectors.append(vector / norm)
    return names, torch.stack(vectors)


@torch.no_grad()
def patched_scores(
    model: HookedModel,
    prompt: str,
    layer: int,
    positions: Sequence[int],
    vectors: Float[Tensor, "n_rows d_model"],
    *,
    batch_rows: int = 32,
    progress: bool = False,
) -> tuple[Float[Tensor, "n_rows n_positions d_model"], Float[Tensor, "n_rows d_vocab"]]:
    """The final residual at `positions` and the last-position logits of `prompt`, row i with
    resid_pre of `layer` at `positions` replaced by `vectors[i]`; `batch_rows` rows per forward."""
    whole_number(batch_rows, "batch_rows", minimum=1)
    batch = tokenize(model, prompt, device=model_device(model))
    columns = torch.tensor(list(positions), device=model_device(model))
    finals: list[Tensor] = []
    logits: list[Tensor] = []

    def record(activation: Tensor, hook: Any) -> None:
        finals.append(activation[:, columns.to(activation.device)].float().cpu())

    for start in tqdm(range(0, vectors.shape[0], batch_rows), desc="self-explanation scores", disable=not progress,
                      leave=False):
        rows = vectors[start : start + batch_rows].to(model_device(model))

        def patch(activation: Tensor, hook: Any, rows: Tensor = rows) -> Tensor:
            patched = activation.clone()  # the input may be another module's output, kept for later use
            here = columns.to(activation.device)  # a model split over devices: this layer's device
            patched[:, here] = rows[:, None, :].to(activation.device, activation.dtype).expand(-1, here.numel(), -1)
            return patched

        # Every row is the same prompt, so there is no padding: one expanded batch per chunk of rows.
        chunk = TokenBatch(batch.input_ids.expand(rows.shape[0], -1), batch.attention_mask.expand(rows.shape[0], -1))
        hooks = [(hook_name(layer), patch), (hook_name(n_layers(model) - 1, "resid_post"), record)]
        logits.append(batch_last_logits(model, chunk, hooks).cpu())
    return torch.cat(finals), torch.cat(logits)


@torch.no_grad()
def residual_norm(model: HookedModel, prompt: str, layer: int) -> float:
    """Median norm of resid_pre at `layer` over the prompt's tokens, the first (an attention sink) left out."""
    norms: list[Tensor] = []

    def record(activation: Tensor, hook: Any) -> None:
        norms.append(activation[0, 1:].float().norm(dim=-1).cpu())

    batch_last_logits(model, tokenize(model, prompt, device=model_device(model)), [(hook_name(layer), record)])
    return float(norms[0].median())


def self_explain(
    model: HookedModel,
    directions: Mapping[str, Direction | Float[Tensor, "d_model"]],
    config: SelfExplainConfig = SelfExplainConfig(),
    *,
    progress: bool = True,
    allow_other_model: bool = False,
) -> SelfExplanationTable:
    """Explain every direction at every scale of `config.scales`, score each and suggest a scale.

    `directions` maps a name to a `Direction` or a bare `[d_model]` tensor (a MELBO vector, an SAE
    feature's `Dictionary.atoms[i]`); only its unit vector is used, and a `Direction`'s own layer is
    ignored: every vector is patched at `config.layer` (see `SelfExplainConfig`). The suggested scale
    per name is `suggest_scale`'s: the lowest entropy among the scales with positive self-similarity.
    A `Direction` of another model is refused unless `allow_other_model=True` (a bare tensor is not checked).
    """
    if not isinstance(config, SelfExplainConfig):
        raise TypeError(f"config: expected a SelfExplainConfig, got {type(config).__name__}")
    layer = check_layers(model, config.layer, "layer")[0]
    names, units = direction_matrix(model, directions, allow_other_model=allow_other_model)
    prompt, positions = explanation_prompt(model, config)
    unit_norm = residual_norm(model, prompt, layer)
    scales = sorted(config.scales)
    n = len(scales)
    # Row (direction d, scale s) = d * n + s: directions outermost, as the table lists them.
    factors = torch.tensor(scales, dtype=units.dtype) * unit_norm
    vectors = (units[:, None, :] * factors[None, :, None]).reshape(-1, units.shape[1])
    if not bool(torch.isfinite(vectors).all()):
        raise ValueError(f"scales: {max(scales):g} × the residual norm {unit_norm:.3g} overflows float32")
    finals, logits = patched_scores(model, prompt, layer, positions, vectors, batch_rows=config.batch_rows,
                                    progress=progress)
    # At the last placeholder: the one the answer is about, and the last the model reads before answering.
    self_similarity = torch.nn.functional.cosine_similarity(finals[:, -1], units.repeat_interleave(n, 0), dim=-1).tolist()
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = (-(log_probs.exp() * log_probs).sum(-1)).tolist()
    texts = generate_with_row_patches(model, prompt, hook_name(layer), positions, vectors, batch_rows=config.batch_rows,
                                      progress=progress, max_new_tokens=config.max_new_tokens)
    rows = tuple(
        SelfExplanation(name, scales[s], texts[d * n + s], self_similarity[d * n + s], entropy[d * n + s])
        for d, name in enumerate(names) for s in range(n)
    )
    best = {
        name: suggest_scale(scales, self_similarity[d * n : (d + 1) * n], entropy[d * n : (d + 1) * n])
        for d, name in enumerate(names)
    }
    return SelfExplanationTable(rows, best, hook_name(layer), unit_norm)


def plot_self_explanations(table: SelfExplanationTable, path: str | Path | None = None) -> Figure:
    """Self-similarity and entropy against scale, one line per direction, the suggested scale circled; saved as
    PNG when `path` is given."""
    import matplotlib.pyplot as plt

    from interp.plots import finish_figure

    if not isinstance(table, SelfExplanationTable) or not table.rows:
        raise ValueError("table: expected a SelfExplanationTable with at least one row")
    figure, (similarity_axis, entropy_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = {similarity_axis: "self-similarity (cosine, final layer)", entropy_axis: "entropy of first token (nats)"}
    ticks = sorted({row.scale for row in table.rows})
    for index, name in enumerate(table.names):
        rows = table.for_name(name)
        best = table.best_row(name)
        colour = f"C{index % 10}"
        for axis, score in ((similarity_axis, "self_similarity"), (entropy_axis, "entropy")):
            values = [getattr(row, score) for row in rows]
            axis.plot([row.scale for row in rows], values, marker="o", markersize=3.5, color=colour, label=name)
            axis.plot([best.scale], [getattr(best, score)], marker="o", markersize=11, fillstyle="none", color=colour)
    for axis, label in labels.items():
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
        axis.set_xlabel(f"scale (× residual norm {table.unit_norm:.3g} at {table.hook})")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    if len(table.names) > 1:
        entropy_axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.suptitle("Self-explanation: scores per scale (circled: suggested scale)")
    return finish_figure(figure, path)

