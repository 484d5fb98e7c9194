"""Features as interventions (`interp.splice`) on the tests' tiny model: the error term leaves the forward as it
was, an ablated planted feature removes exactly its decoder contribution, transcoders splice at their output
site, edits hold in KV-cached batched generation, and a Splice composes with Steer and reads its codes."""

from __future__ import annotations

import pytest
import torch

from interp.chat import tokenize
from interp.dictionaries import Dictionary, Encoder, build_dictionary
from interp.directions import Direction
from interp.runner import batch_logits, generate, read_activations
from interp.splice import FeatureRecord, Splice, ablate, add, clamp, scale
from interp.steering import HookIntervention, Steer

PROMPTS = ["the cat sat on the mat", "hello world what is the capital of france", "one two three"]
HOOK = "blocks.1.hook_resid_pre"
pytestmark = pytest.mark.usefixtures("single_thread")


def random_sae(width: int = 32, n_atoms: int = 24, *, hook: str = HOOK, seed: int = 0, **extra) -> Dictionary:
    generator = torch.Generator().manual_seed(seed)
    weights = {"W_enc": torch.randn(width, n_atoms, generator=generator) * 0.3,
               "b_enc": torch.randn(n_atoms, generator=generator) * 0.1,
               "W_dec": torch.randn(n_atoms, width, generator=generator),
               "b_dec": torch.randn(width, generator=generator) * 0.1}
    return build_dictionary(weights, source="random", hook_name=hook, **extra)


def random_transcoder(width: int = 32, n_atoms: int = 24, seed: int = 3) -> Dictionary:
    generator = torch.Generator().manual_seed(seed)
    weights = {"W_enc": torch.randn(width, n_atoms, generator=generator) * 0.3, "b_enc": torch.zeros(n_atoms),
               "W_dec": torch.randn(n_atoms, width, generator=generator) * 0.2, "b_dec": torch.zeros(width),
               "W_skip": torch.randn(width, width, generator=generator) * 0.05}
    return build_dictionary(weights, source="transcoder", apply_b_dec_to_input=False, transcoder=True,
                            hook_name="blocks.1.ln2.hook_normalized", output_hook="blocks.1.hook_mlp_out")


def logits(model, *interventions, fast: bool = True) -> torch.Tensor:
    return batch_logits(model, tokenize(model, PROMPTS), list(interventions), fast=fast)


def activation_after(model, dictionary: Dictionary, splice: Splice, hook: str) -> torch.Tensor:
    """The activation at `hook` as the rest of the model sees it: read by a hook registered after the splice."""
    seen: dict[str, torch.Tensor] = {}
    reader = HookIntervention([(hook, lambda activation, h: seen.setdefault("x", activation.clone()))])
    batch_logits(model, tokenize(model, PROMPTS), [splice, reader])
    return seen["x"]


def test_with_the_error_term_and_no_edit_logits_equal_the_plain_model(tiny_model):
    for dictionary, fast in ((random_sae(), True), (random_transcoder(), False)):
        # An SAE on a residual site runs the bridge's plain HF clone; a transcoder's ln2 hook runs the bridge.
        plain = logits(tiny_model, fast=fast)
        assert torch.equal(logits(tiny_model, Splice(dictionary, error_term=True)), plain)
        record = FeatureRecord()
        assert torch.equal(logits(tiny_model, Splice(dictionary, error_term=True, record=record)), plain)
        assert record.chunks and record.chunks[0].shape[-1] == dictionary.n_atoms
        assert not torch.equal(logits(tiny_model, Splice(dictionary)), plain)  # the reconstruction replaces it


def test_ablating_a_planted_feature_removes_exactly_its_decoder_contribution(tiny_model):
    batch = tokenize(tiny_model, PROMPTS)
    x = read_activations(tiny_model, batch, [HOOK])[HOOK].float()
    dictionary = random_sae()
    # Plant feature 5: its encoder reads the mean activation's direction, with a bias that makes it fire.
    mean = x.mean((0, 1))
    encoder = dictionary.encoder
    W_enc = encoder.W_enc.clone()
    W_enc[:, 5] = mean / mean.norm()
    planted = Dictionary(dictionary.atoms, dictionary.norms, HOOK, source="planted", encoder=Encoder(
        W_enc, encoder.b_enc, encoder.b_dec, apply_b_dec_to_input=False))
    codes = planted.encode(x)
    assert (codes[..., 5] > 0).float().mean() > 0.5
    after = activation_after(tiny_model, planted, Splice(planted, edits=(ablate(5),), error_term=True), HOOK)
    expected = x - codes[..., 5, None] * planted.decoder[5]
    torch.testing.assert_close(after, expected, atol=1e-6, rtol=0)
    # Without the error term: the reconstruction without feature 5's contribution.
    after = activation_after(tiny_model, planted, Splice(planted, edits=(ablate(5),)), HOOK)
    torch.testing.assert_close(after, planted.reconstruct(x) - codes[..., 5, None] * planted.decoder[5], atol=1e-5,
                               rtol=1e-5)


def test_each_edit_changes_the_codes_as_named(tiny_model):
    batch = tokenize(tiny_model, PROMPTS)
    x = read_activations(tiny_model, batch, [HOOK])[HOOK].float()
    dictionary = random_sae()
    codes = dictionary.encode(x)
    edits = (clamp(2, 3.0), scale(4, -2.0), add(7, 1.5))
    after = activation_after(tiny_model, dictionary, Splice(dictionary, edits=edits, error_term=True), HOOK)
    delta = ((3.0 - codes[..., 2, None]) * dictionary.decoder[2] + (-3.0 * codes[..., 4, None]) * dictionary.decoder[4]
             + 1.5 * dictionary.atoms[7])
    torch.testing.assert_close(after, x + delta, atol=1e-5, rtol=0)


def test_a_transcoder_replaces_its_output_site_with_its_prediction(tiny_model):
    transcoder = random_transcoder()
    batch = tokenize(tiny_model, PROMPTS)
    x_in = read_activations(tiny_model, batch, [transcoder.hook_name], fast=False)[transcoder.hook_name].float()
    after = activation_after(tiny_model, transcoder, Splice(transcoder), transcoder.output_hook)
    torch.testing.assert_close(after, transcoder.reconstruct(x_in), atol=1e-5, rtol=0)
    codes = transcoder.encode(x_in)
    mlp_out = read_activations(tiny_model, batch, [transcoder.output_hook], fast=False)[transcoder.output_hook].float()
    after = activation_after(tiny_model, transcoder, Splice(transcoder, edits=(ablate(1),), error_term=True),
                             transcoder.output_hook)
    torch.testing.assert_close(after, mlp_out - codes[..., 1, None] * transcoder.decoder[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [random_sae, random_transcoder], ids=["sae", "transcoder"])
def test_edits_hold_in_batched_generation_with_the_kv_cache(tiny_model, make):
    dictionary = make()
    splice = Splice(dictionary, edits=(clamp(0, 4.0), ablate(3)), error_term=True)
    cached = generate(tiny_model, PROMPTS, interventions=[splice], max_new_tokens=5, batch_size=2, progress=False)
    uncached = generate(tiny_model, PROMPTS, interventions=[splice], max_new_tokens=5, batch_size=3, use_cache=False,
                        progress=False)
    plain = generate(tiny_model, PROMPTS, max_new_tokens=5, progress=False)
    assert cached == uncached and cached != plain


def test_a_splice_composes_with_steer_and_records_its_codes(tiny_model):
    dictionary = random_sae()
    direction = Direction(torch.randn(32, generator=torch.Generator().manual_seed(5)), layer=1, model="tiny",
                          source="test")
    steer = Steer(direction, scale=4.0, allow_other_model=True)
    assert torch.equal(logits(tiny_model, steer, Splice(dictionary, error_term=True)), logits(tiny_model, steer))
    record = FeatureRecord(features=[1, 2])
    logits(tiny_model, steer, Splice(dictionary, error_term=True, record=record))
    batch = tokenize(tiny_model, PROMPTS)
    x = read_activations(tiny_model, batch, [HOOK])[HOOK].float() + 4.0 * direction.vector
    (recorded,) = record.chunks
    torch.testing.assert_close(recorded, dictionary.encode(x)[..., [1, 2]], atol=1e-5, rtol=1e-5)


def test_bad_splices_are_refused_before_any_model_work(tiny_model):
    dictionary = random_sae()
    with pytest.raises(ValueError, match="edits\\[0\\]: feature 99 is out of range for 24 features"):
        Splice(dictionary, edits=(ablate(99),))
    with pytest.raises(ValueError, match="edited twice"):
        Splice(dictionary, edits=(clamp(1, 2.0), ablate(1)))
    with pytest.raises(ValueError, match="value: expected a finite number"):
        clamp(1, float("nan"))
    with pytest.raises(ValueError, match="records no hook point"):
        Splice(random_sae(hook=None))
    with pytest.raises(ValueError, match="decoder-only"):
        Splice(Dictionary(dictionary.atoms, dictionary.norms, HOOK))
    with pytest.raises(ValueError, match="d_model 32"):
        Splice(random_sae(width=16)).hooks(tiny_model)
    with pytest.raises(ValueError, match="no hook point 'blocks.1.hook_nowhere'"):
        Splice(random_sae(hook="blocks.1.hook_nowhere")).hooks(tiny_model)
