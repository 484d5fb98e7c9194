"""The feature browser: a streamed, resumable, bounded harvest equal to `max_activating`; weight analysis; the static
site (checked in headless Chromium: nothing missing, no console error, search narrows, colours = activations);
links from experiments and the report; `interp features`."""

from __future__ import annotations

import gzip
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from interp.browser import (
    FeatureHarvest, HarvestConfig, build_feature_browser, feature_links, find_browsers, harvest_features,
    load_browser_data, render_browser,
)
from interp.browser.data import feature_view
from interp.browser.state import Bins
from interp.dictionaries import Dictionary, Encoder, from_decoder
from interp.features import max_activating

from conftest import WORDS
from test_features import TEXTS
from test_report import CHROMIUM_NAMES, find_chromium

pytestmark = pytest.mark.usefixtures("single_thread")
HOOK = "blocks.0.hook_resid_pre"
SMALL = HarvestConfig(n_top=6, window=(3, 1), chunk_docs=3, batch_tokens=64)


def planted(model, token: str = "cat", n_atoms: int = 8) -> Dictionary:
    """Atom 0 is the unembedding row of `token` (a known direction); its encoder fires only where the residual at
    layer 0 (the token embedding) is `token`'s. The other atoms are random and never fire."""
    hf = model.original_model
    embedding = hf.get_input_embeddings().weight.detach().float()
    unembedding = hf.get_output_embeddings().weight.detach().float()
    token_id = model.tokenizer.convert_tokens_to_ids(token)
    generator = torch.Generator().manual_seed(0)
    atoms = torch.randn(n_atoms, embedding.shape[1], generator=generator)
    atoms[0] = unembedding[token_id]
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    reads = embedding[token_id] / embedding[token_id].norm()
    w_enc = torch.randn(embedding.shape[1], n_atoms, generator=generator)
    w_enc[:, 0] = reads
    b_enc = torch.full((n_atoms,), -1e6)
    b_enc[0] = -float(embedding[token_id] @ reads) / 2
    encoder = Encoder(W_enc=w_enc, b_enc=b_enc, b_dec=torch.zeros(embedding.shape[1]))
    return Dictionary(atoms, torch.ones(n_atoms), hook_name=HOOK, model="tiny", encoder=encoder)


def random_sae(model, n_atoms: int = 24, seed: int = 1) -> Dictionary:
    """A ReLU SAE whose features fire on many tokens at many levels (for comparisons and colours)."""
    width = model.cfg.d_model
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, width, generator=generator)
    encoder = Encoder(W_enc=torch.randn(width, n_atoms, generator=generator) / width**0.5,
                      b_enc=torch.full((n_atoms,), -0.5), b_dec=torch.zeros(width))
    return Dictionary(atoms / atoms.norm(dim=1, keepdim=True), torch.ones(n_atoms), hook_name=HOOK, model="tiny",
                      encoder=encoder)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    import random

    rng = random.Random(0)
    return TEXTS + [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) for _ in range(40)]


def test_planted_atom_tops_its_token_and_promotes_it(tiny_model, tmp_path):
    dictionary = planted(tiny_model)
    harvest = harvest_features(tiny_model, dictionary, TEXTS, config=SMALL, progress=False)
    top = harvest.top_contexts(0)
    assert {(c.doc, c.position) for c in top} == {(0, 1), (3, 10), (6, 4), (6, 7)}  # every "cat" after position 0
    assert {tiny_model.tokenizer.decode([c.ids[c.center]]).strip() for c in top} == {"cat"}
    assert int(harvest.state.fired[0]) == 4 and int(harvest.state.fired[1:].sum()) == 0
    out = build_feature_browser(tiny_model, dictionary, TEXTS, tmp_path / "browser", config=SMALL, progress=False)
    data = load_browser_data(out)
    assert data.tokens[int(data.weights.promoted_ids[0, 0])].strip() == "cat"  # its logit effect
    page = (out / "features" / "0.html").read_text()
    assert re.search(r'<i class="m" style="--a:1\.000" title="[^"]+">cat</i>', page)
    assert '<span class="flag dead">dead</span>' in (out / "features" / "1.html").read_text()


def test_harvest_equals_max_activating(tiny_model, corpus):
    dictionary = random_sae(tiny_model)
    features = list(range(dictionary.n_atoms))
    expected = max_activating(tiny_model, dictionary, corpus, features, n_top=6, window=(3, 1), progress=False)
    harvest = harvest_features(tiny_model, dictionary, corpus, config=SMALL, progress=False)
    assert harvest.state.n_tokens == expected.n_tokens
    assert torch.allclose(harvest.density.float(), expected.frequency, atol=1e-6)
    for feature in features:
        ours = harvest.top_contexts(feature)
        theirs = expected.contexts[feature]
        assert [round(c.value, 4) for c in ours] == [round(c.value, 4) for c in theirs]
        for mine, other in zip(ours, theirs):
            if (mine.doc, mine.position) == (other.doc, other.position):
                assert mine.acts == pytest.approx(other.activations, abs=1e-5)
                assert [tiny_model.tokenizer.decode([i]) for i in mine.ids] == other.tokens
                assert mine.center == other.center
    # Fired counts add up, the histogram holds every firing, the band samples lie in their bands.
    assert torch.equal(harvest.state.histogram.sum(1), harvest.state.fired)
    bands = harvest.config.bands
    for context in harvest.band_samples(3):
        assert context.value > 0 and bands.index(torch.tensor([context.value])).item() >= 0


def test_batching_and_chunking_do_not_change_the_harvest(tiny_model, corpus):
    dictionary = random_sae(tiny_model)
    one = harvest_features(tiny_model, dictionary, corpus, config=SMALL, progress=False)
    other = harvest_features(tiny_model, dictionary, corpus, progress=False,
                             config=HarvestConfig(n_top=6, window=(3, 1), chunk_docs=1000, batch_tokens=4096))
    assert torch.equal(one.state.fired, other.state.fired) and torch.equal(one.state.histogram, other.state.histogram)
    assert torch.allclose(one.state.top.value, other.state.top.value, atol=1e-5)


def test_a_file_streams_and_a_resumed_harvest_equals_an_uninterrupted_one(tiny_model, corpus, tmp_path, monkeypatch):
    import interp.browser.harvest as harvest_module

    dictionary = random_sae(tiny_model)
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": text}) + "\n" for text in corpus if text)
    texts = [text for text in corpus if text]
    whole = harvest_features(tiny_model, dictionary, texts, config=SMALL, progress=False)
    # Killed after the third chunk: the checkpoint (saved at every chunk's end here) holds three chunks.
    calls = {"n": 0}
    update = harvest_module.update

    def dying_update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 9:
            raise KeyboardInterrupt
        return update(*args, **kwargs)

    monkeypatch.setattr(harvest_module, "update", dying_update)
    checkpoint = tmp_path / "checkpoint"
    with pytest.raises(KeyboardInterrupt):
        harvest_features(tiny_model, dictionary, path, config=SMALL, checkpoint=checkpoint, checkpoint_seconds=0,
                         progress=False)
    saved = FeatureHarvest.load(checkpoint)
    assert not saved.meta["complete"] and saved.meta["chunks_done"] >= 1
    monkeypatch.setattr(harvest_module, "update", update)
    resumed = harvest_features(tiny_model, dictionary, path, config=SMALL, checkpoint=checkpoint, progress=False)
    for name, tensor in whole.state.tensors().items():
        assert torch.equal(tensor, resumed.state.tensors()[name]), name
    assert resumed.state.n_tokens == whole.state.n_tokens and resumed.meta["complete"]
    # A finished checkpoint is returned as it is; another dictionary's is refused.
    assert FeatureHarvest.load(checkpoint).meta["complete"]
    with pytest.raises(ValueError, match="^checkpoint: .*fingerprint"):
        harvest_features(tiny_model, random_sae(tiny_model, seed=5), path, config=SMALL, checkpoint=checkpoint,
                         progress=False)


def test_memory_is_bounded_by_the_options_not_the_corpus(tiny_model, corpus):
    dictionary = random_sae(tiny_model)
    small = harvest_features(tiny_model, dictionary, corpus[:10], config=SMALL, progress=False)
    large = harvest_features(tiny_model, dictionary, corpus * 3, config=SMALL, progress=False)
    assert large.state.n_tokens > 5 * small.state.n_tokens
    assert small.state.nbytes() == large.state.nbytes()


def test_shards_are_harvested_without_running_the_model(tiny_model, corpus, tmp_path):
    from interp.activation_shards import collect_residuals_to_shards
    from interp.activations import LastK, collect_residuals

    dictionary = random_sae(tiny_model)
    prompts = [text for text in corpus if len(text.split()) >= 4]
    shards = collect_residuals_to_shards(tiny_model, prompts, [0], tmp_path / "shards", LastK(3), progress=False)
    config = HarvestConfig(n_top=6, window=(2, 2), chunk_docs=3, batch_tokens=64)  # a window holds all 3 slots
    harvest = harvest_features(tiny_model, dictionary, tmp_path / "shards", config=config, prompts=prompts,
                               progress=False)
    acts = dictionary.encode(collect_residuals(tiny_model, prompts, [0], LastK(3), progress=False)[:, 0])
    assert harvest.state.n_tokens == len(prompts) * 3 == len(shards) * 3
    assert torch.equal(harvest.state.fired, (acts > 0).flatten(0, 1).sum(0))
    top = harvest.top_contexts(2)[0]
    assert top.value == pytest.approx(float(acts[..., 2].max()))
    assert top.acts[top.center] == pytest.approx(top.value) and len(top.ids) == 3
    ids = tiny_model.tokenizer(prompts[top.doc], add_special_tokens=False)["input_ids"]
    assert top.ids == ids[-3:]  # the prompt's last three tokens
    with pytest.raises(ValueError, match="^corpus: the shards hold"):
        harvest_features(None, Dictionary(dictionary.atoms, dictionary.norms, hook_name="blocks.1.hook_resid_pre",
                                          encoder=dictionary.encoder), shards, progress=False)


def test_a_transcoder_is_read_at_its_input_and_steered_where_it_writes(tiny_model, tmp_path):
    width, n_atoms = tiny_model.cfg.d_model, 12
    sae = random_sae(tiny_model, n_atoms)
    transcoder = Dictionary(sae.atoms, sae.norms, hook_name="blocks.1.ln2.hook_normalized", transcoder=True,
                            output_hook="blocks.1.hook_mlp_out", encoder=sae.encoder)
    harvest = harvest_features(tiny_model, transcoder, TEXTS, config=SMALL, progress=False)
    fired = torch.zeros(n_atoms, dtype=torch.long)
    for text in TEXTS:  # one text at a time, through the bridge's own hook point
        ids = tiny_model.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if ids.shape[1] > 1:
            _, cache = tiny_model.run_with_cache(ids, names_filter=transcoder.hook_name)
            fired += (transcoder.encode(cache[transcoder.hook_name][0, 1:]) > 0).sum(0)
    assert torch.equal(harvest.state.fired, fired) and width == transcoder.d_in
    out = build_feature_browser(tiny_model, transcoder, TEXTS, tmp_path / "site", config=SMALL, features=[0, 1],
                                steer=[0], progress=False)
    page = (out / "features" / "00.html").read_text()
    assert "writes <code>blocks.1.hook_mlp_out</code>" in page and 'id="steering"' in page
    assert load_browser_data(out).steering["hook"] == "blocks.1.hook_mlp_out"


def test_a_raw_decoder_gets_weight_pages_only(tiny_model, tmp_path):
    dictionary = from_decoder(random_sae(tiny_model).decoder, hook_name=HOOK)
    out = build_feature_browser(tiny_model, dictionary, None, tmp_path / "raw", progress=False)
    page = (out / "features" / "03.html").read_text()
    assert "no encoder" in page and 'id="logits"' in page and 'id="neighbours"' in page and 'id="top"' not in page
    assert "raw decoder" in (out / "index.html").read_text()


def test_site_files_links_and_writes(tiny_model, corpus, tmp_path):
    dictionary = random_sae(tiny_model)
    out = build_feature_browser(tiny_model, dictionary, corpus, tmp_path / "site", features=[2, 3, 5, 7], config=SMALL,
                                progress=False)
    assert sorted(p.name for p in (out / "features").iterdir()) == ["02.html", "03.html", "05.html", "07.html"]
    data = load_browser_data(out)
    view = feature_view(data, 1, set(data.features.tolist()))  # feature 3
    assert view["fired"] > 0 and sum(row["share"] for row in view["intervals"]) == pytest.approx(1.0)
    sampled = [c for row in view["intervals"] for c in row["contexts"]]
    assert sampled and not {(c["doc"], c["position"]) for c in sampled} & {(c["doc"], c["position"]) for c in view["top"]}
    for row in view["intervals"]:
        assert all(row["low"] * view["max"] <= c["value"] <= row["high"] * view["max"] for c in row["contexts"])
    for page in [out / "index.html", *(out / "features").iterdir()]:
        text = page.read_text()
        assert not re.search(r"""(src|href)=["'](https?:)?//""", text)  # nothing from the network
        for link in re.findall(r'(?:src|href)="([^"#]+)"', text):
            assert (page.parent / html.unescape(link)).is_file(), (page.name, link)
    # Never over a folder it did not write; over its own only with overwrite; re-rendered from its data.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="^out:"):
        build_feature_browser(tiny_model, dictionary, corpus, foreign, config=SMALL, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_feature_browser(tiny_model, dictionary, corpus, out, config=SMALL, progress=False)
    before = (out / "features" / "03.html").read_text()
    (out / "features" / "03.html").unlink()
    render_browser(out, progress=False)
    assert (out / "features" / "03.html").read_text() == before
    assert find_browsers(tmp_path) == [out]


def test_experiments_link_pages_of_their_own_dictionary(tiny_model, corpus, tmp_path):
    from interp.report import render_markdown

    dictionary = random_sae(tiny_model)
    results = tmp_path / "results"
    build_feature_browser(tiny_model, dictionary, corpus, results / "features", features=[1, 4], config=SMALL,
                          progress=False)
    experiment = results / "sparse"
    experiment.mkdir()
    links = feature_links(dictionary, [4, 1, 9], search=results, relative_to=experiment)
    assert links == {4: "../features/features/04.html", 1: "../features/features/01.html"}
    assert (experiment / links[4]).resolve().is_file()
    assert feature_links(random_sae(tiny_model, seed=9), [4], search=results, relative_to=experiment) == {}
    # The report renders a summary's links relative to the report's folder.
    rendered = render_markdown("see [feature 4](../features/features/04.html)", link_base="sparse")
    assert 'href="features/features/04.html"' in rendered


def test_the_classifier_experiment_and_the_report_link_a_browser_built_beside(tmp_path):
    """End to end on the tiny letter model: a browser of the experiment's SAE built under the results folder; the
    experiment links its best features' pages, and the report links the browser (top and in the section)."""
    from interp.dictionaries import load_dictionary
    from interp.experiments import run_experiment
    from interp.models import load_model
    from interp.report import write_report

    from test_classify import TINY, _tiny_sae_folder
    from tiny_letters import make_letter_model_folder

    folder = make_letter_model_folder(tmp_path / "letters")
    sae = _tiny_sae_folder(tmp_path / "sae", layer=1)
    model = load_model(folder, device="cpu")
    results = tmp_path / "results"
    texts = ["Question : which is right ? A B C D", "The answer is ( A )", "Answer : B"] * 4
    build_feature_browser(model, load_dictionary(sae), texts, results / "features", config=SMALL, progress=False)
    out = run_experiment("classifier", results, model=str(folder), dictionary=str(sae), **TINY)
    result = json.loads((out / "result.json").read_text())
    (section,) = result["models"].values()
    best = {str(f) for features in section["classifiers"]["top_features"].values() for f in features}
    assert result["feature_browser"] == "../features" and set(section["feature_pages"]) == best
    for link in section["feature_pages"].values():
        assert (out / link).is_file()
    summary = (out / "summary.md").read_text()
    assert "](../features/features/" in summary
    report = write_report(results).read_text()
    assert 'href="features/index.html"' in report  # the list of browsers
    assert 'href="features/index.html">feature browser</a>' in report  # the classifier's section
    assert re.search(r'href="features/features/\d+\.html"', report)  # its summary's links, from the report's folder


def write_saelens_folder(dictionary: Dictionary, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": dictionary.d_model, "d_sae": dictionary.n_atoms, "architecture": "standard", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "metadata": {"hook_name": dictionary.hook_name}}))
    encoder = dictionary.encoder
    save_file({"W_enc": encoder.W_enc.contiguous(), "b_enc": encoder.b_enc.contiguous(),
               "W_dec": dictionary.decoder.contiguous(), "b_dec": encoder.b_dec.contiguous()},
              str(folder / "sae_weights.safetensors"))
    return folder


def test_cli_checks_everything_before_the_model_loads(tiny_folder, tiny_model, corpus, tmp_path, monkeypatch, capsys):
    import interp.models
    from interp.cli import main

    sae = write_saelens_folder(random_sae(tiny_model), tmp_path / "sae")
    texts = tmp_path / "corpus.txt"
    texts.write_text("\n".join(text for text in corpus if text) + "\n")
    base = ["features", "--max-length", "64", "--dictionary", str(sae), "--model", str(tiny_folder), "--corpus", str(texts)]

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(interp.models, "load_model", no_load)
    for extra, message in ((["--features", "0-99"], "--features"), (["--explain", "x"], "--explain"),
                           (["--features", "1,2", "--steer", "3"], "--steer"), (["--n-top", "0"], "--n-top"),
                           (["--max-docs", "0"], "--max-docs"), (["--device", "tpu"], "--device"),
                           (["--max-length", "100000"], "--max-length"), (["--out", "/etc/browser"], "system folder")):
        assert main([*base, "--out", str(tmp_path / "o"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main([*base[:-1], str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "--corpus" in capsys.readouterr().err
    assert main([*base[:4], str(tmp_path / "nothing"), *base[5:], "--out", str(tmp_path / "o")]) == 2
    assert "--dictionary" in capsys.readouterr().err
    monkeypatch.undo()
    assert main([*base, "--out", str(tmp_path / "site"), "--features", "0-5", "--n-top", "4"]) == 0
    assert (tmp_path / "site" / "features" / "05.html").is_file() and "wrote" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_harvest_on_cuda_equals_the_cpu_one(tiny_folder, corpus):
    from interp.models import load_model

    cpu_model, cuda_model = load_model(tiny_folder, device="cpu"), load_model(tiny_folder, device="cuda")
    dictionary = random_sae(cpu_model)
    on_cpu = harvest_features(cpu_model, dictionary, corpus, config=SMALL, progress=False)
    on_cuda = harvest_features(cuda_model, dictionary, corpus, config=SMALL, progress=False)
    assert torch.equal(on_cpu.state.fired, on_cuda.state.fired)
    assert torch.allclose(on_cpu.state.top.value, on_cuda.state.top.value, atol=1e-4)
    assert [(c.doc, c.position) for c in on_cpu.top_contexts(0)] == [(c.doc, c.position) for c in on_cuda.top_contexts(0)]
    # The same priorities on both: the same sample, but for a value rounded across a band's edge.
    assert (on_cpu.state.samples.key == on_cuda.state.samples.key).float().mean() > 0.99


def test_bins_cover_every_positive_value():
    bins = Bins(1e-3, 1e3, 4)
    values = torch.tensor([1e-9, 1e-3, 0.5, 999.0, 1e3, 1e9])
    assert bins.index(values).tolist() == [0, 1, 11, 24, 25, 25]
    assert len(bins.edges()) == bins.n_inner + 1 == 25


# ---------------------------------------------------------------------------------------------
# Headless Chromium: the index and a feature page as a reader's browser shows them
# ---------------------------------------------------------------------------------------------

# Injected first into a copy of each page: every error (script, console, a resource that failed) is recorded.
ERRORS_SCRIPT = """<script>window.__errors=[];window.addEventListener("error",(e)=>{const t=e.target;
window.__errors.push(t&&t!==window?"resource "+(t.src||t.href):"error "+e.message);},true);
const __ce=console.error;console.error=(...a)=>{window.__errors.push("console "+a.join(" "));__ce(...a);};</script>"""
REPORT_SCRIPT = """<script>window.addEventListener("load",()=>{const out=(CHECK)();out.errors=window.__errors;
out.styled=getComputedStyle(document.body).maxWidth;const pre=document.createElement("pre");pre.id="browser-check";
pre.textContent=JSON.stringify(out);document.body.appendChild(pre);});</script>"""
INDEX_CHECK = """()=>{const rows=Array.from(document.querySelectorAll("#features tbody tr"));const q=document.getElementById("q");
q.value=QUERY;q.dispatchEvent(new Event("input"));const shown=rows.filter((r)=>!r.hidden).map((r)=>r.dataset.f);
document.querySelector('th[data-k="d"]').click();
const order=Array.from(document.querySelectorAll("#features tbody tr")).map((r)=>parseFloat(r.dataset.d));
return {total:rows.length,shown:shown,counter:document.getElementById("shown").textContent,order:order};}"""
PAGE_CHECK = """()=>{const ctx=document.querySelector('.ctx[data-doc="DOC"][data-pos="POS"]');
const spans=Array.from(ctx.querySelectorAll(".toks i"));
const alpha=(s)=>{const p=getComputedStyle(s).backgroundColor.match(/[\\d.]+/g).map(Number);
return p.length===4?p[3]:(p[0]+p[1]+p[2]>0?1:0);};
return {alphas:spans.map(alpha),titles:spans.map((s)=>s.title),tokens:spans.map((s)=>s.textContent)};}"""


@pytest.fixture()
def chromium() -> str:
    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium found (looked for $INTERP_CHROMIUM and " + ", ".join(CHROMIUM_NAMES) + ")")
    return found


def check_in_chromium(chromium: str, page: Path, check: str) -> dict:
    """Open a copy of `page` (beside it, so relative links hold) with the probes injected; the check's result."""
    probe = page.with_name("browser-check.html")
    text = page.read_text().replace("<head>", "<head>" + ERRORS_SCRIPT, 1)
    probe.write_text(text.replace("</body>", REPORT_SCRIPT.replace("CHECK", check) + "</body>"))
    profile = page.parent / ".chromium-profile"
    command = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
               "--dump-dom", probe.as_uri()]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink(missing_ok=True)
        shutil.rmtree(profile, ignore_errors=True)
    match = re.search(r'<pre id="browser-check">(.*?)</pre>', completed.stdout, re.S)
    assert match, f"Chromium printed no check result (rc {completed.returncode}): {completed.stderr[-2000:]}"
    console = [line for line in completed.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return {**json.loads(html.unescape(match.group(1))), "console": console}


def test_index_and_page_in_headless_chromium(chromium, tiny_model, corpus, tmp_path):
    dictionary = random_sae(tiny_model)
    config = HarvestConfig(n_top=6, window=(12, 4))
    out = build_feature_browser(tiny_model, dictionary, corpus, tmp_path / "site", config=config, progress=False)
    data = load_browser_data(out)
    # Search: a word only some features' contexts hold narrows the list to those rows.
    word = "paris"
    expected = [str(f) for f, row in zip(data.features.tolist(), _search_words(out)) if word in row]
    index = check_in_chromium(chromium, out / "index.html", INDEX_CHECK.replace("QUERY", json.dumps(word)))
    assert index["errors"] == [] and index["console"] == [] and index["styled"] == "1100px"
    assert index["total"] == dictionary.n_atoms and 0 < len(index["shown"]) < index["total"]
    assert index["shown"] == expected and index["counter"] == str(len(expected))
    assert index["order"] == sorted(index["order"], reverse=True)  # sorted by density, densest first
    # A page: a context's colours are the activations max_activating computes there, over the feature's max.
    feature = int(data.harvest.density.argmax())
    result = max_activating(tiny_model, dictionary, corpus, [feature], n_top=6, progress=False)
    context = result.contexts[feature][1]
    page = out / "features" / f"{feature:02d}.html"
    checked = check_in_chromium(chromium, page, PAGE_CHECK.replace("DOC", str(context.doc))
                                .replace("POS", str(context.position)))
    assert checked["errors"] == [] and checked["console"] == [] and checked["styled"] == "1100px"
    assert checked["tokens"] == [t.replace("\n", "⏎") for t in context.tokens]
    peak = float(result.values[0, 0])
    assert checked["alphas"] == pytest.approx([min(1.0, a / peak) for a in context.activations], abs=2e-3)
    assert [float(t) for t in checked["titles"]] == pytest.approx(context.activations, rel=1e-3, abs=1e-6)


def _search_words(out: Path) -> list[str]:
    text = (out / "index.html").read_text()
    return [html.unescape(words) for words in re.findall(r'data-s="([^"]*)"', text)]


@pytest.mark.integration
def test_shipped_sae_on_smollm_matches_max_activating(smollm, tmp_path):
    from interp.corpus import bundled_instructions
    from interp.dictionaries import load_shipped_dictionary

    dictionary = load_shipped_dictionary("smollm2-135m-instruct", 15)
    texts = bundled_instructions()[:40]
    features = list(range(0, 4608, 97))
    out = build_feature_browser(smollm, dictionary, texts, tmp_path / "site", features=features, progress=False)
    data = load_browser_data(out)
    expected = max_activating(smollm, dictionary, texts, features, n_top=20, progress=False)
    assert data.harvest.state.n_tokens == expected.n_tokens
    for column, feature in enumerate(features):
        ours = data.harvest.top_contexts(column)
        assert [c.value for c in ours] == pytest.approx([c.value for c in expected.contexts[feature]], rel=1e-4)
    assert "Top activations" in (out / "features" / f"{features[1]:04d}.html").read_text()
