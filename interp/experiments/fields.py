"""What each experiment setting means, one line a field, for `interp reproduce NAME --help`.

A field's meaning is its line in `MEANINGS` (a field means the same in every experiment that has it, as in
`interp.experiments.checks`) followed by the comment on its line in the config class, or else the comment block
just above it (what that experiment says of it). `ALIASES` maps an old setting name to its new one: it still works, with a
DeprecationWarning.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import sys
import tokenize
import warnings
from collections.abc import Collection
from typing import Any

from interp.experiments.checks import settings_of

ALIASES: dict[str, str] = {"sae_path": "dictionary"}  # old name -> the one name every experiment uses

MEANINGS: dict[str, str] = {
    "model": "the model: a registry name (interp models), a local HF folder, a .gguf file or a hub name",
    "device": "where the model runs (cpu, cuda, cuda:1, mps); None: a GPU if there is one, else the CPU",
    "seed": "random seed: every experiment is deterministic on the CPU for a given seed",
    "batch_size": "prompts per forward pass",
    "max_new_tokens": "tokens generated per completion",
    "layers": "layers (TransformerLens block indices; negative: from the end) to build and steer at",
    "layer": "the layer (resid_pre of this block) the vectors and features live at",
    "source_layer": "the layer whose input MELBO's vectors are added to",
    "target_layer": "the layer whose output change MELBO maximises",
    "radius": "the norm R of each MELBO vector",
    "lr": "learning rate",
    "mode": "parallel or sequential learning of the vectors",
    "scales": "scales of the learned vectors in the greedy generations",
    "screen_prompts": "harmful prompts that screen every candidate first",
    "induce_refusal_threshold": "adding a candidate must raise harmless refusal scores above this",
    "svd_layers": "layers whose weight differences are decomposed",
    "refusal_phrases": "phrases that mark a completion as a refusal",
    "cloze_multipliers": "multipliers of the free-text (cloze) factual accuracy",
    "behaviour_methods": "methods whose reconstructions are steered with",
    "small_k": "the largest k that counts as 'a few features'",
    "harmless_train": "a file of harmless training instructions (JSON, JSONL, CSV or text); default: the bundled ones",
    "harmful_eval": "a file of held-out harmful instructions; default: the bundled ones",
    "harmless_eval": "a file of held-out harmless instructions; default: the bundled ones",
    "n_train_harmless": "harmless training prompts (a seeded subset; all, if the file has fewer)",
    "n_eval_harmful": "held-out harmful prompts evaluated",
    "n_eval_harmless": "held-out harmless prompts evaluated",
    "n_select_harmless": "harmless prompts that score the candidate directions",
    "screen_keep": "candidates kept after screening, then scored on every selection prompt",
    "score_all": "compute the KL and addition scores of every eligible candidate, not only until one is chosen",
    "filter_new_tokens": "tokens generated greedily to keep only training prompts the model refuses / complies with",
    "kl_threshold": "a candidate is eligible only if ablating it moves harmless next-token distributions by KL below this",
    "prune_layer_fraction": "candidates in the last fraction of the layers are discarded",
    "protect_first_token": "project every candidate off the first token's activations (the attention sink)",
    "subtract_multiplier": "activation subtraction removes this many times the direction",
    "n_loss_texts": "harmless completions on which the ordinary-text loss is measured",
    "svd_weights": "weight matrices whose difference (base → orthogonalised) is decomposed by SVD",
    "svd_k": "top singular vectors compared with the direction",
    "quantize_bits": "re-quantise the orthogonalised weights at these bit widths and recover the direction again",
    "prompt": "the prompt MELBO learns its vectors on",
    "n_vectors": "MELBO vectors learned",
    "steps": "gradient-ascent steps per vector",
    "sweep_radii": "vector norms R tried when choosing the radius",
    "sweep_steps": "ascent steps per radius in that sweep",
    "temperature": "sampling temperature of the sampled completions",
    "word": "the word whose rate in steered completions is plotted against the scale",
    "word_scales": "scales (× the learned vector) for the word plot",
    "sae_k": "features in the SAE reconstruction of the target-layer vector",
    "multipliers": "steering multipliers swept",
    "generation_multipliers": "multipliers of the steered open-ended generations",
    "n_generation_prompts": "prompts generated from at each generation multiplier",
    "test_fraction": "fraction of the questions held out for testing (selection uses the rest)",
    "top_k": "features kept per ranking (best on the training questions)",
    "n_random": "random directions as a chance baseline",
    "n_bootstrap": "bootstrap resamples for the confidence intervals",
    "probe_l2": "L2 penalty of the linear probes",
    "demo_samples": "sampled answers per pair in the best-of-n demo",
    "demo_lambdas": "probe-penalty weights λ of the best-of-n demo",
    "min_refusal_rate": "fit a refusal direction only if the model refuses at least this fraction of harmful prompts",
    "ks": "numbers of features k of the reconstructions",
    "methods": "sparse-coding methods compared (ito, omp, fista, fista_signed, encdiff, ...)",
    "behaviour_ks": "k values whose reconstructions are steered with (a subset of ks)",
    "n_format_pairs": "training pairs on which the A/B prompt format is chosen",
    "fit_refusal": "fit a refusal direction when none is given or found beside the output",
    "n_examples": "max-activating examples shown per feature",
    "figure_ks": "k values in the refusal figure",
    "figure_methods": "reconstruction methods in the refusal figure",
    "figure_new_tokens": "tokens generated per prompt for the refusal figure",
    "n_figure_harmless": "harmless prompts in the refusal figure (None: all)",
    "skyline_steps": "optimisation steps of the optimised ('skyline') vector",
    "skyline_prompts": "harmful prompts the optimised vector is trained on",
    "skyline_new_tokens": "tokens of the model's own refusals the optimised vector is trained towards",
}


@functools.cache
def _source_comments(config_type: type) -> dict[str, str]:
    """Field name -> the comment on its line, else the comment block above it, in the class source."""
    try:
        source = inspect.getsource(config_type)
    except (OSError, TypeError):  # no source (a frozen build): only MEANINGS
        return {}
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            trailing[token.start[0]] = token.string.lstrip("#").strip()
    fields = {field.name for field in dataclasses.fields(config_type)}
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip().split(":", 1)[0]
        if name not in fields or name in found:
            continue
        if number in trailing and not line.lstrip().startswith("#"):
            found[name] = trailing[number]
            continue
        block = []
        above = number - 1
        while above >= 1 and lines[above - 1].lstrip().startswith("#"):
            block.insert(0, trailing.get(above, ""))
            above -= 1
        if block:
            found[name] = " ".join(block)
    return found


def field_meanings(config_type: type) -> dict[str, str]:
    """Every field of a config class -> one line of what it means ('' where nothing says)."""
    comments = _source_comments(config_type)
    return {name: " — ".join(part for part in (MEANINGS.get(name), comments.get(name)) if part)
            for name in settings_of(config_type)}


def _type_text(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def describe_settings(config_type: type) -> str:
    """The `--set` listing: each field with its type, default and meaning."""
    defaults = {field.name: field.default if field.default is not dataclasses.MISSING else field.default_factory()
                for field in dataclasses.fields(config_type)}
    meanings = field_meanings(config_type)
    rows = []
    for name, annotation in settings_of(config_type).items():
        default = defaults[name]
        shown = "null" if default is None else ",".join(map(str, default)) if isinstance(default, tuple) else default
        rows.append(f"  {name} ({_type_text(annotation)}, default: {shown})\n      {meanings[name]}")
    aliases = [f"{old} (old name of {new})" for old, new in ALIASES.items() if new in defaults]
    return "\n".join(rows + ([f"  also accepted: {', '.join(aliases)}"] if aliases else []))


def renamed(settings: dict[str, Any], fields: Collection[str], argument: str = "") -> dict[str, Any]:
    """`settings` with each old name of `ALIASES` whose new name is among `fields` replaced by that name, with a
    DeprecationWarning; both names at once is an error naming `argument` + the old name."""
    out = dict(settings)
    for old, new in ALIASES.items():
        if old in out and new in fields and old not in fields:
            if new in out:
                raise ValueError(f"{argument}{old}: the old name of {new}; give only {new}")
            warnings.warn(f"{argument}{old} is renamed {new} (one name in every experiment); the old name will go",
                          DeprecationWarning, stacklevel=_callers_level())
            out[new] = out.pop(old)
    return out


def _callers_level() -> int:
    """The `stacklevel` of the first frame outside this package, so the warning names the user's line (and shows in
    a notebook or at the command line, where Python shows DeprecationWarnings raised in `__main__`)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "interp":
        frame, level = frame.f_back, level + 1
    return level
