"""A static, offline HTML report of every experiment folder under an output directory.

`write_report(out_dir)` writes `out_dir/index.html`: for each experiment folder (one holding a
`result.json`, a `summary.md` or figures) its figures (relative links), a few key numbers, the seed's
corresponding claims with our number and a verdict computed from `result.json`, and links to
`result.json` / `summary.md` (the summary rendered inline, collapsed), a table of contents, and how each
result was made (versions, commit, machine and the command that reruns it: `interp.provenance`). No network:
CSS is inline, there is no JavaScript, images are linked relatively, so the folder can be zipped and opened
anywhere.

Which numbers and claims: a result may carry its own `headline` dict
(`{"numbers": {label: value}, "claims": [{"claim", "ours", "agrees"}]}`); otherwise the headline reader
the experiment registered (`interp.experiments.register(..., headline=...)`) reads it, and a folder no
experiment registered shows its top-level numbers. The renderer knows no experiment's layout.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp._io import atomic_write_text
from interp.headlines import VERDICTS, Claim, Headline, HeadlineReader, format_value
from interp.provenance import provenance_html

IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")


@dataclass
class ExperimentEntry:
    """One experiment folder as the report shows it.

    Attributes:
        name: the experiment (the folder's name).
        folder: the folder.
        result: its `result.json`, or None.
        result_error: why `result.json` could not be read (None when it was, or is absent).
        summary_md: its `summary.md`, or None.
        figures: existing figures, relative to the report's folder.
        missing_figures: figures `result.json` / `summary.md` mention that are not on disk.
        headline: key numbers and claims from the experiment's registered headline function.
    """

    name: str
    folder: Path
    result: dict[str, Any] | None
    result_error: str | None  # why result.json could not be read (None when it was, or is absent)
    summary_md: str | None
    figures: list[Path]  # relative to the report's folder, existing files
    missing_figures: list[str]  # referenced by result.json / summary.md but not on disk
    headline: Headline


# ---------------------------------------------------------------------------------------------
# Headlines: the experiment's own reader, else generic numbers
# ---------------------------------------------------------------------------------------------


def _generic_numbers(result: Mapping[str, Any], limit: int = 8) -> dict[str, Any]:
    """Top-level scalars of a result (not the config or the timing): a fallback for unknown experiments."""
    numbers = {}
    for key, value in result.items():
        if key in ("experiment", "config", "summary_md") or len(numbers) >= limit:
            continue
        if isinstance(value, (int, float, str)) and not (isinstance(value, str) and len(value) > 80):
            numbers[key] = value
    return numbers


def _generic(result: dict[str, Any]) -> Headline:
    return Headline(_generic_numbers(result))


def registered_reader(name: str) -> HeadlineReader:
    """The headline reader experiment `name` registered, else generic numbers.

    Imports the experiment modules (lazily, so `import interp.report` stays light)."""
    from interp.experiments import load_registry

    experiment = load_registry().get(name)
    return experiment.headline if experiment is not None and experiment.headline is not None else _generic


def headline_for(name: str, result: dict[str, Any] | None) -> Headline:
    """The result's own `headline` dict when it has one, else the registered reader's, else generic numbers.

    Never raises for content: whatever is malformed (a headline that is not an object, `claims` that is no
    list, a claim without its keys, a verdict outside yes/partly/no/n/a, a reader that fails or returns
    something else) is listed in `Headline.problems`, and the rest is shown."""
    if result is None:
        return Headline()
    own = result.get("headline")
    if isinstance(own, Mapping):
        return _headline_from_dict(own)
    problems = [] if own is None else [f"headline: expected an object with numbers and claims, got "
                                       f"{type(own).__name__}; the experiment's own reading is shown instead"]
    try:
        headline = registered_reader(name)(result)
    except Exception as error:  # a reader bug must not take the whole report down; show it instead
        return Headline(_generic_numbers(result), [Claim("headline", f"could not be read: {error!r}", "n/a")], problems)
    if not isinstance(headline, Headline):
        problems.append(f"the headline reader returned {type(headline).__name__}, not a Headline")
        return Headline(_generic_numbers(result), [], problems)
    numbers = _numbers(headline.numbers, "the reader's numbers", problems)
    claims = _claims(headline.claims, "the reader's claims", problems)
    numbers = {k: v for k, v in numbers.items() if v is not None}
    if "seconds" in result:
        numbers.setdefault("run time (s)", result["seconds"])
    return Headline(numbers, claims, [*problems, *headline.problems])


def _numbers(numbers: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if numbers is None:
        return {}
    if not isinstance(numbers, Mapping):
        problems.append(f"{where}: expected an object of label → value, got {type(numbers).__name__}")
        return {}
    for label, value in numbers.items():
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}[{str(label)!r}] is {value}")
    return {str(label): value for label, value in numbers.items()}


def _claims(claims: Any, where: str, problems: list[str]) -> list[Claim]:
    if claims is None:
        return []
    if not isinstance(claims, (list, tuple)):
        problems.append(f"{where}: expected a list of claims, got {type(claims).__name__}")
        return []
    kept = []
    for index, item in enumerate(claims):
        if isinstance(item, Claim):
            kept.append(item)
            continue
        if not isinstance(item, Mapping):
            problems.append(f"{where}[{index}]: expected an object with claim, ours and agrees, got {type(item).__name__}")
            continue
        missing = [key for key in ("claim", "ours", "agrees") if key not in item]
        verdict = str(item.get("agrees", "n/a"))
        if missing:
            problems.append(f"{where}[{index}]: missing {missing}")
        if verdict not in VERDICTS:
            problems.append(f"{where}[{index}]: agrees {item.get('agrees')!r} is not one of {', '.join(VERDICTS)}")
        kept.append(Claim(format_value(item.get("claim", "")), format_value(item.get("ours", "")),
                          verdict if verdict in VERDICTS else "n/a"))
    return kept


def _headline_from_dict(own: Mapping[str, Any]) -> Headline:
    problems: list[str] = []
    numbers = _numbers(own.get("numbers"), "headline.numbers", problems)
    return Headline(numbers, _claims(own.get("claims"), "headline.claims", problems), problems)


# ---------------------------------------------------------------------------------------------
# Collecting the folders
# ---------------------------------------------------------------------------------------------


def _is_hidden(path: Path, root: Path) -> bool:
    # Temporary folders of atomic writes start with "."; never list half-written artifacts.
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_figures(folder: Path) -> list[Path]:
    """Every image file under `folder` (PNG, SVG, ...; hidden files and folders skipped), sorted."""
    return sorted(
        path for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not _is_hidden(path, folder)
    )


def _referenced_figures(result: Any, summary: str | None) -> set[str]:
    """Image file names the result or the summary mention: each should exist under the folder."""
    names: set[str] = set()

    stack = [result]  # walked without recursion: a deeply nested result must not overflow the stack
    while stack:
        value = stack.pop()
        if isinstance(value, str) and value.lower().endswith(IMAGE_SUFFIXES) and "\n" not in value and "\0" not in value:
            names.add(value)
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    if summary:
        suffixes = "|".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
        names.update(re.findall(rf"`([^`\s]+\.(?:{suffixes}))`", summary, re.IGNORECASE))
    return names


def _missing(referenced: Iterable[str], folder: Path, figures: Sequence[Path]) -> list[str]:
    """Referenced figures that are on disk neither at that path (relative to the folder) nor by file name."""
    present_names = {path.name for path in figures}
    missing = []
    for reference in sorted(referenced):
        path = Path(reference)
        candidates = [path] if path.is_absolute() else [folder / path]
        if any(c.is_file() for c in candidates) or path.name in present_names:
            continue
        missing.append(reference)
    return missing


def _read_result(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # unreadable, not UTF-8, not JSON, nested too deeply
        return None, f"{type(error).__name__}: {error}"
    if not isinstance(data, dict):
        return None, f"expected a JSON object, got {type(data).__name__}"
    return data, None


def collect(out_dir: str | Path) -> list[ExperimentEntry]:
    """Every experiment folder directly under `out_dir` (with a result.json, summary.md or figures); a folder
    that cannot be read (permissions, a file that vanished) is an entry flagging why, never an exception."""
    root = Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"report: {root} is not a folder")
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            entry = _entry(root, folder)
        except (OSError, ValueError, RecursionError) as error:
            entry = ExperimentEntry(folder.name, folder, None, f"the folder could not be read ({type(error).__name__}: "
                                    f"{error})", None, [], [], Headline())
        if entry is not None:
            entries.append(entry)
    return entries


def _entry(root: Path, folder: Path) -> ExperimentEntry | None:
    result, error = _read_result(folder / "result.json")
    summary_path = folder / "summary.md"
    summary = summary_path.read_text(encoding="utf-8", errors="replace") if summary_path.is_file() else None
    figures = find_figures(folder)
    if result is None and error is None and summary is None and not figures:
        return None
    return ExperimentEntry(
        name=folder.name, folder=folder, result=result, result_error=error, summary_md=summary,
        figures=[path.relative_to(root) for path in figures],
        missing_figures=_missing(_referenced_figures(result, summary), folder, figures),
        headline=headline_for(folder.name, result),
    )


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1150px;
padding:1em 1.5em;color:#1d1d1f}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:14px}td,th{border:1px solid #ccc;padding:.25em .55em;
text-align:left;vertical-align:top}th{background:#f3f3f3}
.yes{background:#d9f2d9}.partly{background:#fff1c2}.no{background:#f8d4d4}.n\\/a,.na{background:#eee;color:#555}
.figs{display:flex;flex-wrap:wrap;gap:12px}.figs figure{margin:0;max-width:48%}.figs img{max-width:100%;
border:1px solid #ddd}figcaption{font-size:12px;color:#555;word-break:break-all}
.warn{background:#f8d4d4;padding:.4em .7em;border-radius:4px}details{margin:.8em 0}
pre,code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
.md{background:#fafafa;border:1px solid #e5e5e5;padding:.3em 1em;overflow-x:auto}
nav ol{columns:3;margin:.3em 0}.provenance code{word-break:break-all}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(path: Path | str) -> str:
    # Relative links with URL-escaped characters (spaces, '#'), always forward slashes.
    from urllib.parse import quote

    return _e(quote(Path(path).as_posix()))


def render_markdown(text: str, link_base: str | None = None) -> str:
    """A minimal markdown → HTML: headings, pipe tables, bullet lists, paragraphs, `code`, **bold**, _italic_ and
    relative [links](path) (resolved from `link_base`, the folder the markdown sits in, relative to the page)."""

    def _inline(text: str) -> str:
        return _inline_links(text, link_base)

    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 6)  # the page owns h1/h2
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block, _inline))
        elif re.match(r"\s*[-*] ", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*] ", lines[i]):
                item = re.sub(r"^\s*[-*] ", "", lines[i])
                items.append(f"<li>{_inline(item)}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif line.startswith("```"):
            i += 1
            block = []
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            out.append(f"<pre>{_e(chr(10).join(block))}</pre>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#|\s*\||\s*[-*] |```)", lines[i]):
                paragraph.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    return _inline_links(text, None)


# A relative link only: the report fetches nothing, and links stay inside the zipped folder.
_LINK = re.compile(r"\[([^\]]+)\]\(((?![a-zA-Z][a-zA-Z0-9+.-]*:|/)[^)\s]+)\)")


def _inline_links(text: str, link_base: str | None) -> str:
    parts = re.split(r"(`[^`]*`)", text)  # code spans first: nothing inside them is formatted
    rendered = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            rendered.append(f"<code>{_e(part[1:-1])}</code>")
            continue
        part = _e(part)
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![\w])_(.+?)_(?![\w])", r"<em>\1</em>", part)
        part = _LINK.sub(lambda m: f'<a href="{_relink(m.group(2), link_base)}">{m.group(1)}</a>', part)
        rendered.append(part)
    return "".join(rendered)


def _relink(href: str, link_base: str | None) -> str:
    """`href` (already escaped) as seen from the page: joined to `link_base`, `..` resolved."""
    import posixpath

    return posixpath.normpath(posixpath.join(link_base, href)) if link_base else href


def _table(block: Sequence[str], inline: Any = _inline) -> str:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block]
    is_rule = [all(re.fullmatch(r":?-{2,}:?", cell) for cell in row if cell) for row in rows]
    header = rows[0] if len(rows) > 1 and is_rule[1] else None
    body = [row for row, rule in zip(rows, is_rule) if not rule and row is not header]
    parts = ["<table>"]
    if header:
        parts.append("<tr>" + "".join(f"<th>{inline(c)}</th>" for c in header) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in body]
    return "".join(parts) + "</table>"


def _section(entry: ExperimentEntry) -> str:
    name = entry.name
    parts = [f'<h2 id="{_e(name)}">{_e(name)}</h2>']
    links = []
    if (entry.folder / "result.json").exists():
        links.append(f'<a href="{_href(Path(name) / "result.json")}">result.json</a>')
    if entry.summary_md is not None:
        links.append(f'<a href="{_href(Path(name) / "summary.md")}">summary.md</a>')
    browser = entry.result.get("feature_browser") if entry.result else None
    if isinstance(browser, str) and not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|/", browser):  # relative, as written
        links.append(f'<a href="{_e(_relink(browser, name))}/index.html">feature browser</a>')
    if links:
        parts.append("<p>" + " · ".join(links) + "</p>")
    if entry.result_error:
        parts.append(f'<p class="warn">result.json could not be read: {_e(entry.result_error)}</p>')
    elif entry.result is None:
        parts.append('<p class="warn">no result.json: the experiment did not finish here.</p>')
    if entry.headline.problems:
        parts.append('<p class="warn">result.json is malformed here (shown as far as it goes): '
                     + "; ".join(f"<code>{_e(problem)}</code>" for problem in entry.headline.problems) + "</p>")
    if entry.headline.numbers:
        parts.append("<h3>Key numbers</h3><table>" + "".join(
            f"<tr><th>{_e(label)}</th><td>{_e(format_value(value))}</td></tr>"
            for label, value in entry.headline.numbers.items()
        ) + "</table>")
    if entry.headline.claims:
        parts.append("<h3>The seed's claims and ours</h3><table><tr><th>claim</th><th>ours</th><th>agrees</th></tr>")
        for claim in entry.headline.claims:
            css = "na" if claim.agrees == "n/a" else claim.agrees
            parts.append(f'<tr><td>{_e(claim.claim)}</td><td>{_e(claim.ours)}</td>'
                         f'<td class="{css}">{_e(claim.agrees)}</td></tr>')
        parts.append("</table>")
    if entry.missing_figures:
        parts.append('<p class="warn">missing figures (referenced, not on disk): '
                     + ", ".join(f"<code>{_e(m)}</code>" for m in entry.missing_figures) + "</p>")
    if entry.figures:
        parts.append('<h3>Figures</h3><div class="figs">' + "".join(
            f'<figure><a href="{_href(path)}"><img src="{_href(path)}" alt="{_e(path.name)}" loading="eager"></a>'
            f"<figcaption>{_e(path.relative_to(name).as_posix())}</figcaption></figure>"
            for path in entry.figures
        ) + "</div>")
    if entry.summary_md is not None:
        parts.append(f'<details><summary>summary.md</summary><div class="md">{render_markdown(entry.summary_md, name)}'
                     "</div></details>")
    return "\n".join(parts)


def _overview(entries: Sequence[ExperimentEntry]) -> str:
    rows = []
    for entry in entries:
        counts = {v: sum(c.agrees == v for c in entry.headline.claims) for v in VERDICTS}
        status = ("unreadable result.json" if entry.result_error else "no result.json" if entry.result is None
                  else f"{len(entry.figures)} figures" + (f", {len(entry.missing_figures)} missing" if entry.missing_figures else "")
                  + (", malformed headline" if entry.headline.problems else ""))
        rows.append(
            f'<tr><td><a href="#{_e(entry.name)}">{_e(entry.name)}</a></td><td>{_e(status)}</td>'
            + "".join(f'<td class="{"na" if v == "n/a" else v}">{counts[v]}</td>' for v in VERDICTS) + "</tr>"
        )
    header = "<tr><th>experiment</th><th>artifacts</th>" + "".join(f"<th>{v}</th>" for v in VERDICTS) + "</tr>"
    return "<table>" + header + "".join(rows) + "</table>"


def _browsers(browsers: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    items = "".join(f'<li><a href="{_href(Path(folder) / "index.html")}">{_e(folder)}</a>: '
                    f'{_e(meta.get("dictionary", "?"))} ({_e(meta.get("n_atoms", "?"))} features at '
                    f'<code>{_e(meta.get("hook_name", "?"))}</code> of {_e(meta.get("model", "?"))})</li>'
                    for folder, meta in browsers)
    return f'<h2 id="feature-browsers">Feature browsers</h2><ul>{items}</ul>'


def _contents(entries: Sequence[ExperimentEntry], browsers: bool) -> str:
    items = [f'<li><a href="#{_e(entry.name)}">{_e(entry.name)}</a></li>' for entry in entries]
    if browsers:
        items.append('<li><a href="#feature-browsers">Feature browsers</a></li>')
    items.append('<li><a href="#how-this-was-made">How this was made</a></li>')
    return '<nav id="contents"><h2>Contents</h2><ol>' + "".join(items) + "</ol></nav>"


def render_report(entries: Sequence[ExperimentEntry], title: str = "interp: reproduction report",
                  browsers: Sequence[tuple[str, Mapping[str, Any]]] = (), out_dir: str | Path = ".") -> str:
    """The report page; `browsers`: (relative folder, marker meta) of each feature browser built under it;
    `out_dir`: the folder the rerun commands write into."""
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = [f"<h1>{_e(title)}</h1>",
            f"<p>Generated {_e(stamp)} {REPORT_SIGNATURE}. Verdicts are computed from each "
            "<code>result.json</code>: yes / partly / no / n/a (not measured in this run).</p>"]
    if not entries:
        body.append('<p class="warn">No experiment folders found.</p>')
    else:
        body += [_contents(entries, bool(browsers)), _overview(entries)]
    if browsers:
        body.append(_browsers(browsers))
    body += [_section(entry) for entry in entries]
    if entries:
        body.append(provenance_html([(entry.name, (entry.result or {}).get("provenance"), (entry.result or {}).get("config"))
                                     for entry in entries], out_dir))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# Every report says so in its first lines; an index.html without it is someone else's and is never replaced.
REPORT_SIGNATURE = "by <code>interp reproduce</code>"


def check_report_target(out_dir: str | Path) -> None:
    """Raise unless `out_dir/index.html` is absent or a report this module wrote."""
    page = Path(out_dir) / "index.html"
    if page.exists() and (not page.is_file() or REPORT_SIGNATURE not in page.read_text(errors="replace")):
        raise ValueError(f"--out: {page} exists and is not an interp report; choose another --out, or move it away")


def write_report(out_dir: str | Path) -> Path:
    """Write (or refresh) `out_dir/index.html` atomically from every experiment folder in `out_dir`.

    An `index.html` there that is not an interp report is refused (ValueError), never replaced."""
    root = Path(out_dir)
    check_report_target(root)
    from interp.browser.links import browser_meta, find_browsers

    browsers = [(folder.relative_to(root).as_posix(), browser_meta(folder) or {}) for folder in find_browsers(root)
                if folder != root]
    return atomic_write_text(root / "index.html", render_report(collect(root), browsers=browsers, out_dir=root))


def headline_markdown(name: str, result: dict[str, Any]) -> str:
    """An experiment's key numbers and claim verdicts as markdown tables (for notebooks and terminals)."""
    headline = headline_for(name, result)

    def cell(value: Any) -> str:
        return format_value(value).replace("|", "\\|")

    lines = ["| key number | value |", "|---|---|"]
    lines += [f"| {cell(label)} | {cell(value)} |" for label, value in headline.numbers.items()]
    if headline.claims:
        lines += ["", "| the seed's claim | ours | agrees |", "|---|---|---|"]
        lines += [f"| {cell(c.claim)} | {cell(c.ours)} | **{c.agrees}** |" for c in headline.claims]
    if headline.problems:
        lines += ["", "Malformed in result.json (shown as far as it goes): " + "; ".join(headline.problems)]
    return "\n".join(lines)
