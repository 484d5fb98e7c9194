"""Sycophancy steering with contrastive activation addition (CAA), on every installed packaged model.

Per model: (1) choose the A/B prompt format on training pairs by the probability it puts on the answer
letters; (2) CAA vectors at every layer from the training pairs (one pass per batch); (3) choose the
layer on training pairs (A/B swing between ± a fixed multiplier); (4) sweep layers × multipliers on the
held-out pairs (A/B score and letter mass); (5) open-ended agreement with "Do you agree?" prompts
(first-token agree vs disagree probability, and steered generations scored by a crude keyword judge);
(6) factual multiple-choice accuracy under the same multipliers. Multipliers are in units of the mean
residual norm at the layer (the unit CAA vector scaled), so they compare across layers and models.
The vector is added from the last prompt token on (`Steer(positions="new")`), as CAA adds it after the
instruction. Nothing is tuned on the held-out split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from interp.caa import (
    CANDIDATE_FORMATS,
    NORMALISATION_LABELS,
    ABEvaluator,
    AgreementEvaluator,
    ClozeEvaluator,
    MultipleChoiceEvaluator,
    ab_sweep,
    build_caa_vectors,
    choose_format,
    compare_formats,
    judged_rate,
    keyword_agreement_judge,
    letter_balance,
    shuffle_options,
    steered_generations,
    summarise_curve,
)
from interp.chat import format_chat
from interp.datasets import (
    load_bundled_multiple_choice,
    load_bundled_opinion_prompts,
    load_bundled_sycophancy,
)
from interp.experiments import StageClock, register
from interp.hooked import n_layers
from interp.models import REGISTRY, is_installed, load_model, model_name
from interp.plots import line_plot, save_figure

T = TypeVar("T")
DEFAULT_MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


@dataclass
class SycophancyConfig:
    model: str | None = None  # one model (registry name, HF folder, .gguf); None: every installed DEFAULT_MODELS
    n_format_pairs: int = 24  # training pairs on which the prompt format and the layer are chosen
    n_train: int | None = None  # training pairs for the vectors (None: all 234)
    n_test: int | None = None  # held-out pairs (None: all 79)
    shuffle_seed: int | None = None  # re-draw which letter is matching (the bundled data is balanced already)
    layer_stride: int = 3  # sweep every 3rd layer (vectors are built at every layer)
    layers: tuple[int, ...] | None = None  # explicit sweep layers instead of the stride
    multipliers: tuple[float, ...] = (-1.0, -0.5, -0.25, -0.1, -0.05, 0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
    normalisation: str = "resid"  # multipliers × mean residual norm at the layer
    select_multiplier: float = 0.25  # the layer is chosen by the training A/B swing between ± this
    n_opinion: int | None = None  # opinion prompts for the first-token agreement measure (None: all 30)
    generation_multipliers: tuple[float, ...] = (-0.3, 0.0, 0.3)
    n_generation_prompts: int = 8
    max_new_tokens: int = 32
    n_mc: int | None = 62  # factual multiple-choice questions (every 2nd of the 124; None: all)
    cloze_multipliers: tuple[float, ...] = (-0.5, -0.25, 0.0, 0.25, 0.5)  # free-text accuracy (costlier per point)
    batch_size: int = 16
    device: str | None = None
    seed: int = 0


def spread(items: Sequence[T], count: int | None) -> list[T]:
    """`count` items evenly spaced through `items` (all of them for None): a deterministic, mixed subset."""
    items = list(items)
    if count is None or count >= len(items):
        return items
    if count < 1:
        raise ValueError(f"count: expected >= 1, got {count}")
    return [items[(i * len(items)) // count] for i in range(count)]


def sweep_layers(count: int, stride: int, explicit: Sequence[int] | None) -> list[int]:
    """Every `stride`-th layer from 1 (resid_pre of layer 0 is the token embedding), ending near the top."""
    if explicit:
        return sorted({layer % count for layer in explicit})
    if stride < 1:
        raise ValueError(f"layer_stride: expected >= 1, got {stride}")
    return list(range(1, count, stride))


def models_to_run(config: SycophancyConfig) -> tuple[list[str], dict[str, str]]:
    """The models to run and, for registry models that are not installed, the pip command to install them."""
    if config.model is not None:
        return [config.model], {}
    missing = {name: REGISTRY[name].pip_command for name in DEFAULT_MODELS if not is_installed(name)}
    return [name for name in DEFAULT_MODELS if name not in missing], missing


@register(
    "sycophancy",
    "CAA sycophancy vectors: held-out A/B layer × multiplier sweep, open-ended agreement, accuracy trade-off",
    SycophancyConfig,
)
def run(config: SycophancyConfig, out: Path) -> dict[str, Any]:
    if config.normalisation not in NORMALISATION_LABELS:
        raise ValueError(f"normalisation: expected one of {sorted(NORMALISATION_LABELS)}, got {config.normalisation!r}")
    if 0.0 not in config.multipliers:
        raise ValueError("multipliers: include 0.0 (the unsteered baseline)")
    names, missing = models_to_run(config)
    if not names:
        commands = "\n".join(f"    {command}" for command in missing.values())
        raise RuntimeError(f"sycophancy: none of {list(DEFAULT_MODELS)} is installed; install them with:\n{commands}")
    torch.manual_seed(config.seed)
    results = {}
    for name in names:
        folder = out / (name if name in REGISTRY else Path(name).stem)
        results[name] = run_model(name, config, folder)
    headline = choose_headline(results)
    return {
        "models": results,
        "skipped": {name: f"not installed: {command}" for name, command in missing.items()},
        "headline_model": headline,
        "summary_md": summary_markdown(results, missing, headline, config),
    }


def run_model(name: str, config: SycophancyConfig, out: Path) -> dict[str, Any]:
    """The whole experiment on one model; figures and vectors go into `out`."""
    clock = StageClock()
    lap, timings = clock.lap, clock.seconds

    model = load_model(name, device=config.device)
    label = model_name(model)
    lap("load")
    train = spread(load_bundled_sycophancy("train"), config.n_train)
    test = spread(load_bundled_sycophancy("test"), config.n_test)
    if config.shuffle_seed is not None:
        train, test = shuffle_options(train, config.shuffle_seed), shuffle_options(test, config.shuffle_seed + 1)
    format_pairs = spread(load_bundled_sycophancy("train"), config.n_format_pairs)
    if config.shuffle_seed is not None:
        format_pairs = shuffle_options(format_pairs, config.shuffle_seed)
    batch = config.batch_size
    norm_label = NORMALISATION_LABELS[config.normalisation]

    # 1. The prompt format, chosen on training pairs by letter mass.
    reports = compare_formats(model, format_pairs, CANDIDATE_FORMATS, batch_size=batch)
    fmt = choose_format(reports).fmt
    lap("format")

    # 2. Vectors at every layer, one pass per batch.
    vectors = build_caa_vectors(model, train, fmt, batch_size=batch)
    vectors.save(out / "vectors", overwrite=True)
    lap("vectors")

    # 3. The layer, chosen on training pairs.
    layers = sweep_layers(n_layers(model), config.layer_stride, config.layers)
    selector = choose_format(reports).evaluator  # the same pairs, already run for the format choice
    s = config.select_multiplier
    selection = ab_sweep(selector, vectors, layers, [-s, s], normalisation=config.normalisation, progress=False)
    train_swing = {layer: selection.row(layer)[1] - selection.row(layer)[0] for layer in layers}
    best = max(train_swing, key=train_swing.get)
    lap("layer selection")

    # 4. The held-out sweep.
    evaluator = ABEvaluator(model, test, fmt, batch_size=batch)
    ab = ab_sweep(evaluator, vectors, layers, config.multipliers, normalisation=config.normalisation)
    baseline = evaluator.score()
    curves = {layer: summarise_curve(ab.multipliers, ab.row(layer)) for layer in layers}
    held_out_best = max(layers, key=lambda layer: curves[layer].window_swing)
    by_category = {
        str(m): (evaluator.score([vectors.steer(best, m, config.normalisation)]) if m else baseline).by_group(
            evaluator.categories
        )
        for m in ab.multipliers
    }
    lap("held-out sweep")

    # 5. Open-ended agreement: first-token probabilities at every sweep layer, then generations.
    opinions = spread(load_bundled_opinion_prompts(), config.n_opinion)
    agreement = AgreementEvaluator(model, opinions, batch_size=batch, progress=False)
    false_rows = [not flag for flag in agreement.stance_is_true]
    true_rows = list(agreement.stance_is_true)
    unsteered_agreement = agreement.score()
    conditions = [(layer, m) for layer in layers for m in ab.multipliers]
    agree_scores = {
        (layer, m): agreement.score([vectors.steer(layer, m, config.normalisation)]) if m else unsteered_agreement
        for layer, m in tqdm(conditions, desc="agreement sweep", leave=False)
    }
    agree_rows = {
        layer: {
            "false_claims": [agree_scores[layer, m].mean(false_rows) for m in ab.multipliers],
            "true_claims": [agree_scores[layer, m].mean(true_rows) for m in ab.multipliers],
            "mass": [agree_scores[layer, m].agree_mass for m in ab.multipliers],
        }
        for layer in layers
    }
    # Per layer: the change in agreement with false claims between ± the selection multiplier.
    agree_effect = {
        layer: _difference(ab.multipliers, agree_rows[layer]["false_claims"], s) for layer in layers
    }
    # No held-out split exists for these 30 prompts: this layer is reported as where agreement moved most.
    agree_layer = max(layers, key=lambda layer: agree_effect[layer])
    lap("agreement")
    generation_prompts = spread(load_bundled_opinion_prompts(), config.n_generation_prompts)
    texts = [format_chat(model, p.prompt) for p in generation_prompts]
    generations: dict[int, dict[float, list[str]]] = {}
    for layer in dict.fromkeys([best, agree_layer]):
        multipliers = [m for m in config.generation_multipliers if m or not generations]  # 0 runs once
        generations[layer] = steered_generations(
            model, texts, vectors, layer, multipliers, normalisation=config.normalisation,
            max_new_tokens=config.max_new_tokens, batch_size=batch,
        )
    unsteered_texts = next(iter(generations.values())).get(0.0)
    if unsteered_texts is not None:
        for layer_generations in generations.values():
            layer_generations.setdefault(0.0, unsteered_texts)
    judged = {
        layer: {
            m: judged_rate(keyword_agreement_judge, [p.prompt for p in generation_prompts], completions)
            for m, completions in sorted(layer_generations.items())
        }
        for layer, layer_generations in generations.items()
    }
    lap("generation")

    # 6. Factual accuracy at the chosen layer: letters A-D after the A/B format's prefix (all multipliers),
    # and the choices' text after "The answer is" (small models that cannot answer in letters still can).
    questions = spread(load_bundled_multiple_choice(), config.n_mc)
    mc = MultipleChoiceEvaluator(model, questions, fmt, batch_size=batch, progress=False)
    mc_scores = {m: mc.score([vectors.steer(best, m, config.normalisation)] if m else []) for m in ab.multipliers}
    accuracy = [mc_scores[m].accuracy for m in ab.multipliers]
    cloze = ClozeEvaluator(model, questions, batch_size=batch, progress=False)
    cloze_multipliers = [float(m) for m in config.cloze_multipliers]
    cloze_scores = {m: cloze.score([vectors.steer(best, m, config.normalisation)] if m else []) for m in cloze_multipliers}
    cloze_accuracy = [cloze_scores[m].accuracy for m in cloze_multipliers]
    cloze_ab = [
        (evaluator.score([vectors.steer(best, m, config.normalisation)]) if m else baseline).score
        for m in cloze_multipliers
    ]
    lap("accuracy")

    # Figures.
    xlabel = f"multiplier ({norm_label})"  # every figure says which normalisation
    line_plot(
        ab.multipliers, {f"layer {layer}": ab.row(layer) for layer in layers}, xlabel=xlabel,
        ylabel="P(sycophantic letter) / (P(A) + P(B))",
        title=f"{label}: CAA sycophancy vector, held-out A/B ({len(test)} pairs)",
        path=out / "ab_score_vs_multiplier.png", baseline=baseline.score,
    )
    line_plot(
        ab.multipliers, {f"layer {layer}": ab.mass[i].tolist() for i, layer in enumerate(layers)}, xlabel=xlabel,
        ylabel="P(A) + P(B) at the answer position", title=f"{label}: letter mass under steering",
        path=out / "letter_mass_vs_multiplier.png",
    )
    effect = {"train (+m) − (−m)": [train_swing[layer] for layer in layers]}
    if s in ab.multipliers and -s in ab.multipliers:
        plus, minus = ab.multipliers.index(s), ab.multipliers.index(-s)
        effect["held-out (+m) − (−m)"] = [ab.row(layer)[plus] - ab.row(layer)[minus] for layer in layers]
    effect["open-ended agreement, false claims (+m) − (−m)"] = [agree_effect[layer] for layer in layers]
    line_plot(
        layers, effect, xlabel="layer (resid_pre)", ylabel=f"value at +m − value at −m, m = {s:g} ({norm_label})",
        title=f"{label}: per-layer effect of the CAA vector", path=out / "layer_effect.png", baseline=0.0,
    )
    line_plot(
        ab.multipliers, {f"layer {layer}": agree_rows[layer]["false_claims"] for layer in layers}, xlabel=xlabel,
        ylabel="P(agree-like first token) / (agree + disagree)",
        title=f"{label}: agreement with {sum(false_rows)} false claims", path=out / "agreement_vs_multiplier.png",
        baseline=unsteered_agreement.mean(false_rows),
    )
    line_plot(
        ab.multipliers,
        {
            **{f"false claims, layer {layer}": agree_rows[layer]["false_claims"] for layer in dict.fromkeys([best, agree_layer])},
            **{f"true claims, layer {layer}": agree_rows[layer]["true_claims"] for layer in dict.fromkeys([best, agree_layer])},
            **{f"agree+disagree token mass, layer {layer}": agree_rows[layer]["mass"] for layer in dict.fromkeys([best, agree_layer])},
        },
        xlabel=xlabel, ylabel="agreement share / token mass",
        title=f"{label}: false vs true claims", path=out / "agreement_false_vs_true.png",
    )
    tradeoff_plot(
        {"A/B sycophancy score (held-out)": (ab.multipliers, ab.row(best)),
         "factual accuracy, letters A-D": (ab.multipliers, accuracy),
         "factual accuracy, choice text": (cloze_multipliers, cloze_accuracy)},
        (cloze_ab, cloze_accuracy, cloze_multipliers), xlabel=xlabel,
        title=f"{label}: sycophancy vs factual accuracy, layer {best}", path=out / "accuracy_tradeoff.png",
    )
    lap("figures")

    return {
        "model": label,
        "n_layers": n_layers(model),
        "format_reports": [report.to_dict() for report in reports],
        "format": fmt.to_dict(),
        "n_train": len(train),
        "n_test": len(test),
        "letter_balance": {"train": letter_balance(train), "test": letter_balance(test)},
        "normalisation": config.normalisation,
        "vector_raw_norm": vectors.vectors.norm(dim=-1).tolist(),
        "mean_resid_norm": vectors.resid_norm.tolist(),
        "sweep_layers": layers,
        "train_swing": {str(layer): value for layer, value in train_swing.items()},
        "best_layer": best,
        "held_out_best_layer": held_out_best,
        "unsteered": {"score": baseline.score, "letter_mass": baseline.letter_mass,
                      "a_share": baseline.a_share, "a_share_spread": baseline.a_share_spread,
                      "by_category": baseline.by_group(evaluator.categories)},
        "ab_sweep": ab.to_dict(),
        "curves": {str(layer): curves[layer].to_dict() for layer in layers},
        "best_layer_by_category": by_category,
        "agreement": {
            "multipliers": ab.multipliers, "n_false": sum(false_rows), "n_true": sum(true_rows),
            "unsteered": {"false_claims": unsteered_agreement.mean(false_rows),
                          "true_claims": unsteered_agreement.mean(true_rows), "mass": unsteered_agreement.agree_mass},
            "by_layer": {str(layer): rows for layer, rows in agree_rows.items()},
            "per_layer_effect_false_claims": {str(layer): value for layer, value in agree_effect.items()},
            "layer_most_moved": agree_layer,
        },
        "generations": {
            "judge": "keyword_agreement_judge (crude)",
            "by_layer": {
                str(layer): {
                    "agree_rate": {str(m): {"rate": rate, "n_judged": n} for m, (rate, n) in judged[layer].items()},
                    "examples": {
                        str(m): [{"prompt": p.prompt, "completion": c} for p, c in zip(generation_prompts, completions)]
                        for m, completions in sorted(layer_generations.items())
                    },
                }
                for layer, layer_generations in generations.items()
            },
        },
        "multiple_choice": {
            "layer": best, "multipliers": ab.multipliers, "accuracy": accuracy,
            "letter_mass": [mc_scores[m].letter_mass for m in ab.multipliers], "n_questions": len(questions),
            "cloze_multipliers": cloze_multipliers, "cloze_accuracy": cloze_accuracy, "cloze_ab_score": cloze_ab,
            "cloze_correct_share": [float(cloze_scores[m].mass.mean()) for m in cloze_multipliers],
        },
        "seconds": timings,
    }


def _difference(multipliers: Sequence[float], values: Sequence[float], step: float) -> float:
    """values at +step minus at −step (NaN when the sweep lacks either)."""
    if step not in multipliers or -step not in multipliers:
        return float("nan")
    return values[list(multipliers).index(step)] - values[list(multipliers).index(-step)]


def tradeoff_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    scatter: tuple[Sequence[float], Sequence[float], Sequence[float]],
    *, xlabel: str, title: str, path: Path,
) -> Path:
    """Left: behaviour and accuracies vs multiplier (each on its own multipliers). Right: accuracy against
    the A/B score, one point per multiplier."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, (x, y) in series.items():
        left.plot(list(x), list(y), marker="o", markersize=3.5, label=label)
    left.axhline(0.25, color="grey", linestyle=":", linewidth=1)
    left.set_xlabel(xlabel)
    left.set_ylabel("score / accuracy (dotted: chance for 4 choices)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    ab_score, accuracy, multipliers = scatter
    right.plot(list(ab_score), list(accuracy), marker="o", color="tab:green")
    for x, y, m in zip(ab_score, accuracy, multipliers):
        right.annotate(f"{m:+g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    right.set_xlabel("held-out A/B sycophancy score")
    right.set_ylabel("factual accuracy, choice text")
    right.grid(alpha=0.3)
    figure.suptitle(title)
    return save_figure(figure, path)


def choose_headline(results: dict[str, dict[str, Any]]) -> str:
    """The model whose held-out A/B score moves most, monotonically, at its training-chosen layer,
    among those that put at least half the probability on the letters."""

    def strength(result: dict[str, Any]) -> float:
        curve = result["curves"][str(result["best_layer"])]
        return curve["window_swing"] if result["unsteered"]["letter_mass"] >= 0.5 else -1.0

    return max(results, key=lambda name: strength(results[name]))


def _fmt_row(values: Sequence[float]) -> str:
    return " | ".join(f"{v:.3f}" for v in values)


def _model_section(name: str, r: dict[str, Any], config: SycophancyConfig) -> list[str]:
    best = r["best_layer"]
    curve = r["curves"][str(best)]
    multipliers = r["ab_sweep"]["multipliers"]
    lines = [
        f"## {name}",
        "",
        "Prompt formats on " f"{r['format_reports'][0]['n_pairs']} training pairs (unsteered):",
        "",
        "| format | answer tokens | letter mass | A/B score |",
        "|---|---|---|---|",
        *[
            f"| {rep['fmt']['name']} | {' / '.join(repr(t) for t in rep['answer_tokens'])} | "
            f"{rep['letter_mass']:.3f} | {rep['score']:.3f} |"
            for rep in r["format_reports"]
        ],
        "",
        f"Chosen (highest letter mass): **{r['format']['name']}**. Held-out, unsteered: A/B score "
        f"{r['unsteered']['score']:.3f}, letter mass {r['unsteered']['letter_mass']:.3f} ({r['n_test']} pairs; "
        f"by category: " + ", ".join(f"{k} {v:.2f}" for k, v in r["unsteered"]["by_category"].items())
        + f"). Letter bias: P(A) / (P(A) + P(B)) = {r['unsteered']['a_share']:.2f} ± {r['unsteered']['a_share_spread']:.2f} "
        "(mean ± s.d. over pairs; a small spread means the letter hardly depends on the options).",
        "",
        f"Vectors from {r['n_train']} training pairs (matching letter is A in {r['letter_balance']['train']:.0%}). "
        f"Layer chosen on training pairs (A/B swing between ±{config.select_multiplier:g}): **{best}** of "
        f"{r['n_layers']}; the layer with the widest monotonic held-out swing is {r['held_out_best_layer']}.",
        "",
        f"Held-out A/B score, multiplier {NORMALISATION_LABELS[r['normalisation']]} "
        "(← marks the layer chosen on training pairs):",
        "",
        "| layer | resid norm | CAA norm | train swing | " + " | ".join(f"{m:g}" for m in multipliers)
        + " | monotonic window | swing there | Spearman | agreement effect |",
        "|---|---|---|---|" + "---|" * len(multipliers) + "---|---|---|---|",
    ]
    for layer in r["sweep_layers"]:
        c = r["curves"][str(layer)]
        marker = " ←" if layer == best else ""
        lines.append(
            f"| {layer}{marker} | {r['mean_resid_norm'][layer]:.1f} | {r['vector_raw_norm'][layer]:.1f} | "
            f"{r['train_swing'][str(layer)]:+.3f} | {_fmt_row(r['ab_sweep']['values'][str(layer)])} | "
            f"[{c['window'][0]:g}, {c['window'][1]:g}] | {c['window_swing']:+.3f} | {c['spearman']:+.2f} | "
            f"{r['agreement']['per_layer_effect_false_claims'][str(layer)]:+.3f} |"
        )
    lines += [
        "",
        f"Train swing: A/B score at +{config.select_multiplier:g} minus at −{config.select_multiplier:g} on the "
        f"{r['format_reports'][0]['n_pairs']} training pairs (chooses the layer). Agreement effect: the same "
        "difference for P(agree-like first token) on the open-ended prompts with false claims.",
    ]
    mass_row = r["ab_sweep"]["mass"][str(best)]
    agreement, mc, gen = r["agreement"], r["multiple_choice"], r["generations"]
    agree_layers = list(dict.fromkeys([best, agreement["layer_most_moved"]]))
    lines += [
        "",
        f"At layer {best}: monotonic over the whole range: {curve['monotonic']}; non-decreasing over "
        f"[{curve['window'][0]:g}, {curve['window'][1]:g}] with a swing of {curve['window_swing']:+.3f}; "
        f"end-to-end swing {curve['swing']:+.3f}. Letter mass along the row: {_fmt_row(mass_row)}.",
        "",
        f"By category at layer {best}, multiplier {curve['window'][0]:g} → 0 → {curve['window'][1]:g}: "
        + ", ".join(
            f"{category} {r['best_layer_by_category'][str(curve['window'][0])][category]:.2f} → "
            f"{r['unsteered']['by_category'][category]:.2f} → "
            f"{r['best_layer_by_category'][str(curve['window'][1])][category]:.2f}"
            for category in r["unsteered"]["by_category"]
        )
        + ".",
        "",
        f"Open-ended agreement, P(agree-like first token) / (agree + disagree), at the A/B layer {best} and at "
        f"the layer where it moved most ({agreement['layer_most_moved']}; chosen on these same prompts, there is "
        f"no split); {agreement['n_false']} false and {agreement['n_true']} true claims; unsteered "
        f"{agreement['unsteered']['false_claims']:.3f} / {agreement['unsteered']['true_claims']:.3f}:",
        "",
        "| multiplier | " + " | ".join(f"{m:g}" for m in multipliers) + " |",
        "|---|" + "---|" * len(multipliers),
    ]
    for layer in agree_layers:
        rows = agreement["by_layer"][str(layer)]
        lines += [
            f"| layer {layer}, false claims | " + _fmt_row(rows["false_claims"]) + " |",
            f"| layer {layer}, true claims | " + _fmt_row(rows["true_claims"]) + " |",
            f"| layer {layer}, agree+disagree token mass | " + _fmt_row(rows["mass"]) + " |",
        ]
    lines += [
        f"| layer {best}, MC accuracy, letters | " + _fmt_row(mc["accuracy"]) + " |",
        "",
        f"Factual multiple-choice accuracy ({mc['n_questions']} questions, letter A-D after the A/B format's prefix) "
        "is the last row (chance is 0.25). Answered in text instead (each choice scored by its mean token "
        f"log-probability after \"The answer is\"; chance 0.25), layer {best}:",
        "",
        "| multiplier | " + " | ".join(f"{m:g}" for m in mc["cloze_multipliers"]) + " |",
        "|---|" + "---|" * len(mc["cloze_multipliers"]),
        "| accuracy, choice text | " + _fmt_row(mc["cloze_accuracy"]) + " |",
        "| held-out A/B score | " + _fmt_row(mc["cloze_ab_score"]) + " |",
        "",
        "Steered generations (greedy, vector added at every new token), agree rate by the crude keyword judge "
        "(judged / total):",
        "",
    ]
    for layer, entry in gen["by_layer"].items():
        rates = ", ".join(
            f"{float(m):+g}: {v['rate']:.2f} ({v['n_judged']}/{len(entry['examples'][m])})" for m, v in entry["agree_rate"].items()
        )
        lines.append(f"- layer {layer}: {rates}")
    first_layer = next(iter(gen["by_layer"].values()))
    prompt = next(iter(first_layer["examples"].values()))[0]["prompt"]
    lines += ["", f"Example, prompt: _{prompt}_", ""]
    for layer, entry in gen["by_layer"].items():
        for m, examples in entry["examples"].items():
            text = examples[0]["completion"].strip().replace("\n", " ")
            lines.append(f"- layer {layer}, {float(m):+g}: {text}")
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()), ""]
    return lines


def summary_markdown(
    results: dict[str, dict[str, Any]], missing: dict[str, str], headline: str, config: SycophancyConfig
) -> str:
    h = results[headline]
    curve = h["curves"][str(h["best_layer"])]
    lines = [
        "# Sycophancy steering with contrastive activation addition (CAA)",
        "",
        "CAA vector: mean over training pairs of resid_pre(sycophantic answer letter) − resid_pre(other letter) "
        "at the letter token, every layer; added from the last prompt token on. Format and layer are "
        "chosen on training pairs; every number below the format table is on the held-out split.",
        "",
        f"**Headline: {headline}** (largest monotonic held-out swing at its training-chosen layer): layer "
        f"{h['best_layer']} of {h['n_layers']}, A/B score {h['unsteered']['score']:.3f} unsteered, "
        f"non-decreasing over multipliers [{curve['window'][0]:g}, {curve['window'][1]:g}] "
        f"with a swing of {curve['window_swing']:+.3f} (letter mass {h['unsteered']['letter_mass']:.2f}).",
        "",
    ]
    for name, command in missing.items():
        lines += [f"_{name} was skipped: not installed (`{command}`)._", ""]
    for name, result in results.items():
        lines += _model_section(name, result, config)
    return "\n".join(lines)
