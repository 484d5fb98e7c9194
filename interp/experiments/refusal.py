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

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.chat import format_chats
from interp.datasets import bundled, load_instructions
from interp.directions import Direction
from interp.experiments import StageClock, register
from interp.models import load_hf, load_model, model_name
from interp.plots import save_figure
from interp.refusal import (
    REFUSAL_PHRASES,
    CandidateTable,
    RefusalFit,
    SelectionConfig,
    completion_loss,
    fit_refusal_direction,
    generate_greedy,
    kl_divergence,
    last_logits,
    make_phrase_judge,
    refusal_rate,
    refusal_scores,
    subtraction,
)
from interp.steering import Ablate
from interp.weight_diff import (
    WeightDiff,
    choose_weight_diff_direction,
    hf_tree,
    orthogonalize_weights,
    quantize_weights_,
    save_hf_model,
    weight_diff_directions,
    weight_refs,
)


@dataclass
class RefusalConfig:
    model: str = "qwen2.5-coder-0.5b-instruct"
    data_dir: str | None = None  # a folder with {harmful,harmless}_{train,val}.json; default: bundled interp/data/
    harmful_train: str | None = None  # single-file overrides (JSON, JSONL, CSV or text; see interp.datasets)
    harmless_train: str | None = None
    harmful_eval: str | None = None
    harmless_eval: str | None = None
    n_train_harmful: int = 80  # seeded subsets of each file (all, if it has fewer)
    n_train_harmless: int = 64
    n_eval_harmful: int = 40
    n_eval_harmless: int = 40
    n_select_harmful: int = 32  # at most half of the filtered training prompts score the candidates
    n_select_harmless: int = 32
    screen_prompts: int | None = 8  # None: score every candidate on every selection prompt
    screen_keep: int = 12
    score_all: bool = False
    filter_new_tokens: int = 12
    max_new_tokens: int = 24
    kl_threshold: float = 0.1
    prune_layer_fraction: float = 0.2
    # Departures from Arditi et al. (see interp.refusal.SelectionConfig); 0.0 and False give the paper's rule.
    induce_refusal_threshold: float | None = None  # None: midpoint of the harmless and harmful baselines
    protect_first_token: bool = True
    subtract_multiplier: float = 1.0
    n_loss_texts: int = 20
    svd_weights: tuple[str, ...] = ("mlp_out",)
    svd_layers: tuple[int, ...] | None = (0,)  # the seed's setting: the first MLP's output weights only
    svd_k: int = 4
    quantize_bits: tuple[int, ...] = (8, 4)
    edited_model: str | None = None  # a real abliterated model (HF folder or GGUF) to recover a direction from
    keep_model: bool = True  # keep the orthogonalised model as an HF folder under the output folder
    refusal_phrases: tuple[str, ...] | None = None  # default: interp.refusal.REFUSAL_PHRASES
    batch_size: int = 32  # forward passes (scores, activations)
    generation_batch_size: int = 64  # a CPU decoding step reads every weight once, so bigger batches amortise it
    device: str | None = None
    seed: int = 0


def _load_split(config: RefusalConfig, kind: str, split: str, count: int) -> list[str]:
    override = getattr(config, f"{kind}_{'eval' if split == 'val' else 'train'}")
    if override:
        path = Path(override)
    elif config.data_dir:
        path = Path(config.data_dir) / f"{kind}_{split}.json"
    else:
        path = bundled(f"{kind}_{split}.json")
    texts = [record.instruction for record in load_instructions(path)]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(config.seed)).tolist()
    return [texts[i] for i in order[:count]]


def _heatmaps(table: CandidateTable, config: SelectionConfig, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    panels = [("ablated refusal score (harmful)", table.ablation_score, "coolwarm")]
    if not torch.isnan(table.screen_score).all():
        panels.append((f"screening score ({config.screen_prompts} prompts)", table.screen_score, "coolwarm"))
    panels += [
        ("KL on harmless (ablated)", table.kl, "viridis"),
        ("refusal score, harmless + direction", table.addition_score, "coolwarm"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 0.22 * len(table.layers) + 2.2), sharey=True)
    cutoff = int(len(table.layers) * (1 - config.prune_layer_fraction))
    for axis, (label, values, colours) in zip(axes, panels):
        cmap = plt.get_cmap(colours).with_extremes(bad="#dddddd")
        image = axis.imshow(values.numpy(), aspect="auto", cmap=cmap, origin="lower")
        figure.colorbar(image, ax=axis, fraction=0.05)
        axis.axhline(cutoff - 0.5, color="black", linestyle="--", linewidth=0.8)
        axis.set_xticks(range(len(table.positions)), [repr(t)[1:-1] for t in table.position_labels], rotation=60, fontsize=7)
        axis.set_title(label, fontsize=8)
        if table.chosen is not None:
            layer, j = table.chosen
            axis.add_patch(Rectangle((j - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    axes[0].set_ylabel("layer (resid_pre); dashed: pruned above")
    figure.suptitle(title + " (grey: not scored)", fontsize=9)
    return save_figure(figure, path)


def _bars(rates: dict[str, dict[str, float]], title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    conditions = list(rates["harmful"])
    width = 0.38
    for offset, kind in ((-width / 2, "harmful"), (width / 2, "harmless")):
        values = [rates[kind].get(c, float("nan")) for c in conditions]
        axis.bar([i + offset for i in range(len(conditions))], values, width, label=f"held-out {kind}")
    axis.set_xticks(range(len(conditions)), conditions)
    axis.set_ylabel("refusal rate (phrase judge)")
    axis.set_ylim(0, 1)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def _spectra(spectra: dict[str, tuple[WeightDiff, int]], title: str, path: Path, top: int = 16) -> Path:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for label, (result, chosen) in spectra.items():
        values = result.singular_values[:top].clamp_min(1e-12).numpy()
        line = axis.semilogy(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)[0]
        axis.semilogy([chosen + 1], [values[chosen]], marker="*", markersize=13, color=line.get_color())
    axis.set_xlabel("singular value rank (★ chosen)")
    axis.set_ylabel("singular value of Δ weights")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def _svd_recovery(
    model: Any, edited: Any, fit: RefusalFit, config: RefusalConfig, label: str
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


@register("refusal", "refusal direction: diff-in-means selection, ablation, abliteration, SVD recovery", RefusalConfig)
def run(config: RefusalConfig, out: Path) -> dict[str, Any]:
    clock = StageClock()
    lap, seconds, cpu_seconds = clock.lap, clock.seconds, clock.cpu_seconds

    torch.manual_seed(config.seed)
    judge = make_phrase_judge(config.refusal_phrases or REFUSAL_PHRASES)
    train_harmful = _load_split(config, "harmful", "train", config.n_train_harmful)
    train_harmless = _load_split(config, "harmless", "train", config.n_train_harmless)
    eval_harmful = _load_split(config, "harmful", "val", config.n_eval_harmful)
    eval_harmless = _load_split(config, "harmless", "val", config.n_eval_harmless)
    model = load_model(config.model, device=config.device)
    name = model_name(model)
    lap("load")

    selection = SelectionConfig(
        kl_threshold=config.kl_threshold, prune_layer_fraction=config.prune_layer_fraction, score_all=config.score_all,
        induce_refusal_threshold=config.induce_refusal_threshold, protect_first_token=config.protect_first_token,
        screen_prompts=config.screen_prompts, screen_keep=config.screen_keep, batch_size=config.batch_size,
    )
    fit = fit_refusal_direction(
        model, train_harmful, train_harmless, judge=judge, n_select_harmful=config.n_select_harmful,
        n_select_harmless=config.n_select_harmless, filter_new_tokens=config.filter_new_tokens,
        generation_batch_size=config.generation_batch_size, config=selection,
        seed=config.seed,
    )
    seconds.update(fit.seconds)
    cpu_seconds.update(fit.cpu_seconds)
    clock.restart()
    direction = fit.direction.with_vector(
        fit.direction.vector, meta={**fit.direction.meta, "dataset": config.data_dir or "bundled"}
    )
    direction.save(out / "direction", overwrite=True)
    table = fit.table
    _heatmaps(table, selection, f"{name}: refusal-direction candidates", out / "candidates_heatmap.png")

    # ---- evaluation on the held-out split: hooks on the base model ----
    harmful_prompts, harmless_prompts = format_chats(model, eval_harmful), format_chats(model, eval_harmless)
    conditions = {
        "baseline": [], "ablated": [Ablate(direction)], "subtracted": [subtraction(direction, config.subtract_multiplier)],
    }
    run_args = dict(max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size)
    score_args = dict(batch_size=config.batch_size)
    harmful_text = {c: generate_greedy(model, harmful_prompts, ivs, **run_args) for c, ivs in conditions.items()}
    # Harmless completions of the baseline; the ablated model's are the orthogonalised model's (same logits).
    harmless_text = {"baseline": generate_greedy(model, harmless_prompts, **run_args)}
    lap("evaluation_generation")
    ids = fit.refusal_tokens.ids
    harmful_logits = {c: last_logits(model, harmful_prompts, ivs, **score_args)[0] for c, ivs in conditions.items()}
    harmless_logits = {c: last_logits(model, harmless_prompts, ivs, **score_args)[0] for c, ivs in conditions.items()}
    loss_texts = [f"{instruction}\n{answer.strip()}" for instruction, answer in
                  zip(eval_harmless[: config.n_loss_texts], harmless_text["baseline"][: config.n_loss_texts])]
    losses = {c: completion_loss(model, loss_texts, ivs) for c, ivs in conditions.items()}
    lap("evaluation_scores")

    # ---- abliteration: orthogonalise a fresh copy, save it, load it back with load_model ----
    folder = out / "abliterated_model" if config.keep_model else Path(tempfile.mkdtemp(prefix="interp-abliterated-"))
    hf, tokenizer = load_hf(config.model, device=config.device)
    report = orthogonalize_weights(hf, direction, allow_other_model=True)
    save_hf_model(hf, folder, tokenizer, {"direction": direction.meta, **report}, overwrite=True)
    del hf
    edited = load_model(folder, device=config.device)
    lap("abliterate_save_load")
    harmful_text["orthogonalised"] = generate_greedy(edited, harmful_prompts, **run_args)
    harmless_text["orthogonalised"] = generate_greedy(edited, harmless_prompts, **run_args)
    harmful_logits["orthogonalised"] = last_logits(edited, harmful_prompts, **score_args)[0]
    harmless_logits["orthogonalised"] = last_logits(edited, harmless_prompts, **score_args)[0]
    losses["orthogonalised"] = completion_loss(edited, loss_texts)
    lap("evaluation_orthogonalised")

    rates = {
        "harmful": {c: refusal_rate(eval_harmful, t, judge) for c, t in harmful_text.items()},
        "harmless": {c: refusal_rate(eval_harmless, t, judge) for c, t in harmless_text.items()},
    }
    scores = {c: float(refusal_scores(l, ids).mean()) for c, l in harmful_logits.items()}
    kls = {
        c: float(kl_divergence(harmless_logits["baseline"], logits).mean())
        for c, logits in harmless_logits.items() if c != "baseline"
    }
    weights_vs_hooks = float((harmless_logits["orthogonalised"] - harmless_logits["ablated"]).abs().max())
    base_rate = rates["harmful"]["baseline"]
    reduction = {
        c: (1 - rates["harmful"][c] / base_rate) if base_rate else float("nan") for c in rates["harmful"] if c != "baseline"
    }
    _bars(rates, f"{name}: held-out refusal rates ({len(eval_harmful)} harmful, {len(eval_harmless)} harmless)",
          out / "refusal_rates.png")

    # ---- recovery by SVD of the weight difference (clean, then re-quantised) ----
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
    del edited, originals
    if config.edited_model:
        other, _ = load_hf(config.edited_model, device=config.device)
        result, record, _ = _svd_recovery(model, other, fit, config, f"external: {config.edited_model}")
        recovery.append(record)
        spectra[record["setting"]] = (result, record["chosen_index"])
        del other
    if not config.keep_model:
        shutil.rmtree(folder, ignore_errors=True)
    where = "all layers" if config.svd_layers is None else f"layers {list(config.svd_layers)}"
    _spectra(spectra, f"{name}: SVD of Δ{'+'.join(config.svd_weights)} ({where}), base → orthogonalised",
             out / "svd_spectrum.png")
    lap("svd_recovery")

    examples = [
        {"instruction": eval_harmful[i], **{c: text[i] for c, text in harmful_text.items()}}
        for i in range(min(4, len(eval_harmful)))
    ] + [
        {"instruction": eval_harmless[i], **{c: text[i] for c, text in harmless_text.items()}}
        for i in range(min(2, len(eval_harmless)))
    ]
    summary = _summary(name, config, fit, direction, rates, reduction, scores, kls, losses, weights_vs_hooks, recovery,
                       seconds, cpu_seconds, report, examples)
    return {
        "model": name,
        "refusal_tokens": {"ids": fit.refusal_tokens.ids, "strings": fit.refusal_tokens.strings,
                           "share_of_refusals": fit.refusal_tokens.share_of_refusals},
        "train": {"harmful": len(train_harmful), "harmless": len(train_harmless),
                  "harmful_refused": sum(fit.harmful_refused), "harmless_refused": sum(fit.harmless_refused),
                  "fit": fit.n_fit, "select": fit.n_select},
        "direction": {"layer": direction.layer, **{k: v for k, v in direction.meta.items() if k != "refusal_token_ids"}},
        "candidates": table.rows(),
        "refusal_rate": rates, "relative_reduction": reduction, "refusal_score": scores, "harmless_kl": kls,
        "ordinary_text_loss": losses, "orthogonalised_vs_hooks_max_logit_diff": weights_vs_hooks,
        "abliteration": {"folder": str(folder) if config.keep_model else None, **report},
        "svd_recovery": recovery, "seconds_by_stage": seconds, "cpu_seconds_by_stage": cpu_seconds,
        "torch_threads": torch.get_num_threads(), "examples": examples, "summary_md": summary,
    }


def _summary(name: str, config: RefusalConfig, fit: RefusalFit, direction: Any, rates: dict, reduction: dict, scores: dict,
             kls: dict, losses: dict, weights_vs_hooks: float, recovery: list, seconds: dict, cpu_seconds: dict,
             report: dict, examples: list) -> str:
    meta = direction.meta
    screening = (
        f" Screening: all candidates on {config.screen_prompts} prompts, the best {config.screen_keep} on all."
        if config.screen_prompts else ""
    )
    target = reduction.get("ablated", float("nan")) >= 0.8 and kls.get("ablated", 1.0) <= config.kl_threshold
    rows = [
        f"| {c} | {rates['harmful'][c]:.2f} | {rates['harmless'].get(c, float('nan')):.2f} | {scores[c]:+.2f} "
        f"| {kls.get(c, 0.0):.3f} | {losses[c]:.3f} |"
        for c in rates["harmful"]
    ]
    def consistencies(record: dict) -> str:
        return ", ".join(f"{c['edit_consistency']:.2f}" for c in record["candidates"])

    svd_rows = [
        f"| {r['setting']} | {r['chosen_index']} | {r['cosine_with_diff_in_means']:.4f} "
        f"| {r['top_singular_cosine_with_diff_in_means']:.3f} | {consistencies(r)} |"
        for r in recovery
    ]
    lines = [
        f"# Refusal direction on {name}",
        "",
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
        "",
        f"Held-out evaluation ({config.max_new_tokens} greedy tokens):",
        "",
        "| condition | harmful refusal rate | harmless refusal rate | refusal score (harmful) | harmless KL "
        "| loss on ordinary text |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Relative reduction of harmful refusals: " + ", ".join(f"{c} {v:.0%}" for c, v in reduction.items())
        + f". Target (≥ 80% with KL ≤ {config.kl_threshold}) {'met' if target else 'NOT met'} by ablation.",
        f"Orthogonalised weights vs hook ablation: max |Δ logit| {weights_vs_hooks:.2e} (untied unembedding: "
        f"{report['untied_unembedding']}; {len(report['edited'])} tensors edited).",
        "",
        f"SVD of Δ({'+'.join(config.svd_weights)}):",
        "",
        "| setting | chosen # | cos(chosen, diff-in-means) | cos(top singular, diff-in-means) | edit consistency of top-k |",
        "|---|---|---|---|---|",
        *svd_rows,
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
