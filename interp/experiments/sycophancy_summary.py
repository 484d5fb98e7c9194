"""The sycophancy experiment's summary.md: the headline model, then every model's tables and examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interp.caa import NORMALISATION_LABELS

if TYPE_CHECKING:
    from interp.experiments.sycophancy import SycophancyConfig


def _fmt_row(values: Sequence[float]) -> str:
    return " | ".join(f"{v:.3f}" for v in values)


def summary_markdown(
    results: dict[str, dict[str, Any]], missing: dict[str, str], headline: str, config: SycophancyConfig
) -> str:
    """The sycophancy experiment's `summary.md`: per model, the tables, and what they show.

    Returns:
        The Markdown text.
    """
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
        lines += _model_section(name, result, config.select_multiplier)
    return "\n".join(lines)


def _model_section(name: str, r: dict[str, Any], select_multiplier: float) -> list[str]:
    return [
        *_choice_lines(name, r, select_multiplier),
        *_sweep_lines(r, select_multiplier),
        *_best_layer_lines(r),
        *_agreement_lines(r),
        *_accuracy_lines(r),
        *_generation_lines(r),
        "", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()), "",
    ]


def _choice_lines(name: str, r: dict[str, Any], select_multiplier: float) -> list[str]:
    return [
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
        f"Layer chosen on training pairs (A/B swing between ±{select_multiplier:g}): **{r['best_layer']}** of "
        f"{r['n_layers']}; the layer with the widest monotonic held-out swing is {r['held_out_best_layer']}.",
    ]


def _sweep_lines(r: dict[str, Any], select_multiplier: float) -> list[str]:
    best = r["best_layer"]
    multipliers = r["ab_sweep"]["multipliers"]
    lines = [
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
    return lines + [
        "",
        f"Train swing: A/B score at +{select_multiplier:g} minus at −{select_multiplier:g} on the "
        f"{r['format_reports'][0]['n_pairs']} training pairs (chooses the layer). Agreement effect: the same "
        "difference for P(agree-like first token) on the open-ended prompts with false claims.",
    ]


def _best_layer_lines(r: dict[str, Any]) -> list[str]:
    best = r["best_layer"]
    curve = r["curves"][str(best)]
    mass_row = r["ab_sweep"]["mass"][str(best)]
    return [
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
    ]


def _agreement_lines(r: dict[str, Any]) -> list[str]:
    best = r["best_layer"]
    multipliers = r["ab_sweep"]["multipliers"]
    agreement = r["agreement"]
    lines = [
        "",
        f"Open-ended agreement, P(agree-like first token) / (agree + disagree), at the A/B layer {best} and at "
        f"the layer where it moved most ({agreement['layer_most_moved']}; chosen on these same prompts, there is "
        f"no split); {agreement['n_false']} false and {agreement['n_true']} true claims; unsteered "
        f"{agreement['unsteered']['false_claims']:.3f} / {agreement['unsteered']['true_claims']:.3f}:",
        "",
        "| multiplier | " + " | ".join(f"{m:g}" for m in multipliers) + " |",
        "|---|" + "---|" * len(multipliers),
    ]
    for layer in dict.fromkeys([best, agreement["layer_most_moved"]]):
        rows = agreement["by_layer"][str(layer)]
        lines += [
            f"| layer {layer}, false claims | " + _fmt_row(rows["false_claims"]) + " |",
            f"| layer {layer}, true claims | " + _fmt_row(rows["true_claims"]) + " |",
            f"| layer {layer}, agree+disagree token mass | " + _fmt_row(rows["mass"]) + " |",
        ]
    return lines + [f"| layer {best}, MC accuracy, letters | " + _fmt_row(r["multiple_choice"]["accuracy"]) + " |"]


def _accuracy_lines(r: dict[str, Any]) -> list[str]:
    mc = r["multiple_choice"]
    return [
        "",
        f"Factual multiple-choice accuracy ({mc['n_questions']} questions, letter A-D after the A/B format's prefix) "
        "is the last row (chance is 0.25). Answered in text instead (each choice scored by its mean token "
        f"log-probability after \"The answer is\"; chance 0.25), layer {r['best_layer']}:",
        "",
        "| multiplier | " + " | ".join(f"{m:g}" for m in mc["cloze_multipliers"]) + " |",
        "|---|" + "---|" * len(mc["cloze_multipliers"]),
        "| accuracy, choice text | " + _fmt_row(mc["cloze_accuracy"]) + " |",
        "| held-out A/B score | " + _fmt_row(mc["cloze_ab_score"]) + " |",
    ]


def _generation_lines(r: dict[str, Any]) -> list[str]:
    gen = r["generations"]
    lines = [
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
    return lines
