"""Sparse reconstruction of steering vectors from SAE features, and whether the reconstructions still steer.

Targets (each with the shipped SAE at its layer, or `dictionary`):
- the sycophancy CAA vector at the SAE's layer (mean over the bundled training pairs of resid_pre at the
  matching minus the not-matching answer letter, as `interp.caa`), on any model;
- the refusal direction, on a model that refuses (Qwen2.5-Coder): read from `refusal_direction`, or from
  the refusal experiment's folder beside this one (`<out>/../refusal/direction`, as `interp reproduce all`
  lays it out), or fitted here with the refusal experiment's defaults. SmolLM2 does not refuse: skipped.

Each target is reconstructed with k = 1…16 atoms by gradient pursuit ("ito"), OMP and FISTA, each
non-negative (coefficients ≥ 0, as SAE activations) and signed, plus the encoding-difference baseline
(the top-k features of mean SAE encoding on the positive set minus the negative set, decoded with
their mean-difference values). Cosine vs k for every method; then, at a few k, each non-negative
reconstruction is rescaled to the original vector's norm and steers the model:
- sycophancy: held-out A/B score at ± `multiplier` × the mean residual norm (the swing +m − −m);
- refusal: mean refusal score of held-out harmful prompts with the direction ablated at every layer,
  and of held-out harmless prompts with the (raw-norm) direction added at its layer.
Then the features of the best reconstruction with k ≤ `small_k` are listed with their max-activating
examples over `corpus` (default: the bundled texts; a user machine has no model-generated corpus; one
pass over it serves every target, each dictionary reading its own layer), and
the model explains the vector and those features itself (`interp.selfexplain`, `sparse_explain`).
On a refusing model, the seed's refusal figure (`sparse_refusal`): refusal in generated text on held-out
harmful prompts with the direction, its reconstructions and an optimised vector ablated, on harmless
prompts with each added, and MMLU-format accuracy with each ablated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp._io import atomic_write_text
from interp._timing import StageClock, progress_on
from interp.browser.links import experiment_links
from interp.corpus import bundled_instructions, load_corpus
from interp.dictionaries import shipped_dictionaries
from interp.directions import Direction, first_with_same_vector
from interp.experiments import register
from interp.experiments.checks import check_fields
from interp.experiments.common import experiment_model, spread
from interp.experiments.sparse_explain import explain_target, explanation_claims
from interp.experiments.sparse_refusal import figure_claims, refusal_experiment_accuracy, refusal_figure
from interp.experiments.sparse_summary import LABELS, summary_markdown
from interp.experiments.sparse_targets import (
    Target,
    dictionary_for,
    find_refusal_direction,
    fit_refusal_with_defaults,
    refusal_target,
    sycophancy_target,
)
from interp.experiments.user_dictionary import (
    load_user_dictionary,
    resid_pre_layer,
    without_encoding_difference,
)
from interp.features import MaxActivating, max_activating_each, plot_max_activating, render_text
from interp.headlines import NOISE_FLOOR, Claim, Headline, at, claim, grade, num, safe, skipped_claims
from interp.hooked import HookedModel
from interp.models import model_name
from interp.plots import line_plot
from interp.sparse import SparseCode, encoding_difference, reconstruction_direction, sparse_code

# The layer whose CAA vector is reconstructed when no `dictionary` is given: SmolLM2's middle SAE; on Qwen
# the layer the sycophancy experiment chooses on training pairs (both ship an SAE there).
SYCOPHANCY_LAYERS = {"smollm2-135m-instruct": 15, "qwen2.5-coder-0.5b-instruct": 13}
REFUSING_MODELS = ("qwen2.5-coder-0.5b-instruct",)
METHODS = ("ito", "omp", "fista", "ito_signed", "omp_signed", "fista_signed", "encdiff")  # named in LABELS


@dataclass
class SparseExperimentConfig:
    """The sparse experiment's settings, checked when made (`interp.experiments.checks`).

    Each field is an `interp reproduce sparse --set KEY=VALUE` setting; `interp reproduce sparse --help` lists them with
    their types, defaults and meanings (the comments beside the fields here).
    """

    # The refusing model: the seed's central figure needs a refusal direction (SmolLM2 does not refuse, and its
    # sycophancy vector has no A/B effect to match, so its run gives no verdict).
    model: str = "qwen2.5-coder-0.5b-instruct"
    dictionary: str | None = None  # any format load_dictionary reads (SAE or transcoder); default: the shipped SAEs
    layer: int | None = None  # sycophancy layer; None: the dictionary's, else SYCOPHANCY_LAYERS
    ks: tuple[int, ...] = tuple(range(1, 17))
    methods: tuple[str, ...] = METHODS
    behaviour_ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    behaviour_methods: tuple[str, ...] = ("ito", "fista", "encdiff")  # OMP tracks ITO closely (see cosines)
    small_k: int = 4  # the seed's claim: 2–4 features match the vector
    # Sycophancy steering, × the mean residual norm at the layer: ±0.5 lies inside the window where the
    # sycophancy experiment finds Qwen's A/B score monotone (at ±1 the original vector no longer steers).
    multiplier: float = 0.5
    n_train: int | None = None  # CAA training pairs (None: all 234, the sycophancy experiment's vector)
    n_test: int | None = None  # held-out A/B pairs for the behavioural score (None: all 79)
    n_format_pairs: int = 8
    refusal_direction: str | None = None  # a saved Direction; else ../refusal/direction, else fitted (refusing models)
    fit_refusal: bool = True
    n_refusal_eval: int = 16  # held-out harmful and harmless prompts, each
    corpus: str | None = None  # JSONL(.gz) of {"text"} for max-activating examples; default: the bundled texts
    n_corpus: int | None = 300  # texts for max-activating examples (None: all)
    n_examples: int = 5
    # The seed's refusal figure (refusing models): refusal in generated text and MMLU-format accuracy for the
    # direction, its reconstructions and an optimised vector (interp.experiments.sparse_refusal)
    refusal_figure: bool = True
    self_explain: bool = True  # self-explanations of each vector and its best small-k features (interp.selfexplain)
    figure_ks: tuple[int, ...] = (1, 2, 4, 8)
    figure_methods: tuple[str, ...] = ("ito", "encdiff")  # the seed's pair; FISTA tracks ITO (the cosine table has it)
    mmlu_ks: tuple[int, ...] = (4,)  # reconstructions whose accuracy is measured, beside the unsteered, original and skyline
    # Refusals announce themselves in the first words: 8 tokens give the phrase judge's 16-token verdict on 287 of 288
    # completions (BENCHMARKS.md) at 71% of the time.
    figure_new_tokens: int = 8
    n_figure_harmful: int | None = None  # held-out harmful prompts (None: all; bundled val + test: 112)
    n_figure_harmless: int | None = 64
    harmful_eval: str | None = None  # a file of instructions; default: the bundled val and test splits
    harmless_eval: str | None = None
    judge: str | None = None  # "phrases" (default) or "package.module:function", e.g. a local guard model
    mmlu_dir: str | None = None  # MMLU CSVs; default: the bundled questions
    skyline_steps: int = 16
    skyline_prompts: int = 8
    skyline_new_tokens: int = 16  # the model's own refusals the skyline is trained towards: tokens generated
    batch_size: int = 16
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges, before any work (interp.experiments.checks)

    def check(self) -> None:
        """What the settings must say together, the corpus and the dictionary (run by `check_resources` first)."""
        check_config(self)
        corpus_texts(self)
        if self.dictionary is not None and resid_pre_layer(load_user_dictionary(self.dictionary, self.model,
                                                                                 layer=self.layer)) is None:
            raise ValueError(f"dictionary: {self.dictionary}'s atoms live at no residual-stream site")


def sycophancy_layer(config: SparseExperimentConfig, name: str, model: HookedModel) -> int:
    """The layer of the sycophancy vector: `config.layer`, else the user dictionary's, else the model's known layer, else a shipped SAE's.

    Raises:
        ValueError: none of these gives one (no SAE ships for the model and none was passed).
    """
    if config.layer is not None:
        return config.layer
    if config.dictionary is not None:
        layer = resid_pre_layer(load_user_dictionary(config.dictionary, model, layer=config.layer))
        if layer is not None:
            return layer
    if name in SYCOPHANCY_LAYERS:
        return SYCOPHANCY_LAYERS[name]
    shipped = shipped_dictionaries(name)
    if not shipped:
        raise ValueError(f"dictionary: no SAE ships for {name!r}; pass dictionary=<SAE-Lens folder>")
    return int(sorted(shipped)[len(shipped) // 2].split(".")[1])


# ---------------------------------------------------------------------------------------------
# Reconstructions
# ---------------------------------------------------------------------------------------------


def encoding_difference_code(target: Target, k: int) -> SparseCode:
    """The baseline as a SparseCode: top-k of mean(pos codes) − mean(neg codes), decoded with those values."""
    dictionary = target.dictionary
    indices, values = encoding_difference(target.pos_codes, target.neg_codes, k)
    coefficients = values * dictionary.norms[indices]  # SAE decoding uses the decoder rows with their norms
    reconstruction = coefficients @ dictionary.atoms[indices]
    x = target.direction.vector.float()
    relative_error = (x - reconstruction).norm() / x.norm()
    cosine = torch.nn.functional.cosine_similarity(x, reconstruction, dim=0)
    return SparseCode(indices[None], coefficients[None], reconstruction[None], cosine[None], relative_error[None],
                      "encdiff")


def reconstruct(target: Target, method: str, k: int) -> SparseCode:
    """The target's sparse code by `method` (`"ito"`, `"omp"`, `"fista"`, `"…_signed"`, `"encdiff"`) with k atoms."""
    if method == "encdiff":
        return encoding_difference_code(target, k)
    solver, _, signed = method.partition("_")
    return sparse_code(target.direction.vector.float(), target.dictionary.atoms, k, solver, nonnegative=not signed)


def same_norm(code: SparseCode, parent: Direction) -> Direction:
    """The reconstruction as a Direction pointing to its parent, rescaled to the parent's norm."""
    rebuilt = reconstruction_direction(code, parent)
    if rebuilt.norm == 0:
        raise ValueError(f"{code.source}: the reconstruction is zero (no atom correlates positively)")
    return rebuilt.with_vector(rebuilt.vector * (parent.norm / rebuilt.norm))


def cosine_table(target: Target, methods: Sequence[str], ks: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Cosine of each method's k-atom reconstruction to the target vector, for every k.

    Returns:
        method → lists over `ks`: "cosine", "relative_error", "features" and "coefficients".
    """
    table = {}
    for method in methods:
        codes = [reconstruct(target, method, k) for k in ks]
        table[method] = {
            "cosine": [float(code.cosine[0]) for code in codes],
            "relative_error": [float(code.relative_error[0]) for code in codes],
            "features": [code.indices[0].tolist() for code in codes],
            "coefficients": [[round(c, 4) for c in code.coefficients[0].tolist()] for code in codes],
        }
    return table


def behaviour_table(
    target: Target, methods: Sequence[str], ks: Sequence[int], progress: bool = True
) -> dict[str, dict[str, dict[str, float]]]:
    """Steering with each method's reconstruction at each k, against the original vector.

    Returns:
        method → k → the behaviour numbers (A/B swing or refusal score change) of the reconstruction.
    """
    from tqdm.auto import tqdm

    codes = {(method, k): reconstruct(target, method, k) for method in methods for k in ks}
    rebuilt = {condition: same_norm(code, target.direction) for condition, code in codes.items()}
    same_as = first_with_same_vector(rebuilt)  # e.g. two methods choosing the same single feature: measured once
    measured: dict[tuple[str, int], dict[str, float]] = {}
    for condition in tqdm(rebuilt, desc=f"{target.name} behaviour", disable=not progress, leave=False):
        if same_as[condition] == condition:
            measured[condition] = target.measure(rebuilt[condition])
    table: dict[str, dict[str, dict[str, float]]] = {method: {} for method in methods}
    for (method, k), code in codes.items():
        table[method][str(k)] = {**measured[same_as[(method, k)]], "cosine": float(code.cosine[0])}
    return table


def best_small_k(cosines: dict[str, dict[str, Any]], ks: Sequence[int], small_k: int) -> tuple[str, int]:
    """(method, k) of the highest cosine with k ≤ small_k, over the non-negative solvers (SAE-like codes)."""
    options = [(table["cosine"][i], method, k) for method, table in cosines.items() if not method.endswith("_signed")
               for i, k in enumerate(ks) if k <= small_k]
    _, method, k = max(options)
    return method, k


# ---------------------------------------------------------------------------------------------
# Headline: the seed's claim against result.json
# ---------------------------------------------------------------------------------------------


def headline(result: dict[str, Any]) -> Headline:
    """Each target vector rebuilt from k SAE features, and whether the rebuilt vector still steers."""
    numbers: dict[str, Any] = {"model": result.get("model")}
    claims: list[Claim] = []
    targets = result.get("targets") if isinstance(result.get("targets"), Mapping) else {}
    small_k = safe(lambda: int(at(result, "config", "small_k"))) or 4
    for name, r in targets.items():
        numbers[f"{name}: best k ≤ {small_k} (cosine)"] = safe(
            lambda: f"{at(r, 'best_small_k', 'method')} k={at(r, 'best_small_k', 'k')}: "
                    f"{num(at(r, 'best_small_k', 'cosine')):.3f}")
        claims.append(claim(f"[{name}] A reconstruction from 2–{small_k} SAE features matches (≥ 90% of the "
                            "behavioural effect) or beats the original vector", lambda r=r: _effect_verdict(r)))
        claims += figure_claims(r.get("figure")) + explanation_claims(name, r.get("self_explanation"))
    claims += skipped_claims(result)
    if not targets and not claims:
        claims.append(Claim("A reconstruction from 2–4 SAE features matches or beats the original vector",
                            "not in result.json (no targets)", "n/a"))
    return Headline(numbers, claims)


def _effect_verdict(r: Mapping[str, Any]) -> tuple[str, str]:
    key = at(r, "effect_key")
    best = at(r, "best_small_k_behaviour")
    unsteered, original = num(at(r, "unsteered", key)), num(at(r, "original", key))
    gain_best, gain_original = num(at(best, key)) - unsteered, original - unsteered
    text = (f"{best.get('method')} k={best.get('k')} (cosine {num(best.get('cosine', float('nan'))):.3f}): "
            f"{key} {num(at(best, key)):.3f} vs original {original:.3f}, unsteered {unsteered:.3f}")
    if abs(gain_original) < NOISE_FLOOR:
        # A ratio to an effect within noise can be anything (a 0.002 swing made one reconstruction "1581%").
        return f"{text}: the original's own change is below {NOISE_FLOOR:g}, so there is no effect to match", "n/a"
    ratio = gain_best / gain_original
    return f"{text} → {ratio:.0%} of the original's change", grade(ratio, 0.9, 0.5)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


def check_config(config: SparseExperimentConfig) -> None:
    """Refuse unknown methods and inconsistent settings before any work.

    Raises:
        ValueError: naming the setting.
    """
    unknown = sorted(set(config.methods) - set(METHODS)) + sorted(set(config.behaviour_methods) - set(METHODS))
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {METHODS}")
    if not config.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in config.ks):
        raise ValueError(f"ks: expected positive ints, got {config.ks!r}")
    if any(k not in config.ks for k in config.behaviour_ks):
        raise ValueError(f"behaviour_ks: {config.behaviour_ks} must be among ks {config.ks}")
    if any(k not in config.ks for k in config.figure_ks) or set(config.figure_methods) - set(METHODS):
        raise ValueError(f"figure_ks, figure_methods: expected ks among {config.ks} and methods among {METHODS}, "
                         f"got {config.figure_ks} and {config.figure_methods}")
    if any(k not in config.figure_ks for k in config.mmlu_ks):
        raise ValueError(f"mmlu_ks: {config.mmlu_ks} must be among figure_ks {config.figure_ks}")
    if not any(k <= config.small_k for k in config.ks):
        raise ValueError(f"small_k: no k in {config.ks} is <= {config.small_k}")
    if not math.isfinite(config.multiplier) or config.multiplier == 0:
        raise ValueError(f"multiplier: expected a finite nonzero float, got {config.multiplier!r}")


def corpus_texts(config: SparseExperimentConfig) -> tuple[list[str], str]:
    """The texts max-activating examples are read from (`config.corpus`, or the bundled instructions), spread to `n_corpus`.

    Returns:
        The texts and a label of where they came from.
    """
    texts, label = (load_corpus(config.corpus, argument="corpus"), config.corpus) if config.corpus else (bundled_instructions(), "bundled texts")
    return spread(texts, config.n_corpus), label


@register(
    "sparse",
    "sparse reconstruction of the sycophancy and refusal vectors from SAE features (ITO, OMP, FISTA): cosine and steering vs k",
    SparseExperimentConfig,
    headline=headline,
    reads=("refusal", "sycophancy"),  # the refusal direction and its accuracy; the sycophancy pairs' activations
)
def run(config: SparseExperimentConfig, out: Path) -> dict[str, Any]:
    """Run the sparse experiment and write its figures, `result.json` and `summary.md` into `out`.

    Args:
        config: the settings (`interp reproduce sparse --help` lists each with its type, default and meaning).
        out: the experiment's output folder.

    Returns:
        The result (config, numbers, timing) that `run_experiment` writes as `result.json`.
    """
    check_config(config)
    texts, corpus_label = corpus_texts(config)  # read (and checked) before the model loads
    torch.manual_seed(config.seed)
    clock = StageClock("sparse")
    model = experiment_model(config.model, config.device)
    name = model_name(model)
    clock.lap("load")
    targets, skipped = [], {}
    add_sycophancy_target(model, name, config, out, targets, skipped)
    clock.lap("sycophancy vector")
    add_refusal_target(model, name, config, out, targets, skipped)
    clock.lap("refusal direction")
    chosen = {}
    for target, _ in targets:
        chosen[target.name] = best_reconstruction(target, target_config(config, target))
        clock.lap(f"{target.name}: cosines")
    # One corpus pass for every target's features: each dictionary reads its own layer on the way up.
    examples = dict(zip(chosen, max_activating_each(
        model, [(target.dictionary, chosen[target.name].features) for target, _ in targets], texts,
        n_top=config.n_examples, progress=progress_on()))) if targets else {}
    clock.lap("max-activating")
    results: dict[str, Any] = {}
    for target, where in targets:
        results[target.name] = run_target(model, target, where, chosen[target.name], examples[target.name], config,
                                          out, clock)
    return {
        "model": name,
        "targets": results,
        "feature_browser": next((r["feature_browser"] for r in results.values() if r["feature_browser"]), None),
        "skipped": skipped,
        "corpus": {"source": corpus_label, "n_texts": len(texts)},
        "timings": clock.seconds,
        "cpu_seconds_by_stage": clock.cpu_seconds,
        "summary_md": summary_markdown(name, results, skipped, corpus_label, config),
    }


def add_sycophancy_target(model: HookedModel, name: str, config: SparseExperimentConfig, out: Path,
                          targets: list[tuple[Target, str]], skipped: dict[str, str]) -> None:
    """The CAA vector at the SAE's layer, or why there is none."""
    layer = sycophancy_layer(config, name, model)
    dictionary, where = dictionary_for(model, name, layer, config.dictionary)
    if dictionary is None:
        skipped["sycophancy"] = where
    else:
        targets.append((sycophancy_target(model, name, dictionary, config, out), where))


def add_refusal_target(model: HookedModel, name: str, config: SparseExperimentConfig, out: Path,
                       targets: list[tuple[Target, str]], skipped: dict[str, str]) -> None:
    """The refusal direction (found beside this run, or fitted on a model that refuses), or why there is none."""
    direction, looked = find_refusal_direction(config, out, name)
    source = looked
    if direction is None and config.fit_refusal and name in REFUSING_MODELS:
        direction, source = fit_refusal_with_defaults(model, name, config), "fitted here (refusal experiment defaults)"
    if direction is None:
        skipped["refusal"] = (f"{name} does not refuse (no direction of this model at {looked})" if name not in REFUSING_MODELS
                              else f"no direction of this model at {looked}, and fit_refusal=False")
        return
    refusal_dictionary, where = dictionary_for(model, name, direction.layer, config.dictionary)
    if refusal_dictionary is None:
        skipped["refusal"] = where
    else:
        target = refusal_target(model, name, direction, refusal_dictionary, config)
        target.info["direction_source"] = source
        targets.append((target, where))


@dataclass(frozen=True)
class BestReconstruction:
    """A target's cosine table and its best reconstruction with k ≤ small_k (whose features are shown)."""

    cosines: dict[str, dict[str, Any]]
    method: str
    k: int
    features: list[int]

    def __repr__(self) -> str:
        return f"BestReconstruction({self.method} k={self.k}: features {self.features}; cosines of {len(self.cosines)} methods)"


def target_config(config: SparseExperimentConfig, target: Target) -> SparseExperimentConfig:
    """The settings for one target: without the encoding-difference baseline where it has no contrast codes."""
    return config if target.pos_codes is not None else without_encoding_difference(config)


def best_reconstruction(target: Target, config: SparseExperimentConfig) -> BestReconstruction:
    """Every method's reconstruction at every k (the cosine table), and the best with k ≤ small_k."""
    ks = list(config.ks)
    cosines = cosine_table(target, config.methods, ks)
    method, k = best_small_k(cosines, ks, config.small_k)
    return BestReconstruction(cosines, method, k, cosines[method]["features"][ks.index(k)])


def run_target(
    model: HookedModel, target: Target, where: str, best: BestReconstruction, examples: MaxActivating,
    config: SparseExperimentConfig, out: Path, clock: StageClock | None = None,
) -> dict[str, Any]:
    """The rest of the sparse experiment for one target vector, after its cosines and its best features'
    max-activating `examples`: behaviour, figures, self-explanation and the refusal figure (each a stage of
    `clock`, named "TARGET: step").

    Returns:
        This target's part of the result.
    """
    name = target.name
    clock = clock or StageClock()

    def lap(step: str) -> None:
        clock.lap(f"{name}: {step}")

    config = target_config(config, target)
    ks = list(config.ks)
    cosines, method, k, best_features = best.cosines, best.method, best.k, best.features
    unsteered = target.measure(None)
    original = target.measure(target.direction)
    behaviour = behaviour_table(target, config.behaviour_methods, config.behaviour_ks, progress_on())
    lap("behaviour")
    pages = experiment_links(target.dictionary, best_features, out)  # when a feature browser was built beside
    line_plot(ks, {LABELS[m]: cosines[m]["cosine"] for m in config.methods}, xlabel="k (features)",
              ylabel="cosine(reconstruction, vector)", title=f"{target.direction.model}: {name} vector, layer "
              f"{target.direction.layer}, in {target.dictionary.n_atoms} SAE features", path=out / f"cosine_vs_k_{name}.png")
    key = target.effect_key
    line_plot(list(config.behaviour_ks), {LABELS[m]: [behaviour[m][str(k_)][key] for k_ in config.behaviour_ks]
                                          for m in config.behaviour_methods},
              xlabel="k (features; reconstruction rescaled to the vector's norm)", ylabel=key,
              title=f"{name}: {target.effect_label}\n(dotted: the original vector; unsteered {unsteered[key]:.3f})",
              path=out / f"behaviour_vs_k_{name}.png", baseline=original[key])
    plot_max_activating(examples, out / f"max_activating_{name}.png", n=config.n_examples,
                        title=f"{name}: features of the best k ≤ {config.small_k} reconstruction ({LABELS[method]}, k={k})")
    atomic_write_text(out / f"features_{name}.txt", render_text(examples, n=config.n_examples) + "\n")
    small = [(m, k_) for m in config.behaviour_methods for k_ in config.behaviour_ks if k_ <= config.small_k]
    best_behaviour = max(small, key=lambda mk: behaviour[mk[0]][str(mk[1])][key]) if small else None
    explanations = (explain_target(model, name, target.direction, target.dictionary, best_features, out, progress_on())
                    if config.self_explain else None)
    lap("figures and self-explanation")
    figure = None
    if name == "refusal" and config.refusal_figure:
        known = refusal_experiment_accuracy(out, target.direction, target.info.get("direction_source", ""), config)
        figure = refusal_figure(model, target.direction,
                                lambda m, k_: same_norm(reconstruct(target, m, k_), target.direction), config, out,
                                progress_on(), clock=clock, known_accuracy=known)
    return {
        "dictionary": where,
        **target.info,
        "ks": ks,
        "cosine": cosines,
        "effect_key": key,
        "effect_label": target.effect_label,
        "unsteered": unsteered,
        "original": original,
        "behaviour": behaviour,
        "best_small_k": {"method": method, "k": k, "cosine": cosines[method]["cosine"][ks.index(k)],
                         "features": best_features},
        "best_small_k_behaviour": (
            {"method": best_behaviour[0], "k": best_behaviour[1], **behaviour[best_behaviour[0]][str(best_behaviour[1])]}
            if best_behaviour else None),
        "max_activating": examples.to_dict(config.n_examples),
        **pages,
        "self_explanation": explanations,
        "figure": figure,
    }
