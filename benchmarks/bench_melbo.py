"""Benchmark: learning MELBO vectors (CPU or `--device`), batched (interp.melbo) vs one prompt at a time (the original).

The same problem in every row: SmolLM2-135M-Instruct, arithmetic prompts in the chat template, a bias
on the MLP output of layer 7 (the original's site), the change of the residual stream entering layer
22 at p = q = 2 (first token left out), radius R, 8 vectors each orthogonal to those before, the same
starting vectors and the same AdamW steps. Rows:

- `original loop`: a re-implementation of Mack & Turner's `SteeredModel.train` — the plain HF model
  with a forward hook standing in for the `down_proj` bias; for every step and every prompt a separate
  forward of the whole model (`output_hidden_states=True`, all layers and the unembedding) and a
  backward, gradients accumulated over prompts.
- `interp.melbo, TL bridge hooks, ...` (`fast=False`): the hooks run through the TransformerBridge's own
  forward (its hook points and re-implemented attention), stopped at the target layer.
- `interp.melbo, 1 prompt/forward` (default `fast=True`, `prompt_batch_size=1`): the same hooks as PyTorch
  hooks on the bridge's plain HF module tree (same weights), stopped at the target layer (no later
  blocks, no unembedding).
- `interp.melbo, batched prompts`: all prompts in one left-padded forward (mode "sequential").
- `interp.melbo, batched prompts + vectors`: mode "parallel", all vectors and prompts in one forward.

The sequential rows run the same algorithm and must agree (cosine of the final vectors to the first
row); "parallel" learns the same constraint set jointly, so its vectors differ slightly after a few
steps. Times are wall-clock for `--steps` steps per vector, the fastest of `--rounds` interleaved rounds.

    python benchmarks/bench_melbo.py --steps 3 --rounds 3 --threads 1
    python benchmarks/bench_melbo.py --per-forward --threads 1   # one step's forward+backward, per row
    python benchmarks/bench_melbo.py --device cuda --rounds 3
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass

import torch

from interp.chat import format_chats, tokenize
from interp.hooked import plain_model
from interp.melbo import MelboConfig, evaluate_losses, learn_melbo, random_init
from interp.models import load_model

from _common import device_label, timed  # noqa: E402  (benchmarks/ is on sys.path)

PROMPTS = ["What is 3940 * 3892?", "What is 2187 * 4406?", "What is 5173 * 1298?", "What is 8021 * 3377?"]


@dataclass
class Row:
    name: str
    seconds: float
    vectors: torch.Tensor
    final_losses: list[float]


def original_loop(
    model, prompts: list[str], source: int, target: int, radius: float, n_vectors: int, steps: int, lr: float,
    init: torch.Tensor,
) -> torch.Tensor:
    """Mack & Turner's training loop, one prompt per forward, on the plain HF model (same weights)."""
    hf = plain_model(model)
    layers = hf.model.layers
    device = init.device
    bias = torch.nn.Parameter(torch.zeros(init.shape[1], device=device))
    handle = layers[source].mlp.register_forward_hook(lambda module, args, output: output + bias)
    try:
        inputs = [tokenize(model, [prompt], device=device) for prompt in prompts]
        with torch.no_grad():
            unsteered = [hf(batch.input_ids, output_hidden_states=True).hidden_states[target] for batch in inputs]
        learned = torch.zeros(n_vectors, init.shape[1], device=device)

        def project(vector: torch.Tensor) -> torch.Tensor:
            basis = learned / radius
            return vector - basis.T @ (basis @ vector)

        for index in range(n_vectors):
            with torch.no_grad():
                bias.data = radius * torch.nn.functional.normalize(project(init[index]), dim=0)
            # The original's absolute learning rate; `lr` here is interp.melbo's angular step × R.
            optimizer = torch.optim.AdamW([bias], lr=lr * radius, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True)
            for _ in range(steps):
                optimizer.zero_grad()
                for batch, base in zip(inputs, unsteered):
                    hidden = hf(batch.input_ids, output_hidden_states=True).hidden_states[target]
                    delta = (hidden - base)[:, 1:]  # the first token is left out, as in interp.melbo
                    loss = -delta.norm(dim=-1).pow(2).sum().pow(0.5)
                    loss.backward()
                with torch.no_grad():
                    bias.grad = project(bias.grad)
                    bias.grad -= torch.dot(bias.grad, bias) * bias / radius**2
                optimizer.step()
                with torch.no_grad():
                    bias.data = radius * torch.nn.functional.normalize(project(bias.data), dim=0)
            learned[index] = bias.detach()
        return learned
    finally:
        handle.remove()


def per_forward(model, prompts: list[str], source: int, target: int, repeats: int, device: str) -> None:
    """One forward+backward to the target, plain-HF fast path vs the bridge's TL hooks, 1 row vs all rows
    (8 vectors × the prompts): the fastest of `repeats` interleaved runs, in seconds per row."""
    from interp.melbo import resolve_layers
    from interp.melbo.learn import bias_hook, repeat_rows, run_to_target
    from interp.runner import frozen

    layers = resolve_layers(model, source, target, "mlp_out")
    full = repeat_rows(tokenize(model, prompts), 8).to(device)
    theta = torch.zeros(8, model.cfg.d_model, device=device, requires_grad=True)
    cases = {(fast, rows): None for fast in (True, False) for rows in (1, full.input_ids.shape[0])}
    times: dict[tuple[bool, int], list[float]] = {case: [] for case in cases}
    with frozen(model):
        for _ in range(repeats):
            for fast, rows in cases:
                batch, vectors = (full, theta) if rows > 1 else (full[:1], theta[:1])
                hook = bias_hook(vectors, batch.input_ids.shape[0] // vectors.shape[0])
                seconds, _ = timed(lambda: run_to_target(model, batch, layers, hook, fast).pow(2).sum().backward(), device)
                times[(fast, rows)].append(seconds)
    print("| forward+backward to the target | rows | s per row (fastest of %d) |" % repeats)
    print("|---|---|---|")
    for (fast, rows), values in times.items():
        path = "plain HF module tree (fast=True)" if fast else "bridge TL hooks (fast=False)"
        print(f"| {path} | {rows} | {min(values) / rows:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--vectors", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--radius", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the fastest of each is kept")
    parser.add_argument("--skip-original", action="store_true")
    parser.add_argument("--per-forward", action="store_true", help="only time single forward+backward passes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model("smollm2-135m-instruct", device=args.device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    prompts = format_chats(model, PROMPTS[: args.prompts])
    source, target = 7, 22
    base = dict(
        source_layer=source, target_layer=target, radius=args.radius, n_vectors=args.vectors, steps=args.steps,
        lr=args.lr, site="mlp_out",
    )
    init = random_init(args.vectors, model.cfg.d_model, seed=0, device=args.device)
    lengths = tokenize(model, prompts).lengths.tolist()

    if args.per_forward:
        per_forward(model, prompts, source, target, repeats=5, device=args.device)
        return

    variants: list[tuple[str, MelboConfig | None]] = [
        ("interp.melbo, TL bridge hooks, 1 prompt/forward", MelboConfig(**base, prompt_batch_size=1, fast=False)),
        ("interp.melbo, TL bridge hooks, batched prompts + vectors", MelboConfig(**base, mode="parallel", fast=False)),
        ("interp.melbo, 1 prompt/forward", MelboConfig(**base, prompt_batch_size=1)),
        ("interp.melbo, batched prompts", MelboConfig(**base)),
        ("interp.melbo, batched prompts + vectors (parallel)", MelboConfig(**base, mode="parallel")),
    ]
    if not args.skip_original:
        # The original reads hidden_states[target] with the bias after block `source`'s MLP: the residual
        # entering block `target`, exactly interp.melbo's target with site="mlp_out".
        variants.insert(0, ("original loop (1 prompt/forward, full model)", None))

    def run(config: MelboConfig | None) -> tuple[float, torch.Tensor, list[float]]:
        if config is None:
            seconds, vectors = timed(lambda: original_loop(
                model, prompts, source, target, args.radius, args.vectors, args.steps, args.lr, init), args.device)
            return seconds, vectors.cpu(), evaluate_losses(model, prompts, vectors, MelboConfig(**base)).tolist()
        seconds, result = timed(lambda: learn_melbo(model, prompts, config, progress=False), args.device)
        return seconds, result.matrix.cpu(), list(result.losses)

    # Round-robin rounds, keeping each variant's fastest: on a shared machine, the minimum is the least
    # disturbed measurement, and interleaving spreads any slow phase over all variants.
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    outputs: dict[str, tuple[torch.Tensor, list[float]]] = {}
    for round_index in range(args.rounds):
        for name, config in variants:
            seconds, vectors, losses = run(config)
            times[name].append(seconds)
            outputs[name] = (vectors, losses)
            print(f"  round {round_index + 1}: {name}: {seconds:.1f} s", flush=True)
    rows = [Row(name, min(times[name]), *outputs[name]) for name, _ in variants]

    reference = rows[0]
    vector_steps = args.vectors * args.steps
    print()
    print(
        f"SmolLM2-135M-Instruct, {device_label(args.device)} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{args.threads} thread(s); {args.prompts} prompts of {min(lengths)}–{max(lengths)} tokens; "
        f"{args.vectors} vectors × {args.steps} steps; layer {source} mlp_out → resid_pre {target}; R = {args.radius:g}; "
        f"fastest of {args.rounds} interleaved rounds"
    )
    print()
    print("| method | wall time (s) | s per vector-step | speed-up | mean final loss | min cosine to first row |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cosine = torch.nn.functional.cosine_similarity(row.vectors.double(), reference.vectors.double(), dim=1)
        print(
            f"| {row.name} | {row.seconds:.1f} | {row.seconds / vector_steps:.2f} | "
            f"{reference.seconds / row.seconds:.2f}× | {sum(row.final_losses) / len(row.final_losses):.1f} | "
            f"{float(cosine.min()):.4f} |"
        )


if __name__ == "__main__":
    main()
