"""A static, offline HTML report of every experiment folder under an output directory.

`write_report(out_dir)` writes `out_dir/index.html`: for each experiment folder (one holding a
`result.json`, a `summary.md` or figures) its figures (relative links), a few key numbers, the seed's
corresponding claims with our number and a verdict computed from `result.json`, and links to
`result.json` / `summary.md` (the summary rendered inline). No network: CSS is inline, there is no
JavaScript, images are linked relatively, so the folder can be zipped and opened anywhere.

Which numbers and claims: an experiment may put a `headline` dict in its result
(`{"numbers": {label: value}, "claims": [{"claim", "ours", "agrees"}]}`); otherwise the functions in
`HEADLINES` read the result. Every reader is defensive: a key an older or partial result lacks turns
into an "n/a" row with the reason, never an exception, so one broken experiment cannot hide the others.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp._io import atomic_write_text

IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")
VERDICTS = ("yes", "partly", "no", "n/a")


# ---------------------------------------------------------------------------------------------
# What the report holds per experiment
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A claim of the seed, our corresponding number (as text) and whether ours agrees."""

    claim: str
    ours: str
    agrees: str  # one of VERDICTS

    def __post_init__(self) -> None:
        if self.agrees not in VERDICTS:
            raise ValueError(f"agrees: expected one of {VERDICTS}, got {self.agrees!r}")


@dataclass
class Headline:
    numbers: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)


@dataclass
class ExperimentEntry:
    name: str
    folder: Path
    result: dict[str, Any] | None
    result_error: str | None  # why result.json could not be read (None when it was, or is absent)
    summary_md: str | None
    figures: list[Path]  # relative to the report's folder, existing files
    missing_figures: list[str]  # referenced by result.json / summary.md but not on disk
    headline: Headline


# ---------------------------------------------------------------------------------------------
# Small readers: every lookup may fail on a partial result; `_claim` turns failures into "n/a"
# ---------------------------------------------------------------------------------------------


def _at(data: Any, *path: Any) -> Any:
    """data[path[0]][path[1]]...; raises KeyError naming the path when a step is missing."""
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            raise KeyError("/".join(map(str, path))) from None
    return data


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _claim(text: str, judge: Callable[[], tuple[str, str]]) -> Claim:
    """`judge()` returns (our number as text, verdict); a missing key or wrong type gives an n/a row."""
    try:
        ours, verdict = judge()
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        return Claim(text, f"not in result.json ({type(error).__name__}: {error})", "n/a")
    return Claim(text, ours, verdict)


NOISE_FLOOR = 0.02  # A/B-score or refusal-score changes smaller than this are not read as effects


def _difference_noise(rate: float, n: int) -> float:
    """Half-width of a 95% interval for the difference of two accuracies near `rate` on `n` questions each."""
    rate = min(max(rate, 1 / (2 * n)), 1 - 1 / (2 * n))  # keep the interval non-zero at 0 or 1
    return 1.96 * math.sqrt(2 * rate * (1 - rate) / n)


def _grade(value: float, yes: float, partly: float) -> str:
    """yes at ≥ `yes`, partly at ≥ `partly`, else no (NaN: n/a)."""
    if math.isnan(value):
        return "n/a"
    return "yes" if value >= yes else "partly" if value >= partly else "no"


def _models(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-model results of multi-model experiments (`models`), else the result itself under its model."""
    models = result.get("models")
    if isinstance(models, Mapping) and models:
        return {str(name): value for name, value in models.items() if isinstance(value, Mapping)}
    return {str(result.get("model", "model")): dict(result)}


# ---------------------------------------------------------------------------------------------
# Per-experiment headlines: key numbers and the seed's claims
# ---------------------------------------------------------------------------------------------


def _steering(result: dict[str, Any]) -> Headline:
    numbers: dict[str, Any] = {}
    best = result.get("best_layer")
    curve = result.get("logodds", {}).get(str(best)) if isinstance(result.get("logodds"), dict) else None
    numbers["best layer"] = best
    numbers["unsteered log-odds (positive − negative)"] = result.get("logodds_unsteered")
    if isinstance(curve, list) and curve:
        numbers["log-odds at lowest → highest multiplier"] = f"{_fmt(curve[0])} → {_fmt(curve[-1])}"

    def moves() -> tuple[str, str]:
        values = [_num(v) for v in _at(result, "logodds", str(_at(result, "best_layer")))]
        swing = values[-1] - values[0]
        monotonic = bool(_at(result, "best_layer_monotonic"))
        verdict = "yes" if swing > 0 and monotonic else "partly" if swing > 0 else "no"
        return f"swing {swing:+.2f} at layer {result['best_layer']}, monotonic: {_fmt(monotonic)}", verdict

    def words() -> tuple[str, str]:
        positive = [_num(v) for v in _at(result, "positive_word_rate")]
        change = positive[-1] - positive[0]
        return f"positive-word rate {positive[0]:.2f} → {positive[-1]:.2f}", _grade(change, 0.25, 1e-9)

    return Headline(numbers, [
        _claim("Adding a contrast direction to the residual stream shifts the output along it, more with a larger "
               "multiplier (activation addition)", moves),
        _claim("Steered generations use more of the steered-towards words", words),
    ])


def _refusal(result: dict[str, Any]) -> Headline:
    numbers = {
        "model": result.get("model"),
        "direction layer": _safe(lambda: _at(result, "direction", "layer")),
        "harmful refusal rate, baseline": _safe(lambda: _at(result, "refusal_rate", "harmful", "baseline")),
        "harmful refusal rate, ablated": _safe(lambda: _at(result, "refusal_rate", "harmful", "ablated")),
        "harmful refusal rate, orthogonalised": _safe(lambda: _at(result, "refusal_rate", "harmful", "orthogonalised")),
        "harmless KL, ablated": _safe(lambda: _at(result, "harmless_kl", "ablated")),
    }

    def ablation() -> tuple[str, str]:
        reduction = _num(_at(result, "relative_reduction", "ablated"))
        kl = _num(_at(result, "harmless_kl", "ablated"))
        threshold = _num(result.get("config", {}).get("kl_threshold", 0.1))
        verdict = ("yes" if reduction >= 0.8 and kl <= threshold
                   else "partly" if reduction >= 0.5 or (reduction >= 0.8) != (kl <= threshold) else "no")
        return f"relative reduction {reduction:.0%}, harmless KL {kl:.3f}", verdict

    def orthogonalised() -> tuple[str, str]:
        gap = _num(_at(result, "orthogonalised_vs_hooks_max_logit_diff"))
        return f"max |Δ logit| {gap:.1e}", "yes" if gap < 1e-2 else "partly" if gap < 0.1 else "no"

    def svd() -> tuple[str, str]:
        records = [r for r in _at(result, "svd_recovery") if "quantised" in str(r.get("setting", ""))]
        if not records:
            raise KeyError("svd_recovery (no re-quantised setting)")
        parts, second, recovered = [], 0, 0
        for record in records:
            index, cosine = int(_at(record, "chosen_index")), abs(_num(_at(record, "cosine_with_diff_in_means")))
            parts.append(f"{record['setting']}: #{index + 1} singular vector, |cos| {cosine:.3f}")
            recovered += cosine >= 0.9
            second += cosine >= 0.9 and index == 1
        verdict = "yes" if second == len(records) else "partly" if recovered else "no"
        return "; ".join(parts), verdict

    return Headline(numbers, [
        _claim("Ablating the refusal direction cuts refusals of held-out harmful instructions by ≥ 80% (relative) "
               "with harmless KL ≤ 0.1", ablation),
        _claim("Weight orthogonalisation (abliteration) is equivalent to ablating the direction with hooks", orthogonalised),
        _claim("In the SVD of the first MLP's weight difference (base vs abliterated, quantised), the 1st singular "
               "vector is quantisation error and the 2nd is the refusal direction", svd),
    ])


def _sycophancy(result: dict[str, Any]) -> Headline:
    models = _models(result)
    numbers: dict[str, Any] = {"headline model": result.get("headline_model")}
    claims: list[Claim] = []
    for name, r in models.items():
        best = r.get("best_layer")
        numbers[f"{name}: best layer (of {r.get('n_layers', '?')})"] = best
        numbers[f"{name}: held-out A/B swing at best layer"] = _safe(lambda: _at(r, "curves", str(best), "swing"))
        numbers[f"{name}: unsteered letter mass"] = _safe(lambda: _at(r, "unsteered", "letter_mass"))
        claims += _sycophancy_claims(name, r)
    for name, why in (result.get("skipped") or {}).items():
        claims.append(Claim(f"[{name}] every claim", f"skipped: {why}", "n/a"))
    return Headline(numbers, claims)


def _sycophancy_claims(name: str, r: dict[str, Any]) -> list[Claim]:
    def monotonic() -> tuple[str, str]:
        curve = _at(r, "curves", str(_at(r, "best_layer")))
        swing, window = _num(_at(curve, "swing")), _num(_at(curve, "window_swing"))
        # Below the noise floor a "monotonic window" is flat: SmolLM2's +0.009 is no effect, not a partial one.
        verdict = ("yes" if curve["monotonic"] and swing >= NOISE_FLOOR else "partly" if window >= NOISE_FLOOR
                   else "no")
        return (f"layer {r['best_layer']}: swing {swing:+.3f}, monotonic {_fmt(bool(curve['monotonic']))}, "
                f"Spearman {_num(curve.get('spearman', float('nan'))):+.2f}"), verdict

    def layers() -> tuple[str, str]:
        best, count = int(_at(r, "best_layer")), int(_at(r, "n_layers"))
        depth = best / count
        verdict = "yes" if 0.35 <= depth <= 0.75 else "partly" if 0.25 <= depth <= 0.85 else "no"
        return f"layer {best} of {count} ({depth:.0%} deep)", verdict

    def accuracy() -> tuple[str, str]:
        mc = _at(r, "multiple_choice")
        multipliers = [_num(m) for m in _at(mc, "multipliers")]
        values = [_num(v) for v in _at(mc, "accuracy")]
        at_zero, at_top = values[multipliers.index(0.0)], values[multipliers.index(max(multipliers))]
        drop = at_zero - at_top
        noise = _difference_noise(at_zero, int(_at(mc, "n_questions")))
        verdict = "yes" if drop >= noise else "partly" if drop > 0 else "no"
        return (f"accuracy {at_zero:.2f} unsteered → {at_top:.2f} at multiplier {max(multipliers):+g} "
                f"({_num(_at(mc, 'n_questions')):.0f} questions; a drop under {noise:.2f} is within sampling noise)",
                verdict)

    return [
        _claim(f"[{name}] The CAA multiplier moves the held-out A/B sycophancy score monotonically at the best layer",
               monotonic),
        _claim(f"[{name}] The best layers are in the upper-middle of the network (seed: layer 15 of 32 mattered)", layers),
        _claim(f"[{name}] Steering towards sycophancy costs factual multiple-choice accuracy", accuracy),
    ]


def _classifier(result: dict[str, Any]) -> Headline:
    numbers: dict[str, Any] = {}
    claims: list[Claim] = []
    for name, r in _models(result).items():
        rows = _safe(lambda: _at(r, "classifiers", "rows")) or []
        by_group = {row.get("group"): row for row in reversed(rows) if isinstance(row, dict)}  # first of each group
        numbers[f"{name}: layer"] = r.get("layer")
        for group in ("feature", "probe", "model"):
            if group in by_group:
                numbers[f"{name}: {by_group[group]['name']} test AUROC"] = by_group[group].get("test_auroc")
        claims += _classifier_claims(name, r, by_group)
    for name, why in (result.get("skipped") or {}).items():
        claims.append(Claim(f"[{name}] every claim", f"skipped: {why}", "n/a"))
    return Headline(numbers, claims)


def _classifier_claims(name: str, r: dict[str, Any], by_group: dict[str, dict[str, Any]]) -> list[Claim]:
    def feature() -> tuple[str, str]:
        row = _at(by_group, "feature")
        auroc, ci = _num(_at(row, "test_auroc")), row.get("test_auroc_ci")
        low = _num(ci[0]) if ci else float("nan")
        biased = by_group.get("biased", {}).get("test_auroc")
        verdict = "yes" if low > 0.5 else "partly" if auroc > 0.55 else "no"
        text = f"{row['name']}: test AUROC {auroc:.3f}" + (f" [{low:.2f}, {_num(ci[1]):.2f}]" if ci else "")
        if isinstance(biased, (int, float)):
            text += f" (seed-style pick on test: {biased:.3f})"
        return text, verdict

    def penalty() -> tuple[str, str]:
        by_lambda = _at(r, "probe_penalty_demo", "by_lambda")
        lambdas = sorted(by_lambda, key=float)
        low, high = _num(by_lambda[lambdas[0]]["sycophancy_rate"]), _num(by_lambda[lambdas[-1]]["sycophancy_rate"])
        return (f"sycophantic choices {low:.2f} at λ={float(lambdas[0]):g} → {high:.2f} at λ={float(lambdas[-1]):g}",
                _grade(low - high, 0.05, 1e-9))

    return [
        _claim(f"[{name}] A single SAE feature classifies correct vs incorrect multiple-choice answers "
               "(chosen on train, AUROC on held-out questions above chance)", feature),
        _claim(f"[{name}] Linear probe penalties reduce sycophancy (best-of-n with reward − λ·probe)", penalty),
    ]


def _melbo(result: dict[str, Any]) -> Headline:
    numbers = {
        "model": result.get("model"),
        "source → target layer": f"{result.get('source_layer')} → {result.get('target_layer')}",
        "radius R": result.get("radius"),
        "behaviour clusters": _safe(lambda: {k: len(v) for k, v in _at(result, "clusters").items()}),
        "SAE reconstruction cosine": _safe(lambda: _at(result, "sae_reconstruction", "cosine")),
    }

    def objective() -> tuple[str, str]:
        learned = [abs(_num(v)) for v in _at(result, "losses")]
        random = [abs(_num(v)) for v in _at(result, "random_vector_losses")]
        ratio = (sum(learned) / len(learned)) / (sum(random) / len(random))
        return f"target-layer change {ratio:.1f}× that of random vectors of the same norm", _grade(ratio, 3.0, 1.5)

    def word() -> tuple[str, str]:
        rates = [_num(v) for v in _at(result, "word_rate")]
        word_name = result.get("word", "the word")
        return (f'"{word_name}" in {rates[0]:.2f} of samples unsteered, at most {max(rates):.2f} steered',
                _grade(max(rates) - rates[0], 0.5, 1e-9))

    def reconstruction() -> tuple[str, str]:
        record = _at(result, "sae_reconstruction")
        if record.get("status") != "done":
            return f"skipped: {record.get('note', record.get('status'))}", "n/a"
        cosine = _num(_at(record, "cosine"))
        return f"k={record.get('k')} features: cosine {cosine:.3f}", _grade(cosine, 0.7, 0.4)

    return Headline(numbers, [
        _claim("MELBO's unsupervised vectors change the target layer far more than random vectors of the same norm",
               objective),
        _claim("Some learned vector makes the model start its answer with the word (seed: \"First\") as the scale grows",
               word),
        _claim("A target-layer vector is reconstructed well by a few SAE features", reconstruction),
    ])


def _sparse(result: dict[str, Any]) -> Headline:
    """The sparse-reconstruction experiment: each target vector rebuilt from k SAE features, and whether it steers."""
    numbers: dict[str, Any] = {"model": result.get("model")}
    claims: list[Claim] = []
    targets = result.get("targets") if isinstance(result.get("targets"), Mapping) else {}
    small_k = _safe(lambda: int(_at(result, "config", "small_k"))) or 4
    for name, r in targets.items():
        numbers[f"{name}: best k ≤ {small_k} (cosine)"] = _safe(
            lambda: f"{_at(r, 'best_small_k', 'method')} k={_at(r, 'best_small_k', 'k')}: "
                    f"{_num(_at(r, 'best_small_k', 'cosine')):.3f}")
        claims.append(_claim(f"[{name}] A reconstruction from 2–{small_k} SAE features matches (≥ 90% of the "
                             "behavioural effect) or beats the original vector", lambda r=r: _sparse_effect(r)))
    for name, why in (result.get("skipped") or {}).items():
        claims.append(Claim(f"[{name}] every claim", f"skipped: {why}", "n/a"))
    if not targets and not claims:
        claims.append(Claim("A reconstruction from 2–4 SAE features matches or beats the original vector",
                            "not in result.json (no targets)", "n/a"))
    return Headline(numbers, claims)


def _sparse_effect(r: Mapping[str, Any]) -> tuple[str, str]:
    key = _at(r, "effect_key")
    best = _at(r, "best_small_k_behaviour")
    unsteered, original = _num(_at(r, "unsteered", key)), _num(_at(r, "original", key))
    gain_best, gain_original = _num(_at(best, key)) - unsteered, original - unsteered
    text = (f"{best.get('method')} k={best.get('k')} (cosine {_num(best.get('cosine', float('nan'))):.3f}): "
            f"{key} {_num(_at(best, key)):.3f} vs original {original:.3f}, unsteered {unsteered:.3f}")
    if abs(gain_original) < NOISE_FLOOR:
        # A ratio to an effect within noise can be anything (a 0.002 swing made one reconstruction "1581%").
        return f"{text}: the original's own change is below {NOISE_FLOOR:g}, so there is no effect to match", "n/a"
    ratio = gain_best / gain_original
    return f"{text} → {ratio:.0%} of the original's change", _grade(ratio, 0.9, 0.5)


def _generic_numbers(result: Mapping[str, Any], limit: int = 8) -> dict[str, Any]:
    """Top-level scalars of a result (not the config or the timing): a fallback for unknown experiments."""
    numbers = {}
    for key, value in result.items():
        if key in ("experiment", "config", "summary_md") or len(numbers) >= limit:
            continue
        if isinstance(value, (int, float, str)) and not (isinstance(value, str) and len(value) > 80):
            numbers[key] = value
    return numbers


def _safe(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except (KeyError, TypeError, ValueError):
        return None


HEADLINES: dict[str, Callable[[dict[str, Any]], Headline]] = {
    "steering": _steering,
    "refusal": _refusal,
    "sycophancy": _sycophancy,
    "classifier": _classifier,
    "melbo": _melbo,
    "sparse": _sparse,
}


def headline_for(name: str, result: dict[str, Any] | None) -> Headline:
    """The experiment's own `headline` dict when it returned one, else HEADLINES[name], else generic numbers."""
    if result is None:
        return Headline()
    own = result.get("headline")
    if isinstance(own, Mapping):
        return _headline_from_dict(own)
    reader = HEADLINES.get(name, lambda r: Headline(_generic_numbers(r)))
    try:
        headline = reader(result)
    except Exception as error:  # a reader bug must not take the whole report down; show it instead
        return Headline(_generic_numbers(result), [Claim("headline", f"could not be read: {error!r}", "n/a")])
    headline.numbers = {k: v for k, v in headline.numbers.items() if v is not None}
    if "seconds" in result:
        headline.numbers.setdefault("run time (s)", result["seconds"])
    return headline


def _headline_from_dict(own: Mapping[str, Any]) -> Headline:
    numbers = dict(own.get("numbers") or {})
    claims = []
    for item in own.get("claims") or []:
        if not isinstance(item, Mapping):
            continue
        verdict = str(item.get("agrees", "n/a"))
        claims.append(Claim(str(item.get("claim", "")), _fmt(item.get("ours", "")),
                            verdict if verdict in VERDICTS else "n/a"))
    return Headline(numbers, claims)


# ---------------------------------------------------------------------------------------------
# Collecting the folders
# ---------------------------------------------------------------------------------------------


def _is_hidden(path: Path, root: Path) -> bool:
    # Temporary folders of atomic writes start with "."; never list half-written artifacts.
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_figures(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not _is_hidden(path, folder)
    )


def _referenced_figures(result: Any, summary: str | None) -> set[str]:
    """Image file names the result or the summary mention: each should exist under the folder."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and value.lower().endswith(IMAGE_SUFFIXES) and "\n" not in value:
            names.add(value)
        elif isinstance(value, Mapping):
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    walk(result)
    if summary:
        suffixes = "|".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
        names.update(re.findall(rf"`([^`\s]+\.(?:{suffixes}))`", summary, re.IGNORECASE))
    return names


def _missing(referenced: Iterable[str], folder: Path, figures: Sequence[Path]) -> list[str]:
    """Referenced figures that are on disk neither at that path (relative to the folder) nor by file name."""
    present_names = {path.name for path in figures}
    missing = []
    for reference in sorted(referenced):
        path = Path(reference)
        candidates = [path] if path.is_absolute() else [folder / path]
        if any(c.is_file() for c in candidates) or path.name in present_names:
            continue
        missing.append(reference)
    return missing


def _read_result(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"{type(error).__name__}: {error}"
    if not isinstance(data, dict):
        return None, f"expected a JSON object, got {type(data).__name__}"
    return data, None


def collect(out_dir: str | Path) -> list[ExperimentEntry]:
    """Every experiment folder directly under `out_dir` (with a result.json, summary.md or figures)."""
    root = Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"report: {root} is not a folder")
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        result, error = _read_result(folder / "result.json")
        summary_path = folder / "summary.md"
        summary = summary_path.read_text(errors="replace") if summary_path.is_file() else None
        figures = find_figures(folder)
        if result is None and error is None and summary is None and not figures:
            continue
        entries.append(ExperimentEntry(
            name=folder.name, folder=folder, result=result, result_error=error, summary_md=summary,
            figures=[path.relative_to(root) for path in figures],
            missing_figures=_missing(_referenced_figures(result, summary), folder, figures),
            headline=headline_for(folder.name, result),
        ))
    return entries


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1150px;
padding:1em 1.5em;color:#1d1d1f}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:14px}td,th{border:1px solid #ccc;padding:.25em .55em;
text-align:left;vertical-align:top}th{background:#f3f3f3}
.yes{background:#d9f2d9}.partly{background:#fff1c2}.no{background:#f8d4d4}.n\\/a,.na{background:#eee;color:#555}
.figs{display:flex;flex-wrap:wrap;gap:12px}.figs figure{margin:0;max-width:48%}.figs img{max-width:100%;
border:1px solid #ddd}figcaption{font-size:12px;color:#555;word-break:break-all}
.warn{background:#f8d4d4;padding:.4em .7em;border-radius:4px}details{margin:.8em 0}
pre,code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
.md{background:#fafafa;border:1px solid #e5e5e5;padding:.3em 1em;overflow-x:auto}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(path: Path | str) -> str:
    # Relative links with URL-escaped characters (spaces, '#'), always forward slashes.
    from urllib.parse import quote

    return _e(quote(Path(path).as_posix()))


def render_markdown(text: str) -> str:
    """A minimal markdown → HTML: headings, pipe tables, bullet lists, paragraphs, `code`, **bold**, _italic_."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 6)  # the page owns h1/h2
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
        elif re.match(r"\s*[-*] ", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*] ", lines[i]):
                item = re.sub(r"^\s*[-*] ", "", lines[i])
                items.append(f"<li>{_inline(item)}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif line.startswith("```"):
            i += 1
            block = []
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            out.append(f"<pre>{_e(chr(10).join(block))}</pre>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#|\s*\||\s*[-*] |```)", lines[i]):
                paragraph.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    parts = re.split(r"(`[^`]*`)", text)  # code spans first: nothing inside them is formatted
    rendered = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            rendered.append(f"<code>{_e(part[1:-1])}</code>")
            continue
        part = _e(part)
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![\w])_(.+?)_(?![\w])", r"<em>\1</em>", part)
        rendered.append(part)
    return "".join(rendered)


def _table(block: Sequence[str]) -> str:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block]
    is_rule = [all(re.fullmatch(r":?-{2,}:?", cell) for cell in row if cell) for row in rows]
    header = rows[0] if len(rows) > 1 and is_rule[1] else None
    body = [row for row, rule in zip(rows, is_rule) if not rule and row is not header]
    parts = ["<table>"]
    if header:
        parts.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body]
    return "".join(parts) + "</table>"


def _section(entry: ExperimentEntry) -> str:
    name = entry.name
    parts = [f'<h2 id="{_e(name)}">{_e(name)}</h2>']
    links = []
    if (entry.folder / "result.json").exists():
        links.append(f'<a href="{_href(Path(name) / "result.json")}">result.json</a>')
    if entry.summary_md is not None:
        links.append(f'<a href="{_href(Path(name) / "summary.md")}">summary.md</a>')
    if links:
        parts.append("<p>" + " · ".join(links) + "</p>")
    if entry.result_error:
        parts.append(f'<p class="warn">result.json could not be read: {_e(entry.result_error)}</p>')
    elif entry.result is None:
        parts.append('<p class="warn">no result.json: the experiment did not finish here.</p>')
    if entry.headline.numbers:
        parts.append("<h3>Key numbers</h3><table>" + "".join(
            f"<tr><th>{_e(label)}</th><td>{_e(_fmt(value))}</td></tr>" for label, value in entry.headline.numbers.items()
        ) + "</table>")
    if entry.headline.claims:
        parts.append("<h3>The seed's claims and ours</h3><table><tr><th>claim</th><th>ours</th><th>agrees</th></tr>")
        for claim in entry.headline.claims:
            css = "na" if claim.agrees == "n/a" else claim.agrees
            parts.append(f'<tr><td>{_e(claim.claim)}</td><td>{_e(claim.ours)}</td>'
                         f'<td class="{css}">{_e(claim.agrees)}</td></tr>')
        parts.append("</table>")
    if entry.missing_figures:
        parts.append('<p class="warn">missing figures (referenced, not on disk): '
                     + ", ".join(f"<code>{_e(m)}</code>" for m in entry.missing_figures) + "</p>")
    if entry.figures:
        parts.append('<h3>Figures</h3><div class="figs">' + "".join(
            f'<figure><a href="{_href(path)}"><img src="{_href(path)}" alt="{_e(path.name)}" loading="eager"></a>'
            f"<figcaption>{_e(path.relative_to(name).as_posix())}</figcaption></figure>"
            for path in entry.figures
        ) + "</div>")
    if entry.summary_md is not None:
        parts.append(f'<details open><summary>summary.md</summary><div class="md">{render_markdown(entry.summary_md)}'
                     "</div></details>")
    return "\n".join(parts)


def _overview(entries: Sequence[ExperimentEntry]) -> str:
    rows = []
    for entry in entries:
        counts = {v: sum(c.agrees == v for c in entry.headline.claims) for v in VERDICTS}
        status = ("unreadable result.json" if entry.result_error else "no result.json" if entry.result is None
                  else f"{len(entry.figures)} figures" + (f", {len(entry.missing_figures)} missing" if entry.missing_figures else ""))
        rows.append(
            f'<tr><td><a href="#{_e(entry.name)}">{_e(entry.name)}</a></td><td>{_e(status)}</td>'
            + "".join(f'<td class="{"na" if v == "n/a" else v}">{counts[v]}</td>' for v in VERDICTS) + "</tr>"
        )
    header = "<tr><th>experiment</th><th>artifacts</th>" + "".join(f"<th>{v}</th>" for v in VERDICTS) + "</tr>"
    return "<table>" + header + "".join(rows) + "</table>"


def render_report(entries: Sequence[ExperimentEntry], title: str = "interp: reproduction report") -> str:
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = [f"<h1>{_e(title)}</h1>",
            f"<p>Generated {_e(stamp)} {REPORT_SIGNATURE}. Verdicts are computed from each "
            "<code>result.json</code>: yes / partly / no / n/a (not measured in this run).</p>"]
    if not entries:
        body.append('<p class="warn">No experiment folders found.</p>')
    else:
        body.append(_overview(entries))
        body += [_section(entry) for entry in entries]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# Every report says so in its first lines; an index.html without it is someone else's and is never replaced.
REPORT_SIGNATURE = "by <code>interp reproduce</code>"


def check_report_target(out_dir: str | Path) -> None:
    """Raise unless `out_dir/index.html` is absent or a report this module wrote."""
    page = Path(out_dir) / "index.html"
    if page.exists() and (not page.is_file() or REPORT_SIGNATURE not in page.read_text(errors="replace")):
        raise ValueError(f"--out: {page} exists and is not an interp report; choose another --out, or move it away")


def write_report(out_dir: str | Path) -> Path:
    """Write (or refresh) `out_dir/index.html` atomically from every experiment folder in `out_dir`.

    An `index.html` there that is not an interp report is refused (ValueError), never replaced."""
    root = Path(out_dir)
    check_report_target(root)
    return atomic_write_text(root / "index.html", render_report(collect(root)))


def headline_markdown(name: str, result: dict[str, Any]) -> str:
    """An experiment's key numbers and claim verdicts as markdown tables (for notebooks and terminals)."""
    headline = headline_for(name, result)

    def cell(value: Any) -> str:
        return _fmt(value).replace("|", "\\|")

    lines = ["| key number | value |", "|---|---|"]
    lines += [f"| {cell(label)} | {cell(value)} |" for label, value in headline.numbers.items()]
    if headline.claims:
        lines += ["", "| the seed's claim | ours | agrees |", "|---|---|---|"]
        lines += [f"| {cell(c.claim)} | {cell(c.ours)} | **{c.agrees}** |" for c in headline.claims]
    return "\n".join(lines)
