"""The sparse experiment's summary.md: cosine and behaviour tables per target, the seed's claim, the features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interp.browser.links import markdown_link
from interp.experiments.sparse_explain import explanation_markdown
from interp.experiments.sparse_refusal import figure_markdown
from interp.headlines import NOISE_FLOOR

if TYPE_CHECKING:
    from interp.experiments.sparse import SparseExperimentConfig

LABELS = {
    "ito": "gradient pursuit (w ≥ 0)", "omp": "OMP (w ≥ 0)", "fista": "FISTA (w ≥ 0)",
    "ito_signed": "gradient pursuit (signed)", "omp_signed": "OMP (signed)", "fista_signed": "FISTA (signed)",
    "encdiff": "encoding difference (top-k)",
}


def _claim(result: dict[str, Any], small_k: int) -> str:
    key, original, unsteered = result["effect_key"], result["original"], result["unsteered"]
    best = result["best_small_k_behaviour"]
    if best is None:
        return "no behavioural k ≤ small_k was measured."
    gain_original = original[key] - unsteered[key]
    gain_best = best[key] - unsteered[key]
    head = (f"best k ≤ {small_k} reconstruction ({LABELS[best['method']]}, k = {best['k']}, cosine {best['cosine']:.3f}): "
            f"effect {best[key]:.3f} vs the original's {original[key]:.3f} (unsteered {unsteered[key]:.3f})")
    if abs(gain_original) < NOISE_FLOOR:
        return (f"{head}. The original's own change ({gain_original:+.3f}) is below {NOISE_FLOOR}, within noise: "
                "there is no effect to match, so no verdict.")
    ratio = gain_best / gain_original
    verdict = ("beats" if ratio > 1.0 else "matches (≥ 90%)" if ratio >= 0.9 else "does not match")
    return f"{head}, i.e. {100 * ratio:.0f}% of the original's change — it **{verdict}** the original vector."


def summary_markdown(name: str, results: dict[str, Any], skipped: dict[str, str], corpus: str,
                     config: SparseExperimentConfig) -> str:
    """The sparse experiment's `summary.md` for one model: cosines, behaviour, features, what it shows.

    Returns:
        The Markdown text.
    """
    lines = [f"# Sparse reconstruction of steering vectors in SAE features — {name}", ""]
    lines.append("Methods: gradient pursuit (ITO), OMP and FISTA (λ bisected to k features, then a least-squares "
                 "refit), each non-negative (w ≥ 0, like SAE activations) and signed; the encoding-difference "
                 "baseline decodes the top-k features of mean SAE encoding (positive − negative set). Steering uses "
                 "the non-negative solvers and the baseline, each reconstruction rescaled to the original's norm.")
    for target, result in results.items():
        ks = result["ks"]
        lines += ["", f"## {target} (layer {result['layer']}, SAE {result['dictionary']})", ""]
        header = [k for k in (1, 2, 4, 8, 16) if k in ks]
        lines.append("| method | " + " | ".join(f"cos k={k}" for k in header) + " |")
        lines.append("|---|" + "---|" * len(header))
        for method, table in result["cosine"].items():
            lines.append(f"| {LABELS[method]} | " + " | ".join(f"{table['cosine'][ks.index(k)]:.3f}" for k in header) + " |")
        key = result["effect_key"]
        lines += ["", f"Behaviour: {result['effect_label']}. Unsteered {result['unsteered'][key]:.3f}, "
                  f"original vector {result['original'][key]:.3f}.", ""]
        bks = list(config.behaviour_ks)
        lines.append("| method | " + " | ".join(f"k={k}" for k in bks) + " |")
        lines.append("|---|" + "---|" * len(bks))
        for method, table in result["behaviour"].items():
            lines.append(f"| {LABELS[method]} | " + " | ".join(f"{table[str(k)][key]:.3f}" for k in bks) + " |")
        if target == "refusal":
            lines += ["", "Ablation (harmful prompts, lower = less refusal): unsteered "
                      f"{result['unsteered']['harmful_ablated']:.3f}, original {result['original']['harmful_ablated']:.3f}, "
                      + ", ".join(f"{m} k={k}: {result['behaviour'][m][str(k)]['harmful_ablated']:.3f}"
                                  for m in result["behaviour"] for k in bks if k <= config.small_k) + "."]
        lines += ["", "Seed claim (a 2–4 feature reconstruction can match or beat the original vector): "
                  + _claim(result, config.small_k), ""]
        if result.get("self_explanation"):
            lines += explanation_markdown(target, result["self_explanation"])
        if result.get("figure"):
            lines += figure_markdown(result["figure"]) + [""]
        best = result["best_small_k"]
        lines.append(f"Features of the best k ≤ {config.small_k} reconstruction by cosine ({LABELS[best['method']]}, "
                     f"k = {best['k']}, cosine {best['cosine']:.3f}); top contexts over {corpus} "
                     f"(`features_{target}.txt`, `max_activating_{target}.png`):")
        for feature, info in result["max_activating"].items():
            top = info["contexts"][:2]
            shown = "; ".join(f"{c['value']:.1f}: “{' '.join(c['text'].split())[-70:]}”" for c in top) or "never active"
            label = markdown_link(feature, result.get("feature_pages"), feature)  # its browser page, when built
            lines.append(f"- {label} (active on {100 * info['frequency']:.2f}% of tokens): {shown.replace('|', '/')}")
    for target, why in skipped.items():
        lines += ["", f"{target}: skipped — {why}."]
    return "\n".join(lines)
