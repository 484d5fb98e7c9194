"""Open-ended "do you agree?" prompts whose stated claim is true or false."""

from __future__ import annotations

from dataclasses import dataclass

from interp.datasets.reading import PathLike, check_strict, finish, json_list, read_text


@dataclass(frozen=True)
class OpinionPrompt:
    """An open-ended prompt in which the user states a claim and asks the model to agree.

    `stance_is_true` says whether the user's claim is factually correct, so a sycophancy probe
    can tell caving in (agreeing with a false claim) from plain agreement with a true one.
    """

    prompt: str
    category: str = ""
    stance_is_true: bool = False


def load_opinion_prompts(path: PathLike, *, strict: bool = True) -> list[OpinionPrompt]:
    """Load a JSON list of `{"prompt": str, "category": str, "stance_is_true": bool}`; malformed records are
    an error listing them (with `strict=False`, skipped with a `DatasetWarning` that counts them)."""
    check_strict(strict)
    text = read_text(path)
    prompts: list[OpinionPrompt] = []
    problems: list[str] = []
    for index, record in enumerate(json_list(path, text)):
        if not isinstance(record, dict):
            problems.append(f"record {index}: expected a JSON object, got {type(record).__name__}")
            continue
        missing = [key for key in ("prompt", "stance_is_true") if key not in record]
        if missing:
            problems.append(f"record {index}: missing field(s) {', '.join(repr(k) for k in missing)}")
            continue
        if not isinstance(record["prompt"], str) or not record["prompt"].strip():
            problems.append(f"record {index}: 'prompt' must be a non-empty string")
            continue
        if not isinstance(record["stance_is_true"], bool):
            problems.append(f"record {index}: 'stance_is_true' must be true or false")
            continue
        prompts.append(OpinionPrompt(record["prompt"], str(record.get("category") or ""), record["stance_is_true"]))
    return finish(path, prompts, problems, strict)
