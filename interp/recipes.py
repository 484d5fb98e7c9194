"""One-call recipes for the common paths, built on the existing pieces.

- `steering_vector(model, positive, negative, layers=...)`: a `SteeringVectors` from two lists of requests
  (chat-formatted here, read at the last token: `interp.caa.contrast_vectors`) or from A/B pairs
  (`interp.caa.build_steering_vectors`), with one aggregator of `interp.aggregators`, in one call. The result is
  exactly what those calls give.
- `compare(model, prompt, interventions)`: the baseline and the intervened completion of one prompt side by side,
  and how the top next tokens change (TransformerLens's `test_prompt`, with interventions). Printed as a table,
  shown as HTML in a notebook.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from interp._checks import whole_number
from interp.ab_prompts import CANDIDATE_FORMATS, ABFormat
from interp.aggregators import AGGREGATORS
from interp.caa import build_steering_vectors, contrast_vectors
from interp.chat import format_chat, format_chats, prompt_list, tokenize
from interp.datasets import ContrastPair
from interp.hooked import HookedModel, check_layers
from interp.runner import batch_logits, generate
from interp.steering import Intervention, apply_all
from interp.vectors import SteeringVectors


def steering_vector(
    model: HookedModel,
    positive: Sequence[str] | Sequence[ContrastPair],
    negative: Sequence[str] | None = None,
    *,
    layers: int | Sequence[int],
    aggregator: str = "mean_difference",
    chat: bool = True,
    fmt: ABFormat = CANDIDATE_FORMATS[0],
    position: int = -1,
    site: str = "resid_pre",
    batch_size: int = 16,
    progress: bool = True,
) -> SteeringVectors:
    """One steering vector per layer of `layers`, from `positive` vs `negative` requests or from A/B pairs.

    Two lists of strings: each is rendered with the model's chat template (`chat=False`: they are already formatted
    prompts) and read at token `position` at `site`; the vectors are `contrast_vectors(...)[aggregator]`. A/B pairs
    (`positive` a list of `interp.datasets.ContrastPair`, `negative` None): shown in the A/B format `fmt` and read at
    the answer letter as CAA does; the vectors are `build_steering_vectors(...)[aggregator]`. Use the result with `Steer(vectors, scale)`.
    """
    if aggregator not in AGGREGATORS:
        raise ValueError(f"aggregator: expected one of {sorted(AGGREGATORS)}, got {aggregator!r}")
    chosen = check_layers(model, layers, "layers")
    if negative is None:
        if isinstance(positive, str) or not all(isinstance(pair, ContrastPair) for pair in positive):
            raise ValueError("negative: needed unless positive is a list of A/B pairs (interp.datasets.ContrastPair)")
        return build_steering_vectors(model, list(positive), fmt, layers=chosen, aggregators=[aggregator],
                                      batch_size=batch_size, progress=progress)[aggregator]
    sides = prompt_list(positive, "positive"), prompt_list(negative, "negative")
    if AGGREGATORS[aggregator].paired and len(sides[0]) != len(sides[1]):
        raise ValueError(f"negative: {aggregator!r} pairs row i of positive with row i of negative; got "
                         f"{len(sides[0])} and {len(sides[1])} prompts")
    if chat:
        sides = format_chats(model, sides[0]), format_chats(model, sides[1])
    return contrast_vectors(model, *sides, layers=chosen, aggregators=[aggregator], position=position, site=site,
                            batch_size=batch_size, progress=progress)[aggregator]


@dataclass(frozen=True)
class TokenChange:
    """A candidate next token and its probability without and with the interventions."""

    token: str
    baseline: float
    intervened: float


@dataclass(frozen=True)
class Comparison:
    """One prompt's completion without (`baseline`) and with (`intervened`) the interventions, and the top next
    tokens of either side (`tokens`, the intervened side's order first)."""

    prompt: str
    baseline: str
    intervened: str
    tokens: tuple[TokenChange, ...]
    interventions: tuple[str, ...]

    def __str__(self) -> str:
        width = 38
        left = textwrap.wrap(self.baseline.strip(), width) or [""]
        right = textwrap.wrap(self.intervened.strip(), width) or [""]
        rows = [f"{'baseline':<{width}} | intervened: {', '.join(self.interventions) or 'none'}", "-" * (2 * width + 3)]
        rows += [f"{a:<{width}} | {b}" for a, b in zip(left + [""] * (len(right) - len(left)),
                                                       right + [""] * (len(left) - len(right)))]
        rows += ["", f"{'next token':<20} {'baseline':>9} {'intervened':>11} {'change':>8}"]
        rows += [f"{change.token!r:<20} {change.baseline:>9.3f} {change.intervened:>11.3f} "
                 f"{change.intervened - change.baseline:>+8.3f}" for change in self.tokens]
        return "\n".join(rows)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        def cell(text: str) -> str:
            return f"<td style='vertical-align:top;white-space:pre-wrap'>{html.escape(text.strip())}</td>"

        tokens = "".join(f"<tr><td><code>{html.escape(repr(c.token))}</code></td><td>{c.baseline:.3f}</td>"
                         f"<td>{c.intervened:.3f}</td><td>{c.intervened - c.baseline:+.3f}</td></tr>" for c in self.tokens)
        label = html.escape(", ".join(self.interventions) or "none")
        return (f"<table><tr><th>baseline</th><th>intervened: {label}</th></tr><tr>{cell(self.baseline)}"
                f"{cell(self.intervened)}</tr></table><table><tr><th>next token</th><th>baseline</th>"
                f"<th>intervened</th><th>change</th></tr>{tokens}</table>")


def compare(
    model: HookedModel,
    prompt: str,
    interventions: Intervention | Sequence[Intervention],
    *,
    max_new_tokens: int = 32,
    top_k: int = 5,
    chat: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
    progress: bool = True,
) -> Comparison:
    """`prompt` completed without and with `interventions` (all active together), and the top `top_k` next tokens
    of each side with both probabilities. `chat=False`: the prompt is already formatted. The baseline is exactly
    `generate(model, [formatted prompt], max_new_tokens=..., ...)`; sampling uses the same `seed` on both sides.
    `progress`: a bar on a generation that runs past a couple of seconds."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt: expected a non-blank string, got {prompt!r}")
    listed = [interventions] if callable(getattr(interventions, "hooks", None)) else list(interventions)
    for index, intervention in enumerate(listed):
        if not callable(getattr(intervention, "hooks", None)):
            raise TypeError(f"interventions[{index}]: expected an intervention (Steer, Ablate, Clamp, Splice, ...), got "
                            f"{type(intervention).__name__}")
    whole_number(max_new_tokens, "max_new_tokens", minimum=1)
    whole_number(top_k, "top_k", minimum=1)
    with apply_all(model, *listed):  # each intervention checks itself against the model, before any forward
        pass
    text = format_chat(model, prompt) if chat else prompt
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
                               "seed": seed, "progress": progress}
    intervened = generate(model, [text], interventions=listed, **options)[0]
    baseline = generate(model, [text], **options)[0]
    batch = tokenize(model, [text])
    before, after = (batch_logits(model, batch, used, keep_last=1, prompt_length=batch.input_ids.shape[1])[0, -1]
                     .float().softmax(-1) for used in ([], listed))  # the logits the first new token is chosen from
    order = list(dict.fromkeys(after.topk(top_k).indices.tolist() + before.topk(top_k).indices.tolist()))
    tokenizer = model.tokenizer
    tokens = tuple(TokenChange(tokenizer.decode([i]), float(before[i]), float(after[i])) for i in order)
    return Comparison(prompt, baseline, intervened, tokens, tuple(_label(i) for i in listed))


def _label(intervention: Any) -> str:
    """A short name of an intervention: its class and scale, if it has one."""
    scale = getattr(intervention, "scale", None)
    return type(intervention).__name__ + (f"({scale:g})" if isinstance(scale, (int, float)) else "")

