"""Features and directions as classifiers of multiple-choice answers; a probe-penalised best-of-n demo.

Per model: (1) the model's SAE (a path, or the one shipped under interp/data/saes/) fixes the layer; without
one, SAE features are skipped and the directions and probe run at `layer` (default: the middle layer);
(2) a sycophancy probe and the CAA sycophancy direction from the bundled training A/B pairs (one pass),
and the probe-penalised best-of-n selection on the held-out pairs; (3) a refusal direction by
difference in means of harmful vs harmless prompts at the layer, only when the model refuses (checked
by greedy generation), or read from a path; (4) every question × option of the multiple-choice set
(bundled, or MMLU CSVs through `mmlu_dir`) read on its answer letter, with every feature, the
directions, a full-residual probe and the model's letter log-probabilities as classifiers; signs,
thresholds and feature choices fixed on a train split of questions, every number reported on the test
split with bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from interp.chat import format_chats
from interp.classify import KIND_LABELS, ClassifierReport, classifier_report, option_activations, roc_curve
from interp.datasets import (
    MultipleChoice,
    load_bundled_instructions,
    load_bundled_multiple_choice,
    load_bundled_sycophancy,
    load_multiple_choice,
)
from interp.dictionaries import Dictionary, load_dictionary, load_shipped_dictionary
from interp.directions import Direction
from interp.experiments import StageClock, register
from interp.experiments.sycophancy import spread
from interp.hooked import n_layers
from interp.models import REGISTRY, is_installed, load_model, model_name
from interp.plots import save_figure
from interp.probes import probe_penalty_demo

DEFAULT_MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


@dataclass
class ClassifierConfig:
    model: str = "smollm2-135m-instruct"  # a registry name, HF folder or .gguf; "all": every installed DEFAULT_MODELS
    dictionary: str | None = None  # SAE-Lens folder or safetensors decoder; None: the model's shipped SAE
    layer: int | None = None  # where to read when no dictionary names one (None: the middle layer)
    kinds: tuple[str, ...] = ("encoder", "decoder")  # feature scores: encoder pre-activations, decoder dot products
    mmlu_dir: str | None = None  # a CSV or folder of MMLU CSVs (either layout); None: the bundled 124 questions
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


def models_to_run(config: ClassifierConfig) -> tuple[list[str], dict[str, str]]:
    if config.model != "all":
        return [config.model], {}
    missing = {name: REGISTRY[name].pip_command for name in DEFAULT_MODELS if not is_installed(name)}
    return [name for name in DEFAULT_MODELS if name not in missing], missing


def load_questions(config: ClassifierConfig) -> tuple[list[MultipleChoice], str]:
    if config.mmlu_dir is None:
        return spread(load_bundled_multiple_choice(), config.n_questions), "bundled interp/data/multiple_choice.csv"
    return spread(load_multiple_choice(config.mmlu_dir), config.n_questions), str(config.mmlu_dir)


def resolve_dictionary(config: ClassifierConfig, name: str, model: Any) -> tuple[Dictionary | None, str]:
    """The dictionary to score (or None) and a sentence saying where it came from or why there is none."""
    if config.dictionary is not None:
        dictionary = load_dictionary(config.dictionary, model=name)
        if dictionary.layer is None:
            if config.layer is None:
                raise ValueError(f"dictionary: {config.dictionary} names no hook point; set layer=")
            dictionary = replace(dictionary, hook_name=f"blocks.{config.layer}.hook_resid_pre")
        dictionary.check_model(model)
        return dictionary, f"{dictionary.source} ({dictionary.n_atoms} features at {dictionary.hook_name})"
    try:
        dictionary = load_shipped_dictionary(name)
    except (FileNotFoundError, ValueError) as error:
        return None, f"no SAE features scored: {error}"
    dictionary.check_model(model)
    return dictionary, f"shipped SAE {dictionary.source} ({dictionary.n_atoms} features at {dictionary.hook_name})"


def refusal_direction(
    config: ClassifierConfig, model: Any, layer: int, site: str
) -> tuple[Direction | None, dict[str, Any]]:
    """A refusal direction at `layer` (diff-in-means at the last prompt token), only where the model refuses."""
    if config.refusal_direction is not None:
        direction = Direction.load(config.refusal_direction)
        return direction, {"source": str(config.refusal_direction)}
    from interp.activations import collect_residuals, mean_difference
    from interp.refusal import generate_greedy, phrase_judge

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
                              progress=False)[:, 0, 0] for prompts in (harmful, harmless)]
    vector = mean_difference(*acts)
    info.update({"source": "diff_in_means(harmful − harmless), last prompt token", "n_prompts": [len(harmful), len(harmless)]})
    return Direction(vector, layer=layer, model=model_name(model), source="diff_in_means", site=site, meta=info), info


@register(
    "classifier",
    "SAE features and directions as classifiers of multiple-choice answers (held-out, with CIs); probe-penalised best-of-n",
    ClassifierConfig,
)
def run(config: ClassifierConfig, out: Path) -> dict[str, Any]:
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
        "skipped": {name: f"not installed: {command}" for name, command in missing.items()},
        "summary_md": summary_markdown(results, missing, config),
    }


def run_model(
    name: str, config: ClassifierConfig, questions: list[MultipleChoice], question_source: str, out: Path
) -> dict[str, Any]:
    clock = StageClock()
    lap, timings = clock.lap, clock.seconds

    model = load_model(name, device=config.device)
    label = model_name(model)
    dictionary, dictionary_note = resolve_dictionary(config, name, model)
    layer = dictionary.layer if dictionary is not None else (config.layer if config.layer is not None else n_layers(model) // 2)
    site = (dictionary.site if dictionary is not None else None) or "resid_pre"
    lap("load")

    # Sycophancy: probe + CAA direction from the same training pass; best-of-n on held-out pairs.
    train_pairs = spread(load_bundled_sycophancy("train"), config.n_train_pairs)
    test_pairs = spread(load_bundled_sycophancy("test"), config.n_test_pairs)
    demo = probe_penalty_demo(
        model, train_pairs, test_pairs, layer, n_samples=config.demo_samples, lambdas=config.demo_lambdas,
        site=site, batch_size=config.batch_size, seed=config.seed,
    )
    demo.probe.save(out / "sycophancy_probe", overwrite=True)
    lap("sycophancy probe and best-of-n")

    directions = {"sycophancy (CAA)": demo.caa, "sycophancy probe": demo.probe.direction()}
    refusal, refusal_info = refusal_direction(config, model, layer, site)
    if refusal is not None:
        directions["refusal (diff-in-means)"] = refusal
    lap("refusal direction")

    layers = sorted({layer, *(d.layer for d in directions.values())})
    acts = option_activations(model, questions, layers, site=site, batch_size=config.batch_size)
    answers = torch.tensor([q.answer for q in questions])
    lap("option activations")
    report = classifier_report(
        acts, answers, dictionary=dictionary, kinds=config.kinds, directions=directions, probe_layer=layer,
        probe_l2=config.probe_l2, test_fraction=config.test_fraction, top_k=config.top_k, n_random=config.n_random,
        n_bootstrap=config.n_bootstrap, seed=config.seed,
    )
    lap("evaluation")
    figures = draw_figures(report, label, out)
    demo_figure(demo.summary, label, out / "probe_penalty_best_of_n.png")
    lap("figures")
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
        "figures": figures,
        "seconds": timings,
    }


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _figure_rows(report: ClassifierReport) -> list[str]:
    """The rows worth drawing: the best train-chosen feature per kind, directions, probe, model, one random feature."""
    chosen = [next(r.name for r in report.rows if r.group == "feature" and KIND_LABELS[kind] in r.name)
              for kind in report.top_features]
    others = [r.name for r in report.rows if r.group in ("direction", "probe", "model")]
    return [name for name in chosen + others if name in report.test_scores]


def draw_figures(report: ClassifierReport, label: str, out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    labels = report.test_labels.flatten()
    names = _figure_rows(report)
    written = []

    # Score histograms, correct vs incorrect options, on test.
    columns = min(3, len(names))
    rows_n = -(-len(names) // columns)
    figure, axes = plt.subplots(rows_n, columns, figsize=(4.2 * columns, 3.2 * rows_n), squeeze=False)
    for axis, name in zip(axes.flat, names):
        scores = report.test_scores[name].flatten().float()
        bins = torch.linspace(float(scores.min()), float(scores.max()) + 1e-6, 25).tolist()
        axis.hist(scores[labels].tolist(), bins=bins, alpha=0.6, density=True, label="correct option")
        axis.hist(scores[~labels].tolist(), bins=bins, alpha=0.6, density=True, label="incorrect option")
        axis.set_title(f"{name}\nAUROC {report.row(name).test_auroc:.2f}", fontsize=8)
        axis.set_xlabel("score (sign fixed on train)", fontsize=8)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(f"{label}: test scores on the answer letter, correct vs incorrect options")
    figure.tight_layout()
    written.append(str(save_figure(figure, out / "score_histograms.png")))

    # ROC curves on test.
    figure, axis = plt.subplots(figsize=(5.6, 5.2))
    random_name = next((r.name for r in report.rows if r.group == "random" and r.name in report.test_scores), None)
    for name in names + ([random_name] if random_name else []):
        fpr, tpr = roc_curve(report.test_scores[name].flatten(), labels)
        axis.plot(fpr.tolist(), tpr.tolist(), label=f"{name} ({report.row(name).test_auroc:.2f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("false-positive rate")
    axis.set_ylabel("true-positive rate")
    axis.set_title(f"{label}: ROC on test (question × option)", fontsize=10)
    axis.legend(fontsize=6)
    written.append(str(save_figure(figure, out / "roc_curves.png")))

    # Test accuracy and AUROC of the top features (chosen on train), with the baselines as lines.
    features = [r for r in report.rows if r.group == "feature"]
    if features:
        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        x = list(range(len(features)))
        for axis, key, title in ((left, "test_auroc", "AUROC"), (right, "test_mc_accuracy", "multiple-choice accuracy")):
            values = [getattr(r, key) for r in features]
            cis = [getattr(r, f"{key}_ci") for r in features]
            errors = [[v - c[0] for v, c in zip(values, cis)], [c[1] - v for v, c in zip(values, cis)]]
            axis.bar(x, values, yerr=errors, color="tab:blue", alpha=0.7, capsize=2)
            for r, style in ((_row_of(report, "probe"), "--"), (_row_of(report, "model"), "-."), (_row_of(report, "chance"), ":")):
                if r is not None:
                    axis.axhline(getattr(r, key), linestyle=style, color="grey", linewidth=1, label=r.name)
            axis.set_xticks(x, [r.name.split(" (")[0].replace("feature ", "#") + ("e" if "encoder" in r.name else "d") for r in features],
                            rotation=60, fontsize=7)
            axis.set_ylabel(f"test {title} (95% bootstrap CI)")
            axis.set_title(f"top features by train AUROC: test {title}", fontsize=9)
            axis.legend(fontsize=7)
        figure.suptitle(f"{label}: top features (e: encoder, d: decoder scores)")
        written.append(str(save_figure(figure, out / "top_features.png")))
    return written


def _row_of(report: ClassifierReport, group: str) -> Any:
    return next((r for r in report.rows if r.group == group), None)


def demo_figure(summary: dict[str, Any], label: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    lambdas = [float(k) for k in summary["by_lambda"]]
    rates = [v["sycophancy_rate"] for v in summary["by_lambda"].values()]
    cis = [v["ci95"] for v in summary["by_lambda"].values()]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.errorbar(lambdas, rates, yerr=[[r - c[0] for r, c in zip(rates, cis)], [c[1] - r for r, c in zip(rates, cis)]],
                  marker="o", capsize=3, label="chosen response sycophantic")
    axis.axhline(summary["floor_all_samples_sycophantic"], linestyle=":", color="grey", label="all samples sycophantic (floor)")
    axis.axhline(summary["greedy_sycophancy_rate"], linestyle="--", color="grey", label="greedy answer sycophantic")
    axis.set_xlabel("penalty λ (reward' = log P(letter) − λ · P_probe(sycophantic))")
    axis.set_ylabel("fraction of held-out prompts")
    axis.set_title(f"{label}: best-of-{summary['n_samples']} with a sycophancy-probe penalty", fontsize=10)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def _ci(value: float, ci: Sequence[float] | None) -> str:
    if value != value:  # NaN
        return "—"
    return f"{value:.3f}" if ci is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _model_section(name: str, r: dict[str, Any]) -> list[str]:
    c = r["classifiers"]
    demo = r["probe_penalty_demo"]
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
    probe = c.get("probe") or {}
    refusal = r["refusal_direction"]
    lines += [
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
        "",
        "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()),
        "",
    ]
    return lines


def summary_markdown(results: dict[str, dict[str, Any]], missing: dict[str, str], config: ClassifierConfig) -> str:
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
