"""Exactness against each source library's own code, on random instances (≤ 1e-5): encode, decode and the full
forward (a transcoder's with its skip), in memory and through the files each library writes.

- SAE-Lens (the `sae` extra): every class of its inference registry but `temporal`, a top-k SAE with
  `rescale_acts_by_decoder_norm`, and its training objects (BatchTopK, Matryoshka, TopK) against what its
  `save_inference_model` writes, reloaded by `SAE.load_from_disk`.
- EleutherAI sparsify (`eai-sparsify`, the test extra): `SparseCoder` TopK / GroupMax SAEs and transcoders
  with and without a skip connection, written by its `save_to_disk`.
- dictionary_learning 0.1.0 (installed `--no-deps` by `make install-test`: its package imports nnsight<0.4):
  each dictionary class from its own modules, loaded by file path (they import only torch and einops), saved
  as its training loop saves them (`torch.save(state_dict)` as `ae.pt` + `config.json`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from interp.dictionaries import from_sae, from_saelens_folder, load_dictionary

TOLERANCE = dict(atol=1e-5, rtol=1e-5)
D_IN, N_ATOMS = 16, 48


def same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours.float(), theirs.detach().float(), **TOLERANCE)


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter drawn at random (thresholds positive and small), so no path is trivially zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            values = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if "threshold" in name:
                values = values.abs() * 0.2
            elif "r_mag" in name:
                values = values * 0.1
            else:
                values = values * 0.4
            parameter.copy_(values.to(parameter.dtype))


def inputs(width: int = D_IN, seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 5, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# SAE-Lens
# ---------------------------------------------------------------------------------------------

sae_lens = pytest.importorskip("sae_lens")
SAE_LENS_KINDS = [name for name in sorted(sae_lens.registry.SAE_CLASS_REGISTRY) if name != "temporal"]


def saelens_instance(architecture: str, **extra):
    sae_class, config_class = sae_lens.registry.SAE_CLASS_REGISTRY[architecture]
    settings = dict(d_in=D_IN, d_sae=N_ATOMS, **extra)
    if "topk" in architecture:
        settings["k"] = 6
    transcoder = "transcoder" in architecture
    if transcoder:
        settings.update(d_out=D_IN, apply_b_dec_to_input=False)
    sae = sae_class(config_class(**settings))
    randomise(sae)
    if architecture == "matching_pursuit":
        with torch.no_grad():  # pursuit over unit rows, as SAE-Lens trains them
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    sae.cfg.metadata.hook_name = "blocks.1.ln2.hook_normalized" if transcoder else "blocks.1.hook_resid_pre"
    if transcoder:
        sae.cfg.metadata.hook_name_out = "blocks.1.hook_mlp_out"
    return sae


def check_against(sae, dictionary, x: torch.Tensor) -> None:
    codes = sae.encode(x)
    same(dictionary.encode(x), codes)
    same(dictionary.decode(codes), sae.decode(codes))
    same(dictionary.reconstruct(x), sae(x))


@pytest.mark.parametrize("architecture", SAE_LENS_KINDS)
def test_every_saelens_inference_class_in_memory_and_as_a_folder(architecture, tmp_path):
    sae = saelens_instance(architecture)
    x = inputs()
    dictionary = from_sae(sae)
    check_against(sae, dictionary, x)
    sae.save_model(tmp_path / architecture)
    folder = from_saelens_folder(tmp_path / architecture)
    check_against(sae, folder, x)
    transcoder = "transcoder" in architecture
    assert dictionary.transcoder == folder.transcoder == transcoder
    assert folder.hook_name == sae.cfg.metadata.hook_name and folder.write_hook == (
        "blocks.1.hook_mlp_out" if transcoder else "blocks.1.hook_resid_pre")
    assert (folder.skip is not None) == ("skip" in architecture)


@pytest.mark.parametrize("architecture", ["topk", "abstopk"])
def test_topk_rescaled_by_decoder_norms_encodes_and_decodes_as_saelens(architecture):
    sae = saelens_instance(architecture, rescale_acts_by_decoder_norm=True)
    check_against(sae, from_sae(sae), inputs())


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_matching_pursuit_with_and_without_centring(apply_b_dec):
    sae = saelens_instance("matching_pursuit", apply_b_dec_to_input=apply_b_dec)
    check_against(sae, from_sae(sae), inputs())


@pytest.mark.parametrize("name", ["BatchTopKTrainingSAE", "MatryoshkaBatchTopKTrainingSAE", "TopKTrainingSAE"])
def test_training_objects_read_as_saelens_saves_them_for_inference(name, tmp_path):
    training_class = getattr(sae_lens, name)
    config_class = getattr(sae_lens, f"{name}Config")
    settings = dict(d_in=D_IN, d_sae=N_ATOMS, k=6)
    if name.startswith("Matryoshka"):
        settings["matryoshka_widths"] = [16, N_ATOMS]
    sae = training_class(config_class(**settings))
    randomise(sae)
    if hasattr(sae, "topk_threshold"):
        sae.topk_threshold = torch.tensor(0.3)
    sae.cfg.metadata.hook_name = "blocks.2.hook_resid_pre"
    ours = from_sae(sae)
    sae.save_inference_model(tmp_path / "saved")
    reference = sae_lens.SAE.load_from_disk(str(tmp_path / "saved"))
    expected = "topk" if name == "TopKTrainingSAE" else "jumprelu"
    assert reference.cfg.architecture() == ours.encoder.architecture == expected
    x = inputs()
    check_against(reference, ours, x)
    check_against(reference, from_saelens_folder(tmp_path / "saved"), x)
    assert ours.hook_name == "blocks.2.hook_resid_pre"


def test_temporal_and_training_configs_are_refused_with_what_to_do(tmp_path):
    folder = tmp_path / "batchtopk"
    sae = saelens_instance("jumprelu")
    sae.save_model(folder)
    config = json.loads((folder / "cfg.json").read_text())
    for architecture, hint in (("temporal", "earlier|before it"), ("batchtopk", "save_inference_model")):
        (folder / "cfg.json").write_text(json.dumps({**config, "architecture": architecture}))
        with pytest.raises(ValueError, match=f"architecture: '{architecture}' is not supported: .*({hint})"):
            from_saelens_folder(folder)
    for not_a_name in ([], {"name": "topk"}, 3, None):  # an edited cfg.json: refused by name, not a TypeError
        (folder / "cfg.json").write_text(json.dumps({**config, "architecture": not_a_name}))
        with pytest.raises(ValueError, match="architecture: expected the name of an SAE-Lens architecture"):
            from_saelens_folder(folder)


# ---------------------------------------------------------------------------------------------
# EleutherAI sparsify
# ---------------------------------------------------------------------------------------------

SPARSIFY_CASES = {
    "topk SAE": dict(activation="topk"),
    "groupmax SAE": dict(activation="groupmax"),
    "topk SAE with a skip": dict(activation="topk", skip_connection=True),
    "transcoder": dict(activation="topk", transcode=True),
    "skip transcoder": dict(activation="topk", transcode=True, skip_connection=True),
}


@pytest.mark.parametrize("case", list(SPARSIFY_CASES))
def test_sparsify_sparse_coders_from_their_folders(case, tmp_path):
    sparsify = pytest.importorskip("sparsify")
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=N_ATOMS, k=6, **SPARSIFY_CASES[case]))
    randomise(coder)
    folder = tmp_path / "layers.1.mlp"
    coder.save_to_disk(folder)
    dictionary = load_dictionary(folder)
    x = inputs()[0]  # sparsify encodes [tokens, d_in]
    top_acts, top_indices, _ = coder.encode(x)
    dense = torch.zeros(x.shape[0], N_ATOMS).scatter_(-1, top_indices, top_acts)
    same(dictionary.encode(x), dense)
    same(dictionary.decode(dense), coder.decode(top_acts, top_indices))
    with torch.no_grad():
        same(dictionary.reconstruct(x), coder(x).sae_out)
    transcoder = SPARSIFY_CASES[case].get("transcode", False)
    assert dictionary.transcoder == transcoder
    assert (dictionary.hook_name, dictionary.write_hook) == (
        ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out") if transcoder
        else ("blocks.1.hook_mlp_out", "blocks.1.hook_mlp_out"))
    same(load_dictionary(coder).encode(x), dense)  # the object in memory, the same way


# ---------------------------------------------------------------------------------------------
# dictionary_learning
# ---------------------------------------------------------------------------------------------


def dictionary_learning_modules() -> dict[str, types.ModuleType]:
    """Its `dictionary.py` and three trainer modules, loaded by file path under a package of our own name (so
    neither its package `__init__`, which imports nnsight, nor its trainers' `__init__` runs)."""
    spec = importlib.util.find_spec("dictionary_learning")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("dictionary-learning is not installed (make install-test: pip install --no-deps dictionary-learning==0.1.0)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, path in (("_dl_files", root), ("_dl_files.trainers", root / "trainers")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    return {name: importlib.import_module(f"_dl_files.{name}")
            for name in ("dictionary", "trainers.top_k", "trainers.batch_top_k", "trainers.matryoshka_batch_top_k")}


def dictionary_learning_instance(dict_class: str):
    modules = dictionary_learning_modules()
    if dict_class == "AutoEncoderTopK":
        return modules["trainers.top_k"].AutoEncoderTopK(D_IN, N_ATOMS, 6)
    if dict_class == "BatchTopKSAE":
        return modules["trainers.batch_top_k"].BatchTopKSAE(D_IN, N_ATOMS, 6)
    if dict_class == "MatryoshkaBatchTopKSAE":
        return modules["trainers.matryoshka_batch_top_k"].MatryoshkaBatchTopKSAE(D_IN, N_ATOMS, 6, [16, N_ATOMS - 16])
    return getattr(modules["dictionary"], dict_class)(D_IN, N_ATOMS)


DICTIONARY_LEARNING_CLASSES = ["AutoEncoder", "AutoEncoderNew", "GatedAutoEncoder", "JumpReluAutoEncoder",
                               "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"]


@pytest.mark.parametrize("dict_class", DICTIONARY_LEARNING_CLASSES)
def test_dictionary_learning_classes_from_their_checkpoints(dict_class, tmp_path):
    ae = dictionary_learning_instance(dict_class)
    randomise(ae)
    if hasattr(ae, "threshold") and not isinstance(ae.threshold, torch.nn.Parameter):
        ae.threshold = torch.tensor(0.25)  # the learned BatchTopK threshold (a buffer)
    torch.save({name: tensor.cpu() for name, tensor in ae.state_dict().items()}, tmp_path / "ae.pt")
    trainer = {"dict_class": dict_class, "activation_dim": D_IN, "dict_size": N_ATOMS, "layer": 3,
               "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": "resid_post_layer_3"}
    if hasattr(ae, "k"):
        trainer["k"] = 6
    (tmp_path / "config.json").write_text(json.dumps({"trainer": trainer}))
    dictionary = load_dictionary(tmp_path)
    x = inputs()
    with torch.no_grad():
        codes = ae.encode(x.reshape(-1, D_IN)).reshape(*x.shape[:-1], N_ATOMS)
        same(dictionary.encode(x), codes)
        same(dictionary.decode(codes), ae.decode(codes))
        same(dictionary.reconstruct(x), ae(x.reshape(-1, D_IN)).reshape(x.shape))
    assert dictionary.hook_name == "blocks.3.hook_resid_post" and dictionary.model == "EleutherAI/pythia-70m-deduped"
