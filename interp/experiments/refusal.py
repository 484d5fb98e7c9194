"""Refusal direction on the model that refuses: selection, ablation, subtraction, abliteration, SVD recovery.

Train on one split (default: the bundled `interp/data/harmful_train.json` / `harmless_train.json`), evaluate on
another it did not see (`*_val.json`): refusal rates of the baseline, the direction ablated at every
layer, the direction subtracted at its layer, and the weight-orthogonalised model saved and reloaded
from disk; harmless KL and loss on ordinary text; the direction recovered from the weight difference
between the base and the orthogonalised model (also after simulated re-quantisation), chosen by edit
consistency and behaviour. `data_dir` points at any folder with the four refusal_direction JSON files.
From Python: `run_experiment("refusal", "results", data_dir="../shared/datasets/refusal")`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp._io import remove_artifact
from interp._timing import StageClock, progress_on
from interp.capability import CapabilityRow, capability_under, completion_loss
from interp.chat import format_chats
from interp.directions import Direction
from interp.experiments import register
from interp.experiments.common import (
    RefusalConfig,
    experiment_model,
    fit_refusal,
    load_split,
    refusal_judge,
    refusal_selection,
)
from interp.experiments.refusal_figures import candidates_heatmap, refusal_rate_bars, svd_spectra
from interp.headlines import Headline, at, claim, num, safe
from interp.hf_weights import weight_refs
from interp.hooked import HookedModel, hf_tree
from interp.metrics import kl_divergence, wilson_interval
from interp.models import HF_MODEL_KIND, load_hf, load_model, model_name
from interp.refusal import Judge, RefusalFit, refusal_rate, refusal_scores, subtraction
from interp.runner import generate_greedy_scored, last_logits
from interp.steering import Ablate
from interp.weight_diff import WeightDiff, choose_weight_diff_direction, weight_diff_directions
from interp.weight_edit import orthogonalize_weights, quantize_weights_, save_hf_model

__all__ = ["RefusalConfig", "headline", "run"]  # RefusalConfig lives in .common, shared with the sparse experiment


# ---------------------------------------------------------------------------------------------
# Headline: the seed's claims against result.json
# ---------------------------------------------------------------------------------------------


def headline(result: dict[str, Any]) -> Headline:
    """The report's headline of a refusal result: key numbers, and the seed's claims with our number and a verdict.

    Args:
        result: the experiment's `result.json` as a dict.

    Returns:
        The `Headline`; a missing key gives an n/a row, never an error.
    """
    numbers = {
        "model": result.get("model"),
        "direction layer": safe(lambda: at(result, "direction", "layer")),
        **{f"harmful refusal rate, {condition} (95% interval)": safe(lambda condition=condition: _rate_text(result, condition))
           for condition in ("baseline", "ablated", "orthogonalised")},
        "harmless KL, ablated": safe(lambda: at(result, "harmless_kl", "ablated")),
    }

    def ablation() -> tuple[str, str]:
        reduction = num(at(result, "relative_reduction", "ablated"))
        kl = num(at(result, "harmless_kl", "ablated"))
        threshold = num(result.get("config", {}).get("kl_threshold", 0.1))
        verdict = ("yes" if reduction >= 0.8 and kl <= threshold
                   else "partly" if reduction >= 0.5 or (reduction >= 0.8) != (kl <= threshold) else "no")
        return f"relative reduction {reduction:.0%}, harmless KL {kl:.3f}", verdict

    def orthogonalised() -> tuple[str, str]:
        gap = num(at(result, "orthogonalised_vs_hooks_max_logit_diff"))
        return f"max |Δ logit| {gap:.1e}", "yes" if gap < 1e-2 else "partly" if gap < 0.1 else "no"

    return Headline(numbers, [
        claim("Ablating the refusal direction cuts refusals of held-out harmful instructions by ≥ 80% (relative) "
              "with harmless KL ≤ 0.1", ablation),
        claim("Weight orthogonalisation (abliteration) is equivalent to ablating the direction with hooks", orthogonalised),
        claim("In the SVD of the first MLP's weight difference (base vs abliterated, quantised), the 1st singular "
              "vector is quantisation error and the 2nd is the refusal direction", lambda: _svd_verdict(result)),
    ])


def _svd_verdict(result: dict[str, Any]) -> tuple[str, str]:
    records = [r for r in at(result, "svd_recovery") if "quantised" in str(r.get("setting", ""))]
    if not records:
        raise KeyError("svd_recovery (no re-quantised setting)")
    parts, second, recovered = [], 0, 0
    for record in records:
        index, cosine = int(at(record, "chosen_index")), abs(num(at(record, "cosine_with_diff_in_means")))
        parts.append(f"{record['setting']}: #{index + 1} singular vector, |cos| {cosine:.3f}")
        recovered += cosine >= 0.9
        second += cosine >= 0.9 and index == 1
    verdict = "yes" if second == len(records) else "partly" if recovered else "no"
    return "; ".join(parts), verdict


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------


def _svd_recovery(
    model: HookedModel, edited: Any, fit: RefusalFit, config: RefusalConfig, label: str
) -> tuple[WeightDiff, dict[str, Any], Direction]:
    result = weight_diff_directions(model, edited, config.svd_weights, layers=config.svd_layers, k=config.svd_k,
                                    layer=fit.direction.layer)
    choice = choose_weight_diff_direction(model, result, fit.select_harmful, fit.refusal_tokens.ids,
                                          fit.select_harmless, batch_size=config.batch_size)
    record = {
        "setting": label, "chosen_index": choice.index, "reason": choice.reason,
        "cosine_with_diff_in_means": choice.direction.cosine(fit.direction),
        "top_singular_cosine_with_diff_in_means": abs(result.directions[0].cosine(fit.direction)),
        "candidates": choice.candidates, "singular_values_top16": result.singular_values[:16].tolist(),
    }
    return result, record, choice.direction




@dataclass
class Data:
    train_harmful: list[str]
    train_harmless: list[str]
    eval_harmful: list[str]
    eval_harmless: list[str]


@dataclass
class Evaluation:
    """Completions, last-position logits and ordinary-text losses of the held-out prompts, per condition."""

    harmful_prompts: list[str]
    harmless_prompts: list[str]
    loss_texts: list[str]
    harmful_text: dict[str, list[str]]
    harmless_text: dict[str, list[str]]
    harmful_logits: dict[str, torch.Tensor]
    harmless_logits: dict[str, torch.Tensor]
    losses: dict[str, float]


@dataclass
class Measures:
    rates: dict[str, dict[str, float]]
    reduction: dict[str, float]
    scores: dict[str, float]
    kls: dict[str, float]
    weights_vs_hooks: float


def load_data(config: RefusalConfig) -> Data:
    return Data(
        load_split(config, "harmful", "train", config.n_train_harmful),
        load_split(config, "harmless", "train", config.n_train_harmless),
        load_split(config, "harmful", "val", config.n_eval_harmful),
        load_split(config, "harmless", "val", config.n_eval_harmless),
    )


def fit_direction(model: HookedModel, config: RefusalConfig, data: Data, out: Path, clock: StageClock) -> tuple[RefusalFit, Direction]:
    """Fit and select the direction on the training split; save it and the candidates' heatmaps."""
    fit = fit_refusal(model, config, data.train_harmful, data.train_harmless, progress_on())
    clock.seconds.update(fit.seconds)
    clock.cpu_seconds.update(fit.cpu_seconds)
    clock.restart()
    direction = fit.direction.with_vector(
        fit.direction.vector, meta={**fit.direction.meta, "dataset": config.data_dir or "bundled"}
    )
    direction.save(out / "direction", overwrite=True)
    candidates_heatmap(fit.table, refusal_selection(config), f"{model_name(model)}: refusal-direction candidates",
              out / "candidates_heatmap.png")
    return fit, direction


def evaluate_with_hooks(model: HookedModel, direction: Direction, config: RefusalConfig, data: Data, clock: StageClock) -> Evaluation:
    """The held-out split on the base model: baseline, the direction ablated, and subtracted at its layer."""
    harmful_prompts, harmless_prompts = format_chats(model, data.eval_harmful), format_chats(model, data.eval_harmless)
    conditions = {
        "baseline": [], "ablated": [Ablate(direction)], "subtracted": [subtraction(direction, config.subtract_multiplier)],
    }
    run_args = dict(max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size)
    score_args = dict(batch_size=config.batch_size)
    # The next-token logits of the generated prompts come from the generation's own prompt pass.
    harmful = {c: generate_greedy_scored(model, harmful_prompts, ivs, **run_args) for c, ivs in conditions.items()}
    harmful_text, harmful_logits = {c: t for c, (t, _) in harmful.items()}, {c: lg for c, (_, lg) in harmful.items()}
    # Harmless completions of the baseline; the ablated model's are the orthogonalised model's (same logits).
    baseline_text, baseline_logits = generate_greedy_scored(model, harmless_prompts, **run_args)
    harmless_text = {"baseline": baseline_text}
    clock.lap("evaluation_generation")
    harmless_logits = {"baseline": baseline_logits} | {
        c: last_logits(model, harmless_prompts, ivs, **score_args)[0] for c, ivs in conditions.items() if c != "baseline"
    }
    loss_texts = [f"{instruction}\n{answer.strip()}" for instruction, answer in
                  zip(data.eval_harmless[: config.n_loss_texts], harmless_text["baseline"][: config.n_loss_texts])]
    losses = {c: completion_loss(model, loss_texts, ivs) for c, ivs in conditions.items()}
    clock.lap("evaluation_scores")
    return Evaluation(harmful_prompts, harmless_prompts, loss_texts, harmful_text, harmless_text, harmful_logits,
                      harmless_logits, losses)


def abliterate(config: RefusalConfig, direction: Direction, out: Path, clock: StageClock) -> tuple[Path, dict, Any]:
    """Orthogonalise a fresh copy of the weights, save it, and load it back with load_model."""
    folder = out / "abliterated_model" if config.keep_model else Path(tempfile.mkdtemp(prefix="interp-abliterated-"))
    hf, tokenizer = load_hf(config.model, device=config.device)
    report = orthogonalize_weights(hf, direction, allow_other_model=True)
    save_hf_model(hf, folder, tokenizer, {"direction": direction.meta, **report}, overwrite=True)
    del hf
    edited = load_model(folder, device=config.device)
    clock.lap("abliterate_save_load")
    return folder, report, edited


def evaluate_orthogonalised(edited: Any, evaluation: Evaluation, config: RefusalConfig, clock: StageClock) -> None:
    """The same held-out prompts on the reloaded orthogonalised model, added as the "orthogonalised" condition."""
    run_args = dict(max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size)
    for kind, prompts in (("harmful", evaluation.harmful_prompts), ("harmless", evaluation.harmless_prompts)):
        texts, logits = generate_greedy_scored(edited, prompts, **run_args)
        getattr(evaluation, f"{kind}_text")["orthogonalised"] = texts
        getattr(evaluation, f"{kind}_logits")["orthogonalised"] = logits
    evaluation.losses["orthogonalised"] = completion_loss(edited, evaluation.loss_texts)
    clock.lap("evaluation_orthogonalised")


def measure(evaluation: Evaluation, fit: RefusalFit, data: Data, judge: Judge) -> Measures:
    """Refusal rates, refusal scores, harmless KL to the baseline, and orthogonalised weights vs hooks."""
    rates = {
        "harmful": {c: refusal_rate(data.eval_harmful, t, judge) for c, t in evaluation.harmful_text.items()},
        "harmless": {c: refusal_rate(data.eval_harmless, t, judge) for c, t in evaluation.harmless_text.items()},
    }
    scores = {c: float(refusal_scores(l, fit.refusal_tokens.ids).mean()) for c, l in evaluation.harmful_logits.items()}
    harmless_logits = evaluation.harmless_logits
    kls = {
        c: float(kl_divergence(harmless_logits["baseline"], logits).mean())
        for c, logits in harmless_logits.items() if c != "baseline"
    }
    weights_vs_hooks = float((harmless_logits["orthogonalised"] - harmless_logits["ablated"]).abs().max())
    base_rate = rates["harmful"]["baseline"]
    reduction = {
        c: (1 - rates["harmful"][c] / base_rate) if base_rate else float("nan") for c in rates["harmful"] if c != "baseline"
    }
    return Measures(rates, reduction, scores, kls, weights_vs_hooks)


def _rate_text(result: dict[str, Any], condition: str) -> str:
    """A harmful refusal rate of `result` with its Wilson interval (when the result records one)."""
    rate = num(at(result, "refusal_rate", "harmful", condition))
    interval = safe(lambda: at(result, "refusal_rate_ci95", "harmful", condition))
    return f"{rate:.2f} [{num(interval[0]):.2f}, {num(interval[1]):.2f}]" if interval else f"{rate:.2f}"


def rate_intervals(rates: dict[str, dict[str, float]], counts: dict[str, int]) -> dict[str, dict[str, list[float]]]:
    """The 95% Wilson interval of each refusal rate over the `counts[kind]` held-out prompts judged."""
    return {kind: {c: list(wilson_interval(rate * counts[kind], counts[kind])) for c, rate in by_condition.items()}
            for kind, by_condition in rates.items()}


def recover_by_svd(
    model: HookedModel, edited: Any, fit: RefusalFit, config: RefusalConfig, out: Path
) -> tuple[list[dict[str, Any]], dict[str, tuple[WeightDiff, int]]]:
    """The direction from the SVD of the weight difference, clean and after each simulated re-quantisation."""
    recovery: list[dict[str, Any]] = []
    spectra: dict[str, tuple[WeightDiff, int]] = {}
    result, record, chosen_svd = _svd_recovery(model, edited, fit, config, "float32 (as saved)")
    recovery.append(record)
    spectra[record["setting"]] = (result, record["chosen_index"])
    refs = weight_refs(hf_tree(edited), config.svd_weights, config.svd_layers)
    originals = [ref.module.weight.detach().clone() for ref in refs]
    for bits in config.quantize_bits:
        with torch.no_grad():
            for ref, original in zip(refs, originals):
                ref.module.weight.copy_(original)
        quantize_weights_(edited, config.svd_weights, bits=bits, layers=config.svd_layers)
        result, record, chosen_svd = _svd_recovery(model, edited, fit, config, f"edited re-quantised Q{bits}")
        recovery.append(record)
        spectra[record["setting"]] = (result, record["chosen_index"])
    chosen_svd.save(out / "direction_svd", overwrite=True)  # from the harshest setting
    return recovery, spectra


def recover_from_external(model: HookedModel, fit: RefusalFit, config: RefusalConfig, recovery: list[dict[str, Any]],
                          spectra: dict[str, tuple[WeightDiff, int]]) -> None:
    """The same recovery from a real abliterated model (`edited_model`), when one is given."""
    if not config.edited_model:
        return
    other, _ = load_hf(config.edited_model, device=config.device)
    result, record, _ = _svd_recovery(model, other, fit, config, f"external: {config.edited_model}")
    recovery.append(record)
    spectra[record["setting"]] = (result, record["chosen_index"])


def examples_of(data: Data, evaluation: Evaluation) -> list[dict[str, str]]:
    return [
        {"instruction": data.eval_harmful[i], **{c: text[i] for c, text in evaluation.harmful_text.items()}}
        for i in range(min(4, len(data.eval_harmful)))
    ] + [
        {"instruction": data.eval_harmless[i], **{c: text[i] for c, text in evaluation.harmless_text.items()}}
        for i in range(min(2, len(data.eval_harmless)))
    ]


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


@register("refusal", "refusal direction: diff-in-means selection, ablation, abliteration, SVD recovery", RefusalConfig,
          headline=headline)
def run(config: RefusalConfig, out: Path) -> dict[str, Any]:
    """Run the refusal experiment and write its figures, `result.json` and `summary.md` into `out`.

    Args:
        config: the settings (`interp reproduce refusal --help` lists each with its type, default and meaning).
        out: the experiment's output folder.

    Returns:
        The result (config, numbers, timing) that `run_experiment` writes as `result.json`.
    """
    clock = StageClock("refusal")
    torch.manual_seed(config.seed)
    judge = refusal_judge(config)
    data = load_data(config)
    model = experiment_model(config.model, config.device)
    name = model_name(model)
    clock.lap("load")
    fit, direction = fit_direction(model, config, data, out, clock)
    evaluation = evaluate_with_hooks(model, direction, config, data, clock)
    capability = capability_under(model, {"baseline": [], "ablated": [Ablate(direction)]}, mmlu_dir=config.mmlu_dir,
                                  batch_size=config.batch_size, seed=config.seed, progress=progress_on()) if config.capability else []
    clock.lap("capability")
    folder, report, edited = abliterate(config, direction, out, clock)
    evaluate_orthogonalised(edited, evaluation, config, clock)
    measures = measure(evaluation, fit, data, judge)
    counts = {"harmful": len(data.eval_harmful), "harmless": len(data.eval_harmless)}
    refusal_rate_bars(measures.rates, counts, f"{name}: held-out refusal rates ({counts['harmful']} harmful, "
                      f"{counts['harmless']} harmless)", out / "refusal_rates.png")
    recovery, spectra = recover_by_svd(model, edited, fit, config, out)
    del edited
    recover_from_external(model, fit, config, recovery, spectra)
    if not config.keep_model:
        remove_artifact(folder, HF_MODEL_KIND)  # only what save_hf_model wrote there
    where = "all layers" if config.svd_layers is None else f"layers {list(config.svd_layers)}"
    svd_spectra(spectra, f"{name}: SVD of Δ{'+'.join(config.svd_weights)} ({where}), base → orthogonalised",
             out / "svd_spectrum.png")
    clock.lap("svd_recovery")
    examples = examples_of(data, evaluation)
    summary = _summary(name, config, fit, direction, measures, evaluation.losses, capability, recovery, clock, report,
                       examples, counts)
    return {
        "model": name,
        "refusal_tokens": {"ids": fit.refusal_tokens.ids, "strings": fit.refusal_tokens.strings,
                           "share_of_refusals": fit.refusal_tokens.share_of_refusals},
        "train": {"harmful": len(data.train_harmful), "harmless": len(data.train_harmless),
                  "harmful_refused": sum(fit.harmful_refused), "harmless_refused": sum(fit.harmless_refused),
                  "fit": fit.n_fit, "select": fit.n_select},
        "direction": {"layer": direction.layer, **{k: v for k, v in direction.meta.items() if k != "refusal_token_ids"}},
        "candidates": fit.table.rows(),
        "refusal_rate": measures.rates, "refusal_rate_ci95": rate_intervals(measures.rates, counts),
        "relative_reduction": measures.reduction, "refusal_score": measures.scores,
        "harmless_kl": measures.kls, "ordinary_text_loss": evaluation.losses,
        "capability": {"questions": config.mmlu_dir or "bundled", "rows": [row.to_dict() for row in capability]},
        "orthogonalised_vs_hooks_max_logit_diff": measures.weights_vs_hooks,
        "abliteration": {"folder": str(folder) if config.keep_model else None, **report},
        "svd_recovery": recovery, "seconds_by_stage": clock.seconds, "cpu_seconds_by_stage": clock.cpu_seconds,
        "torch_threads": torch.get_num_threads(), "examples": examples, "summary_md": summary,
    }


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def _summary(name: str, config: RefusalConfig, fit: RefusalFit, direction: Direction, measures: Measures,
             losses: dict[str, float], capability: list[CapabilityRow], recovery: list, clock: StageClock, report: dict,
             examples: list, counts: dict[str, int]) -> str:
    seconds, cpu_seconds = clock.seconds, clock.cpu_seconds
    lines = [
        f"# Refusal direction on {name}",
        "",
        *_selection_lines(config, fit, direction),
        "",
        *_evaluation_lines(config, measures, losses, report, counts),
        "",
        _capability_line(config, capability),
        "",
        *_svd_lines(config, recovery),
        "",
        "Stage seconds (wall): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".",
        f"Process CPU seconds: {sum(cpu_seconds.values()):.0f} in all ({torch.get_num_threads()} torch threads); "
        + ", ".join(f"{k} {v:.0f}" for k, v in cpu_seconds.items()) + ".",
        "",
        "Examples (harmful, held out):",
        "",
        *[
            f"- **{e['instruction']}** — baseline: {e['baseline'][:90]!r}; ablated: {e['ablated'][:90]!r}"
            for e in examples[:4]
        ],
    ]
    return "\n".join(lines)


def _selection_lines(config: RefusalConfig, fit: RefusalFit, direction: Direction) -> list[str]:
    meta = direction.meta
    screening = (
        f" Screening: all candidates on {config.screen_prompts} prompts, the best {config.screen_keep} on all."
        if config.screen_prompts else ""
    )
    return [
        f"Data: {config.data_dir or 'bundled interp/data/'}; train {len(fit.harmful_refused)} harmful / "
        f"{len(fit.harmless_refused)} harmless, "
        f"of which the model refused {sum(fit.harmful_refused)} harmful and {sum(fit.harmless_refused)} harmless "
        f"(greedy, {config.filter_new_tokens} tokens, phrase judge). Means from {fit.n_fit[0]}/{fit.n_fit[1]} filtered "
        f"prompts, selection on {fit.n_select[0]}/{fit.n_select[1]} others.",
        f"Refusal tokens (first tokens of its refusals): {fit.refusal_tokens.strings} covering "
        f"{sum(fit.refusal_tokens.share_of_refusals):.0%} of refusals.",
        "",
        f"Chosen: layer {direction.layer}, position {meta['position']} ({meta['position_token']!r}); ablated refusal score "
        f"{meta['ablation_score']:+.2f} (baseline {meta['baseline_harmful_score']:+.2f}), KL {meta['kl']:.3f}, "
        f"addition score {meta['addition_score']:+.2f}. Rule: {meta['selection']}."
        + screening,
    ]


def _evaluation_lines(config: RefusalConfig, measures: Measures, losses: dict[str, float], report: dict,
                      counts: dict[str, int]) -> list[str]:
    rates, reduction, scores, kls = measures.rates, measures.reduction, measures.scores, measures.kls
    target = reduction.get("ablated", float("nan")) >= 0.8 and kls.get("ablated", 1.0) <= config.kl_threshold
    intervals = rate_intervals(rates, counts)

    def rate(kind: str, condition: str) -> str:
        if condition not in rates[kind]:
            return "—"
        low, high = intervals[kind][condition]
        return f"{rates[kind][condition]:.2f} [{low:.2f}, {high:.2f}]"

    rows = [
        f"| {c} | {rate('harmful', c)} | {rate('harmless', c)} | {scores[c]:+.2f} | {kls.get(c, 0.0):.3f} | {losses[c]:.3f} |"
        for c in rates["harmful"]
    ]
    return [
        f"Held-out evaluation ({config.max_new_tokens} greedy tokens; refusal rates with 95% Wilson intervals over "
        f"{counts['harmful']} harmful and {counts['harmless']} harmless prompts):",
        "",
        "| condition | harmful refusal rate | harmless refusal rate | refusal score (harmful) | harmless KL "
        "| loss on ordinary text |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Relative reduction of harmful refusals: " + ", ".join(f"{c} {v:.0%}" for c, v in reduction.items())
        + f". Target (≥ 80% with KL ≤ {config.kl_threshold}) {'met' if target else 'NOT met'} by ablation.",
        f"Orthogonalised weights vs hook ablation: max |Δ logit| {measures.weights_vs_hooks:.2e} (untied unembedding: "
        f"{report['untied_unembedding']}; {len(report['edited'])} tensors edited).",
    ]


def _capability_line(config: RefusalConfig, capability: list[CapabilityRow]) -> str:
    if not capability:
        return "Multiple-choice accuracy under ablation: not measured (capability=false)."
    rows = "; ".join(f"{row.condition} {row.accuracy:.3f} [{row.accuracy_ci95[0]:.3f}, {row.accuracy_ci95[1]:.3f}] "
                     f"(letter mass {row.letter_mass:.2f})" for row in capability)
    source = f"MMLU CSVs in {config.mmlu_dir}" if config.mmlu_dir else "the bundled questions"
    chance = " Accuracy near 0.25 is chance: there is then no capability to lose." if max(
        row.accuracy_ci95[0] for row in capability) <= 0.25 else ""
    return (f"Multiple-choice accuracy on {capability[0].n_questions} questions ({source}), with the direction "
            f"ablated at every layer (bootstrap 95% intervals): {rows}.{chance}")


def _svd_lines(config: RefusalConfig, recovery: list) -> list[str]:
    def consistencies(record: dict) -> str:
        return ", ".join(f"{c['edit_consistency']:.2f}" for c in record["candidates"])

    return [
        f"SVD of Δ({'+'.join(config.svd_weights)}):",
        "",
        "| setting | chosen # | cos(chosen, diff-in-means) | cos(top singular, diff-in-means) | edit consistency of top-k |",
        "|---|---|---|---|---|",
        *[
            f"| {r['setting']} | {r['chosen_index']} | {r['cosine_with_diff_in_means']:.4f} "
            f"| {r['top_singular_cosine_with_diff_in_means']:.3f} | {consistencies(r)} |"
            for r in recovery
        ],
    ]
