"""SAE training, dictionaries and the corpus: planted dictionaries, SAE-Lens round trips, tiny models."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from interp.corpus import build_corpus, load_corpus, save_corpus
from interp.dictionaries import (
    Dictionary,
    from_decoder,
    from_sae,
    from_saelens_folder,
    load_dictionary,
)
from interp.sae_training import (
    GatedSparseAutoencoder,
    SAETrainingConfig,
    SparseAutoencoder,
    harvest_activations,
    reconstruction_stats,
    save_sae,
    spliced_losses,
    train_sae,
    train_saes_for_model,
)
from interp.sae_training.trainer import fold_scale

pytestmark = pytest.mark.usefixtures("single_thread")  # toy-sized SAEs: a second thread only adds barrier waits


def planted_activations(n_tokens: int, n_atoms: int, d: int, k: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=generator)
    atoms = atoms / atoms.norm(dim=-1, keepdim=True)
    support = torch.rand(n_tokens, n_atoms, generator=generator).argsort(-1)[:, :k]
    codes = torch.zeros(n_tokens, n_atoms).scatter_(-1, support, 1 + torch.rand(n_tokens, k, generator=generator))
    offset = torch.randn(d, generator=generator)
    return codes @ atoms + offset, atoms


def best_cosines(learned: torch.Tensor, true_atoms: torch.Tensor) -> torch.Tensor:
    learned = learned / learned.norm(dim=-1, keepdim=True)
    return (true_atoms @ learned.T).max(dim=1).values


def test_topk_sae_recovers_a_planted_dictionary():
    activations, atoms = planted_activations(60_000, 64, 32, 3)
    config = SAETrainingConfig(architecture="topk", d_sae=128, k=3, batch_size=512, epochs=4, lr=3e-3,
                               dead_after_tokens=20_000)
    sae, log = train_sae(activations, config, progress=False)
    cosines = best_cosines(sae.W_dec.detach(), atoms)
    assert (cosines > 0.95).float().mean() >= 0.9, cosines
    dictionary = Dictionary(sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True),
                            sae.W_dec.detach().norm(dim=-1))
    assert dictionary.n_atoms == 128
    assert log.history[-1]["fvu"] < 0.1


def test_relu_sae_learns_sparse_codes():
    activations, atoms = planted_activations(40_000, 32, 32, 2, seed=1)
    config = SAETrainingConfig(architecture="standard", d_sae=64, l1_coefficient=0.3, batch_size=512, epochs=4,
                               lr=3e-3)
    sae, log = train_sae(activations, config, progress=False)
    assert log.history[-1]["fvu"] < 0.2
    assert log.history[-1]["l0"] < 16
    assert (best_cosines(sae.W_dec.detach(), atoms) > 0.9).float().mean() >= 0.7


def test_gated_sae_recovers_a_planted_dictionary():
    activations, atoms = planted_activations(40_000, 64, 32, 3)
    config = SAETrainingConfig(architecture="gated", d_sae=128, l1_coefficient=2.0, batch_size=512, epochs=4,
                               lr=3e-3)
    sae, log = train_sae(activations, config, progress=False)
    assert isinstance(sae, GatedSparseAutoencoder)
    cosines = best_cosines(sae.W_dec.detach(), atoms)
    assert cosines.mean() > 0.95 and cosines.min() > 0.85, cosines
    x = activations[:5_000]
    with torch.no_grad():
        recon, codes, _ = sae(x)
    explained = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert explained > 0.9, explained
    assert (codes > 0).sum(-1).float().mean() < 6  # 3 atoms per token are planted
    assert log.history[-1]["aux"] > 0  # the gate-only reconstruction loss was part of training


def test_saved_sae_loads_in_sae_lens_and_encodes_identically(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    activations, _ = planted_activations(4_000, 16, 12, 2)
    for architecture in ("topk", "standard", "gated"):
        sae, _ = train_sae(activations, SAETrainingConfig(architecture=architecture, d_sae=24, k=2, batch_size=256),
                           progress=False)
        folder = save_sae(sae, tmp_path / architecture, hook="blocks.1.hook_resid_pre", model_name="toy",
                          dtype=torch.float32)
        theirs = sae_lens.SAE.load_from_disk(folder)
        ours = from_saelens_folder(folder)
        assert ours.hook_name == "blocks.1.hook_resid_pre" and ours.layer == 1 and ours.model == "toy"
        x = activations[:50]
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.reconstruct(x), theirs.decode(theirs.encode(x)), atol=1e-4, rtol=1e-4)
        # the folded-in training scale: our module and the saved SAE agree on raw activations
        torch.testing.assert_close(ours.reconstruct(x), sae(x)[0].detach(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(from_sae(theirs).atoms, ours.atoms)
        assert ours.encoder is not None and ours.encoder.architecture == architecture
        assert type(theirs).__name__ == {"topk": "TopKSAE", "standard": "StandardSAE", "gated": "GatedSAE"}[architecture]


@pytest.mark.parametrize("architecture", ["topk", "standard", "gated"])
def test_folded_scale_reads_raw_activations(tmp_path, architecture):
    """An SAE trained on s·x, with s folded in and saved, gives the training-time codes of s·x on raw x
    and the training-time reconstruction divided by s, in our loader and in SAE-Lens's."""
    config = SAETrainingConfig(architecture=architecture, d_sae=40, k=6)
    training = GatedSparseAutoencoder(12, 40) if architecture == "gated" else SparseAutoencoder(12, 40, architecture, 6)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # random, non-trivial parameters, as if part-way through training
        for parameter in training.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    scale = 0.37
    x = torch.randn(64, 12, generator=generator) * 3
    with torch.no_grad():
        train_recon, train_codes, _ = training(x * scale)
    folded = copy.deepcopy(training)
    fold_scale(folded, scale)
    assert 0 < int((train_codes > 0).sum()) < train_codes.numel()
    folder = save_sae(folded, tmp_path / architecture, hook="blocks.0.hook_resid_pre", model_name="toy",
                      dtype=torch.float32)
    ours = from_saelens_folder(folder)
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == config.architecture
    torch.testing.assert_close(ours.encode(x), train_codes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.reconstruct(x) * scale, train_recon, atol=1e-5, rtol=1e-5)
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.SAE.load_from_disk(folder)
    torch.testing.assert_close(theirs.encode(x), train_codes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs.decode(theirs.encode(x)) * scale, train_recon, atol=1e-5, rtol=1e-5)


def test_sae_lens_releases_without_the_extra_name_it(monkeypatch):
    import sys

    from interp.dictionaries import from_release

    monkeypatch.setitem(sys.modules, "sae_lens", None)  # what `import sae_lens` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install 'interp\[sae\]'"):
        from_release("some-release", "some-id")


def test_dictionary_constructors_and_errors(tmp_path):
    decoder = torch.randn(10, 6)
    dictionary = from_decoder(decoder, hook_name="blocks.2.hook_resid_pre")
    torch.testing.assert_close(dictionary.decoder, decoder)
    torch.testing.assert_close(dictionary.atoms.norm(dim=-1), torch.ones(10))
    assert dictionary.layer == 2 and dictionary.site == "resid_pre"
    save_file({"W_dec": decoder, "other": torch.zeros(3)}, str(tmp_path / "d.safetensors"))
    torch.testing.assert_close(load_dictionary(tmp_path / "d.safetensors").decoder, decoder)
    save_file({"a": decoder, "b": decoder.clone()}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="key"):
        from_decoder(tmp_path / "two.safetensors")
    bad = decoder.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        from_decoder(bad)
    zero = decoder.clone()
    zero[4] = 0
    with pytest.raises(ValueError, match="zero"):
        from_decoder(zero)
    with pytest.raises(ValueError, match="encoder"):
        dictionary.encode(torch.randn(6))
    with pytest.raises(ValueError, match="last dimension 6"):
        dictionary.decoder_scores(torch.randn(2, 7))
    with pytest.raises(FileNotFoundError):
        load_dictionary(tmp_path / "missing")
    with pytest.raises(TypeError, match="source"):
        load_dictionary(42)
    direction = dictionary.atom_direction(3, model="toy")
    assert direction.layer == 2 and direction.meta["feature"] == 3


def test_dictionary_width_must_match_the_model(tiny_model):
    with pytest.raises(ValueError, match="d_model 32"):
        from_decoder(torch.randn(8, 16)).check_model(tiny_model)


def test_unsupported_normalisation_is_refused(tmp_path):
    activations, _ = planted_activations(2_000, 8, 6, 1)
    sae, _ = train_sae(activations, SAETrainingConfig(d_sae=8, k=1, batch_size=256), progress=False)
    folder = save_sae(sae, tmp_path / "s", hook="blocks.0.hook_resid_pre", model_name="toy")
    config = json.loads((folder / "cfg.json").read_text())
    config["normalize_activations"] = "expected_average_only_in"
    (folder / "cfg.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cfg.json has .* bytes, its recorded size is"):
        from_saelens_folder(folder)
    with pytest.raises(ValueError, match="normalize_activations"):
        from_saelens_folder(folder, verify=False)  # edited on purpose: the edited value is checked


def test_training_config_rejects_bad_values():
    with pytest.raises(ValueError, match="architecture: expected one of .*'gated'"):
        SAETrainingConfig(architecture="jumprelu")
    with pytest.raises(ValueError, match="architecture: .*GatedSparseAutoencoder"):
        SparseAutoencoder(8, 16, "gated")
    with pytest.raises(ValueError, match="k"):
        SAETrainingConfig(d_sae=8, k=9)
    SAETrainingConfig(architecture="gated", d_sae=8, k=9)  # k is TopK's alone
    with pytest.raises(ValueError, match="l1_coefficient"):
        SAETrainingConfig(architecture="gated", l1_coefficient=-1.0)
    with pytest.raises(ValueError, match="l1_warmup_fraction"):
        SAETrainingConfig(architecture="gated", l1_warmup_fraction=1.5)
    with pytest.raises(ValueError, match="d_sae"):
        SAETrainingConfig(architecture="gated", d_sae=0)
    with pytest.raises(ValueError, match="activations"):
        train_sae(torch.randn(10, 4), SAETrainingConfig(d_sae=8, k=2, batch_size=4096), progress=False)


def test_harvest_skips_the_first_position_and_padding(tiny_model):
    texts = ["<s> alpha beta gamma delta", "<s> alpha beta", "<s> gamma delta alpha beta gamma"]
    harvest = harvest_activations(tiny_model, texts, [0, 2], outlier_ratio=None, progress=False)
    lengths = [len(tiny_model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert harvest.n_tokens_seen == sum(n - 1 for n in lengths)
    assert harvest.activations[0].shape == (sum(n - 1 for n in lengths), 32)
    # Each kept row equals the residual of an unpadded single-text forward (padding changes nothing).
    from interp.activations import collect_residuals

    single = collect_residuals(tiny_model, [texts[1]], [2], positions=[1], progress=False)[0, 0, 0]
    rows = harvest.activations[2].float()
    assert (rows - single).norm(dim=-1).min() < 1e-2


def test_corpus_end_to_end_training_and_cli(tiny_model, tiny_folder, tmp_path):
    texts = build_corpus(tiny_model, 600, instruction_tokens=8, response_tokens=12, batch_size=16,
                         include_bundled=False, progress=False)
    assert texts and all(text.startswith("<|user|>") for text in texts)
    path = save_corpus(texts, tmp_path / "corpus.jsonl")
    assert load_corpus(path) == texts
    config = SAETrainingConfig(d_sae=64, k=4, batch_size=128, epochs=2)
    reports = train_saes_for_model(tiny_model, texts * 4, [1], tmp_path / "saes", config=config, progress=False)
    evaluation = reports[1]["evaluation"]
    assert 0 < evaluation["variance_explained"] <= 1 and evaluation["l0"] <= 4
    assert evaluation["ce_clean"] <= evaluation["ce_zero_ablated"]
    dictionary = from_saelens_folder(tmp_path / "saes" / "blocks.1.hook_resid_pre")
    assert (tmp_path / "saes" / "blocks.1.hook_resid_pre" / "training_report.json").is_file()
    losses = spliced_losses(tiny_model, dictionary, texts[:4])
    assert losses["clean"] == pytest.approx(evaluation["ce_clean"], rel=0.5)
    ve, l0, _ = reconstruction_stats(dictionary, torch.randn(20, 32))
    assert l0 <= 4 and ve <= 1

    from interp.cli import main

    # the TopK path ran above through train_saes_for_model; the CLI trains a gated SAE
    code = main(["train-sae", "--model", str(tiny_folder), "--layers", "0", "--corpus", str(path), "--d-sae", "32",
                 "--architecture", "gated", "--l1-coefficient", "0.5", "--batch-size", "64", "--out", str(tmp_path / "cli")])
    assert code == 0
    report = json.loads((tmp_path / "cli" / "blocks.0.hook_resid_pre" / "training_report.json").read_text())
    assert report["command"].startswith("interp train-sae --model")
    assert report["config"]["architecture"] == "gated" and 0 < report["evaluation"]["variance_explained"] <= 1
    assert from_saelens_folder(tmp_path / "cli" / "blocks.0.hook_resid_pre").encoder.architecture == "gated"


@pytest.mark.parametrize("architecture", ["gated", "jumprelu", "topk", "standard"])
def test_every_inference_architecture_encodes_as_sae_lens_does(tmp_path, architecture):
    """A random SAE-Lens SAE of each inference architecture (batchtopk and matryoshka trainers save as jumprelu):
    our Dictionary, built from the object and from its saved folder, encodes exactly as SAE-Lens."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens import SAE

    d_in, d_sae = 12, 40
    kinds = {"gated": "GatedSAEConfig", "jumprelu": "JumpReLUSAEConfig", "topk": "TopKSAEConfig",
             "standard": "StandardSAEConfig"}
    extra = {"k": 5} if architecture == "topk" else {}
    config = getattr(sae_lens, kinds[architecture])(d_in=d_in, d_sae=d_sae, **extra)
    sae = SAE.from_dict(config.to_dict())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random, non-trivial parameters: biases and gates matter
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=generator) * 0.5)
    x = torch.randn(64, d_in, generator=generator) * 2
    theirs = sae.encode(x).detach()
    assert 0 < int((theirs != 0).sum()) < theirs.numel()  # some features fire, some do not
    torch.testing.assert_close(from_sae(sae).encode(x), theirs, atol=1e-5, rtol=1e-5)
    sae.save_model(str(tmp_path / architecture))
    torch.testing.assert_close(from_saelens_folder(tmp_path / architecture).encode(x), theirs, atol=1e-5, rtol=1e-5)
