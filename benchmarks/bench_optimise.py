"""One step of the optimised ("skyline") vector: forward + backward of the completion NLL, three ways.

- full: every layer, every position unembedded (the plain HF tree with the vector as a hook);
- keep: every layer, only positions from the first completion token on unembedded;
- skip + keep (what `optimise_vector` runs): the layers below the vector's resid_pre run once, outside
  the loop, and each step starts there.
The anchor is "full" in the same run; the losses and gradients of the three must agree.

    python benchmarks/bench_optimise.py --model qwen2.5-coder-0.5b-instruct --layer 15 --prompts 16
"""

from __future__ import annotations

import argparse

import torch

from interp.chat import format_chats
from interp.datasets import bundled, load_instructions
from interp.directions import hook_name
from interp.hooked import d_model
from interp.models import load_model
from interp.optimise import completion_batch
from interp.runner import differentiable_logits, frozen, logits_from_layer, run_to_layer

from _common import device_label, interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = load_model(args.model, device=args.device)
    instructions = [r.instruction for r in load_instructions(bundled("harmful_train.json"))][: args.prompts]
    completions = ["I'm sorry, but I can't help with that request."] * len(instructions)
    batch, scored = completion_batch(model, format_chats(model, instructions), completions)
    batch, hook = batch.to(args.device), hook_name(args.layer)
    theta = (0.1 * torch.randn(d_model(model), generator=torch.Generator().manual_seed(0))).to(args.device)
    first = int(scored.any(0).nonzero()[0])
    keep = batch.input_ids.shape[1] - first
    with torch.no_grad():
        base = run_to_layer(model, batch, hook, stop_at_layer=args.layer + 1)

    def nll(logits: torch.Tensor, width: int) -> torch.Tensor:
        log_probs = logits[:, -width:-1].float().log_softmax(-1)
        picked = log_probs.gather(-1, batch.input_ids[:, -width + 1 :, None].cpu().to(log_probs.device))[..., 0]
        return -(picked * scored[:, -width:-1].to(picked.device)).sum()

    def step(kind: str) -> tuple[float, torch.Tensor]:
        vector = theta.clone().requires_grad_(True)
        if kind == "skip + keep":
            logits = logits_from_layer(model, batch, args.layer, base + vector, keep_last=keep)
        else:
            hooks = [(hook, lambda activation, _: activation + vector)]
            logits = differentiable_logits(model, batch, hooks, keep_last=keep if kind == "keep" else 0)
        loss = nll(logits, keep)
        loss.backward()
        return float(loss.detach()), vector.grad

    kinds = ("full", "keep", "skip + keep")
    with frozen(model), torch.enable_grad():
        results = {kind: step(kind) for kind in kinds}
        seconds = interleaved({kind: (lambda kind=kind: step(kind)) for kind in kinds}, args.repeats, args.device)
    _, reference_grad = results["full"]
    print(f"{args.model}, layer {args.layer}, {len(instructions)} prompts × {batch.input_ids.shape[1]} tokens "
          f"({keep} kept), {device_label(args.device)}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| path | s per step | speed-up | loss | max grad difference to full |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        loss, grad = results[kind]
        print(f"| {kind} | {seconds[kind]:.3f} | {seconds['full'] / seconds[kind]:.2f}× | {loss:.4f} | "
              f"{float((grad - reference_grad).abs().max()):.2e} |")


if __name__ == "__main__":
    main()
