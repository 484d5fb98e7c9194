"""Greedy generation under an intervention: the prompt pass padded to each chunk's longest prompt (the anchor,
as before 2026-12-05) against the prompts' own tokens run in groups of similar length (`generate_greedy`'s
`fill_prompt_cache`), at two chunk sizes. The workload is one condition of the seed's refusal figure: the
held-out harmful prompts with a direction ablated at every layer, `--new-tokens` greedy tokens each.

Times are medians of `--repeats`, interleaved; each row also says whether its texts equal the anchor's:

    python benchmarks/bench_generation.py [--model qwen2.5-coder-0.5b-instruct] [--prompts 112] [--new-tokens 8] [--batch 64 128] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch

import interp.runner.generation as generation
from interp.directions import Direction
from interp.experiments.sparse_refusal import held_out
from interp.models import model_name
from interp.runner import generate_greedy
from interp.steering import Ablate

from _common import add_run_arguments, device_label, interleaved, parse_and_load, timed  # noqa: E402  (benchmarks/ is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--prompts", type=int, default=112, help="held-out harmful prompts (bundled val + test: 112)")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128], help="rows decoded together")
    add_run_arguments(parser)
    args, model = parse_and_load(parser)
    _, prompts = held_out(model, "harmful", None, args.prompts)
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    ablate = [Ablate(Direction(vector, layer=model.cfg.n_layers // 2, model=model_name(model), source="benchmark"))]

    def run(batch: int, grouped: bool) -> list[str]:
        if grouped:
            return generate_greedy(model, prompts, ablate, max_new_tokens=args.new_tokens, batch_size=batch)
        with mock.patch.object(generation, "fill_prompt_cache", lambda *_, **__: None):  # one padded pass
            return generate_greedy(model, prompts, ablate, max_new_tokens=args.new_tokens, batch_size=batch)

    variants = {(pass_, batch): (lambda batch=batch, grouped=pass_ == "grouped": run(batch, grouped))
                for pass_ in ("padded", "grouped") for batch in args.batch}
    anchor = variants[("padded", args.batch[0])]
    reference = timed(anchor, args.device)[1]
    same = {key: function() == reference for key, function in variants.items()}
    times = interleaved({f"{pass_} {batch}": function for (pass_, batch), function in variants.items()}, args.repeats,
                        args.device)
    base = times[f"padded {args.batch[0]}"]
    print(f"model {model_name(model)}: {len(prompts)} prompts × {args.new_tokens} new tokens, a direction ablated; "
          f"{device_label(args.device)}, torch threads {args.threads}; anchor: padded prompt pass, chunks of "
          f"{args.batch[0]}\n")
    print("| prompt pass | rows decoded together | s | × anchor | texts as the anchor's |")
    print("|---|---|---|---|---|")
    for (pass_, batch), _ in variants.items():
        seconds = times[f"{pass_} {batch}"]
        print(f"| {pass_} | {batch} | {seconds:.1f} | {base / seconds:.2f} | {'yes' if same[(pass_, batch)] else 'NO'} |")


if __name__ == "__main__":
    main()
