"""MELBO on an arithmetic prompt: unsupervised steering vectors, their behaviours, a word vs scale plot.

Following Mack & Turner's seed example ("What is 3940 * 3892?"): learn `n_vectors` mutually orthogonal
steering vectors at `source_layer` that maximally change the residual stream at `target_layer`
(`interp.melbo`), with the radius R chosen by a short sweep where the response changes regime
(unless `radius` is given). Then: generate with each vector at several scales, label each vector by
simple text features of its completions (starts with a symbol, contains the chosen word, refuses,
answers in a list, ...), plot how often sampled completions contain the word as the scale grows, and
build each vector's target-layer vector (its target change minus the others' average), reconstructed
from the top-k features of an SAE dictionary: `sae_path`, or by default the SAE shipped in `interp/data/saes/` for
the model at the target layer (SmolLM2: layer 22); without either the step is skipped with a note.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from interp.chat import format_chat
from interp.experiments import register
from interp.dictionaries import shipped_dictionaries
from interp.hooked import d_model, n_layers
from interp.melbo import (
    MelboConfig,
    evaluate_losses,
    label_from_features,
    learn_melbo,
    radius_sweep,
    random_init,
    sparse_reconstruction,
    steered_generations,
    target_layer_vectors,
    next_token_probability,
    text_features,
    word_token_ids,
)
from interp.models import load_model, model_name
from interp.plots import line_plot


@dataclass
class MelboDemoConfig:
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
    sae_path: str | None = None  # SAE decoder at the target layer (.safetensors or SAE-Lens folder); None: the shipped one
    sae_k: int = 8
    seed: int = 0


def arithmetic_answer(prompt: str) -> str | None:
    """The product asked for by an "a * b" prompt, as digits (None if the prompt is not one)."""
    match = re.search(r"(\d+)\s*[*×x]\s*(\d+)", prompt)
    return str(int(match.group(1)) * int(match.group(2))) if match else None


def load_atoms(path: str | Path, hook: str) -> tuple[torch.Tensor | None, str]:
    """Unit-norm dictionary rows from an SAE file/folder, or (None, why not) if it does not fit `hook`."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "cfg.json"
        if config_file.exists():
            sae_config = json.loads(config_file.read_text())
            # SAE-Lens 6 keeps the hook under "metadata"; older configs at the top level.
            sae_hook = (sae_config.get("metadata") or {}).get("hook_name") or sae_config.get("hook_name")
            if sae_hook and sae_hook != hook:
                return None, f"the SAE at {path} reads {sae_hook}, not {hook}"
        path = path / "sae_weights.safetensors"
    if not path.exists():
        return None, f"no SAE weights at {path}"
    tensors = load_file(str(path))
    key = next((name for name in ("W_dec", "atoms", "decoder") if name in tensors), None)
    if key is None:
        return None, f"{path} holds none of W_dec / atoms / decoder"
    atoms = tensors[key].float()
    return atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12), f"{path} ({key}, {atoms.shape[0]} atoms)"


def _short(text: str, limit: int = 90) -> str:
    flat = " ".join(text.split())
    flat = flat.replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@register("melbo", "MELBO unsupervised steering vectors on an arithmetic prompt: behaviours vs scale", MelboDemoConfig)
def run(config: MelboDemoConfig, out: Path) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    model = load_model(config.model, device=config.device)
    name = model_name(model)
    target = config.target_layer if config.target_layer is not None else n_layers(model) - 8
    prompts = [format_chat(model, config.prompt)]
    answer = arithmetic_answer(config.prompt)

    def melbo_config(radius: float) -> MelboConfig:
        return MelboConfig(
            source_layer=config.source_layer, target_layer=target, radius=radius, n_vectors=config.n_vectors,
            steps=config.steps, lr=config.lr, mode=config.mode, seed=config.seed,
        )

    sweep = None
    if config.radius is None:
        sweep = radius_sweep(model, prompts, melbo_config(max(config.sweep_radii)), config.sweep_radii, steps=config.sweep_steps)
        radius = sweep.chosen
        line_plot(
            list(sweep.radii), {"learned vector": [c / r for c, r in zip(sweep.mean_change, sweep.radii)]},
            xlabel="radius R (norm of the steering vector)",
            ylabel="mean ‖Δh_target‖ per token / R",
            title=f"{name}: response gain vs R ({config.sweep_steps} steps each); chosen R = {radius:g}",
            path=out / "radius_sweep.png",
        )
    else:
        radius = float(config.radius)

    settings = melbo_config(radius)
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
        title=f"{name}: MELBO training, layer {config.source_layer} → {target}, R = {radius:g}",
        path=out / "loss_curves.png",
    )

    # Greedy completions at each scale, one batch of rows for all vectors.
    scales = [float(s) for s in config.scales]
    unsteered = steered_generations(
        model, prompts, result.vectors[:1], [0.0], max_new_tokens=config.max_new_tokens, progress=False
    )[0][0][0][0]
    greedy = steered_generations(model, prompts, result.vectors, scales, max_new_tokens=config.max_new_tokens)
    features = [
        [text_features(greedy[v][s][0][0], answer=answer, word=config.word) for s in range(len(scales))]
        for v in range(config.n_vectors)
    ]
    main_scale = scales.index(1.0) if 1.0 in scales else len(scales) // 2
    labels = [label_from_features([features[v][main_scale]]) for v in range(config.n_vectors)]
    clusters: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        clusters.setdefault(label, []).append(index)
    word_key = f"contains_{config.word}"
    word_hits = [sum(row[word_key] for row in features[v]) for v in range(config.n_vectors)]
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

    # Target-layer vectors (the seed's appendix), and their reconstruction in an SAE dictionary.
    targets = target_layer_vectors(model, prompts, result)
    for index, direction in enumerate(targets):
        direction.save(out / "target_vectors" / f"vector{index}", overwrite=True)
    reconstruction: dict[str, Any] = {"status": "skipped"}
    hook = targets[chosen].hook_name
    # Default: the SAE that ships for this model at the target layer (interp/data/saes/), if any.
    sae_path = config.sae_path if config.sae_path is not None else shipped_dictionaries(name).get(hook)
    if sae_path is None:
        reconstruction["note"] = (
            f"no SAE for {name} at {hook} ships in interp/data/saes/; "
            "pass sae_path=<SAE decoder file or SAE-Lens folder> to reconstruct the target-layer vector"
        )
    else:
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
            }

    summary = _summary(
        config, name, target, radius, sweep, result, random_losses, unsteered, scales, greedy, features, labels, clusters,
        chosen, word_scales, word_rate, first_token, targets, reconstruction, answer,
    )
    return {
        "model": name,
        "source_layer": config.source_layer,
        "target_layer": target,
        "radius": radius,
        "radius_sweep": sweep.to_json() if sweep else None,
        "train_seconds": result.seconds,
        "losses": list(result.losses),
        "random_vector_losses": random_losses,
        "unsteered": unsteered,
        "scales": scales,
        "generations": {str(v): {str(s): greedy[v][i][0][0] for i, s in enumerate(scales)} for v in range(config.n_vectors)},
        "features": {str(v): {str(s): features[v][i] for i, s in enumerate(scales)} for v in range(config.n_vectors)},
        "labels": labels,
        "clusters": clusters,
        "word": config.word,
        "word_vector": chosen,
        "word_scales": word_scales,
        "word_rate": word_rate,
        "word_first_token_probability": {str(v): first_token[v].tolist() for v in range(config.n_vectors)},
        "word_samples": {str(s): sampled[i][0] for i, s in enumerate(word_scales)},
        "target_vector_norms": [direction.norm for direction in targets],
        "sae_reconstruction": reconstruction,
        "summary_md": summary,
    }


def _summary(
    config: MelboDemoConfig, name: str, target: int, radius: float, sweep: Any, result: Any, random_losses: list[float],
    unsteered: str, scales: list[float], greedy: list, features: list, labels: list[str], clusters: dict[str, list[int]],
    chosen: int,
    word_scales: list[float], word_rate: list[float], first_token: torch.Tensor, targets: list,
    reconstruction: dict[str, Any], answer: str | None,
) -> str:
    lines = [
        f"# MELBO on {name}: \"{config.prompt}\"",
        "",
        f"{config.n_vectors} steering vectors, bias on resid_pre of layer {config.source_layer}, maximising the change "
        f"of resid_pre at layer {target} (p = q = 2, per-token norm, first token left out), {config.steps} steps, "
        f"mode {config.mode}, learned in {result.seconds:.0f} s. Correct answer: {answer}.",
    ]
    if sweep is not None:
        gains = ", ".join(f"{r:g}: {c / r:.1f}" for r, c in zip(sweep.radii, sweep.mean_change))
        lines += [
            "",
            f"**R = {radius:g}**, chosen by a sweep ({config.sweep_steps} steps per radius): mean per-token "
            f"‖Δh_target‖ / R by radius — {gains}. R is the first radius reached by a superlinear step "
            "(log-log slope ≥ 1.25), where the response leaves the linear regime (`radius_sweep.png`).",
        ]
    else:
        lines += ["", f"**R = {radius:g}** (given)."]
    mean_random = sum(random_losses) / len(random_losses)
    lines += [
        "",
        f"Final losses {', '.join(f'{x:.0f}' for x in result.losses)}; random vectors of the same norm: "
        f"mean {mean_random:.0f} (learned vectors change the target {sum(result.losses) / len(result.losses) / mean_random:.1f}× more).",
        "",
        f"Unsteered: {_short(unsteered, 160)}",
        "",
        "| vector | loss | label (scale 1) | " + " | ".join(f"scale {s:g}" for s in scales) + " |",
        "|---|---|---|" + "---|" * len(scales),
    ]
    for v in range(len(result.vectors)):
        cells = " | ".join(
            f"[{label_from_features([features[v][s]])}] {_short(greedy[v][s][0][0])}" for s in range(len(scales))
        )
        lines.append(f"| {v} | {result.losses[v]:.0f} | {labels[v]} | {cells} |")
    lines += ["", "Clusters by label: " + "; ".join(f"{label}: {members}" for label, members in clusters.items()) + "."]
    appeared = any(rate > 0 for rate in word_rate)
    best = int(first_token.max(dim=1).values.argmax())
    lines += [
        "",
        f"\"{config.word}\" vs scale for vector {chosen} ({config.word_samples} samples per scale, `word_vs_scale.png`): "
        + ", ".join(f"{s:g}: {r:.2f}" for s, r in zip(word_scales, word_rate))
        + ("." if appeared else f" — \"{config.word}\" never appeared in its samples."),
        f"Highest probability that a completion starts with \"{config.word}\", over vectors and scales: "
        f"{float(first_token.max()):.3f} (vector {best})"
        + (f"; unsteered: {float(first_token[0, word_scales.index(0.0)]):.3f}" if 0.0 in word_scales else "")
        + " (`word_first_token_all_vectors.png`).",
        "",
        "Target-layer vectors (target change minus the others' average), norms: "
        + ", ".join(f"{t.norm:.0f}" for t in targets) + " (saved in `target_vectors/`).",
    ]
    if reconstruction["status"] == "done":
        lines.append(
            f"SAE reconstruction of vector {chosen}'s target-layer vector from the top {reconstruction['k']} features "
            f"of {reconstruction['dictionary']}: cosine {reconstruction['cosine']:.3f}, features {reconstruction['features']}."
        )
    else:
        lines.append(f"SAE reconstruction: {reconstruction['note']}.")
    return "\n".join(lines)
