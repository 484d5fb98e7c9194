"""MELBO on an arithmetic prompt: unsupervised steering vectors, their behaviours, a word vs scale plot.

Following Mack & Turner's seed example ("What is 3940 * 3892?"): learn `n_vectors` mutually orthogonal
steering vectors at `source_layer` that maximally change the residual stream at `target_layer`
(`interp.melbo`), with the radius R chosen by a short sweep where the response changes regime
(unless `radius` is given). Then: generate with each vector at several scales, label each vector by
simple text features of its completions (starts with a symbol, contains the chosen word, refuses,
answers in a list, ...), plot how often sampled completions contain the word as the scale grows, and
build each vector's target-layer vector (its target change minus the others' average), reconstructed
from the top-k features of an SAE dictionary: `dictionary` (old name `sae_path`), or by default the SAE shipped in
`interp/data/saes/` for the model at the target layer (SmolLM2: layer 22); without either the step is skipped with a
note.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp._timing import StageClock, progress_on
from interp.browser.links import experiment_links, markdown_link
from interp.chat import format_chat
from interp.dictionaries import HooklessDictionaryWarning, from_decoder, load_dictionary, shipped_dictionaries
from interp.dictionaries.core import residual_place
from interp.experiments import register
from interp.experiments.checks import check_fields
from interp.experiments.common import experiment_model
from interp.headlines import Headline, at, claim, grade, num, safe
from interp.hooked import HookedModel, d_model, n_layers
from interp.melbo import (
    MelboConfig,
    evaluate_losses,
    label_from_features,
    learn_melbo,
    next_token_probability,
    radius_sweep,
    random_init,
    sparse_reconstruction,
    steered_generations,
    target_layer_vectors,
    text_features,
    word_token_ids,
)
from interp.models import model_name
from interp.plots import line_plot


@dataclass
class MelboDemoConfig:
    """The melbo experiment's settings, checked when made (`interp.experiments.checks`).

    Each field is an `interp reproduce melbo --set KEY=VALUE` setting; `interp reproduce melbo --help` lists them with
    their types, defaults and meanings (the comments beside the fields here).
    """

    model: str = "smollm2-135m-instruct"
    device: str | None = None
    prompt: str = "What is 3940 * 3892?"
    source_layer: int = 7  # the original code's defaults: layer 7 → n_layers − 8
    target_layer: int | None = None  # None: n_layers − 8
    radius: float | None = None  # None: chosen by the sweep below (where the response changes regime)
    sweep_radii: tuple[float, ...] = (6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0)
    sweep_steps: int = 30
    n_vectors: int = 8
    steps: int = 100
    lr: float = 3e-3  # angular step (interp.melbo.sphere_ascent)
    mode: str = "parallel"  # all vectors in one batch; "sequential" is the original's loop
    scales: tuple[float, ...] = (0.5, 1.0, 1.5)  # × the learned vector (norm R)
    max_new_tokens: int = 40
    word: str = "First"
    word_scales: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
    word_samples: int = 6  # sampled completions per scale for the word plot
    temperature: float = 1.0
    dictionary: str | None = None  # an SAE at the target layer, any format load_dictionary reads; None: the shipped one
    sae_k: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)  # types and ranges, before any work (interp.experiments.checks)


def arithmetic_answer(prompt: str) -> str | None:
    """The product asked for by an "a * b" prompt, as digits (None if the prompt is not one)."""
    match = re.search(r"(\d+)\s*[*×x]\s*(\d+)", prompt)
    return str(int(match.group(1)) * int(match.group(2))) if match else None


def load_atoms(path: str | Path, hook: str) -> tuple[torch.Tensor | None, str]:
    """Unit-norm dictionary rows from an SAE decoder file, an SAE-Lens folder (its W_dec alone will do) or any
    dictionary `load_dictionary` reads, or (None, why not) if its atoms do not live at `hook`."""
    path = Path(path)
    if not path.exists():
        return None, f"no SAE weights at {path}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HooklessDictionaryWarning)  # a decoder file: the caller chose the hook
        if path.is_dir() and (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
            sae_config = json.loads((path / "cfg.json").read_text())
            # SAE-Lens 6 keeps the hook under "metadata"; older configs at the top level.
            sae_hook = (sae_config.get("metadata") or {}).get("hook_name") or sae_config.get("hook_name")
            dictionary = from_decoder(path / "sae_weights.safetensors", hook_name=sae_hook)
        else:
            dictionary = load_dictionary(path)
    written = dictionary.write_hook
    if written is not None and residual_place(written) != residual_place(hook):
        return None, f"the SAE at {path} reads {written}, not {hook}"
    return dictionary.atoms, f"{path} ({dictionary.n_atoms} atoms)"


def _short(text: str, limit: int = 90) -> str:
    flat = " ".join(text.split())
    flat = flat.replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def headline(result: dict[str, Any]) -> Headline:
    """The report's headline of a melbo result: key numbers, and the seed's claims with our number and a verdict.

    Args:
        result: the experiment's `result.json` as a dict.

    Returns:
        The `Headline`; a missing key gives an n/a row, never an error.
    """
    numbers = {
        "model": result.get("model"),
        "source → target layer": f"{result.get('source_layer')} → {result.get('target_layer')}",
        "radius R": result.get("radius"),
        "behaviour clusters": safe(lambda: {k: len(v) for k, v in at(result, "clusters").items()}),
        "SAE reconstruction cosine": safe(lambda: at(result, "sae_reconstruction", "cosine")),
    }

    def objective() -> tuple[str, str]:
        learned = [abs(num(v)) for v in at(result, "losses")]
        random = [abs(num(v)) for v in at(result, "random_vector_losses")]
        ratio = (sum(learned) / len(learned)) / (sum(random) / len(random))
        return f"target-layer change {ratio:.1f}× that of random vectors of the same norm", grade(ratio, 3.0, 1.5)

    def word() -> tuple[str, str]:
        rates = [num(v) for v in at(result, "word_rate")]
        word_name = result.get("word", "the word")
        return (f'"{word_name}" in {rates[0]:.2f} of samples unsteered, at most {max(rates):.2f} steered',
                grade(max(rates) - rates[0], 0.5, 1e-9))

    def reconstruction() -> tuple[str, str]:
        record = at(result, "sae_reconstruction")
        if record.get("status") != "done":
            return f"skipped: {record.get('note', record.get('status'))}", "n/a"
        cosine = num(at(record, "cosine"))
        return f"k={record.get('k')} features: cosine {cosine:.3f}", grade(cosine, 0.7, 0.4)

    return Headline(numbers, [
        claim("MELBO's unsupervised vectors change the target layer far more than random vectors of the same norm",
              objective),
        claim("Some learned vector makes the model start its answer with the word (seed: \"First\") as the scale grows",
              word),
        claim("A target-layer vector is reconstructed well by a few SAE features", reconstruction),
    ])


@dataclass
class Setting:
    """The model, the prompt and the layers every step works on."""

    model: HookedModel
    name: str
    prompts: list[str]
    target: int
    answer: str | None
    config: MelboDemoConfig

    def melbo_config(self, radius: float) -> MelboConfig:
        config = self.config
        return MelboConfig(
            source_layer=config.source_layer, target_layer=self.target, radius=radius, n_vectors=config.n_vectors,
            steps=config.steps, lr=config.lr, mode=config.mode, seed=config.seed,
        )


@dataclass
class Greedy:
    """Greedy completions of every vector at each scale, and the behaviours read from them."""

    unsteered: str
    scales: list[float]
    texts: list  # [vector][scale][prompt][sample]
    features: list[list[dict[str, Any]]]  # [vector][scale]
    labels: list[str]
    clusters: dict[str, list[int]]


@dataclass
class WordCurve:
    """How often the word appears as one vector's scale grows, and P(first token is the word) for every vector."""

    vector: int
    scales: list[float]
    rate: list[float]
    first_token: torch.Tensor  # [vector, scale]
    samples: list  # [scale][prompt] -> the sampled completions


def choose_radius(setting: Setting, out: Path) -> tuple[float, Any]:
    """`radius` if given, else a short sweep's choice where the response changes regime (and its figure)."""
    config = setting.config
    if config.radius is not None:
        return float(config.radius), None
    sweep = radius_sweep(setting.model, setting.prompts, setting.melbo_config(max(config.sweep_radii)),
                         config.sweep_radii, steps=config.sweep_steps)
    radius = sweep.chosen
    line_plot(
        list(sweep.radii), {"learned vector": [c / r for c, r in zip(sweep.mean_change, sweep.radii)]},
        xlabel="radius R (norm of the steering vector)",
        ylabel="mean ‖Δh_target‖ per token / R",
        title=f"{setting.name}: response gain vs R ({config.sweep_steps} steps each); chosen R = {radius:g}",
        path=out / "radius_sweep.png",
    )
    return radius, sweep


def learn(setting: Setting, radius: float, out: Path) -> tuple[Any, list[float]]:
    """The MELBO vectors (saved, with their loss curves) and, as a baseline, random vectors' losses."""
    config, model, prompts = setting.config, setting.model, setting.prompts
    settings = setting.melbo_config(radius)
    result = learn_melbo(model, prompts, settings)
    # Baseline: random directions of the same norm (how much does learning add?).
    random_vectors = random_init(config.n_vectors, d_model(model), config.seed + 1)
    random_vectors = random_vectors / random_vectors.norm(dim=1, keepdim=True) * radius
    random_losses = evaluate_losses(model, prompts, random_vectors, settings).tolist()
    for index, direction in enumerate(result.vectors):
        direction.save(out / "vectors" / f"vector{index}", overwrite=True)
    line_plot(
        list(range(1, config.steps + 1)), {f"vector {i}": list(curve) for i, curve in enumerate(result.curves)},
        xlabel="step", ylabel="MELBO loss (−Σ ‖Δh_target‖₂^p)^(1/q)",
        title=f"{setting.name}: MELBO training, layer {config.source_layer} → {setting.target}, R = {radius:g}",
        path=out / "loss_curves.png",
    )
    return result, random_losses


def greedy_behaviours(setting: Setting, result: Any) -> Greedy:
    """Greedy completions at each scale, one batch of rows for all vectors, labelled by their text features."""
    config, model, prompts = setting.config, setting.model, setting.prompts
    scales = [float(s) for s in config.scales]
    unsteered = steered_generations(
        model, prompts, result.vectors[:1], [0.0], max_new_tokens=config.max_new_tokens, progress=progress_on()
    )[0][0][0][0]
    greedy = steered_generations(model, prompts, result.vectors, scales, max_new_tokens=config.max_new_tokens)
    features = [
        [text_features(greedy[v][s][0][0], answer=setting.answer, word=config.word) for s in range(len(scales))]
        for v in range(config.n_vectors)
    ]
    main_scale = scales.index(1.0) if 1.0 in scales else len(scales) // 2
    labels = [label_from_features([features[v][main_scale]]) for v in range(config.n_vectors)]
    clusters: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        clusters.setdefault(label, []).append(index)
    return Greedy(unsteered, scales, greedy, features, labels, clusters)


def word_vs_scale(setting: Setting, result: Any, greedy: Greedy, out: Path) -> WordCurve:
    """The vector most inclined to the word, sampled as its scale grows; P(first token) for every vector."""
    config, model, prompts, name = setting.config, setting.model, setting.prompts, setting.name
    word_key = f"contains_{config.word}"
    word_hits = [sum(row[word_key] for row in greedy.features[v]) for v in range(config.n_vectors)]
    word_scales = [float(s) for s in config.word_scales]
    word_ids = word_token_ids(model.tokenizer, config.word)
    first_token = next_token_probability(model, prompts, result.vectors, word_scales, word_ids)  # [vector, scale]
    # The word plot's vector: most greedy completions with the word, then the highest probability of
    # starting with it at any scale (cheap to compute for every vector, unlike sampling).
    chosen = min(range(config.n_vectors), key=lambda v: (-word_hits[v], -float(first_token[v].max())))
    sampled = steered_generations(
        model, prompts, [result.vectors[chosen]], word_scales, max_new_tokens=config.max_new_tokens,
        n_samples=config.word_samples, do_sample=True, temperature=config.temperature, seed=config.seed,
    )[0]
    word_rate = [
        sum(text_features(text, word=config.word)[word_key] for text in sampled[s][0]) / config.word_samples
        for s in range(len(word_scales))
    ]
    line_plot(
        word_scales,
        {
            f'samples containing "{config.word}"': word_rate,
            f'P(first token is "{config.word}")': first_token[chosen].tolist(),
        },
        xlabel="scale (× learned vector, norm R)", ylabel="fraction / probability",
        title=f'{name}: "{config.word}" vs steering scale, vector {chosen} ({config.word_samples} samples, T={config.temperature:g})',
        path=out / "word_vs_scale.png",
    )
    line_plot(
        word_scales, {f"vector {v}": first_token[v].tolist() for v in range(config.n_vectors)},
        xlabel="scale (× learned vector, norm R)", ylabel=f'P(first token is "{config.word}")',
        title=f'{name}: P(completion starts with "{config.word}") vs scale, every vector',
        path=out / "word_first_token_all_vectors.png",
    )
    return WordCurve(chosen, word_scales, word_rate, first_token, sampled)


def target_vectors(setting: Setting, result: Any, chosen: int, out: Path) -> tuple[list, dict[str, Any]]:
    """Target-layer vectors (the seed's appendix), and the chosen one's reconstruction in an SAE dictionary."""
    config, model, name = setting.config, setting.model, setting.name
    targets = target_layer_vectors(model, setting.prompts, result)
    for index, direction in enumerate(targets):
        direction.save(out / "target_vectors" / f"vector{index}", overwrite=True)
    reconstruction: dict[str, Any] = {"status": "skipped"}
    hook = targets[chosen].hook_name
    # Default: the SAE that ships for this model at the target layer (interp/data/saes/), if any.
    sae_path = config.dictionary if config.dictionary is not None else shipped_dictionaries(name).get(hook)
    if sae_path is None:
        reconstruction["note"] = (
            f"no SAE for {name} at {hook} ships in interp/data/saes/; "
            "pass dictionary=<any dictionary load_dictionary reads> to reconstruct the target-layer vector"
        )
        return targets, reconstruction
    atoms, where = load_atoms(sae_path, hook)
    if atoms is None:
        reconstruction["note"] = f"skipped: {where}"
    elif atoms.shape[1] != d_model(model):
        reconstruction["note"] = f"skipped: {where} has width {atoms.shape[1]}, the model {d_model(model)}"
    else:
        rebuilt = sparse_reconstruction(targets[chosen], atoms, config.sae_k)
        rebuilt.save(out / "target_vectors" / f"vector{chosen}_sae_k{config.sae_k}", overwrite=True)
        reconstruction = {
            "status": "done", "dictionary": where, "vector": chosen, "k": config.sae_k,
            "cosine": rebuilt.meta["cosine_to_parent"], "features": rebuilt.meta["features"],
            "coefficients": rebuilt.meta["coefficients"],
            **experiment_links(sae_path, rebuilt.meta["features"], out),  # when a feature browser was built beside
        }
    return targets, reconstruction


@register("melbo", "MELBO unsupervised steering vectors on an arithmetic prompt: behaviours vs scale", MelboDemoConfig,
          headline=headline)
def run(config: MelboDemoConfig, out: Path) -> dict[str, Any]:
    """Run the melbo experiment and write its figures, `result.json` and `summary.md` into `out`.

    Args:
        config: the settings (`interp reproduce melbo --help` lists each with its type, default and meaning).
        out: the experiment's output folder.

    Returns:
        The result (config, numbers, timing) that `run_experiment` writes as `result.json`.
    """
    torch.manual_seed(config.seed)
    clock = StageClock("melbo")
    model = experiment_model(config.model, config.device)
    clock.lap("load")
    target = config.target_layer if config.target_layer is not None else n_layers(model) - 8
    setting = Setting(model, model_name(model), [format_chat(model, config.prompt)], target,
                      arithmetic_answer(config.prompt), config)
    radius, sweep = choose_radius(setting, out)
    clock.lap("radius sweep")
    result, random_losses = learn(setting, radius, out)
    clock.lap("learn vectors")
    greedy = greedy_behaviours(setting, result)
    clock.lap("greedy behaviours")
    word = word_vs_scale(setting, result, greedy, out)
    clock.lap("word vs scale")
    targets, reconstruction = target_vectors(setting, result, word.vector, out)
    clock.lap("target-layer vectors")
    summary = _summary(setting, radius, sweep, result, random_losses, greedy, word, targets, reconstruction)
    vectors, scales, word_scales = range(config.n_vectors), greedy.scales, word.scales
    return {
        "model": setting.name,
        "source_layer": config.source_layer,
        "target_layer": target,
        "radius": radius,
        "radius_sweep": sweep.to_json() if sweep else None,
        "train_seconds": result.seconds,
        "losses": list(result.losses),
        "random_vector_losses": random_losses,
        "unsteered": greedy.unsteered,
        "scales": scales,
        "generations": {str(v): {str(s): greedy.texts[v][i][0][0] for i, s in enumerate(scales)} for v in vectors},
        "features": {str(v): {str(s): greedy.features[v][i] for i, s in enumerate(scales)} for v in vectors},
        "labels": greedy.labels,
        "clusters": greedy.clusters,
        "word": config.word,
        "word_vector": word.vector,
        "word_scales": word_scales,
        "word_rate": word.rate,
        "word_first_token_probability": {str(v): word.first_token[v].tolist() for v in vectors},
        "word_samples": {str(s): word.samples[i][0] for i, s in enumerate(word_scales)},
        "target_vector_norms": [direction.norm for direction in targets],
        "sae_reconstruction": reconstruction,
        "feature_browser": reconstruction.get("feature_browser"),
        "seconds_by_stage": clock.seconds,
        "summary_md": summary,
    }


def _summary(setting: Setting, radius: float, sweep: Any, result: Any, random_losses: list[float], greedy: Greedy,
             word: WordCurve, targets: list, reconstruction: dict[str, Any]) -> str:
    config = setting.config
    lines = [
        f"# MELBO on {setting.name}: \"{config.prompt}\"",
        "",
        f"{config.n_vectors} steering vectors, bias on resid_pre of layer {config.source_layer}, maximising the change "
        f"of resid_pre at layer {setting.target} (p = q = 2, per-token norm, first token left out), {config.steps} steps, "
        f"mode {config.mode}, learned in {result.seconds:.0f} s. Correct answer: {setting.answer}.",
        *_radius_lines(config, radius, sweep),
        *_vector_lines(result, random_losses, greedy),
        *_word_lines(config, word, targets),
    ]
    if reconstruction["status"] == "done":
        lines.append(
            f"SAE reconstruction of vector {word.vector}'s target-layer vector from the top {reconstruction['k']} features "
            f"of {reconstruction['dictionary']}: cosine {reconstruction['cosine']:.3f}, features "
            + ", ".join(markdown_link(f, reconstruction.get("feature_pages"), str(f)) for f in reconstruction["features"])
            + "."
        )
    else:
        lines.append(f"SAE reconstruction: {reconstruction['note']}.")
    return "\n".join(lines)


def _radius_lines(config: MelboDemoConfig, radius: float, sweep: Any) -> list[str]:
    if sweep is None:
        return ["", f"**R = {radius:g}** (given)."]
    gains = ", ".join(f"{r:g}: {c / r:.1f}" for r, c in zip(sweep.radii, sweep.mean_change))
    return [
        "",
        f"**R = {radius:g}**, chosen by a sweep ({config.sweep_steps} steps per radius): mean per-token "
        f"‖Δh_target‖ / R by radius — {gains}. R is the first radius reached by a superlinear step "
        "(log-log slope ≥ 1.25), where the response leaves the linear regime (`radius_sweep.png`).",
    ]


def _vector_lines(result: Any, random_losses: list[float], greedy: Greedy) -> list[str]:
    scales = greedy.scales
    mean_random = sum(random_losses) / len(random_losses)
    lines = [
        "",
        f"Final losses {', '.join(f'{x:.0f}' for x in result.losses)}; random vectors of the same norm: "
        f"mean {mean_random:.0f} (learned vectors change the target {sum(result.losses) / len(result.losses) / mean_random:.1f}× more).",
        "",
        f"Unsteered: {_short(greedy.unsteered, 160)}",
        "",
        "| vector | loss | label (scale 1) | " + " | ".join(f"scale {s:g}" for s in scales) + " |",
        "|---|---|---|" + "---|" * len(scales),
    ]
    for v in range(len(result.vectors)):
        cells = " | ".join(
            f"[{label_from_features([greedy.features[v][s]])}] {_short(greedy.texts[v][s][0][0])}"
            for s in range(len(scales))
        )
        lines.append(f"| {v} | {result.losses[v]:.0f} | {greedy.labels[v]} | {cells} |")
    lines += ["", "Clusters by label: " + "; ".join(f"{label}: {members}" for label, members in greedy.clusters.items()) + "."]
    return lines


def _word_lines(config: MelboDemoConfig, word: WordCurve, targets: list) -> list[str]:
    first_token, word_scales = word.first_token, word.scales
    appeared = any(rate > 0 for rate in word.rate)
    best = int(first_token.max(dim=1).values.argmax())
    return [
        "",
        f"\"{config.word}\" vs scale for vector {word.vector} ({config.word_samples} samples per scale, `word_vs_scale.png`): "
        + ", ".join(f"{s:g}: {r:.2f}" for s, r in zip(word_scales, word.rate))
        + ("." if appeared else f" — \"{config.word}\" never appeared in its samples."),
        f"Highest probability that a completion starts with \"{config.word}\", over vectors and scales: "
        f"{float(first_token.max()):.3f} (vector {best})"
        + (f"; unsteered: {float(first_token[0, word_scales.index(0.0)]):.3f}" if 0.0 in word_scales else "")
        + " (`word_first_token_all_vectors.png`).",
        "",
        "Target-layer vectors (target change minus the others' average), norms: "
        + ", ".join(f"{t.norm:.0f}" for t in targets) + " (saved in `target_vectors/`).",
    ]
