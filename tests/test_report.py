"""The reproduction report: built from a fake results folder, hooked into `interp reproduce`, and opened
in headless Chromium to check that every figure loads (skipped when no Chromium is installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from interp.report import collect, render_markdown, write_report

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def make_png(path: Path, colour: str = "tab:blue") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(2, 1.5))
    axis.plot([0, 1], [0, 1], color=colour)
    figure.savefig(path, dpi=50)
    plt.close(figure)
    return path


def steering_result(logodds: list[float], monotonic: bool) -> dict:
    return {
        "experiment": "steering", "config": {"model": "m"}, "seconds": 3.0, "model": "m", "layers": [13],
        "logodds": {"13": logodds}, "logodds_unsteered": 0.1, "best_layer": 13, "best_layer_monotonic": monotonic,
        "positive_word_rate": [0.0, 0.5, 0.75], "negative_word_rate": [0.5, 0.2, 0.0],
    }


@pytest.fixture()
def fake_results(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    steering = out / "steering"
    (steering / "directions").mkdir(parents=True)
    (steering / "result.json").write_text(json.dumps(steering_result([-1.0, 0.0, 2.0], True)))
    (steering / "summary.md").write_text(
        "# Steering\n\nA **bold** claim with `code` and <script>alert(1)</script>.\n\n"
        "| layer | swing |\n|---|---|\n| 13 | +3.00 |\n\n- one\n- two\n\nSee `sentiment_logodds_vs_multiplier.png`.\n"
    )
    make_png(steering / "sentiment_logodds_vs_multiplier.png")
    # A figure in a per-model subfolder (as sycophancy and classifier write them), referenced by result.json.
    classifier = out / "classifier"
    make_png(classifier / "tiny-model" / "roc_curves.png", "tab:red")
    (classifier / "result.json").write_text(json.dumps({
        "experiment": "classifier", "seconds": 1.0,
        "models": {"tiny-model": {
            "layer": 1, "figures": [str(classifier / "tiny-model" / "roc_curves.png"),
                                    str(classifier / "tiny-model" / "top_features.png")],
            "classifiers": {"rows": [
                {"name": "feature 7 (encoder pre-activation)", "group": "feature", "test_auroc": 0.8,
                 "test_auroc_ci": [0.7, 0.9]},
                {"name": "feature 7, chosen on test", "group": "biased", "test_auroc": 0.85},
            ]},
            "probe_penalty_demo": {"by_lambda": {"0.0": {"sycophancy_rate": 0.6}, "5.0": {"sycophancy_rate": 0.58}}},
        }},
        "skipped": {"big-model": "not installed: pip install big"},
    }))
    broken = out / "refusal"
    broken.mkdir()
    (broken / "result.json").write_text('{"experiment": "refusal", "refusal_rate": ')  # cut short
    (broken / "summary.md").write_text("# Refusal\n\nran out of time\n")
    (out / "empty").mkdir()  # no artifacts: not an experiment folder
    make_png(out / ".steering.tmp-abc" / "half_written.png")  # an atomic write in progress: never listed
    (out / "unknown_experiment").mkdir()
    (out / "unknown_experiment" / "result.json").write_text(json.dumps({"experiment": "x", "accuracy": 0.75}))
    return out


def test_collect_reads_every_folder_and_flags_problems(fake_results):
    entries = {entry.name: entry for entry in collect(fake_results)}
    assert sorted(entries) == ["classifier", "refusal", "steering", "unknown_experiment"]

    steering = entries["steering"]
    assert [p.as_posix() for p in steering.figures] == ["steering/sentiment_logodds_vs_multiplier.png"]
    assert steering.missing_figures == []
    verdicts = [claim.agrees for claim in steering.headline.claims]
    assert verdicts == ["yes", "yes"]
    assert steering.headline.numbers["best layer"] == 13

    classifier = entries["classifier"]
    assert [p.as_posix() for p in classifier.figures] == ["classifier/tiny-model/roc_curves.png"]
    assert [Path(m).name for m in classifier.missing_figures] == ["top_features.png"]
    feature, penalty, skipped = classifier.headline.claims
    assert "single SAE feature" in feature.claim and feature.agrees == "yes" and "0.850" in feature.ours
    assert "probe penalties" in penalty.claim and penalty.agrees == "partly"  # lower, but by less than 0.05
    assert skipped.agrees == "n/a" and "not installed" in skipped.ours

    refusal = entries["refusal"]
    assert refusal.result is None and "JSONDecodeError" in refusal.result_error
    assert refusal.headline.claims == [] and refusal.summary_md.startswith("# Refusal")

    assert entries["unknown_experiment"].headline.numbers["accuracy"] == 0.75


def test_verdicts_follow_the_numbers(tmp_path):
    out = tmp_path / "results"
    (out / "steering").mkdir(parents=True)
    (out / "steering" / "result.json").write_text(json.dumps(steering_result([1.0, 0.5, -0.5], False)))
    (entry,) = collect(out)
    assert entry.headline.claims[0].agrees == "no"
    (out / "steering" / "result.json").write_text(json.dumps(steering_result([1.0, 0.5, 1.5], False)))
    (entry,) = collect(out)
    assert entry.headline.claims[0].agrees == "partly"
    # A result that lacks the keys: n/a rows saying so, never an exception.
    (out / "steering" / "result.json").write_text(json.dumps({"experiment": "steering"}))
    (entry,) = collect(out)
    assert {claim.agrees for claim in entry.headline.claims} == {"n/a"}
    assert "not in result.json" in entry.headline.claims[0].ours


def test_an_experiment_can_bring_its_own_headline(tmp_path):
    out = tmp_path / "results"
    (out / "sparse").mkdir(parents=True)
    (out / "sparse" / "result.json").write_text(json.dumps({"headline": {
        "numbers": {"cosine, k=4": 0.93},
        "claims": [{"claim": "2–4 features match the vector", "ours": 0.93, "agrees": "yes"},
                   {"claim": "bad verdict", "ours": 1, "agrees": "maybe"}],
    }}))
    (entry,) = collect(out)
    assert entry.headline.numbers == {"cosine, k=4": 0.93}
    assert [(c.ours, c.agrees) for c in entry.headline.claims] == [("0.930", "yes"), ("1", "n/a")]


def test_write_report_html(fake_results):
    path = write_report(fake_results)
    assert path == fake_results / "index.html"
    text = path.read_text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text  # summaries are escaped
    assert 'src="steering/sentiment_logodds_vs_multiplier.png"' in text
    assert 'src="classifier/tiny-model/roc_curves.png"' in text
    assert 'href="steering/result.json"' in text and 'href="refusal/summary.md"' in text
    assert "half_written" not in text and ">empty<" not in text
    assert "could not be read" in text and "missing figures" in text
    # Offline: nothing is fetched from anywhere but the folder itself.
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)
    assert "<script" not in text.replace("&lt;script", "")
    assert not list(fake_results.glob(".index.html.tmp-*"))  # written atomically, nothing left behind


def test_minimal_markdown():
    rendered = render_markdown("## Title\n\n| a | b |\n|---|---|\n| 1 | `x|` |\n\ntext _it_ **b**\n")
    assert "<h4>Title</h4>" in rendered and "<th>a</th>" in rendered and "<td>1</td>" in rendered
    assert "<em>it</em>" in rendered and "<strong>b</strong>" in rendered


def test_reproduce_writes_the_index(tmp_path, monkeypatch, capsys):
    import interp.experiments as experiments
    from interp.cli import main

    def fake_run(name: str, out_dir: Path, **overrides: object) -> Path:
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").write_text(json.dumps(steering_result([0.0, 1.0, 2.0], True)))
        return folder

    monkeypatch.setattr(experiments, "run_experiment", fake_run)
    assert main(["reproduce", "all", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "index.html").exists()
    assert "report: wrote" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Headless Chromium: every <img> has loaded (complete, with a natural width)
# ---------------------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """A Chromium or Chrome binary: $INTERP_CHROMIUM, else the usual names on PATH."""
    explicit = os.environ.get("INTERP_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


# Written into a copy of the report beside it (the report itself carries no script): after the load
# event, list every image that failed into <pre id="figure-check">, which --dump-dom then prints.
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((img) => !(img.complete && img.naturalWidth > 0)).map((img) => img.getAttribute("src"));
  const out = document.createElement("pre");
  out.id = "figure-check";
  out.textContent = JSON.stringify({total: images.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


def check_figures_in_chromium(chromium: str, report: Path) -> dict:
    probe = report.with_name("figure-check.html")
    probe.write_text(report.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    command = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
               "--no-first-run", "--user-data-dir=" + str(report.parent / ".chromium-profile"),
               "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink(missing_ok=True)
        shutil.rmtree(report.parent / ".chromium-profile", ignore_errors=True)
    match = re.search(r'<pre id="figure-check">(.*?)</pre>', completed.stdout, re.S)
    assert match, f"Chromium printed no check result (rc {completed.returncode}): {completed.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(match.group(1)))


@pytest.fixture()
def chromium() -> str:
    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium found (looked for $INTERP_CHROMIUM and " + ", ".join(CHROMIUM_NAMES)
                    + "); on Debian/Ubuntu: apt-get install -y chromium")
    return found


def test_every_figure_loads_in_headless_chromium(chromium, fake_results):
    report = write_report(fake_results)
    checked = check_figures_in_chromium(chromium, report)
    assert checked == {"total": 2, "broken": []}


def test_the_browser_check_sees_a_broken_figure(chromium, fake_results):
    (fake_results / "steering" / "sentiment_logodds_vs_multiplier.png").write_bytes(b"not a png")
    report = write_report(fake_results)
    checked = check_figures_in_chromium(chromium, report)
    assert checked["broken"] == ["steering/sentiment_logodds_vs_multiplier.png"]


def test_sparse_verdict_compares_behavioural_effects(tmp_path):
    out = tmp_path / "results"
    (out / "sparse").mkdir(parents=True)
    target = {"effect_key": "swing", "unsteered": {"swing": 0.0}, "original": {"swing": 0.4},
              "best_small_k": {"method": "ito", "k": 4, "cosine": 0.8},
              "best_small_k_behaviour": {"method": "ito", "k": 2, "cosine": 0.7, "swing": 0.38}}
    (out / "sparse" / "result.json").write_text(json.dumps({
        "model": "m", "config": {"small_k": 4}, "targets": {"sycophancy": target},
        "skipped": {"refusal": "m does not refuse"},
    }))
    (entry,) = collect(out)
    matched, skipped = entry.headline.claims
    assert matched.agrees == "yes" and "95%" in matched.ours  # 0.38 / 0.40 of the original's change
    assert skipped.agrees == "n/a" and "does not refuse" in skipped.ours


def test_sparse_verdict_is_na_when_the_original_has_no_effect(tmp_path):
    """A ratio to an effect within noise is meaningless (0.036 / 0.002 once read as '1581%: yes')."""
    out = tmp_path / "results"
    (out / "sparse").mkdir(parents=True)
    target = {"effect_key": "swing", "unsteered": {"swing": 0.0}, "original": {"swing": 0.002},
              "best_small_k": {"method": "ito", "k": 4, "cosine": 0.6},
              "best_small_k_behaviour": {"method": "encdiff", "k": 4, "cosine": 0.6, "swing": 0.036}}
    (out / "sparse" / "result.json").write_text(json.dumps({"model": "m", "config": {"small_k": 4},
                                                             "targets": {"sycophancy": target}}))
    (entry,) = collect(out)
    (claim,) = entry.headline.claims
    assert claim.agrees == "n/a" and "no effect to match" in claim.ours


def sycophancy_result(window_swing: float, monotonic: bool, accuracy: list[float], n_questions: int) -> dict:
    curve = {"monotonic": monotonic, "swing": window_swing, "window_swing": window_swing, "spearman": 0.5}
    return {"experiment": "sycophancy", "models": {"m": {
        "best_layer": 5, "n_layers": 10, "curves": {"5": curve}, "unsteered": {"letter_mass": 0.9},
        "multiple_choice": {"multipliers": [-1.0, 0.0, 1.0], "accuracy": accuracy, "n_questions": n_questions},
    }}}


@pytest.mark.parametrize(
    ("window_swing", "monotonic", "accuracy", "n_questions", "expected"),
    [
        (0.009, False, [0.2, 0.15, 0.18], 62, ("no", "no")),  # SmolLM2: flat curve, accuracy up
        (0.180, False, [0.34, 0.23, 0.18], 62, ("partly", "partly")),  # Qwen: a real swing; a drop within noise
        (0.300, True, [0.7, 0.6, 0.3], 200, ("yes", "yes")),  # a large drop on many questions
    ],
)
def test_sycophancy_verdicts_respect_noise(tmp_path, window_swing, monotonic, accuracy, n_questions, expected):
    out = tmp_path / "results"
    (out / "sycophancy").mkdir(parents=True)
    (out / "sycophancy" / "result.json").write_text(
        json.dumps(sycophancy_result(window_swing, monotonic, accuracy, n_questions)))
    (entry,) = collect(out)
    monotone, _, costs_accuracy = entry.headline.claims
    assert (monotone.agrees, costs_accuracy.agrees) == expected
    assert "within sampling noise" in costs_accuracy.ours


# ---------------------------------------------------------------------------------------------
# The page's shape and "how this was made"
# ---------------------------------------------------------------------------------------------


def test_summaries_are_collapsed_and_there_is_a_table_of_contents(fake_results):
    text = write_report(fake_results).read_text()
    assert "<details><summary>summary.md</summary>" in text and "<details open" not in text
    contents = re.search(r'<nav id="contents">(.*?)</nav>', text, re.S).group(1)
    for anchor in ("steering", "classifier", "refusal", "unknown_experiment", "how-this-was-made"):
        assert f'href="#{anchor}"' in contents and f'id="{anchor}"' in text


def test_provenance_block_recorded_by_a_run(tmp_path, monkeypatch):
    """A real run records versions, commit, machine and its rerun command; the report shows them."""
    import dataclasses

    from interp import experiments
    from interp.provenance import NOT_GIT, PACKAGES, git_commit

    @dataclasses.dataclass
    class Config:
        model: str = "smollm2-135m-instruct"
        layers: tuple[int, ...] = (3, 5)
        n_test: int | None = 10
        keep: bool = True
        label: str = "a b"

    monkeypatch.setitem(experiments.EXPERIMENTS, "toy", experiments.Experiment(
        "toy", "a toy", Config, lambda config, out: {"value": 1.0}))
    monkeypatch.setattr(experiments, "load_registry", lambda: experiments.EXPERIMENTS)
    out = tmp_path / "my results"
    experiments.run_experiment("toy", out, model="org/tiny", layers=(1, 2), n_test=None, keep=False, label="x y")
    recorded = json.loads((out / "toy" / "result.json").read_text())["provenance"]
    assert set(recorded["versions"]) == set(PACKAGES)
    assert recorded["versions"]["torch"] != "not installed" and recorded["versions"]["interp"] != "not installed"
    assert recorded["commit"] == git_commit() and (re.match(r"[0-9a-f]{40}", recorded["commit"]) or recorded["commit"] == NOT_GIT)
    assert recorded["machine"]["cores"] >= 1 and recorded["machine"]["cpu"]
    assert recorded["command"] == (f"interp reproduce toy --model org/tiny --set layers=1,2 --set n_test=null "
                                   f"--set keep=false --set 'label=x y' --out '{out}'")
    # The command reads back as the same config.
    import shlex

    words = shlex.split(recorded["command"])
    settings = dict(words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "--set")
    assert experiments.parse_settings(["toy"], settings) == {"layers": (1, 2), "n_test": None, "keep": False,
                                                             "label": "x y"}

    text = write_report(out).read_text()
    block = text[text.index('<h2 id="how-this-was-made">'):]
    assert html_escape(recorded["command"]) in block and recorded["commit"] in block
    for package in PACKAGES:
        assert f"<th>{package}</th><td>{recorded['versions'][package]}</td>" in block
    assert recorded["machine"]["cpu"] in block and "not recorded by this run" not in block


def test_provenance_of_an_older_result_is_todays_machine_and_says_so(fake_results):
    text = write_report(fake_results).read_text()
    block = text[text.index('<h2 id="how-this-was-made">'):]
    assert "not recorded by this run" in block
    assert f"interp reproduce steering --model m --out {fake_results}" in block  # from result.json's config


def test_git_commit_outside_a_checkout(tmp_path):
    from interp.provenance import NOT_GIT, git_commit

    assert git_commit(tmp_path) == NOT_GIT


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_the_main_jobs_report_has_the_seeds_refusal_figure_and_its_verdicts(tmp_path):
    """`interp reproduce all` runs `sparse` on the refusing model with the figure on; the report shows the figure
    and a verdict row for each of the seed's refusal claims, with our numbers."""
    from interp.experiments.sparse import REFUSING_MODELS, SparseExperimentConfig

    main_job = SparseExperimentConfig()
    assert main_job.model in REFUSING_MODELS and main_job.refusal_figure and main_job.fit_refusal

    def row(harmful: float, harmless: float) -> dict:
        return {"harmful_ablated": harmful, "harmful_ablated_ci95": [harmful - 0.05, harmful + 0.05],
                "harmless_added": harmless, "harmless_added_ci95": [harmless - 0.05, harmless + 0.05],
                "mmlu_ablated": None, "mmlu_ablated_ci95": None, "n_harmful": 112, "n_harmless": 64, "n_questions": 124}

    rows = {"unsteered": row(0.43, 0.06), "original": row(0.04, 0.50), "skyline": row(0.30, 0.31),
            "ito k=2": row(0.35, 0.07), "ito k=4": row(0.17, 0.09), "encdiff k=2": row(0.40, 0.06), "encdiff k=4": row(0.38, 0.06)}
    figure = {"rows": rows, "ks": [2, 4], "methods": ["ito", "encdiff"], "small_k": 4, "judge": "phrases",
              "mmlu": "bundled questions", "skyline": {}}
    target = {"effect_key": "harmless_added", "unsteered": {"harmless_added": -2.0}, "original": {"harmless_added": 1.0},
              "best_small_k": {"method": "ito", "k": 4, "cosine": 0.51}, "figure": figure,
              "best_small_k_behaviour": {"method": "ito", "k": 4, "cosine": 0.51, "harmless_added": -1.2}}
    out = tmp_path / "results"
    (out / "sparse").mkdir(parents=True)
    make_png(out / "sparse" / "refusal_figure.png")
    (out / "sparse" / "result.json").write_text(json.dumps({"model": main_job.model, "config": {"small_k": 4},
                                                             "targets": {"refusal": target}}))
    (entry,) = collect(out)
    verdicts = {claim.claim: claim for claim in entry.headline.claims}
    ablated = next(claim for text, claim in verdicts.items() if text.startswith("[refusal figure] Ablating"))
    added = next(claim for text, claim in verdicts.items() if text.startswith("[refusal figure] Adding"))
    assert "ito k=4" in ablated.ours and "67% of the original's drop" in ablated.ours and ablated.agrees == "partly"
    assert "7% of the original's rise" in added.ours and added.agrees == "no"
    html = write_report(out).read_text()
    assert "refusal_figure.png" in html and "[refusal figure] Ablating" in html and "67% of the original" in html
