"""Model-level speed: the hooked forward and activation collection vs HF and the peers, steered generation vs HF
`generate`, cached load.

Everything runs in one process on the same batch, interleaving the variants and reporting medians.
    python benchmarks/bench_models.py [--model smollm2-135m-instruct] [--repeats 5] [--threads 2] [--device cpu]
                                      [--parts forward,activations,generation]

- hooked forward: `interp.runner.batch_logits` under a `Steer` (one residual-site hook), on the plain HF clone
  (the default) and through the bridge's hook points (`fast=False`), against HF's forward with and without a
  bare PyTorch hook adding the same vector.
- activation collection: every layer's resid_pre at the last position and at the last k positions
  (k = the shortest prompt, so every row has them), as `[batch, n_layers, positions, d_model]` float32 on the
  CPU: `collect_residuals` (plain clone; bridge) vs TransformerLens `run_with_cache` with a `names_filter` on
  the bridge, HF `output_hidden_states=True` on the base model (no unembedding), and nnsight saving
  `model.layers[L].input` for every layer (stopping after the last). Each gives the same tensor (checked).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version

import torch
import transformers
from torch import Tensor

from interp.activations import LastK, collect_residuals
from interp.chat import format_chats, tokenize
from interp.directions import Direction, hook_name
from interp.hooked import plain_model
from interp.models import load_hf, load_model, model_name
from interp.nnsight_adapter import nnsight_model
from interp.runner import batch_logits, generate
from interp.steering import Steer

from _common import device_label, interleaved  # noqa: E402  (benchmarks/ is on sys.path)

USERS = [
    "Describe what you see on a typical street.",
    "Tell me about the weather today.",
    "What happens at a post office?",
    "Describe how to make a cup of tea.",
    "Write a short note about a meeting.",
    "What is a library used for?",
    "Tell me about a walk in the park.",
    "Write a sentence about the ocean.",
]


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def forward_rows(model, hf_model, batch, direction: Direction, vector: Tensor, repeats: int, device) -> dict[str, float]:
    """The hooked forward: ours on either path vs HF's forward, bare and with a plain PyTorch hook."""
    layer = direction.layer
    steer = [Steer(direction, scale=4.0, unit=True)]

    def hf_forward(hooked: bool) -> None:
        hf_layer = hf_model.model.layers[layer]
        handle = hf_layer.register_forward_pre_hook(add_hook(vector), with_kwargs=True) if hooked else None
        try:
            hf_model(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
        finally:
            if handle is not None:
                handle.remove()

    return interleaved(
        {
            "hf": lambda: hf_forward(False),
            "hf+hook": lambda: hf_forward(True),
            "plain+steer": lambda: batch_logits(model, batch, steer),
            "bridge+steer": lambda: batch_logits(model, batch, steer, fast=False),
        },
        repeats, device,
    )


def activation_rows(model, hf_model, lm, batch, k: int, repeats: int, device) -> tuple[dict[str, float], dict[str, float]]:
    """Every layer's resid_pre at the last `k` positions, each way; (median seconds, max |difference| vs ours)."""
    layers = list(range(model.cfg.n_layers))
    names = [hook_name(layer) for layer in layers]
    positions = -1 if k == 1 else LastK(k)

    def stacked(per_layer: list[Tensor]) -> Tensor:
        return torch.stack([activation[:, -k:].float().cpu() for activation in per_layer], dim=1)

    def ours(fast: bool) -> Tensor:
        return collect_residuals(model, batch, layers, positions, batch_size=len(batch.input_ids), progress=False, fast=fast)

    def transformer_lens() -> Tensor:
        _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask,
                                        position_ids=batch.position_ids, names_filter=names)
        return stacked([cache[name] for name in names])

    def hidden_states() -> Tensor:
        output = hf_model.model(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                                output_hidden_states=True, use_cache=False)
        return stacked(list(output.hidden_states[: len(layers)]))  # [i] is layer i's input; the last is normed

    def nnsight() -> Tensor:
        saved: list[Tensor] = []  # made outside the trace: nnsight runs the block's body apart from this frame
        with lm.trace({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                       "position_ids": batch.position_ids}) as tracer:
            for layer in layers:
                saved.append(lm.model.layers[layer].input.save())
            tracer.stop()  # nothing after the last layer's input is needed
        return stacked(saved)

    variants = {"ours": lambda: ours(True), "ours, bridge": lambda: ours(False), "run_with_cache": transformer_lens,
                "output_hidden_states": hidden_states, **({"nnsight": nnsight} if lm is not None else {})}
    with torch.no_grad():
        reference = variants["ours"]()
        differences = {name: float((function() - reference).abs().max()) for name, function in variants.items()}
        return interleaved(variants, repeats, device), differences


def add_hook(vector: Tensor):
    def pre_hook(module, args_, kwargs):  # the anchor: a bare PyTorch hook on the HF model
        if args_:
            return (args_[0] + vector, *args_[1:]), kwargs
        return args_, {**kwargs, "hidden_states": kwargs["hidden_states"] + vector}

    return pre_hook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parts", default="forward,activations,generation",
                        help="comma-separated: forward, activations, generation")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"forward", "activations", "generation"}:
        parser.error(f"--parts: expected forward, activations or generation, got {args.parts!r}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_average = os.getloadavg()[0]

    load_model(args.model, device=device)  # make sure the cache exists before timing loads
    load_seconds = median_seconds(lambda: load_model(args.model, device=device), 3)
    model = load_model(args.model, device=device)
    hf_model, tokenizer = load_hf(args.model, device=device)
    # nnsight is a peer, not a dependency: where it is not installed (a bare GPU machine), its column is left out.
    lm = nnsight_model(model) if "activations" in parts and importlib.util.find_spec("nnsight") else None
    layer = model.cfg.n_layers // 2
    direction = Direction(
        torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)),
        layer=layer, model=model_name(model), source="random",
    )
    steer = Steer(direction, scale=4.0, unit=True, positions="new")
    vector = 4.0 * direction.unit().vector.to(device)

    forward_table, activation_table, generation_table = [], [], []
    for batch_size in (1, 8):
        prompts = format_chats(model, USERS[:batch_size])
        batch = tokenize(model, prompts, device=device)
        shortest = int(batch.lengths.min())
        with torch.no_grad():
            if "forward" in parts:
                times = forward_rows(model, hf_model, batch, direction, vector, args.repeats * 2, device)
                forward_table.append((batch_size, batch.input_ids.shape[1], times))
            if "activations" in parts:
                for k in (1, shortest):
                    times, differences = activation_rows(model, hf_model, lm, batch, k, args.repeats * 2, device)
                    activation_table.append((batch_size, k, times, differences))

            def hf_generate(hooked: bool):
                hf_layer = hf_model.model.layers[layer]
                handle = hf_layer.register_forward_pre_hook(add_hook(vector), with_kwargs=True) if hooked else None
                try:
                    hf_model.generate(
                        input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
                    )
                finally:
                    if handle is not None:
                        handle.remove()

            def ours_generate(fast: bool):
                generate(model, prompts, interventions=[steer], max_new_tokens=args.new_tokens,
                         stop_at_eos=False, progress=False, fast=fast)

            def ours_generate_eager():
                # What the fast path ran at before load_model kept the HF model's own attention for the
                # plain clone (TransformerLens 4 switches the bridged model to eager).
                config = plain_model(model).config
                kept, config._attn_implementation = config._attn_implementation, "eager"
                try:
                    ours_generate(True)
                finally:
                    config._attn_implementation = kept

            if "generation" in parts:
                generate_times = interleaved(
                    {
                        "hf": lambda: hf_generate(False),
                        "hf+hook": lambda: hf_generate(True),
                        "ours+steer": lambda: ours_generate(True),
                        "ours+steer eager": ours_generate_eager,
                        "bridge+steer": lambda: ours_generate(False),
                    },
                    args.repeats,
                    device,
                )
                generation_table.append((batch_size, generate_times, batch_size * args.new_tokens))

    print(f"model {args.model} on {device_label(device)}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, transformer-lens {version('transformer-lens')}, nnsight {version('nnsight') if lm else 'not run'}, "
          f"{torch.get_num_threads()} threads, load average at start {load_average:.1f} ({os.cpu_count()} cores); "
          f"steering at layer {layer}; medians of {args.repeats}+ interleaved runs\n")
    print(f"cached load (load_model, bridge included): {load_seconds:.2f} s  (target <= 5 s)\n")
    if forward_table:
        print("Hooked forward (full logits; a unit vector x 4 added at resid_pre of the steering layer):\n")
        print("| batch | prompt len | HF forward | HF + bare hook | ours, plain path | vs HF (<= 1.05) | vs HF + hook "
              "| ours, bridge path | vs HF |")
        print("|---|---|---|---|---|---|---|---|---|")
        for batch_size, length, f in forward_table:
            print(f"| {batch_size} | {length} | {f['hf']*1e3:.1f} ms | {f['hf+hook']*1e3:.1f} ms "
                  f"| {f['plain+steer']*1e3:.1f} ms | {f['plain+steer']/f['hf']:.2f}x | {f['plain+steer']/f['hf+hook']:.2f}x "
                  f"| {f['bridge+steer']*1e3:.1f} ms | {f['bridge+steer']/f['hf']:.2f}x |")
        print()
    if activation_table:
        print("Activation collection (every layer's resid_pre, float32 on the CPU; time, and time / ours):\n")
        columns = ("ours", "ours, bridge", "run_with_cache", "output_hidden_states", "nnsight")[: 5 if lm else 4]
        nnsight_cells = ("| nnsight ", " / nnsight") if lm else ("", "")
        print("| batch | positions | collect_residuals | collect_residuals, bridge | TL run_with_cache "
              f"| HF output_hidden_states {nnsight_cells[0]}| max abs diff vs ours (bridge / TL / HF{nnsight_cells[1]}) |")
        print("|---" * (len(columns) + 3) + "|")
        for batch_size, k, t, d in activation_table:
            cells = [f"{t[c]*1e3:.1f} ms" + ("" if c == "ours" else f" ({t[c]/t['ours']:.2f}x)") for c in columns]
            label = "last" if k == 1 else f"last {k}"
            diffs = " / ".join(f"{d[c]:.0e}" if d[c] else "0" for c in columns[1:])
            print(f"| {batch_size} | {label} | {' | '.join(cells)} | {diffs} |")
        print()
    if generation_table:
        attention = plain_model(model).config._attn_implementation
        print(f"fast path attention: {attention} (the bridged model's: {model.original_model.config._attn_implementation})\n")
        print(f"| batch | HF generate | HF + bare hook | ours, steered (fast path, {attention}) | ratio vs HF (<= 1.3) "
              "| fast path, eager | ratio | bridge path, steered | ratio |")
        print("|---|---|---|---|---|---|---|---|---|")
        for batch_size, g, tokens in generation_table:
            rate = lambda seconds: f"{tokens / seconds:.1f} tok/s"  # noqa: E731
            print(f"| {batch_size} | {rate(g['hf'])} | {rate(g['hf+hook'])} | {rate(g['ours+steer'])} | "
                  f"{g['ours+steer']/g['hf']:.2f}x | {rate(g['ours+steer eager'])} | {g['ours+steer eager']/g['hf']:.2f}x | "
                  f"{rate(g['bridge+steer'])} | {g['bridge+steer']/g['hf']:.2f}x |")


if __name__ == "__main__":
    main()
