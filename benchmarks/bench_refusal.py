"""Cost of scoring refusal-direction candidates: an ablated forward of the selection prompts per candidate.

Times one candidate's ablation score (last-position refusal score of `--prompts` harmful prompts with a
direction ablated at every layer) under each way of running it, interleaved, medians of `--repeats`,
and projects the whole sweep (every eligible layer × post-instruction position) from it. The last rows
score `--block` candidates together (`interp.refusal.scoring.score_candidates`: the prompts tiled once per
candidate, as many candidates per forward as `--tokens` padded tokens allow) and report the time per candidate:

    python benchmarks/bench_refusal.py [--model qwen2.5-coder-0.5b-instruct] [--prompts 24] [--block 16] [--tokens 512 1536 4096] [--skip-single] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch

from interp.chat import TokenBatch, format_chats, tokenize
from interp.datasets import load_bundled_instructions
from interp.directions import Direction
from interp.hooked import forward
from interp.models import load_model, model_name
from interp.refusal import ablation_hooks, post_instruction_count, score_candidates
from interp.runner import last_logits, last_logits_chunk
from interp.steering import Ablate, apply_all

from _common import device_label, interleaved  # noqa: E402  (benchmarks/ is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1536, 4096],
                        help="padded tokens per forward for the block rows")
    parser.add_argument("--skip-single", action="store_true", help="only the block rows and the one-chunk row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model, device=args.device)
    instructions = [r.instruction for r in load_bundled_instructions("harmful", "train")][: args.prompts]
    prompts = format_chats(model, instructions)
    batch = tokenize(model, prompts, device=args.device)
    n_positions, _ = post_instruction_count(model, prompts)
    direction = Direction(torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)),
                          layer=model.cfg.n_layers // 2, model=model_name(model), source="benchmark")
    ablate = Ablate(direction)
    units = torch.nn.functional.normalize(torch.randn(args.block, model.cfg.d_model), dim=-1)

    def many_per_forward(tokens: int) -> object:
        return score_candidates(model, batch, lambda block: ablation_hooks(model, units[block]), args.block,
                                lambda logits, _: logits[:, 0], tokens_per_forward=tokens)

    def bridge_full() -> object:
        with apply_all(model, ablate):  # hooks on the bridge, full logits at every position
            return forward(model, batch)[:, -1]

    def plain_unshared() -> object:
        with apply_all(model, ablate, plain=True) as state:
            return state.runner(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, logits_to_keep=1, use_cache=False).logits

    def plain_shared_prefix() -> object:
        with apply_all(model, ablate, plain=True) as state:
            return last_logits_chunk(model, state.runner, TokenBatch(batch.input_ids, batch.attention_mask), None, 1)

    variants = {
        "bridge, hooks, full logits": bridge_full,
        "plain HF tree, last-position logits": plain_unshared,
        "+ shared prefix in a KV cache (one chunk)": plain_shared_prefix,
        "+ length-sorted chunks of 8": lambda: last_logits(model, batch, [ablate], batch_size=8),
        "+ length-sorted chunks of 32": lambda: last_logits(model, batch, [ablate], batch_size=32),
    }
    per_block = {f"{args.block} candidates, ≤ {tokens} padded tokens per forward":
                 (lambda tokens=tokens: many_per_forward(tokens)) for tokens in args.tokens}
    if args.skip_single:
        variants = {name: variants[name] for name in ("+ shared prefix in a KV cache (one chunk)",)}
    times = interleaved({**variants, **per_block}, args.repeats, args.device)
    times.update({name: times[name] / args.block for name in per_block})
    cutoff = int(model.cfg.n_layers * 0.8)
    candidates = (cutoff - 1) * n_positions  # layer 0's candidate is zero; the last 20% of layers are pruned
    print(f"model {model_name(model)}: {args.prompts} prompts, {int(batch.lengths.sum())} real tokens "
          f"(padded {batch.input_ids.numel()}), {candidates} eligible candidates; {device_label(args.device)}, "
          f"torch threads {args.threads}\n")
    print("| way of running one candidate | s / candidate | projected ablation sweep, s |")
    print("|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} | {seconds * candidates:.0f} |")


if __name__ == "__main__":
    main()
