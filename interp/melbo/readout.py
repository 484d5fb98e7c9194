"""What the learned vectors do: steered generations, labels from text features, next-token probabilities."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from interp.chat import tokenize
from interp.directions import Direction
from interp.hooked import HookedModel, d_model, model_device, n_layers
from interp.models import model_name
from interp.runner import batch_logits, generate_with_row_biases
from interp.steering import HookIntervention

# --------------------------------------------------------------------------------------------------
# Using the vectors


def _common_hook(vectors: Sequence[Direction]) -> str:
    names = {direction.hook_name for direction in vectors}
    if len(names) != 1:
        raise ValueError(f"vectors: expected directions at one hook point, got {sorted(names)}")
    return names.pop()


def steered_generations(
    model: HookedModel,
    prompts: Sequence[str],
    vectors: Sequence[Direction],
    scales: Sequence[float],
    *,
    max_new_tokens: int = 48,
    n_samples: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    batch_rows: int = 32,
    progress: bool = True,
) -> list[list[list[list[str]]]]:
    """Completions with `scale × vector` added at every position: `[vector][scale][prompt][sample]`.

    All (vector, scale, prompt, sample) rows are generated together in batches of `batch_rows`, each
    row with its own bias (a per-row hook), instead of one `generate` call per vector and scale.
    Scale 0 is the unsteered model.
    """
    prompts, vectors, scales = list(prompts), list(vectors), [float(s) for s in scales]
    if not prompts:
        raise ValueError("prompts: expected a non-empty list of prompts, got an empty list")
    if not vectors:
        raise ValueError("vectors: expected at least one Direction")
    if not scales:
        raise ValueError("scales: expected at least one scale")
    if n_samples < 1:
        raise ValueError(f"n_samples: expected >= 1, got {n_samples}")
    name = _common_hook(vectors)
    for direction in vectors:
        direction.check_compatible(model_name(model), d_model(model), n_layers(model))
    rows = [
        (v, s, p, k) for v in range(len(vectors)) for s in range(len(scales))
        for p in range(len(prompts)) for k in range(n_samples)
    ]
    matrix = torch.stack([direction.vector for direction in vectors])
    biases = torch.stack([scales[s] * matrix[v] for v, s, _, _ in rows])
    outputs = generate_with_row_biases(
        model, [prompts[p] for _, _, p, _ in rows], name, biases, batch_rows=batch_rows, progress=progress,
        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, seed=seed,
    )
    texts = dict(zip(rows, outputs))
    return [
        [[[texts[(v, s, p, k)] for k in range(n_samples)] for p in range(len(prompts))] for s in range(len(scales))]
        for v in range(len(vectors))
    ]


def sparse_reconstruction(
    direction: Direction, atoms: Float[Tensor, "n_atoms d_model"], k: int, method: str = "ito", **kwargs: Any
) -> Direction:
    """`direction` reconstructed from k atoms of a dictionary (e.g. SAE decoder rows at its layer),
    via `interp.sparse.sparse_code`; the returned `Direction` records features, coefficients and
    `meta["cosine_to_parent"]`. Atoms must be unit-norm rows (normalise SAE decoders first)."""
    from interp.sparse import reconstruction_direction, sparse_code

    code = sparse_code(direction.vector[None].to(atoms.device), atoms, k, method=method, **kwargs)
    return reconstruction_direction(code, direction)


# --------------------------------------------------------------------------------------------------
# Labelling completions by simple text features

REFUSAL = re.compile(
    r"\b(I can(?:'|no)t|I cannot|I'm sorry|I am sorry|I apologi[sz]e|I'm not able|I am not able|"
    r"I won't|As an AI|I'm unable|I am unable)", re.IGNORECASE,
)
LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.MULTILINE)
DIGIT_SEPARATOR = re.compile(r"(?<=\d)[,\s](?=\d)")


def text_features(text: str, *, answer: str | None = None, word: str = "First") -> dict[str, bool]:
    """Simple, explainable features of a completion, used to label and cluster vectors.

    `symbols`: over 30% of the visible characters are neither letters nor digits. `degenerate`: at
    least 40 characters that zlib compresses below 40% (loops like "the the the"). `no_digits`: no
    number at all (off topic, for an arithmetic prompt).
    `gives_product`: states a number of 6+ digits (an attempt at a large product); `correct_answer`
    (when `answer` is given): states exactly that number, digit separators ignored.
    """
    stripped = text.strip()
    raw = stripped.encode()
    numbers = re.findall(r"\d+", DIGIT_SEPARATOR.sub("", text))
    visible = [c for c in stripped if not c.isspace()]
    features = {
        "empty": not stripped,
        "starts_with_symbol": bool(stripped) and not stripped[0].isalnum(),
        f"contains_{word}": bool(re.search(rf"\b{re.escape(word)}\b", text)),
        "refuses": bool(REFUSAL.search(text)),
        "list": len(LIST_LINE.findall(text)) >= 2,
        "code": "```" in text or bool(re.search(r"^\s*(def |import |print\(|for .* in )", text, re.MULTILINE)),
        "non_ascii": bool(stripped) and sum(ord(c) > 127 for c in stripped) / len(stripped) > 0.2,
        "symbols": bool(visible) and sum(not c.isalnum() for c in visible) / len(visible) > 0.3,
        "degenerate": len(raw) >= 40 and len(zlib.compress(raw, 9)) / len(raw) < 0.4,
        "no_digits": bool(stripped) and not numbers,
        "mentions_ai": bool(re.search(r"\b(AI|assistant|language model)\b", text)),
        "has_equation": bool(re.search(r"\d\s*[×x*]\s*\d|=", text)),
        "gives_product": any(len(number) >= 6 for number in numbers),
    }
    if answer is not None:
        digits = re.sub(r"\D", "", answer)
        features["correct_answer"] = bool(digits) and digits in numbers
    return features


def label_from_features(feature_rows: Sequence[dict[str, bool]], threshold: float = 0.5) -> str:
    """A label listing the features present in at least `threshold` of the rows ("other" if none)."""
    if not feature_rows:
        return "other"
    names = list(feature_rows[0])
    present = [name for name in names if sum(row[name] for row in feature_rows) / len(feature_rows) >= threshold]
    return "+".join(present) if present else "other"


def word_token_ids(tokenizer: Any, word: str) -> list[int]:
    """First token of the word as it may start a completion: bare or after a space, as given or lower-case."""
    variants = {word, " " + word, word.lower(), " " + word.lower()}
    return sorted({tokenizer.encode(variant, add_special_tokens=False)[0] for variant in variants})


@torch.no_grad()
def next_token_probability(
    model: HookedModel, prompts: Sequence[str], vectors: Sequence[Direction], scales: Sequence[float], token_ids: Sequence[int]
) -> Float[Tensor, "n_vectors n_scales"]:
    """P(the first completion token is one of `token_ids`) under `scale × vector` at every position,
    averaged over prompts; all (vector, scale, prompt) rows in one forward pass."""
    prompts, vectors, scales = list(prompts), list(vectors), [float(s) for s in scales]
    if not prompts or not vectors or not scales or not token_ids:
        raise ValueError("prompts, vectors, scales, token_ids: expected non-empty sequences")
    name = _common_hook(vectors)
    device = model_device(model)
    matrix = torch.stack([direction.vector for direction in vectors]).to(device)
    biases = torch.stack([scale * matrix[v] for v in range(len(vectors)) for scale in scales for _ in prompts])
    batch = tokenize(model, [prompt for _ in vectors for _ in scales for prompt in prompts], device=device)

    def add(activation: Tensor, hook: Any) -> Tensor:
        return activation + biases[:, None, :].to(activation.device, activation.dtype)

    logits = batch_logits(model, batch, [HookIntervention([(name, add)])], keep_last=1)
    probabilities = logits[:, -1].float().softmax(-1)[:, list(token_ids)].sum(-1)
    return rearrange(probabilities, "(v s p) -> v s p", v=len(vectors), s=len(scales)).mean(-1).cpu()
