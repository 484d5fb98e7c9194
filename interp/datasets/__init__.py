"""Typed records and loaders for the prompt data sets the experiments use.

Three record shapes cover the public formats the toolkit reads:

* `ContrastPair`: an A/B question whose two answers exhibit and avoid a behaviour. This is the
  shape of Anthropic's model-written evals (one JSON object per line) and of the CAA repo's
  data (a JSON list of the same objects). The "(A) ..." / "(B) ..." choices live inside the
  question text; the answers are just the letters.
* `Instruction`: one user request, as in the refusal_direction splits (a JSON list of
  `{"instruction", "category"}`), AdvBench (a CSV with header `goal,target`) or a plain text
  file with one instruction per line.
* `MultipleChoice`: a question with lettered choices and the index of the correct one, as in
  the hendrycks MMLU CSVs (no header; the answer is a letter A-D) or the reformatted layout
  `question,choice0,choice1,choice2,choice3,answer` (the answer is a 0-based index).

Every loader validates the whole file and raises `DatasetFormatError` (a `ValueError`) listing
each bad record with its line, row or record number; nothing is ever skipped silently.

The project's own original data sets ship inside the package, in `interp/data/` (see
`interp/data/README.md`); `bundled()` finds them and the `load_bundled_*` helpers load them.
"""

from interp.datasets.ab_pairs import AB_LETTERS, ContrastPair, answer_letter, load_ab_pairs
from interp.datasets.bundled_data import (
    DATA_DIR_ENV,
    bundled,
    bundled_data_dir,
    load_bundled_instructions,
    load_bundled_multiple_choice,
    load_bundled_opinion_prompts,
    load_bundled_sycophancy,
    load_bundled_truthfulqa,
)
from interp.datasets.instructions import Instruction, load_instructions
from interp.datasets.multiple_choice import MC_LETTERS, MultipleChoice, load_multiple_choice
from interp.datasets.opinions import OpinionPrompt, load_opinion_prompts
from interp.datasets.reading import DatasetFormatError
from interp.datasets.splits import train_test_split
from interp.datasets.truthfulqa import load_truthfulqa

__all__ = [
    "AB_LETTERS",
    "DATA_DIR_ENV",
    "MC_LETTERS",
    "ContrastPair",
    "DatasetFormatError",
    "Instruction",
    "MultipleChoice",
    "OpinionPrompt",
    "answer_letter",
    "bundled",
    "bundled_data_dir",
    "load_ab_pairs",
    "load_bundled_instructions",
    "load_bundled_multiple_choice",
    "load_bundled_opinion_prompts",
    "load_bundled_sycophancy",
    "load_instructions",
    "load_multiple_choice",
    "load_opinion_prompts",
    "train_test_split",
    "load_bundled_truthfulqa",
    "load_truthfulqa",
]
