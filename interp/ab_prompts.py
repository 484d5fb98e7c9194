"""A/B questions put to a chat model: formats, option shuffling, and their tokens.

Prompt formats (`ABFormat`): a system instruction and an assistant prefix such as "My answer is (".
Tokenizers differ: Qwen's BPE has "(A" as one token, so after a bare "(" the letter "A" is a token the
model never saw in that place. `encode_letter_prompts` tokenizes every prompt with each letter appended
and takes, as the answer token, whatever single token the letter ends in (here "(A"), so a format is
scored at its natural tokenization.

Each prompt is cut into a head (run once, KV cached by `interp.runner.PromptCache`) and a tail shared by
every prompt, where steering starts: scoring an answer letter under steering is thus the first step of a
steered generation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from interp.chat import format_chat, tokenizer_of
from interp.datasets import ContrastPair, MultipleChoice
from interp.hooked import HookedModel

AB_LETTERS: tuple[str, str] = ("A", "B")

# ---------------------------------------------------------------------------------------------
# Prompt formats
# ---------------------------------------------------------------------------------------------

ANSWER_INSTRUCTION = "Answer the user's multiple-choice question with the letter of exactly one of the choices."


@dataclass(frozen=True)
class ABFormat:
    """How a lettered question is put to a chat model: an optional system prompt and an assistant prefix.

    `system=None` keeps the template's default system prompt. The answer letter follows
    `assistant_prefix` directly (e.g. "(" → "(A", "My answer is (" → "My answer is (A").
    """

    name: str = "bare"
    system: str | None = None
    assistant_prefix: str = "("

    def chat(self, model: HookedModel, question: str) -> str:
        """The question in the model's chat template, ready for the assistant's turn (no prefix)."""
        return format_chat(model, question, system=self.system)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Multiple-choice questions (A-D) scored at the letter after "Answer: (".
MC_FORMAT = ABFormat("answer", None, "Answer: (")

# Candidates for `choose_format`: the bare template as a new user would try it, a system instruction to
# answer with one letter, and an assistant prefix that makes the letter the natural next token.
CANDIDATE_FORMATS: tuple[ABFormat, ...] = (
    ABFormat("bare", None, "("),
    ABFormat("bare, 'My answer is ('", None, "My answer is ("),
    ABFormat("instructed", ANSWER_INSTRUCTION, "("),
    ABFormat("instructed, 'My answer is ('", ANSWER_INSTRUCTION, "My answer is ("),
)


# ---------------------------------------------------------------------------------------------
# Data checks and option shuffling
# ---------------------------------------------------------------------------------------------


def check_pairs(pairs: Sequence[ContrastPair], argument: str = "pairs") -> list[ContrastPair]:
    """Validate a list of A/B pairs; a clear ValueError naming `argument` otherwise."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise ValueError(f"{argument}: expected a list of ContrastPair, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError(f"{argument}: the dataset is empty; CAA needs at least one A/B pair")
    for index, pair in enumerate(pairs):
        if not isinstance(pair, ContrastPair):
            raise ValueError(
                f"{argument}[{index}]: expected a ContrastPair (load files with interp.datasets.load_ab_pairs), "
                f"got {type(pair).__name__}"
            )
    return list(pairs)


def letter_balance(pairs: Sequence[ContrastPair]) -> float:
    """Fraction of pairs whose matching answer is (A): 0.5 means the letter cannot carry the behaviour."""
    pairs = check_pairs(pairs)
    return sum(pair.matching_letter == "A" for pair in pairs) / len(pairs)


def mixed_matching_letters(pairs: Sequence[ContrastPair]) -> list[str] | None:
    """Each pair's matching letter when both letters occur (for `caa_vectors_from_activations`), else None."""
    letters = [pair.matching_letter for pair in check_pairs(pairs)]
    return letters if len(set(letters)) == 2 else None


_CHOICE_LINE = re.compile(r"^(?P<lead>[ \t]*)\((?P<letter>[AB])\)(?P<text>[^\n]*)$", re.MULTILINE)


def swap_options(pair: ContrastPair, argument: str = "pair") -> ContrastPair:
    """The same question with the texts of its "(A) ..." and "(B) ..." choice lines exchanged.

    The last "(A)" and "(B)" lines are the choices (a question may quote a letter earlier); each choice
    must sit on one line, as in Anthropic's and CAA's data.
    """
    lines = {m.group("letter"): m for m in _CHOICE_LINE.finditer(pair.question)}
    if set(lines) != {"A", "B"}:
        raise ValueError(f"{argument}: the question has no '(A) ...' and '(B) ...' choice lines to swap")
    first, second = sorted(lines.values(), key=lambda m: m.start())
    question = (
        pair.question[: first.start("text")]
        + second.group("text")
        + pair.question[first.end("text") : second.start("text")]
        + first.group("text")
        + pair.question[second.end("text") :]
    )
    return ContrastPair(question, pair.answer_not_matching, pair.answer_matching, pair.category)


def shuffle_options(pairs: Sequence[ContrastPair], seed: int) -> list[ContrastPair]:
    """Swap the (A)/(B) options of each pair with probability 1/2, deterministically for a `seed`."""
    pairs = check_pairs(pairs)
    rng = random.Random(seed)
    # Every pair is parsed (and a malformed one reported) whether or not it is drawn to swap.
    swapped = [swap_options(pair, f"pairs[{i}]") for i, pair in enumerate(pairs)]
    return [other if rng.random() < 0.5 else pair for pair, other in zip(pairs, swapped)]


# ---------------------------------------------------------------------------------------------
# Tokens: the cached head of each prompt, the shared tail that steering touches, the answer tokens
# ---------------------------------------------------------------------------------------------


Cut = Literal["last", "template"]


@dataclass(frozen=True)
class SplitPrompts:
    """Prompts cut into a per-prompt head (run once, KV cached) and a tail shared by every prompt.

    With `cut="last"` the tail is the prompt's last token: where `Steer(positions="new")` starts in
    generation, so scoring the next token under steering is the first step of a steered generation.
    With `cut="template"` the tail is the chat template's last token plus the assistant prefix (used to
    compare prefixes on one cached pass). `answer_ids` are the tokens scored after the tail (the letters
    A, B, ..., or empty for open-ended prompts).
    """

    heads: list[list[int]]
    tail: list[int]
    answer_ids: list[int] = field(default_factory=list)
    answers: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.heads)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` as `interp.chat.tokenize` makes them.

    Args:
        tokenizer: an HF tokenizer.
        text: a prompt, usually already in the model's chat template.

    Returns:
        The ids (a list of ints); special tokens are added only when the text does not already start with
        the tokenizer's BOS (a template that writes its own BOS gets no second one).
    """
    # As interp.chat.tokenize: special tokens only when the template did not write its own BOS.
    bos = getattr(tokenizer, "bos_token", None)
    return list(tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"])


def _cut(tokenizer: Any, chat: str, stem: list[int], cut: Cut, where: str) -> tuple[list[int], list[int]]:
    """(head, tail) of the prompt tokens `stem`, whose text starts with the chat-template text `chat`."""
    if cut == "last":
        if len(stem) < 2:
            raise ValueError(f"{where}: the prompt has fewer than two tokens")
        return stem[:-1], stem[-1:]
    if cut != "template":
        raise ValueError(f"cut: expected 'last' or 'template', got {cut!r}")
    chat_ids = encode_text(tokenizer, chat)
    at = len(chat_ids) - 1
    if len(stem) <= at or stem[:at] != chat_ids[:at]:
        raise ValueError(
            f"{where}: the assistant prefix merges with the chat template's tokens, so the prompt cannot be "
            "cut at the template's end; use cut='last' or a prefix that starts a new token"
        )
    return stem[:at], stem[at:]


def _shared(value: list[int], seen: list[int] | None, what: str, where: str) -> list[int]:
    if seen is not None and value != seen:
        raise ValueError(f"{where}: {what} tokenizes differently from the first prompt's; cannot batch them")
    return value


def split_chat_prompts(
    model: HookedModel, users: Sequence[str], *, system: str | None = None, assistant_prefix: str = "",
    cut: Cut = "last", argument: str = "prompts",
) -> SplitPrompts:
    """Open-ended prompts in the chat template, cut for `PromptCache` (no answer tokens)."""
    if len(users) == 0:
        raise ValueError(f"{argument}: expected at least one prompt")
    tokenizer = tokenizer_of(model)
    heads, tail = [], None
    for index, user in enumerate(users):
        where = f"{argument}[{index}]"
        chat = format_chat(model, user, system=system)
        head, this_tail = _cut(tokenizer, chat, encode_text(tokenizer, chat + assistant_prefix), cut, where)
        heads.append(head)
        tail = _shared(this_tail, tail, "the prompt's end", where)
    return SplitPrompts(heads, tail)


def encode_letter_prompts(
    model: HookedModel, questions: Sequence[str], fmt: ABFormat, letters: Sequence[str] = AB_LETTERS, *,
    cut: Cut = "last", argument: str = "questions",
) -> SplitPrompts:
    """Lettered questions in `fmt`, cut for `PromptCache`, with the token each answer letter ends in.

    For every question, `chat + prefix + letter` must differ between letters only in its last token
    (that token is the answer: "A" after SmolLM2's "(", the merged "(A" on Qwen); otherwise a ValueError.
    """
    if len(questions) == 0:
        raise ValueError(f"{argument}: the dataset is empty")
    if len(set(letters)) != len(letters) or len(letters) < 2:
        raise ValueError(f"letters: expected at least two distinct letters, got {list(letters)}")
    tokenizer = tokenizer_of(model)
    heads: list[list[int]] = []
    tail: list[int] | None = None
    answer_ids: list[int] | None = None
    for index, question in enumerate(questions):
        where = f"{argument}[{index}]"
        chat = fmt.chat(model, question)
        with_letters = [encode_text(tokenizer, chat + fmt.assistant_prefix + letter) for letter in letters]
        stem = with_letters[0][:-1]
        if any(ids[:-1] != stem for ids in with_letters):
            raise ValueError(
                f"{where}: the answer letters {list(letters)} do not each end in a single token after "
                f"the prefix {fmt.assistant_prefix!r}; choose another ABFormat.assistant_prefix"
            )
        ids = [ids_[-1] for ids_ in with_letters]
        if len(set(ids)) != len(ids):
            raise ValueError(
                f"letters: {list(letters)} tokenize to the same token after {fmt.assistant_prefix!r} "
                "(is the letter in the tokenizer's vocabulary?)"
            )
        head, this_tail = _cut(tokenizer, chat, stem, cut, where)
        heads.append(head)
        tail = _shared(this_tail, tail, "the prompt's end", where)
        answer_ids = _shared(ids, answer_ids, "the answer letters", where)
    return SplitPrompts(heads, tail, answer_ids, tuple(letters))


# ---------------------------------------------------------------------------------------------


def multiple_choice_question(question: MultipleChoice) -> str:
    """A question and its lettered choices in the layout of the A/B data ("Choices:\\n (A) ...\\n\\nAnswer:")."""
    letters = "ABCDEFGHIJ"
    choices = "\n".join(f" ({letters[i]}) {choice}" for i, choice in enumerate(question.choices))
    return f"{question.question}\n\nChoices:\n{choices}\n\nAnswer:"
