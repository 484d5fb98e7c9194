"""Finding a built browser and linking to its feature pages from anywhere (experiments, the report).

A browser is recognised by its artifact marker (kind "feature browser"), whose meta names the dictionary's
fingerprint: an experiment links feature i of *its* dictionary only to a browser of that same dictionary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from interp._io import read_marker
from interp.browser.site import BROWSER_KIND, INDEX_FILE, PAGES_DIR
from interp.dictionaries import Dictionary

SEARCH_DEPTH = 3  # folder levels below the search root looked at for browsers


def _walk(root: Path, depth: int) -> Iterator[Path]:
    yield root
    if depth == 0:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and not p.is_symlink())
    except OSError:
        return
    for child in children:
        if child.name == PAGES_DIR and (root / INDEX_FILE).is_file():
            continue  # a browser's own pages: thousands of files, no browser inside
        yield from _walk(child, depth - 1)


def browser_meta(folder: str | Path) -> dict[str, Any] | None:
    """The marker meta of a browser folder (model, hook_name, dictionary, n_atoms, fingerprint), else None."""
    folder = Path(folder)
    if not (folder / INDEX_FILE).is_file():
        return None
    record = read_marker(folder)
    if record is None or record.get("kind") != BROWSER_KIND or not isinstance(record.get("meta"), dict):
        return None
    return record["meta"]


def find_browsers(root: str | Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Every browser folder at or below `root` (at most `depth` levels down), in path order."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [folder for folder in _walk(root, depth) if browser_meta(folder) is not None]


def browser_for(root: str | Path, dictionary: Dictionary, depth: int = SEARCH_DEPTH) -> Path | None:
    """The first browser at or below `root` built for `dictionary` (same weights), else None."""
    from interp.browser.harvest import dictionary_fingerprint

    fingerprint = None
    for folder in find_browsers(root, depth):
        fingerprint = fingerprint or dictionary_fingerprint(dictionary)
        if (browser_meta(folder) or {}).get("fingerprint") == fingerprint:
            return folder
    return None


def feature_page(browser: str | Path, feature: int) -> Path | None:
    """Feature `feature`'s page in `browser`, if it was built."""
    meta = browser_meta(browser)
    if meta is None:
        return None
    page = Path(browser) / PAGES_DIR / f"{feature:0{len(str(int(meta['n_atoms']) - 1))}d}.html"
    return page if page.is_file() else None


def feature_links(dictionary: Dictionary, features: Iterable[int], *, search: str | Path, relative_to: str | Path,
                  depth: int = SEARCH_DEPTH) -> dict[int, str]:
    """Relative links (from `relative_to`) to the pages of `features` in a browser of `dictionary` found under
    `search`; empty when no browser of it was built. Features without a page are left out."""
    browser = browser_for(search, dictionary, depth)
    if browser is None:
        return {}
    links = {}
    for feature in features:
        page = feature_page(browser, int(feature))
        if page is not None:
            links[int(feature)] = Path(os.path.relpath(page, Path(relative_to))).as_posix()
    return links


def experiment_links(dictionary: Dictionary | str | Path, features: Iterable[int], folder: str | Path, *,
                     root: str | Path | None = None) -> dict[str, Any]:
    """What an experiment writing into `folder` records about a browser of `dictionary` (or the dictionary at a path)
    built under `root` (default:
    the folder's parent, the results folder): `feature_browser` (its path from `folder`, or None) and
    `feature_pages` ({feature: link from `folder`}). Links are an extra: a browser that cannot be read is ignored."""
    folder = Path(folder)
    search = Path(root) if root is not None else folder.parent
    try:
        if isinstance(dictionary, (str, Path)):  # a dictionary's folder or file, as an experiment's config names it
            dictionary = _read(dictionary)
        browser = browser_for(search, dictionary)
        pages = feature_links(dictionary, features, search=search, relative_to=folder) if browser is not None else {}
    except (OSError, ValueError, TypeError):
        return {"feature_browser": None, "feature_pages": {}}
    where = Path(os.path.relpath(browser, folder)).as_posix() if browser is not None else None
    return {"feature_browser": where, "feature_pages": {str(f): link for f, link in pages.items()}}


def _read(path: str | Path) -> Any:
    import warnings

    from interp.dictionaries import load_dictionary

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a decoder file without a hook: only its weights matter here
        return load_dictionary(Path(path))


def markdown_link(feature: int | str, pages: dict[str, str] | None, label: str | None = None) -> str:
    """`[label](link)` when the feature has a page in `pages` (as `experiment_links` returns them), else the label."""
    text = label or f"feature {feature}"
    link = (pages or {}).get(str(feature))
    return f"[{text}]({link})" if link else text
