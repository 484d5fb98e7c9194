"""The docs site (mkdocs.yml, `make docs`): every public module is on an API page; a strict build succeeds offline;
headless Chromium shows the API page (a known function's entry) and a tutorial page (a notebook's code cell), and
screenshots both. The build is skipped without the `docs` extra, the browser check without Chromium, as the
report's browser test is. `INTERP_DOCS_SCREENSHOTS=docs/screenshots` keeps the screenshots there."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_report import chromium  # noqa: F401  (the fixture: skips without Chromium)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_jupyter")


def public_modules() -> list[str]:
    """Every module of interp a user imports: no path part starting with `_` (`__init__` stands for its package)."""
    names = []
    for path in sorted((ROOT / "interp").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts) or "data" in parts:
            continue
        names.append(".".join(parts))
    return names


def test_every_public_module_is_on_an_api_page():
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented.update(re.findall(r"^::: ([\w.]+)", page.read_text(), re.M))
    missing = [name for name in public_modules() if name not in documented and name != "interp"]
    assert not missing, f"modules on no API page (add a `::: name` line to docs/api/): {missing}"


def test_every_page_and_notebook_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text()
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "screenshots" not in p.parts]
    notebooks = [f"tutorials/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")]
    missing = [page for page in pages + notebooks if page not in config]
    assert not missing, f"pages left out of mkdocs.yml's nav: {missing}"
    assert (DOCS / "tutorials").resolve() == (ROOT / "notebooks").resolve()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    absent = [name for name in DOCS_PACKAGES if importlib.util.find_spec(name.split(".")[0]) is None]
    if absent:
        pytest.skip(f"the docs extra is not installed ({', '.join(absent)} missing): pip install '.[docs]'")
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    completed = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"mkdocs build --strict failed:\n{completed.stderr[-4000:]}"
    assert not (ROOT / ".cache" / "mkdocs-jupyter").exists(), "mkdocs-jupyter wrote its cache into the checkout"
    return out


def test_the_strict_build_has_every_page(site):
    for page in ("index.html", "getting-started.html", "concepts.html", "reliability.html", "experiments.html",
                 "api/index.html", "api/steering.html", "capabilities/dictionaries.html", "tutorials/quickstart.html"):
        assert (site / page).is_file(), page
    steering = (site / "api" / "steering.html").read_text()
    assert 'id="interp.steering.Steer"' in steering and "small frozen dataclass" in steering  # the module docstring


# Written into a copy of the page beside it: after the load event, what a reader sees, into <pre id="docs-check">.
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const heading = document.getElementById("ANCHOR");
  const cells = Array.from(document.querySelectorAll(".jp-CodeCell"));
  const box = (el) => { if (!el) return null; const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  const out = document.createElement("pre");
  out.id = "docs-check";
  out.textContent = JSON.stringify({
    title: document.title,
    heading: heading ? heading.textContent.trim() : null,
    heading_box: box(heading),
    code_cells: cells.length,
    first_cell: cells.length ? cells[0].textContent : "",
    first_cell_box: box(cells[0]),
    nav: document.querySelectorAll(".md-nav__link").length,
    styled: getComputedStyle(document.body).getPropertyValue("--md-primary-fg-color").trim() !== "",
  });
  document.body.appendChild(out);
});
</script>"""


def open_in_chromium(chromium: str, page: Path, anchor: str, screenshot: Path) -> dict:
    """The check's result on a probe copy of `page`, and a screenshot of the page itself (as a reader opens it)."""
    probe = page.with_name("docs-check.html")
    probe.write_text(page.read_text().replace("</body>", CHECK_SCRIPT.replace("ANCHOR", anchor) + "</body>"))
    profile = page.parent / ".chromium-profile"
    base = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
            f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--hide-scrollbars"]
    # The page's top (headless Chromium screenshots a page scrolled to an anchor as blank white).
    try:
        completed = subprocess.run([*base, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
        shot = subprocess.run([*base, "--window-size=1280,1400", f"--screenshot={screenshot}", page.as_uri()],
                              capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink(missing_ok=True)
        shutil.rmtree(profile, ignore_errors=True)
    match = re.search(r'<pre id="docs-check">(.*?)</pre>', completed.stdout, re.S)
    assert match, f"Chromium printed no check result (rc {completed.returncode}): {completed.stderr[-2000:]}"
    assert screenshot.is_file(), f"no screenshot (rc {shot.returncode}): {shot.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1)))


def assert_not_blank(png: Path) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] >= 1400 and pixels.shape[1] >= 1200, pixels.shape
    assert pixels[..., :3].std() > 0.05, "the screenshot is (nearly) one colour"


@pytest.fixture()
def shots(tmp_path) -> Path:
    keep = os.environ.get("INTERP_DOCS_SCREENSHOTS")
    out = Path(keep) if keep else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_api_and_tutorial_pages_render_in_headless_chromium(chromium, site, shots):
    api = open_in_chromium(chromium, site / "api" / "steering.html", "interp.steering.Steer", shots / "api.png")
    assert api["styled"] and api["nav"] > 20, api  # the Material theme's CSS loaded, the nav is there
    assert api["title"].startswith("interp.steering"), api
    assert api["heading"] and api["heading"].startswith("Steer"), api
    assert api["heading_box"] and api["heading_box"][0] > 100 and api["heading_box"][1] > 10, api  # laid out, visible
    assert_not_blank(shots / "api.png")

    tutorial = open_in_chromium(chromium, site / "tutorials" / "quickstart.html", "", shots / "tutorial.png")
    assert tutorial["styled"] and tutorial["code_cells"] >= 5, tutorial
    assert "INTERP_NOTEBOOK_SMALL" in tutorial["first_cell"], tutorial  # the notebook's parameters cell, as committed
    assert tutorial["first_cell_box"] and tutorial["first_cell_box"][1] > 50, tutorial
    assert_not_blank(shots / "tutorial.png")
