"""The seed's refusal figure: the refusal direction, its sparse reconstructions and an optimised vector,
each ablated (harmful prompts, and MMLU-format questions) and added (harmless prompts).

- Refusal is judged in generated text (greedy, `figure_new_tokens` tokens) by the phrase judge or any
  `judge` ("package.module:function", e.g. one wrapping a local guard model).
- Conditions whose vectors are the same (e.g. two methods choosing the same single feature) are measured once
  and reported under each name, with `same_as` naming the one measured.
- Accuracy unsteered and with the direction ablated is the refusal experiment's when it ran beside this one and
  fitted this direction on the same questions (`refusal_experiment_accuracy`): the same measurement, not repeated.
- Held-out prompts: `harmful_eval` / `harmless_eval` files, else the bundled val and test splits (none of
  them used to fit the direction).
- Each reconstruction is rescaled to the original's norm; the optimised vector (the "skyline") is
  trained with that norm as its bound, so every vector is added at the same size.
- The skyline: a vector at the direction's layer trained (`interp.optimise`) to make the model's own
  refusals likely after harmful training prompts it does not refuse (where that loss carries signal).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from interp._timing import progress_on
from interp._timing import StageClock
from interp.capability import CapabilityRow, capability_under
from interp.chat import format_chats
from interp.datasets import bundled, load_instructions
from interp.directions import Direction, first_with_same_vector
from interp.headlines import NOISE_FLOOR, Claim, at, claim, grade, num
from interp.hooked import HookedModel, d_model
from interp.optimise import OptimiseConfig, optimise_vector
from interp.plots import finish_figure
from interp.refusal import judge_all, load_judge, refusal_rates_under
from interp.runner import generate_greedy
from interp.steering import Ablate

Rebuild = Callable[[str, int], Direction]  # (method, k) -> the reconstruction, at the original's norm


def held_out(model: HookedModel, kind: str, path: str | None, count: int | None) -> tuple[list[str], list[str]]:
    """(instructions, formatted prompts): the file at `path`, else the bundled val + test splits; first `count`."""
    files = [Path(path)] if path else [bundled(f"{kind}_val.json"), bundled(f"{kind}_test.json")]
    instructions = [record.instruction for file in files for record in load_instructions(file)]
    instructions = instructions[:count] if count is not None else instructions
    return instructions, format_chats(model, instructions)


def _generation_rows(config: Any) -> int:
    """Rows decoded together: the prompt pass costs no padding at any size (`generate_greedy`), and each
    decoding step reads the weights once per batch, so the figure's sets run as one or two batches."""
    return config.batch_size * 8


def train_skyline(model: HookedModel, direction: Direction, config: Any, judge: Callable[[str, str], bool]) -> tuple[Direction, dict[str, Any]]:
    """The optimised refusal vector at the direction's layer, bounded by its norm."""
    instructions = [record.instruction for record in load_instructions(bundled("harmful_train.json"))]
    prompts = format_chats(model, instructions)
    completions = generate_greedy(model, prompts, max_new_tokens=config.skyline_new_tokens,
                                  batch_size=_generation_rows(config))
    refused = judge_all(judge, instructions, completions)
    refusals = [text for text, flag in zip(completions, refused) if flag and text.strip()]
    if not refusals:
        raise ValueError("skyline: the model refused none of the harmful training prompts; no refusal text to train on")
    complied = [prompt for prompt, flag in zip(prompts, refused) if not flag]
    chosen = (complied or prompts)[: config.skyline_prompts]
    targets = [refusals[i % len(refusals)] for i in range(len(chosen))]  # the model's own refusals, reassigned
    # Adam moves each coordinate by about lr per step: this reaches the norm bound within a quarter of the steps.
    lr = 4 * direction.norm / (math.sqrt(d_model(model)) * config.skyline_steps)
    result = optimise_vector(
        model, chosen, targets,
        OptimiseConfig(layer=direction.layer, steps=config.skyline_steps, lr=lr, max_norm=direction.norm,
                       batch_size=config.batch_size),
        progress=progress_on(),
    )
    info = {"n_prompts": len(chosen), "from_complied": bool(complied), "lr": lr, "steps": config.skyline_steps,
            "nll_first": result.losses[0], "nll_last": result.losses[-1], "norm": result.direction.norm,
            "cosine_to_original": result.direction.cosine(direction),
            "targets": sorted(set(targets))[:5]}
    return result.direction, info


def refusal_experiment_accuracy(out: Path, direction: Direction, direction_source: str, config: Any) -> dict[str, CapabilityRow]:
    """The accuracy the refusal experiment beside this run measured unsteered and with `direction` ablated, as
    {"unsteered": row, "original": row}: the same conditions on the same questions, so not measured twice.

    Read only when `direction` is that experiment's own (loaded from its folder, its fit's numbers equal to those
    in its `result.json`) and its questions and seed are this figure's; otherwise {} (measured here).
    """
    folder = out.parent / "refusal"
    if direction_source != str(folder / "direction"):
        return {}
    try:
        result = json.loads((folder / "result.json").read_text())
        settings, fit = result["config"], result["direction"]
        rows = {row["condition"]: row for row in result["capability"]["rows"]}
        same_fit = (fit["layer"] == direction.layer and all(fit[key] == direction.meta.get(key)
                    for key in ("position", "ablation_score", "kl", "addition_score")))
        same_questions = (settings["model"] == direction.model and settings["mmlu_dir"] == config.mmlu_dir
                          and settings["seed"] == config.seed)
        if not (same_fit and same_questions):
            return {}
        return {name: CapabilityRow(name, float(row["accuracy"]), tuple(map(float, row["accuracy_ci95"])),
                                    float(row["letter_mass"]), int(row["n_questions"]))
                for name, row in (("unsteered", rows["baseline"]), ("original", rows["ablated"]))}
    except (OSError, ValueError, KeyError, TypeError):  # no such run, or not one this figure can read: measure here
        return {}


def refusal_figure(
    model: HookedModel, direction: Direction, rebuild: Rebuild, config: Any, out: Path, progress: bool = True,
    clock: StageClock | None = None, known_accuracy: Mapping[str, CapabilityRow] | None = None,
) -> dict[str, Any]:
    """Refusal rates and MMLU-format accuracy for the original direction, its reconstructions and the skyline
    (each step a stage of `clock`, named "refusal figure: step"). `known_accuracy`: conditions' accuracy already
    measured on the same questions (`refusal_experiment_accuracy`), not measured again."""
    clock = clock or StageClock()
    judge = load_judge(config.judge)
    harmful = held_out(model, "harmful", config.harmful_eval, config.n_figure_harmful)
    harmless = held_out(model, "harmless", config.harmless_eval, config.n_figure_harmless)
    skyline, skyline_info = train_skyline(model, direction, config, judge)
    clock.lap("refusal figure: skyline")
    vectors: dict[str, Direction | None] = {"unsteered": None, "original": direction, "skyline": skyline}
    for method in config.figure_methods:
        for k in config.figure_ks:
            vectors[f"{method} k={k}"] = rebuild(method, k)
    same_as = first_with_same_vector(vectors)
    measured_rates = refusal_rates_under(model, {name: vectors[name] for name in vectors if same_as[name] == name},
                                         harmful, harmless, judge=judge, max_new_tokens=config.figure_new_tokens,
                                         batch_size=_generation_rows(config), seed=config.seed, progress=progress)
    rates = {rate.name: rate for rate in measured_rates}
    clock.lap("refusal figure: refusal rates")
    # Accuracy for the references and the reconstructions at `mmlu_ks` only: each condition is a full pass over the
    # questions, and the claim is about k ≤ small_k (the other ks cost as much and answer nothing new).
    measured = [name for name in vectors if name in REFERENCES or any(name.endswith(f" k={k}") for k in config.mmlu_ks)]
    known = dict(known_accuracy or {})
    to_measure = {same_as[name]: [] if vectors[name] is None else [Ablate(vectors[name])]
                  for name in measured if same_as[name] not in known}
    capability = capability_under(model, to_measure, mmlu_dir=config.mmlu_dir, batch_size=config.batch_size,
                                  seed=config.seed, progress=progress) if to_measure else []
    clock.lap("refusal figure: accuracy")
    by_condition = {**known, **{cap.condition: cap for cap in capability}}
    accuracy = {name: {"mmlu_ablated": cap.accuracy, "mmlu_ablated_ci95": cap.accuracy_ci95, "mmlu_letter_mass": cap.letter_mass}
                for name in measured for cap in [by_condition[same_as[name]]]}
    not_measured = {"mmlu_ablated": None, "mmlu_ablated_ci95": None, "mmlu_letter_mass": None}
    n_questions = next(iter(by_condition.values())).n_questions
    rows = {name: {**rates[same_as[name]].to_dict(), "name": name, **accuracy.get(name, not_measured),
                   "n_questions": n_questions, **({"same_as": same_as[name]} if same_as[name] != name else {})}
            for name in vectors}
    result = {"rows": rows, "skyline": skyline_info, "accuracy_from_refusal_experiment": sorted(known),
              "ks": list(config.figure_ks), "methods": list(config.figure_methods),
              "judge": config.judge or "phrases", "new_tokens": config.figure_new_tokens,
              "mmlu": config.mmlu_dir or "bundled questions",
              "small_k": config.small_k}
    plot_refusal_figure(result, direction, out / "refusal_figure.png")
    return result


REFERENCES = ("unsteered", "original", "skyline")
PANELS = (("harmful_ablated", "harmful prompts refused,\ndirection ablated"),
          ("harmless_added", "harmless prompts refused,\ndirection added"),
          ("mmlu_ablated", "MMLU-format accuracy,\ndirection ablated"))


def plot_refusal_figure(result: Mapping[str, Any], direction: Direction, path: Path | None = None) -> Figure:
    """Three panels against k: each reconstruction method a line, the original, skyline and unsteered model
    as horizontal lines, every point with its 95% interval; saved as PNG when `path` is given."""
    rows, ks = result["rows"], result["ks"]
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.4), gridspec_kw={"wspace": 0.35})
    references = (("unsteered", "grey", ":"), ("original", "black", "--"), ("skyline", "tab:red", "-."))
    for axis, (key, label) in zip(axes, PANELS):
        for method in result["methods"]:
            measured = [(k, rows[f"{method} k={k}"]) for k in ks if rows[f"{method} k={k}"][key] is not None]
            if not measured:
                continue
            values = [p[key] for _, p in measured]
            errors = [[v - p[f"{key}_ci95"][0] for v, (_, p) in zip(values, measured)],
                      [p[f"{key}_ci95"][1] - v for v, (_, p) in zip(values, measured)]]
            axis.errorbar([k for k, _ in measured], values, yerr=errors, marker="o", markersize=3.5, capsize=2,
                          label=f"{method} reconstruction")
        for name, colour, style in references:
            axis.axhline(rows[name][key], color=colour, linestyle=style, linewidth=1.2, label=name)
        if key == "mmlu_ablated":
            axis.axhline(0.25, color="grey", linestyle=(0, (1, 4)), linewidth=1, label="chance (4 options)")
        axis.set_xscale("log", base=2)
        axis.set_xticks(ks, [str(k) for k in ks])
        axis.set_xlabel("k (SAE features)")
        axis.set_ylabel(label)
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{direction.model}: refusal direction (layer {direction.layer}) vs its sparse reconstructions and "
                    f"an optimised vector; {rows['original']['n_harmful']} harmful / {rows['original']['n_harmless']} "
                    f"harmless held-out prompts, {result['judge']} judge")
    return finish_figure(figure, path)


def best_small_k_ablation(figure: Mapping[str, Any]) -> tuple[str, float]:
    """The reconstruction with k ≤ small_k whose ablation removes the most harmful refusals."""
    rows = figure["rows"]
    names = [f"{m} k={k}" for m in figure["methods"] for k in figure["ks"] if k <= figure["small_k"]]
    best = min(names, key=lambda name: rows[name]["harmful_ablated"])
    return best, rows[best]["harmful_ablated"]


def figure_claims(figure: Mapping[str, Any] | None) -> list[Claim]:
    """The seed's refusal comparison, as verdicts: does a small-k reconstruction do what the direction does?"""
    if not isinstance(figure, Mapping):
        return []

    def ablation() -> tuple[str, str]:
        rows = at(figure, "rows")
        base, original = num(at(rows, "unsteered", "harmful_ablated")), num(at(rows, "original", "harmful_ablated"))
        name, best = best_small_k_ablation(figure)
        text = f"{name}: harmful refusal {best:.2f} ablated vs original {original:.2f}, unsteered {base:.2f}"
        if base - original < NOISE_FLOOR:
            return f"{text}: the original's ablation removes no refusals", "n/a"
        ratio = (base - best) / (base - original)
        return f"{text} → {ratio:.0%} of the original's drop", grade(ratio, 0.9, 0.5)

    def addition() -> tuple[str, str]:
        rows = at(figure, "rows")
        base, original = num(at(rows, "unsteered", "harmless_added")), num(at(rows, "original", "harmless_added"))
        names = [f"{m} k={k}" for m in at(figure, "methods") for k in at(figure, "ks") if k <= num(at(figure, "small_k"))]
        name = max(names, key=lambda n: num(at(rows, n, "harmless_added")))
        best = num(at(rows, name, "harmless_added"))
        text = f"{name}: harmless refusal {best:.2f} added vs original {original:.2f}, unsteered {base:.2f}"
        if original - base < NOISE_FLOOR:
            return f"{text}: adding the original induces no refusals", "n/a"
        ratio = (best - base) / (original - base)
        return f"{text} → {ratio:.0%} of the original's rise", grade(ratio, 0.9, 0.5)

    return [
        claim("[refusal figure] Ablating a 2–4 feature reconstruction removes refusals (generated text, held-out "
              "harmful prompts) as the refusal direction does", ablation),
        claim("[refusal figure] Adding a 2–4 feature reconstruction induces refusals on harmless prompts as the "
              "refusal direction does", addition),
    ]


def figure_markdown(figure: Mapping[str, Any]) -> list[str]:
    """The figure's table for summary.md."""
    rows = figure["rows"]
    first = rows["original"]
    tokens = f" of {figure['new_tokens']} tokens" if figure.get("new_tokens") else ""
    lines = ["", "### The seed's refusal figure (`refusal_figure.png`)", "",
             f"Greedy completions{tokens} "
             f"({first['n_harmful']} held-out harmful prompts with each vector ablated at every "
             f"layer, {first['n_harmless']} held-out harmless prompts with it added at its layer) judged by the "
             f"{figure['judge']} judge; accuracy on {first['n_questions']} {figure['mmlu']} with it ablated. 95% "
             "bootstrap intervals over prompts." + (
                 f" Accuracy of {' and '.join(figure['accuracy_from_refusal_experiment'])}: the refusal experiment's "
                 "(the same questions and direction)." if figure.get("accuracy_from_refusal_experiment") else ""), "",
             "| vector | harmful refused (ablated) | harmless refused (added) | MMLU acc. (ablated) |", "|---|---|---|---|"]
    for name, row in rows.items():
        cells = ["—" if row[key] is None else f"{row[key]:.2f} [{row[f'{key}_ci95'][0]:.2f}, {row[f'{key}_ci95'][1]:.2f}]"
                 for key, _ in PANELS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sky = figure["skyline"]
    lines += ["", f"Skyline: trained {sky['steps']} steps on {sky['n_prompts']} harmful training prompts "
              f"{'the model does not refuse' if sky['from_complied'] else '(the model refused them all)'}, towards its own "
              f"refusals; NLL {sky['nll_first']:.3f} → {sky['nll_last']:.3f}, norm {sky['norm']:.2f}, cosine to the "
              f"refusal direction {sky['cosine_to_original']:.3f}."]
    return lines
