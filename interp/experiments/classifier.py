"""Features and directions as classifiers of multiple-choice answers; a probe-penalised best-of-n demo.

Per model: (1) the model's SAE (a path, or the one shipped under interp/data/saes/) fixes the layer; without
one, SAE features are skipped and the directions and probe run at `layer` (default: the middle layer);
(2) a sycophancy probe and the CAA sycophancy direction from the bundled training A/B pairs (one pass),
and the probe-penalised best-of-n selection on the held-out pairs; (3) a refusal direction by
difference in means of harmful vs harmless prompts at the layer, only when the model refuses (checked
by greedy generation), or read from a path; (4) every question × option of the multiple-choice set
(bundled, MMLU CSVs through `mmlu_dir`, or TruthfulQA through `truthfulqa`) read on its answer letter,
with every feature, the directions, a full-residual probe and the model's letter log-probabilities as
classifiers; signs, thresholds and feature choices fixed on a train split of questions, every number
reported on the test split with bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp._timing import StageClock, progress_on
from interp.browser.links import experiment_links, markdown_link
from interp.chat import format_chats
from interp.classify import ClassifierReport, classifier_report, option_activations
from interp.datasets import (
    MultipleChoice,
    bundled,
    load_bundled_instructions,
    load_bundled_multiple_choice,
    load_bundled_sycophancy,
    load_multiple_choice,
    load_truthfulqa,
)
from interp.dictionaries import Dictionary, load_shipped_dictionary
from interp.directions import Direction
from interp.experiments import register
from interp.experiments.checks import check_fields
from interp.experiments.classifier_demo import probe_penalty_demo
from interp.experiments.classifier_figures import demo_figure, draw_figures
from interp.experiments.common import experiment_model, spread
from interp.experiments.user_dictionary import load_user_dictionary, residual_read_site
from interp.headlines import Claim, Headline, at, claim, grade, num, per_model, safe, skipped_claims
from interp.hooked import HookedModel, n_layers
from interp.models import REGISTRY, is_installed, model_name

DEFAULT_MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


@dataclass
class ClassifierConfig:
    """The classifier experiment's settings, checked when made (`interp.experiments.checks`).

    Each field is an `interp reproduce classifier --set KEY=VALUE` setting; `interp reproduce classifier --help` lists them with
    their types, defaults and meanings (the comments beside the fields here).
    """

    model: str = "smollm2-135m-instruct"  # a registry name, HF folder or .gguf; "all": every installed DEFAULT_MODELS
    dictionary: str | None = None  # any format load_dictionary reads (SAE or transcoder); None: the shipped SAE
    layer: int | None = None  # where to read when no dictionary names one (None: the middle layer)
    kinds: tuple[str, ...] = ("encoder", "decoder")  # feature scores: encoder pre-activations, decoder dot products
    mmlu_dir: str | None = None  # a CSV or folder of MMLU CSVs (either layout); None: the bundled 124 questions
    truthfulqa: str | None = None  # instead: a TruthfulQA CSV (public layout; "bundled": interp's small original one)
    n_questions: int | None = None  # an evenly spread subset of the questions (None: all)
    test_fraction: float = 0.5
    top_k: int = 10
    n_random: int = 20
    n_bootstrap: int = 1000
    probe_l2: float = 1e-2
    n_train_pairs: int | None = 96  # sycophancy training pairs for the probe and the CAA direction (None: 234)
    n_test_pairs: int | None = None  # held-out pairs for the best-of-n demo (None: all 79)
    demo_samples: int = 8
    demo_lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 5.0)
    refusal_direction: str | None = None  # a Direction folder; None: diff-in-means, where the model refuses
    n_refusal_check: int = 12  # harmful prompts generated greedily to see whether the model refuses
    min_refusal_rate: float = 0.25
    n_refusal_prompts: int = 40  # harmful and harmless training prompts for the diff-in-means
    batch_size: int = 16
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges, before any work (interp.experiments.checks)

    def check(self) -> None:
        """The question set and the dictionary (run by `check_resources` before any work)."""
        load_questions(self)
        if self.dictionary is not None:
            residual_read_site(load_user_dictionary(self.dictionary, None if self.model == "all" else self.model,
                                                    layer=self.layer))


def models_to_run(config: ClassifierConfig) -> tuple[list[str], dict[str, str]]:
    """The models a classifier run covers: `config.model`, or with `"all"` every installed default model.

    Returns:
        The names, and name → pip command for each default model that is not installed (reported as skipped).
    """
    if config.model != "all":
        return [config.model], {}
    missing = {name: REGISTRY[name].pip_command for name in DEFAULT_MODELS if not is_installed(name)}
    return [name for name in DEFAULT_MODELS if name not in missing], missing


def load_questions(config: ClassifierConfig) -> tuple[list[MultipleChoice], str]:
    """The multiple-choice questions the classifier experiment reads: TruthfulQA, MMLU CSVs or the bundled set.

    Returns:
        The questions and a label of where they came from.

    Raises:
        ValueError: both `mmlu_dir` and `truthfulqa` set.
    """
    if config.truthfulqa is not None:
        if config.mmlu_dir is not None:
            raise ValueError("mmlu_dir, truthfulqa: set one question source, not both")
        bundled_set = config.truthfulqa == "bundled"
        path = bundled("truthfulqa_style.csv") if bundled_set else Path(config.truthfulqa)
        where = "bundled interp/data/truthfulqa_style.csv" if bundled_set else str(path)
        source = f"TruthfulQA {where} (best answer vs 3 incorrect ones)"
        return spread(load_truthfulqa(path, seed=config.seed), config.n_questions), source
    if config.mmlu_dir is None:
        return spread(load_bundled_multiple_choice(), config.n_questions), "bundled interp/data/multiple_choice.csv"
    return spread(load_multiple_choice(config.mmlu_dir), config.n_questions), str(config.mmlu_dir)


def resolve_dictionary(config: ClassifierConfig, name: str, model: HookedModel) -> tuple[Dictionary | None, str]:
    """The dictionary to score (or None) and a sentence saying where it came from or why there is none."""
    if config.dictionary is not None:
        dictionary = load_user_dictionary(config.dictionary, model, layer=config.layer)
        residual_read_site(dictionary)
        note = "; decoder-atom scores left out: its atoms live at its output site" if dictionary.transcoder else ""
        return dictionary, f"{dictionary.describe()}{note}"
    try:
        dictionary = load_shipped_dictionary(name)
    except (FileNotFoundError, ValueError) as error:
        return None, f"no SAE features scored: {error}"
    dictionary.check_model(model)
    return dictionary, f"shipped SAE {dictionary.source} ({dictionary.n_atoms} features at {dictionary.hook_name})"


def refusal_direction(
    config: ClassifierConfig, model: HookedModel, layer: int, site: str
) -> tuple[Direction | None, dict[str, Any]]:
    """A refusal direction at `layer` (diff-in-means at the last prompt token), only where the model refuses."""
    if config.refusal_direction is not None:
        direction = Direction.load(config.refusal_direction)
        return direction, {"source": str(config.refusal_direction)}
    from interp.activations import collect_residuals, mean_difference
    from interp.refusal import phrase_judge
    from interp.runner import generate_greedy

    check = [i.instruction for i in load_bundled_instructions("harmful", "val")][: config.n_refusal_check]
    completions = generate_greedy(model, format_chats(model, check), max_new_tokens=16, batch_size=config.batch_size)
    rate = sum(phrase_judge(i, c) for i, c in zip(check, completions)) / len(check)
    info: dict[str, Any] = {"refusal_rate_check": rate, "n_check": len(check)}
    if rate < config.min_refusal_rate:
        info["skipped"] = f"the model refused {rate:.0%} of {len(check)} harmful prompts (< {config.min_refusal_rate:.0%})"
        return None, info
    count = config.n_refusal_prompts
    harmful = format_chats(model, [i.instruction for i in load_bundled_instructions("harmful", "train")][:count])
    harmless = format_chats(model, [i.instruction for i in load_bundled_instructions("harmless", "train")][:count])
    acts = [collect_residuals(model, prompts, [layer], positions=-1, site=site, batch_size=config.batch_size,
                              progress=progress_on())[:, 0, 0] for prompts in (harmful, harmless)]
    vector = mean_difference(*acts)
    info.update({"source": "diff_in_means(harmful − harmless), last prompt token", "n_prompts": [len(harmful), len(harmless)]})
    return Direction(vector, layer=layer, model=model_name(model), source="diff_in_means", site=site, meta=info), info


# ---------------------------------------------------------------------------------------------
# Headline: the seed's claims against result.json
# ---------------------------------------------------------------------------------------------


def headline(result: dict[str, Any]) -> Headline:
    """The report's headline of a classifier result: key numbers, and the seed's claims with our number and a verdict.

    Args:
        result: the experiment's `result.json` as a dict.

    Returns:
        The `Headline`; a missing key gives an n/a row, never an error.
    """
    numbers: dict[str, Any] = {}
    claims = []
    for name, r in per_model(result).items():
        rows = safe(lambda: at(r, "classifiers", "rows")) or []
        by_group = {row.get("group"): row for row in reversed(rows) if isinstance(row, dict)}  # first of each group
        numbers[f"{name}: layer"] = r.get("layer")
        for group in ("feature", "probe", "model"):
            if group in by_group:
                numbers[f"{name}: {by_group[group]['name']} test AUROC"] = by_group[group].get("test_auroc")
        claims += _model_claims(name, r, by_group)
    return Headline(numbers, claims + skipped_claims(result))


def _model_claims(name: str, r: dict[str, Any], by_group: dict[str, dict[str, Any]]) -> list[Claim]:
    def feature() -> tuple[str, str]:
        row = at(by_group, "feature")
        auroc, ci = num(at(row, "test_auroc")), row.get("test_auroc_ci")
        low = num(ci[0]) if ci else float("nan")
        biased = by_group.get("biased", {}).get("test_auroc")
        verdict = "yes" if low > 0.5 else "partly" if auroc > 0.55 else "no"
        text = f"{row['name']}: test AUROC {auroc:.3f}" + (f" [{low:.2f}, {num(ci[1]):.2f}]" if ci else "")
        if isinstance(biased, (int, float)):
            text += f" (seed-style pick on test: {biased:.3f})"
        return text, verdict

    def penalty() -> tuple[str, str]:
        by_lambda = at(r, "probe_penalty_demo", "by_lambda")
        lambdas = sorted(by_lambda, key=float)
        low, high = num(by_lambda[lambdas[0]]["sycophancy_rate"]), num(by_lambda[lambdas[-1]]["sycophancy_rate"])
        return (f"sycophantic choices {low:.2f} at λ={float(lambdas[0]):g} → {high:.2f} at λ={float(lambdas[-1]):g}",
                grade(low - high, 0.05, 1e-9))

    return [
        claim(f"[{name}] A single SAE feature classifies correct vs incorrect multiple-choice answers "
              "(chosen on train, AUROC on held-out questions above chance)", feature),
        claim(f"[{name}] Linear probe penalties reduce sycophancy (best-of-n with reward − λ·probe)", penalty),
    ]


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


@register(
    "classifier",
    "SAE features and directions as classifiers of multiple-choice answers (held-out, with CIs); probe-penalised best-of-n",
    ClassifierConfig,
    headline=headline,
)
def run(config: ClassifierConfig, out: Path) -> dict[str, Any]:
    """Run the classifier experiment and write its figures, `result.json` and `summary.md` into `out`.

    Args:
        config: the settings (`interp reproduce classifier --help` lists each with its type, default and meaning).
        out: the experiment's output folder.

    Returns:
        The result (config, numbers, timing) that `run_experiment` writes as `result.json`.
    """
    names, missing = models_to_run(config)
    if not names:
        commands = "\n".join(f"    {command}" for command in missing.values())
        raise RuntimeError(f"classifier: none of {list(DEFAULT_MODELS)} is installed; install them with:\n{commands}")
    torch.manual_seed(config.seed)
    questions, question_source = load_questions(config)
    results = {}
    for name in names:
        folder = out / (name if name in REGISTRY else Path(name).stem)
        results[name] = run_model(name, config, questions, question_source, folder)
    return {
        "models": results,
        "feature_browser": next((r["feature_browser"] for r in results.values() if r.get("feature_browser")), None),
        "skipped": {name: f"not installed: {command}" for name, command in missing.items()},
        "summary_md": summary_markdown(results, missing, config),
    }


def run_model(
    name: str, config: ClassifierConfig, questions: list[MultipleChoice], question_source: str, out: Path
) -> dict[str, Any]:
    """The classifier experiment on one model: option activations, the classifier report, the probe-penalty demo, figures.

    Args:
        name: the model.
        config: the settings.
        questions: the multiple-choice questions.
        question_source: where they came from, for the summary.
        out: this model's output folder.

    Returns:
        This model's part of the result.
    """
    clock = StageClock("classifier")
    model = experiment_model(name, config.device)
    dictionary, dictionary_note = resolve_dictionary(config, name, model)
    layer = dictionary.layer if dictionary is not None else (config.layer if config.layer is not None else n_layers(model) // 2)
    site = (dictionary.site if dictionary is not None else None) or "resid_pre"
    clock.lap("load")
    demo = sycophancy_demo(model, config, layer, site, out)
    clock.lap("sycophancy probe and best-of-n")
    directions = {"sycophancy (CAA)": demo.caa, "sycophancy probe": demo.probe.direction()}
    refusal, refusal_info = refusal_direction(config, model, layer, site)
    if refusal is not None:
        directions["refusal (diff-in-means)"] = refusal
    clock.lap("refusal direction")
    acts, report = evaluate(model, config, questions, dictionary, directions, layer, site, clock)
    best = list(dict.fromkeys(f for features in report.top_features.values() for f in features))
    # The best features' pages, when a feature browser of this dictionary was built beside the results.
    pages = experiment_links(dictionary, best, out.parent) if dictionary is not None and best else {}
    label = model_name(model)
    figures = draw_figures(report, label, out)
    demo_figure(demo.summary, label, out / "probe_penalty_best_of_n.png")
    clock.lap("figures")
    return {
        "model": label,
        "layer": layer,
        "site": site,
        "dictionary": dictionary_note,
        "questions": question_source,
        "n_questions": len(questions),
        "letter_mass": float(acts.log_probs.double().exp().sum(-1).mean()),
        "classifiers": report.to_dict(),
        "refusal_direction": refusal_info,
        "probe_penalty_demo": demo.summary,
        **pages,
        "figures": figures,
        "seconds": clock.seconds,
    }


def sycophancy_demo(model: HookedModel, config: ClassifierConfig, layer: int, site: str, out: Path) -> Any:
    """A sycophancy probe and the CAA direction from one training pass; best-of-n on the held-out pairs."""
    train_pairs = spread(load_bundled_sycophancy("train"), config.n_train_pairs)
    test_pairs = spread(load_bundled_sycophancy("test"), config.n_test_pairs)
    demo = probe_penalty_demo(
        model, train_pairs, test_pairs, layer, n_samples=config.demo_samples, lambdas=config.demo_lambdas,
        site=site, batch_size=config.batch_size, seed=config.seed, progress=progress_on(),
    )
    demo.probe.save(out / "sycophancy_probe", overwrite=True)
    return demo


def evaluate(
    model: HookedModel, config: ClassifierConfig, questions: list[MultipleChoice], dictionary: Dictionary | None,
    directions: dict[str, Direction], layer: int, site: str, clock: StageClock,
) -> tuple[Any, ClassifierReport]:
    """Every question × option read on its answer letter; every classifier fixed on train, scored on test."""
    layers = sorted({layer, *(d.layer for d in directions.values())})
    acts = option_activations(model, questions, layers, site=site, batch_size=config.batch_size)
    answers = torch.tensor([q.answer for q in questions])
    clock.lap("option activations")
    report = classifier_report(
        acts, answers, dictionary=dictionary, kinds=config.kinds, directions=directions, probe_layer=layer,
        probe_l2=config.probe_l2, test_fraction=config.test_fraction, top_k=config.top_k, n_random=config.n_random,
        n_bootstrap=config.n_bootstrap, seed=config.seed,
    )
    clock.lap("evaluation")
    return acts, report


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def _ci(value: float, ci: Sequence[float] | None) -> str:
    if value != value:  # NaN
        return "—"
    return f"{value:.3f}" if ci is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _model_section(name: str, r: dict[str, Any]) -> list[str]:
    c = r["classifiers"]
    lines = [
        f"## {name}",
        "",
        f"Layer {r['layer']} ({r['site']}); dictionary: {r['dictionary']}. Questions: {r['questions']} "
        f"({r['n_questions']}; {c['n_train_questions']} train / {c['n_test_questions']} test, split by question). "
        f"Letter mass P(A..D) after the prefix: {r['letter_mass']:.2f}.",
        "",
        "| classifier | sign | train AUROC | test AUROC [95% CI] | test MC accuracy [95% CI] | test binary accuracy [95% CI] | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in c["rows"]:
        sign = "" if row["sign"] != row["sign"] else ("+" if row["sign"] > 0 else "−")
        train = "—" if row["train_auroc"] != row["train_auroc"] else f"{row['train_auroc']:.3f}"
        lines.append(
            f"| {row['name']} | {sign} | {train} | {_ci(row['test_auroc'], row['test_auroc_ci'])} | "
            f"{_ci(row['test_mc_accuracy'], row['test_mc_accuracy_ci'])} | "
            f"{_ci(row['test_binary_accuracy'], row['test_binary_accuracy_ci'])} | {row['note']} |"
        )
    if r.get("feature_pages"):
        lines += ["", "Pages of the top features in the feature browser: "
                  + ", ".join(markdown_link(f, r["feature_pages"]) for f in r["feature_pages"]) + "."]
    return lines + _probe_lines(c, r["refusal_direction"]) + _demo_lines(r["probe_penalty_demo"]) + [
        "",
        "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()),
        "",
    ]


def _probe_lines(c: dict[str, Any], refusal: dict[str, Any]) -> list[str]:
    probe = c.get("probe") or {}
    return [
        "",
        "Sign, binary threshold and feature ranking are fixed on the train questions; intervals are percentile "
        "bootstraps over test questions (a question's options resample together). MC accuracy: the option with the "
        "highest score is the answer. Binary: every (question, option) is an example, correct or not "
        f"(chance = always 'incorrect' = {1 - 1 / c['n_options']:.2f}).",
        "",
        f"Full-residual probe: train AUROC {probe.get('train', {}).get('auroc', float('nan')):.3f}, validation "
        f"AUROC {probe.get('validation', {}).get('auroc', float('nan')):.3f}, validation ECE "
        f"{probe.get('validation', {}).get('ece_raw', float('nan')):.3f} → "
        f"{probe.get('validation', {}).get('ece', float('nan')):.3f} after temperature scaling.",
        "",
        "Refusal direction: " + (refusal.get("skipped") or refusal.get("source", "")) + ".",
    ]


def _demo_lines(demo: dict[str, Any]) -> list[str]:
    return [
        "",
        f"### Probe-penalised best-of-{demo['n_samples']} on {demo['n_test_pairs']} held-out sycophancy pairs",
        "",
        f"Sycophancy probe at layer {demo['layer']} trained on {demo['n_train_pairs']} training pairs (matching vs "
        f"other answer letter): held-out AUROC {demo['probe_test_auroc']:.3f} (the CAA direction's: "
        f"{demo['caa_test_auroc']:.3f}); validation ECE {demo['probe']['validation'].get('ece_raw', float('nan')):.3f} → "
        f"{demo['probe']['validation'].get('ece', float('nan')):.3f} calibrated. Responses are answer letters "
        f"sampled from the model's own P(A)/P(B); reward = {demo['reward']}; reward' = reward − λ·P_probe(sycophantic). "
        f"Model: mean P(matching) {demo['model_p_matching']:.3f}, greedy answer sycophantic on "
        f"{demo['greedy_sycophancy_rate']:.3f} of prompts; all {demo['n_samples']} samples sycophantic on "
        f"{demo['floor_all_samples_sycophantic']:.3f} (no selection can avoid those), any sample on "
        f"{demo['ceiling_any_sample_sycophantic']:.3f}.",
        "",
        "| λ | " + " | ".join(demo["by_lambda"]) + " |",
        "|---|" + "---|" * len(demo["by_lambda"]),
        "| chosen response sycophantic [95% CI] | "
        + " | ".join(f"{v['sycophancy_rate']:.3f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]" for v in demo["by_lambda"].values())
        + " |",
        "",
        "What this measures: with one-letter responses, the penalty can only change the choice where both letters were "
        "sampled, and it lowers the sycophancy rate exactly as far as the probe separates the held-out letters. It is "
        "a selection demonstration, not RL training against the penalised reward.",
    ]


def summary_markdown(results: dict[str, dict[str, Any]], missing: dict[str, str], config: ClassifierConfig) -> str:
    """The classifier experiment's `summary.md`: per model, the held-out table with intervals, and what it shows.

    Args:
        results: model → its result.
        missing: model → pip command, for the models skipped.
        config: the settings.

    Returns:
        The Markdown text.
    """
    lines = [
        "# Features and directions as classifiers of multiple-choice answers",
        "",
        "Each question × option: the letter appended as the assistant's answer (\"Answer: (C\"), the residual read "
        "on that letter token; every SAE feature (encoder pre-activation and decoder-atom dot product), the "
        "sycophancy and refusal directions, a full-residual logistic probe and the model's own letter log-probability "
        "scored as classifiers. Nothing is chosen on the test questions, except the row marked biased (the seed's "
        "number: best feature and sign picked on test), shown for contrast.",
        "",
    ]
    for name, command in missing.items():
        lines += [f"_{name} was skipped: not installed (`{command}`)._", ""]
    for name, result in results.items():
        lines += _model_section(name, result)
    return "\n".join(lines)
