"""Both SAE training engines on a tiny run: ours (in memory) and SAE-Lens's runner (streaming) write the same
SAE-Lens folder and evaluation report; the SAE-Lens engine sees our tokens and is offline."""

from __future__ import annotations

import json
import random
import signal
import sys

import numpy as np
import pytest
import torch

from interp.dictionaries import from_saelens_folder
from interp.sae_training import SAETrainingConfig, pack_rows, tokenize_corpus, train_saes_for_model

from conftest import WORDS

pytestmark = pytest.mark.usefixtures("single_thread")
HOOK = "blocks.1.hook_resid_pre"
COMMON_REPORT_KEYS = {"model", "hook_name", "engine", "config", "training_tokens", "distinct_training_tokens", "steps",
                      "train_seconds", "seconds", "tokens_per_second", "evaluation", "device", "command"}


def word_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["<|user|> " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + " </s>" for _ in range(n)]


@pytest.fixture(scope="module")
def both_engines(tiny_model, tmp_path_factory):
    pytest.importorskip("sae_lens")
    root = tmp_path_factory.mktemp("engines")
    config = SAETrainingConfig(d_sae=64, k=4, batch_size=128, epochs=2, lr=1e-3)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    reports = {engine: train_saes_for_model(tiny_model, word_texts(300), [1], root / engine, config=config,
                                            engine=engine, max_length=64, progress=False, command=f"test {engine}")[1]
               for engine in ("ours", "saelens")}
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # the runner's are undone
    return root, config, reports


@pytest.mark.parametrize("engine", ["ours", "saelens"])
def test_each_engine_writes_an_sae_lens_folder_both_loaders_read(both_engines, engine):
    sae_lens = pytest.importorskip("sae_lens")
    root, config, _ = both_engines
    folder = root / engine / HOOK
    assert {"cfg.json", "sae_weights.safetensors", "training_report.json"} <= {p.name for p in folder.iterdir()}
    theirs = sae_lens.SAE.load_from_disk(folder, dtype="float32")  # ours saves float16 weights; compare in float32
    ours = from_saelens_folder(folder)
    assert ours.hook_name == HOOK and ours.encoder.architecture == "topk" and ours.n_atoms == config.d_sae
    x = torch.randn(40, 32, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(ours.encode(x), theirs.encode(x).detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.reconstruct(x), theirs.decode(theirs.encode(x)).detach(), atol=1e-4, rtol=1e-4)


def test_both_engines_write_the_same_report(both_engines):
    _, config, reports = both_engines
    ours, theirs = reports["ours"], reports["saelens"]
    assert COMMON_REPORT_KEYS <= set(ours) and COMMON_REPORT_KEYS <= set(theirs)
    assert (ours["engine"], theirs["engine"]) == ("ours", "saelens")
    assert ours["config"] == theirs["config"] and theirs["command"] == "test saelens"
    assert set(ours["evaluation"]) == set(theirs["evaluation"])
    # The same held-out texts, the same corpus and number of passes over it.
    assert ours["evaluation"]["n_tokens"] == theirs["evaluation"]["n_tokens"]
    assert ours["evaluation"]["ce_clean"] == pytest.approx(theirs["evaluation"]["ce_clean"])
    assert theirs["training_tokens"] == pytest.approx(ours["training_tokens"], rel=0.1)
    assert theirs["steps"] * config.batch_size == theirs["training_tokens"]
    for report in (ours, theirs):
        evaluation = report["evaluation"]
        assert 0 < evaluation["variance_explained"] <= 1 and evaluation["l0"] <= config.k
        assert np.isfinite(evaluation["ce_spliced"]) and report["tokens_per_second"] > 0


def test_saelens_output_is_offline_and_says_what_it_saw(both_engines):
    root, config, _ = both_engines
    folder = root / "saelens" / HOOK
    runner = json.loads((folder / "runner_cfg.json").read_text())
    assert runner["logger"]["log_to_wandb"] is False and runner["checkpoint_path"] is None
    assert runner["seqpos_slice"] == [1, None] and runner["prepend_bos"] is False  # position 0 of each row left out
    assert runner["sequence_separator_token"] is None and runner["context_size"] == 64
    assert runner["lr"] == config.lr and runner["train_batch_size_tokens"] == config.batch_size
    assert runner["sae"]["k"] == config.k and runner["sae"]["aux_loss_coefficient"] == config.aux_coefficient
    metadata = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert metadata["hook_name"] == HOOK and metadata["model_name"] == from_saelens_folder(folder).model
    assert json.loads((folder / "cfg.json").read_text())["normalize_activations"] == "none"  # the scale is folded in


def test_saelens_engine_packs_our_tokens(tiny_model):
    texts = word_texts(20, seed=1)
    rows = pack_rows(tiny_model, texts, context_size=16, max_length=64)
    flat = [token for ids in tokenize_corpus(tiny_model, texts, max_length=64) for token in ids]
    assert rows.shape == (len(flat) // 16, 16) and rows.reshape(-1).tolist() == flat[: rows.size]
    with pytest.raises(ValueError, match="texts: hold"):
        pack_rows(tiny_model, texts[:1], context_size=64)
    with pytest.raises(ValueError, match="context_size"):
        pack_rows(tiny_model, texts, context_size=1)


def test_runner_config_translates_ours():
    pytest.importorskip("sae_lens")
    from interp.sae_training.saelens_engine import runner_config

    config = SAETrainingConfig(architecture="standard", d_sae=96, l1_coefficient=0.5, batch_size=256, lr=2e-4,
                               dead_after_tokens=25_600, lr_decay_fraction=0.25, l1_warmup_fraction=0.1)
    cfg = runner_config(config, d_in=16, hook=HOOK, model_label="toy", model_class="TransformerBridge",
                        training_tokens=100 * 256, context_size=33, n_rows=500, device="cpu", llm_device="cpu")
    assert cfg.total_training_steps == 100 and cfg.lr_decay_steps == 25 and cfg.dead_feature_window == 100
    assert cfg.sae.l1_coefficient == pytest.approx(0.5 * 4) and cfg.sae.l1_warm_up_steps == 10
    assert cfg.sae.normalize_activations == "expected_average_only_in" and cfg.output_path is None
    # The mixing buffer (rows x training context) holds several batches, as SAE-Lens requires.
    assert cfg.n_batches_in_buffer * 32 >= 8 * 256 and cfg.store_batch_size_prompts * 33 <= 8192
    with pytest.raises(ValueError, match="engine: expected one of"):
        train_saes_for_model(None, [], [0], "unused", engine="sae-lens")


def test_missing_sae_lens_is_named_before_any_work(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # what `import sae_lens` sees when it is not installed
    with pytest.raises(ImportError, match=r"interp\[sae\]"):
        train_saes_for_model(tiny_model, word_texts(10), [1], tmp_path / "out", engine="saelens", progress=False)
    with pytest.raises(ValueError, match="context_size: only the saelens engine"):
        train_saes_for_model(tiny_model, word_texts(10), [1], tmp_path / "out", context_size=32, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_trains_with_the_saelens_engine(tiny_folder, tmp_path, monkeypatch, capsys):
    pytest.importorskip("sae_lens")
    from interp.cli import main
    from interp.corpus import save_corpus

    corpus = save_corpus(word_texts(120, seed=2), tmp_path / "corpus.jsonl")
    out = tmp_path / "cli"
    argv = ["train-sae", "--engine", "saelens", "--model", str(tiny_folder), "--layers", "0", "--corpus", str(corpus),
            "--d-sae", "32", "--k", "4", "--batch-size", "64", "--context-size", "32", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "blocks.0.hook_resid_pre" / "training_report.json").read_text())
    assert report["engine"] == "saelens" and report["context_size"] == 32 and "--engine saelens" in report["command"]
    assert "| blocks.0.hook_resid_pre | saelens |" in capsys.readouterr().out

    import interp.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(interp.models, "load_model", refuse)
    assert main(["train-sae", "--layers", "0", "--context-size", "32", "--out", str(tmp_path / "x")]) == 2
    assert "--context-size: only --engine saelens" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "sae_lens", None)
    assert main(["train-sae", "--layers", "0", "--engine", "saelens", "--out", str(tmp_path / "x")]) == 2
    assert "interp[sae]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-sae", "--layers", "0", "--engine", "sae-lens"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.integration
def test_both_engines_on_smollm2_leave_out_the_first_position(smollm, tmp_path):
    pytest.importorskip("sae_lens")
    from interp.chat import format_chat
    from interp.corpus import bundled_instructions
    from interp.sae_training import train_sae_with_saelens

    texts = [format_chat(smollm, instruction) for instruction in bundled_instructions()[:40]]
    # lr 3e-3: SAE-Lens starts b_dec at 0 and decoder rows at norm 0.1, and SmolLM2's residual mean is ~70% of
    # its norm, so at our default lr 4e-4 a run of a few dozen steps explains less than the mean does.
    config = SAETrainingConfig(d_sae=256, k=8, batch_size=128, epochs=2, lr=3e-3)
    reports = {engine: train_saes_for_model(smollm, texts, [15], tmp_path / engine, config=config, engine=engine,
                                            max_length=128, progress=False)[15] for engine in ("ours", "saelens")}
    for report in reports.values():
        assert report["training_tokens"] >= 3000 and 0 < report["evaluation"]["variance_explained"] <= 1
        assert report["evaluation"]["l0"] <= 8 and report["evaluation"]["ce_loss_recovered"] > 0.5
    # What SAE-Lens's activations store hands the SAE: no position-0 residual (~100x the others' norm).
    run = train_sae_with_saelens(smollm, texts, 15, SAETrainingConfig(d_sae=64, k=4, batch_size=256, epochs=0.05),
                                 max_length=128)
    norms = run.runner.activations_store.get_filtered_llm_batch().norm(dim=-1)
    assert norms.max() < 10 * norms.median()
    assert reports["ours"]["outliers_dropped"] == 0  # ours dropped position 0 itself, nothing else stood out
