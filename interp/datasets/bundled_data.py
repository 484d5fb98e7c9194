"""The project's own data sets, shipped as package data in `interp/data/`, and their loaders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from interp.datasets.ab_pairs import ContrastPair, load_ab_pairs
from interp.datasets.instructions import Instruction, load_instructions
from interp.datasets.multiple_choice import MultipleChoice, load_multiple_choice
from interp.datasets.opinions import OpinionPrompt, load_opinion_prompts
from interp.datasets.truthfulqa import load_truthfulqa

DATA_DIR_ENV = "INTERP_DATA_DIR"


def bundled_data_dir() -> Path:
    """The folder of the project's bundled data: `$INTERP_DATA_DIR`, else the package's own `interp/data/`."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "data"  # interp/data, beside this subpackage


def bundled(name: str) -> Path:
    """The path of the bundled data file `name` (e.g. "sycophancy_ab_train.jsonl").

    The files ship as package data (`interp/data/`), in a wheel as in the source tree; a missing file
    is a FileNotFoundError saying where it was looked for (INTERP_DATA_DIR points elsewhere).
    """
    path = bundled_data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled data file {name!r} not found at {path}; it ships in the package's interp/data/ "
            f"folder (reinstall interp, or unset {DATA_DIR_ENV} if it points elsewhere)"
        )
    return path


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")


def load_bundled_sycophancy(split: Literal["train", "test"] = "train") -> list[ContrastPair]:
    """The project's sycophancy A/B pairs (`interp/data/sycophancy_ab_{split}.jsonl`)."""
    _check_choice("split", split, ("train", "test"))
    return load_ab_pairs(bundled(f"sycophancy_ab_{split}.jsonl"))


def load_bundled_instructions(
    kind: Literal["harmful", "harmless"] = "harmful", split: Literal["train", "val"] = "train"
) -> list[Instruction]:
    """The project's harmful or harmless instructions (`interp/data/{kind}_{split}.json`)."""
    _check_choice("kind", kind, ("harmful", "harmless"))
    _check_choice("split", split, ("train", "val"))
    return load_instructions(bundled(f"{kind}_{split}.json"))


def load_bundled_multiple_choice() -> list[MultipleChoice]:
    """The project's four-option general-knowledge questions (`interp/data/multiple_choice.csv`)."""
    return load_multiple_choice(bundled("multiple_choice.csv"), subject="general")


def load_bundled_truthfulqa(*, n_choices: int = 4, seed: int = 0) -> list[MultipleChoice]:
    """The project's small original questions in TruthfulQA's CSV format (`interp/data/truthfulqa_style.csv`)."""
    return load_truthfulqa(bundled("truthfulqa_style.csv"), n_choices=n_choices, seed=seed)


def load_bundled_opinion_prompts() -> list[OpinionPrompt]:
    """The project's open-ended "do you agree?" prompts (`interp/data/opinion_prompts.json`)."""
    return load_opinion_prompts(bundled("opinion_prompts.json"))
