"""Encoding with a loaded dictionary against the source library's own `encode`, on the same batch.

Each case builds one random instance in its library (SAE-Lens, EleutherAI sparsify, dictionary_learning when
installed), saves it in that library's format, loads it with `interp.dictionaries.load_dictionary`, and times
both encoders on one batch of random activations, interleaved (ours, theirs, ours, ...) so that load on a
shared machine falls on both alike; the median of `--rounds` calls each, after one warm-up call. Also printed:
the largest difference between the two encodings (sparsify returns only its top values and indices: the
comparison scatters them into the dense codes ours returns, and its time does not include that scatter).

    python benchmarks/bench_dictionaries.py                      # CPU, SmolLM2's width, the shipped SAEs' size
    python benchmarks/bench_dictionaries.py --device cuda --batch 8192 --n-atoms 65536
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from interp.dictionaries import load_dictionary

Case = tuple[str, Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor], str]


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            values = torch.randn(parameter.shape, generator=generator) * (0.02 if "threshold" not in name else 0.01)
            parameter.copy_(values.abs() if "threshold" in name else values)


def saelens_cases(d: int, n: int, k: int, folder: Path, device: str) -> list[Case]:
    try:
        import sae_lens
    except ImportError:  # the `sae` extra: a GPU machine may lack it
        return []

    cases = []
    for architecture in ("standard", "topk", "jumprelu", "skip_transcoder"):
        sae_class, config_class = sae_lens.registry.SAE_CLASS_REGISTRY[architecture]
        extra = {"k": k} if architecture == "topk" else {}
        if "transcoder" in architecture:
            extra.update(d_out=d, apply_b_dec_to_input=False)
        sae = sae_class(config_class(d_in=d, d_sae=n, **extra))
        randomise(sae)
        sae.save_model(folder / architecture)
        ours = load_dictionary(folder / architecture).to(device)
        sae = sae.to(device)
        cases.append((f"SAE-Lens {architecture}", ours.encode, sae.encode, f"sae-lens {sae_lens.__version__}"))
    return cases


def sparsify_cases(d: int, n: int, k: int, folder: Path, device: str) -> list[Case]:
    try:
        import sparsify
    except ImportError:
        return []
    from importlib.metadata import version

    coder = sparsify.SparseCoder(d, sparsify.SparseCoderConfig(num_latents=n, k=k))
    randomise(coder)
    coder.save_to_disk(folder / "layers.1")
    ours = load_dictionary(folder / "layers.1").to(device)
    coder = coder.to(device)

    def theirs(x: torch.Tensor) -> torch.Tensor:
        return coder.encode(x)

    return [("sparsify topk", ours.encode, theirs, f"eai-sparsify {version('eai-sparsify')}")]


def dictionary_learning_cases(d: int, n: int, k: int, folder: Path, device: str) -> list[Case]:
    spec = importlib.util.find_spec("dictionary_learning")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, path in (("_dl_files", root), ("_dl_files.trainers", root / "trainers")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules.setdefault(name, package)
    top_k = importlib.import_module("_dl_files.trainers.top_k")
    batch_top_k = importlib.import_module("_dl_files.trainers.batch_top_k")
    import json

    cases = []
    for label, ae in (("AutoEncoderTopK", top_k.AutoEncoderTopK(d, n, k)), ("BatchTopKSAE", batch_top_k.BatchTopKSAE(d, n, k))):
        randomise(ae)
        if label == "BatchTopKSAE":
            ae.threshold = torch.tensor(0.05)
        where = folder / label
        where.mkdir()
        torch.save(ae.state_dict(), where / "ae.pt")
        (where / "config.json").write_text(json.dumps({"trainer": {"dict_class": label, "k": k, "layer": 1,
                                                                   "submodule_name": "resid_post_layer_1"}}))
        ours = load_dictionary(where).to(device)
        cases.append((f"dictionary_learning {label}", ours.encode, ae.to(device).encode, "dictionary-learning 0.1.0"))
    return cases


def timed(function: Callable[[torch.Tensor], object], x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def dense(output: object, n: int) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    values, indices = output[0], output[1]  # sparsify's EncoderOutput
    return torch.zeros(values.shape[0], n, device=values.device, dtype=values.dtype).scatter_(-1, indices, values)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--n-atoms", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # random instances record no hook point; timing needs none
    x = torch.randn(args.batch, args.d_model, generator=torch.Generator().manual_seed(1)).to(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cases = (saelens_cases(args.d_model, args.n_atoms, args.k, folder, args.device)
                 + sparsify_cases(args.d_model, args.n_atoms, args.k, folder, args.device)
                 + dictionary_learning_cases(args.d_model, args.n_atoms, args.k, folder, args.device))
        print(f"{args.batch} × {args.d_model} activations, {args.n_atoms:,} atoms (k = {args.k}), {args.device}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.rounds}, interleaved")
        print("| dictionary | reference | ours ms | theirs ms | ours / theirs | max abs diff |")
        print("|---|---|---|---|---|---|")
        for label, ours, theirs, reference in cases:
            difference = float((dense(theirs(x), args.n_atoms).float() - ours(x).float()).abs().max())  # warm-up too
            times: dict[str, list[float]] = {"ours": [], "theirs": []}
            for _ in range(args.rounds):
                times["ours"].append(timed(ours, x))
                times["theirs"].append(timed(theirs, x))
            mine, other = (1000 * statistics.median(times[key]) for key in ("ours", "theirs"))
            print(f"| {label} | {reference} | {mine:.1f} | {other:.1f} | {mine / other:.2f} | {difference:.1e} |")


if __name__ == "__main__":
    main()
