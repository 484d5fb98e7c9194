"""An offline text corpus for SAE training: the model's own chat transcripts plus the bundled data.

No pretraining corpus ships offline, and an SAE should see the distribution our experiments feed
it (chat-formatted instructions and answers). Prompting a chat model with an *empty* user turn makes
it write a user-like instruction; answering those instructions gives the assistant side. Every
transcript is rendered in the model's chat template, so template tokens are covered too.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from interp._io import atomic_write_text
from interp._timing import log
from interp.chat import format_chat, tokenizer_of
from interp.hooked import HookedModel
from interp.runner import generate


def bundled_instructions() -> list[str]:
    """Every user-side text of the bundled datasets (instructions, A/B questions, MC questions, opinions)."""
    from interp import datasets

    texts: list[str] = []
    for name in ("harmful_train.json", "harmful_val.json", "harmless_train.json", "harmless_val.json"):
        texts += [record.instruction for record in datasets.load_instructions(datasets.bundled(name))]
    for name in ("sycophancy_ab_train.jsonl", "sycophancy_ab_test.jsonl"):
        texts += [pair.question for pair in datasets.load_ab_pairs(datasets.bundled(name))]
    texts += [question.question for question in datasets.load_multiple_choice(datasets.bundled("multiple_choice.csv"))]
    texts += [opinion.prompt for opinion in datasets.load_opinion_prompts(datasets.bundled("opinion_prompts.json"))]
    return [text for text in texts if text.strip()]


def generate_instructions(
    model: HookedModel,
    count: int,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> list[str]:
    """`count` sampled user-like instructions: the model's continuation of an empty user turn."""
    if count < 1:
        raise ValueError(f"count: expected >= 1, got {count}")
    prompt = format_chat(model, "")
    texts = generate(model, [prompt] * count, max_new_tokens=max_new_tokens, do_sample=True,
                     temperature=temperature, seed=seed, batch_size=batch_size, progress=progress)
    return [text.strip() for text in texts if text.strip()]


def build_corpus(
    model: HookedModel,
    n_tokens: int,
    *,
    instruction_tokens: int = 64,
    response_tokens: int = 160,
    batch_size: int = 64,
    seed: int = 0,
    include_bundled: bool = True,
    progress: bool = True,
) -> list[str]:
    """Chat transcripts (instruction + the model's sampled answer) until they hold `n_tokens` tokens.

    The bundled instructions come first (each once, answered by the model too), then rounds of
    model-written instructions; every round has its own seed, so the corpus is reproducible.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens: expected >= 1, got {n_tokens}")
    tokenizer = tokenizer_of(model)
    corpus: list[str] = []
    total = 0
    round_index = 0
    pending = bundled_instructions() if include_bundled else []
    bar = tqdm(total=n_tokens, desc="corpus tokens", unit="tok", disable=not progress)
    started = time.perf_counter()
    while total < n_tokens:
        # A round answers up to 4 batches, fewer when that already covers the tokens still needed.
        take = max(1, min(batch_size * 4, math.ceil((n_tokens - total) / (response_tokens + 48))))
        if not pending:
            pending = generate_instructions(model, take, max_new_tokens=instruction_tokens,
                                            batch_size=batch_size, seed=seed * 100_003 + round_index, progress=progress)
        instructions, pending = pending[:take], pending[take:]
        prompts = [format_chat(model, instruction) for instruction in instructions]
        answers = generate(model, prompts, max_new_tokens=response_tokens, do_sample=True, temperature=1.0,
                           seed=seed * 100_003 + round_index + 50_000, batch_size=batch_size, progress=progress)
        transcripts = [prompt + answer for prompt, answer in zip(prompts, answers)]
        counts = [len(ids) for ids in tokenizer(transcripts, add_special_tokens=False)["input_ids"]]
        corpus += transcripts
        total += sum(counts)
        bar.update(sum(counts))
        if round_index == 0 and progress and total < n_tokens:  # the estimate, once the first round has run
            rate = total / max(time.perf_counter() - started, 1e-9)
            log(f"corpus: {total:,} tokens at {rate:,.0f} tokens/s; about {(n_tokens - total) / rate / 60:,.1f} min "
                f"more for {n_tokens:,}")
        round_index += 1
    bar.close()
    return corpus


def save_corpus(texts: Sequence[str], path: str | Path) -> Path:
    """JSON lines of {"text": ...}, written atomically."""
    return atomic_write_text(Path(path), "".join(json.dumps({"text": text}) + "\n" for text in texts))


def load_corpus(path: str | Path, *, argument: str = "path") -> list[str]:
    """Texts from JSON lines with a "text" field, or from a plain text file (one document per line).

    A missing, binary, malformed or empty file is an error naming `argument` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{argument}: no corpus file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{argument}: {path} is not UTF-8 text (byte {error.start}): a binary file?") from None
    texts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            texts.append(record_text(line, f"{argument}: {path}:{number}"))
        else:
            texts.append(line)
    if not texts:
        raise ValueError(f"{argument}: {path} holds no texts")
    return texts


def record_text(line: str, where: str) -> str:
    """The "text" of one JSON-lines record, or an error starting with `where` (argument: file:line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f"{where}: expected an object with a string 'text' field")
    return record["text"]
