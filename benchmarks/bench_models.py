"""Model-level speed: hook overhead, forward vs HF, steered generation vs HF `generate`, cached load.

Everything runs in one process on the same batch, interleaving the variants and reporting medians.
    python benchmarks/bench_models.py [--model smollm2-135m-instruct] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version

import torch
import transformers

from interp.chat import format_chats, tokenize
from interp.directions import Direction
from interp.hooked import forward, plain_model
from interp.models import load_hf, load_model, model_name
from interp.runner import generate
from interp.steering import Steer, apply_all

from _common import interleaved  # noqa: E402  (benchmarks/ is on sys.path)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    load_model(args.model, device=device)  # make sure the cache exists before timing loads
    load_seconds = median_seconds(lambda: load_model(args.model, device=device), 3)
    model = load_model(args.model, device=device)
    hf_model, tokenizer = load_hf(args.model, device=device)
    layer = model.cfg.n_layers // 2
    direction = Direction(
        torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)),
        layer=layer, model=model_name(model), source="random",
    )
    steer = Steer(direction, scale=4.0, unit=True, positions="new")
    vector = 4.0 * direction.unit().vector.to(device)

    def hf_pre_hook(module, args_, kwargs):  # the anchor: a bare PyTorch hook on the HF model
        if args_:
            return (args_[0] + vector, *args_[1:]), kwargs
        return args_, {**kwargs, "hidden_states": kwargs["hidden_states"] + vector}

    rows = []
    for batch_size in (1, 8):
        prompts = format_chats(model, USERS[:batch_size])
        batch = tokenize(model, prompts, device=device)
        with torch.no_grad():
            def hf_forward():
                hf_model(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)

            def ours_forward():
                forward(model, batch)

            def ours_forward_steered():
                with apply_all(model, Steer(direction, scale=4.0, unit=True)):
                    forward(model, batch)

            def hf_generate(hooked: bool):
                handle = hf_model.model.layers[layer].register_forward_pre_hook(hf_pre_hook, with_kwargs=True) if hooked else None
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

            forward_times = interleaved(
                {"hf": hf_forward, "ours": ours_forward, "ours+steer": ours_forward_steered}, args.repeats * 2, device
            )
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
        tokens = batch_size * args.new_tokens
        rows.append((batch_size, batch.input_ids.shape[1], forward_times, generate_times, tokens))

    print(f"model {args.model} on {device}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"transformer-lens {version('transformer-lens')}, {torch.get_num_threads()} threads; "
          f"steering at layer {layer}; medians of {args.repeats}+ interleaved runs\n")
    print(f"cached load (load_model, bridge included): {load_seconds:.2f} s  (target <= 5 s)\n")
    print("| batch | prompt len | HF forward | our forward | ratio (<= 1.3) | + steering hook | hook overhead (<= 5%) |")
    print("|---|---|---|---|---|---|---|")
    for batch_size, length, f, _, _ in rows:
        print(f"| {batch_size} | {length} | {f['hf']*1e3:.1f} ms | {f['ours']*1e3:.1f} ms | {f['ours']/f['hf']:.2f}x "
              f"| {f['ours+steer']*1e3:.1f} ms | {100*(f['ours+steer']/f['ours']-1):+.1f}% |")
    print()
    attention = plain_model(model).config._attn_implementation
    print(f"fast path attention: {attention} (the bridged model's: {model.original_model.config._attn_implementation})\n")
    print(f"| batch | HF generate | HF + bare hook | ours, steered (fast path, {attention}) | ratio vs HF (<= 1.3) "
          "| fast path, eager | ratio | bridge path, steered | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch_size, _, _, g, tokens in rows:
        rate = lambda seconds: f"{tokens / seconds:.1f} tok/s"  # noqa: E731
        print(f"| {batch_size} | {rate(g['hf'])} | {rate(g['hf+hook'])} | {rate(g['ours+steer'])} | "
              f"{g['ours+steer']/g['hf']:.2f}x | {rate(g['ours+steer eager'])} | {g['ours+steer eager']/g['hf']:.2f}x | "
              f"{rate(g['bridge+steer'])} | {g['bridge+steer']/g['hf']:.2f}x |")


if __name__ == "__main__":
    main()
