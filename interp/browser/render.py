"""HTML from the browser's data: a dumb step that formats what `interp.browser.data` computed.

Pages use one shared `style.css` (relative link) and no script; the index carries one small inline script
(search and sort). Nothing is fetched from the network. Every token of a context is an `<i>` whose
background alpha is its activation over the feature's max activation, with the value as its title.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:.8em 1.4em;color:#1d1d1f}
h1{margin:.3em 0 .1em}h2{border-bottom:2px solid #ddd;padding-bottom:.15em;margin-top:1.6em;font-size:1.15em}
h3{font-size:1em;margin:.9em 0 .3em;color:#444}nav{font-size:13px}.sub{color:#555;margin:0 0 .6em}
table{border-collapse:collapse;margin:.4em 0;font-size:13px}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left}
th{background:#f3f3f3}th[data-k]{cursor:pointer}td.n{text-align:right;font-variant-numeric:tabular-nums}
.flag{font-size:12px;padding:.05em .45em;border-radius:3px;margin-left:.3em;vertical-align:middle}
.dead{background:#eee;color:#666}.dense{background:#f8d4d4;color:#900}
.ctx{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;white-space:pre-wrap;margin:.15em 0;
display:flex;gap:.6em}.ctx .v{color:#666;min-width:4.5em;text-align:right;flex:none}
.toks i{font-style:normal;border-radius:2px;background:rgba(255,119,0,var(--a,0))}.toks i.m{outline:1px solid #333}.note{background:#fff6d8;padding:.4em .7em;border-radius:4px}
.cols{display:flex;gap:2em;flex-wrap:wrap}.tok{font-family:ui-monospace,Menlo,monospace;white-space:pre}
td.tok{white-space:pre-wrap}svg text{font-size:11px;fill:#555}svg rect{fill:#f59b42}#q{font-size:15px;padding:.25em .5em;width:22em}
.small{font-size:12px;color:#666}
"""

_INDEX_SCRIPT = """<script>
const q=document.getElementById("q"),n=document.getElementById("shown"),body=document.querySelector("#features tbody");
const rows=Array.from(body.rows);
q.addEventListener("input",()=>{const t=q.value.trim().toLowerCase();let c=0;
for(const r of rows){const hide=t!==""&&r.dataset.f!==t&&!r.dataset.s.includes(t);r.hidden=hide;if(!hide)c++;}
n.textContent=c;});
document.querySelectorAll("th[data-k]").forEach((th)=>th.addEventListener("click",()=>{const k=th.dataset.k;
const up=th.dataset.dir==="desc";th.dataset.dir=up?"asc":"desc";
rows.sort((a,b)=>(parseFloat(a.dataset[k])-parseFloat(b.dataset[k]))*(up?1:-1));rows.forEach((r)=>body.appendChild(r));}));
</script>"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _shown(token: str) -> str:
    """A token as text in a line of context: newlines and tabs visible."""
    return token.replace("\r", "").replace("\n", "⏎").replace("\t", "→")


def _number(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.4g}" if 1e-3 <= abs(value) < 1e5 else f"{value:.2e}"


def _percent(value: float) -> str:
    return f"{100 * value:.3g}%"


def context_html(context: dict[str, Any], peak: float) -> str:
    """One context: its value, then every token shaded by activation / `peak` (the stylesheet turns `--a` into the
    background's alpha), the value on hover. Short tags: a site holds millions of them."""
    scale = 1.0 / peak if peak > 0 else 0.0
    spans = []
    for index, (token, act) in enumerate(zip(context["tokens"], context["acts"])):
        css = ' class="m"' if index == context["center"] else ""
        shade = f' style="--a:{min(1.0, act * scale):.3f}"' if act > 0 else ""
        spans.append(f'<i{css}{shade} title="{_number(act)}">{_e(_shown(token))}</i>')
    return (f'<div class="ctx" data-doc="{context["doc"]}" data-pos="{context["position"]}" '
            f'data-value="{context["value"]!r}"><span class="v">{_number(context["value"])}</span>'
            f'<span class="toks">{"".join(spans)}</span></div>')


def _feature_link(feature: int, page: bool, width: int, label: str | None = None) -> str:
    text = _e(label if label is not None else feature)
    return f'<a href="{feature:0{width}d}.html">{text}</a>' if page else text


def _histogram_svg(histogram: dict[str, Any]) -> str:
    counts = histogram["counts"]
    if not counts:
        return '<p class="small">never active</p>'
    width, height = 560, 110
    step = width / len(counts)
    top = max(counts)
    bars = "".join(
        f'<rect x="{i * step:.1f}" y="{height - count / top * height:.1f}" width="{max(step - 1, 0.5):.1f}" '
        f'height="{count / top * height:.1f}"><title>{count}</title></rect>'
        for i, count in enumerate(counts) if count
    )
    high = histogram["high"]
    return (f'<svg width="{width}" height="{height + 16}" role="img" aria-label="histogram of non-zero activations">'
            f'{bars}<text x="0" y="{height + 13}">{_number(histogram["low"])}</text>'
            f'<text x="{width}" y="{height + 13}" text-anchor="end">{"∞" if math.isinf(high) else _number(high)}</text>'
            "</svg><p class=\"small\">Non-zero activations in log-spaced bins (count on hover).</p>")


def _token_table(title: str, rows: Sequence[tuple[str, float]]) -> str:
    body = "".join(f'<tr><td class="tok">{_e(_shown(t))}</td><td class="n">{v:+.3f}</td></tr>' for t, v in rows)
    return f"<div><h3>{_e(title)}</h3><table>{body}</table></div>"


def _place(meta: dict[str, Any]) -> str:
    """Where the dictionary reads (and, for a transcoder, where it writes)."""
    kind, read, write = meta.get("kind", "SAE"), meta["hook_name"], meta.get("write_hook") or meta["hook_name"]
    where = f"reads <code>{_e(read)}</code>" + (f", writes <code>{_e(write)}</code>" if write != read else "")
    return f"{_e(kind)} · {where}"


def _header(view: dict[str, Any], width: int) -> list[str]:
    meta, feature = view["meta"], view["feature"]
    flags = "".join(f'<span class="flag {f}">{f}</span>' for f in view["flags"])
    nav = ['<a href="../index.html">all features</a>']
    if view["previous"] is not None:
        nav.append(_feature_link(view["previous"], True, width, f"← {view['previous']}"))
    if view["next"] is not None:
        nav.append(_feature_link(view["next"], True, width, f"{view['next']} →"))
    parts = [f"<nav>{' · '.join(nav)}</nav>", f"<h1>Feature {feature}{flags}</h1>",
             f'<p class="sub">{_e(meta["model"])} · {_place(meta)} · {_e(meta["dictionary"])} '
             f'({meta["n_atoms"]:,} features)</p>']
    if view["harvested"]:
        parts.append(
            "<table><tr><th>density</th><th>fired</th><th>max activation</th><th>mean when active</th></tr>"
            f'<tr><td class="n">{_percent(view["density"])}</td><td class="n">{view["fired"]:,} of '
            f'{view["n_tokens"]:,} tokens</td><td class="n">{_number(view["max"])}</td>'
            f'<td class="n">{_number(view["mean"])}</td></tr></table>')
    else:
        parts.append('<p class="note">This dictionary has no encoder (a raw decoder): nothing fires on a corpus, so '
                     "this page shows only what the weights say (logit effects, nearest features, and the explanation "
                     "and steering preview when they were asked for).</p>")
    return parts


def _activations(view: dict[str, Any]) -> list[str]:
    peak = view["max"]
    parts = ['<section id="top"><h2>Top activations</h2>']
    parts += [context_html(c, peak) for c in view["top"]] or ['<p class="small">never active on this corpus</p>']
    parts.append("</section>")
    if view["top"]:
        parts.append('<section id="intervals"><h2>Activation intervals</h2><p class="small">Random firings in each '
                     "interval of the max activation (the top ones above left out), and the share of all firings "
                     "there.</p>")
        for row in view["intervals"]:
            parts.append(f'<h3>{100 * row["low"]:.0f}–{100 * row["high"]:.0f}% of max · {_percent(row["share"])} '
                         "of firings</h3>")
            empty = f"{row['in_top']} of them among the top activations above" if row["in_top"] else "no sampled firing"
            parts += [context_html(c, peak) for c in row["contexts"]] or [f'<p class="small">{empty}</p>']
        parts.append("</section>")
    parts.append(f'<section id="histogram"><h2>Activation histogram</h2>{_histogram_svg(view["histogram"])}</section>')
    return parts


def _weights(view: dict[str, Any], width: int) -> list[str]:
    parts = []
    if view["promoted"]:
        parts.append('<section id="logits"><h2>Logit effects</h2><p class="small">The decoder row through the final '
                     "norm and the unembedding (the direct path; minus a zero vector's logits).</p><div class=\"cols\">"
                     f'{_token_table("promoted", view["promoted"])}{_token_table("suppressed", view["suppressed"])}'
                     "</div></section>")
    neighbours = ", ".join(f'{_feature_link(n["feature"], n["page"], width)} ({n["cosine"]:.3f})'
                           for n in view["neighbours"])
    parts.append(f'<section id="neighbours"><h2>Nearest features</h2><p class="small">By decoder cosine.</p>'
                 f"<p>{neighbours}</p></section>")
    if view.get("coactive"):
        partners = ", ".join(f'{_feature_link(c["feature"], c["page"], width)} ({_percent(c["share"])})'
                             for c in view["coactive"])
        parts.append('<section id="coactive"><h2>Co-occurring features</h2><p class="small">Active at the same token, '
                     f"share of this feature's kept firings (top and sampled).</p><p>{partners}</p></section>")
    return parts


def _requested(view: dict[str, Any]) -> list[str]:
    parts = []
    explanation = view["explanation"]
    if explanation:
        rows = "".join(f'<tr><td class="n">{r["scale"]:g}{" ★" if r["scale"] == explanation["best_scale"] else ""}</td>'
                       f'<td class="n">{r["self_similarity"]:.3f}</td><td class="n">{r["entropy"]:.2f}</td>'
                       f'<td>{_e(r["text"])}</td></tr>' for r in explanation["rows"])
        parts.append(f'<section id="explanation"><h2>Self-explanation</h2><p><b>{_e(explanation["text"])}</b></p>'
                     "<table><tr><th>scale</th><th>self-sim</th><th>entropy</th><th>explanation</th></tr>"
                     f"{rows}</table></section>")
    steering = view["steering"]
    if steering:
        head = "".join(f"<th>{_e(p)}</th>" for p in steering["prompts"])
        body = "<tr><td>unsteered</td>" + "".join(f"<td>{_e(t)}</td>" for t in steering["unsteered"]) + "</tr>"
        body += "".join(f'<tr><td class="n">+{s:g}×</td>' + "".join(f"<td>{_e(t)}</td>" for t in texts) + "</tr>"
                        for s, texts in zip(steering["scales"], steering["rows"]))
        parts.append('<section id="steering"><h2>Steering preview</h2><p class="small">Greedy completions with the unit '
                     "decoder row added at every position, at multiples of the residual norm.</p>"
                     f"<table><tr><th>scale</th>{head}</tr>{body}</table></section>")
    return parts


def _page(title: str, body: Sequence[str], stylesheet: str, script: str = "") -> str:
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width"><title>{_e(title)}</title><link rel="stylesheet" href="{stylesheet}">'
            "</head><body>\n" + "\n".join(body) + script + "\n</body></html>\n")


def render_feature(view: dict[str, Any], width: int) -> str:
    """One feature's page (it lives in `features/`, beside its neighbours' pages)."""
    body = _header(view, width)
    if view["harvested"]:
        body = [f'<div id="page" data-feature="{view["feature"]}" data-max="{view["max"]!r}">', *body]
    else:
        body = [f'<div id="page" data-feature="{view["feature"]}">', *body]
    body += _requested(view)
    if view["harvested"]:
        body += _activations(view)
    body += _weights(view, width)
    body.append("</div>")
    meta = view["meta"]
    return _page(f"Feature {view['feature']} · {meta['model']} {meta['hook_name']}", body, "../style.css")


def render_index(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The list of every page: sortable by density and activation, searchable by token or word."""
    harvested = meta.get("harvested", False)
    counts = {flag: sum(flag in row["flags"] for row in rows) for flag in ("dead", "dense")}
    corpus = meta.get("corpus") or {}
    summary = [f"<h1>Features of {_e(meta['dictionary'])}</h1>",
               f'<p class="sub">{_e(meta["model"])} · {_place(meta)} · {len(rows):,} of {meta["n_atoms"]:,} features · '
               f'built {_e(meta["created"])} by <code>interp features</code></p>']
    if harvested:
        summary.append(f'<p>Corpus: {_e(_corpus_label(corpus))}, {meta["n_tokens"]:,} tokens scored in '
                       f'{meta["n_docs"]:,} texts. {counts["dead"]:,} dead (never active), {counts["dense"]:,} dense '
                       f'(active on more than {_percent(meta["dense_threshold"])} of tokens).</p>')
    else:
        summary.append('<p class="note">A raw decoder (no encoder): weight-based parts only.</p>')
    summary.append('<p><input id="q" type="search" placeholder="search a token or a word, or a feature number" '
                   f'aria-label="search"> <span id="shown">{len(rows)}</span> shown</p>')
    head = ['<th data-k="f">feature</th>']
    if harvested:
        head += ['<th data-k="d">density</th>', '<th data-k="m">max act</th>', '<th data-k="a">mean act</th>',
                 "<th>top tokens</th>"]
    head += ["<th>promotes</th>", "<th>explanation</th>", "<th>flags</th>"]
    body = []
    for row in rows:
        cells = [f'<td><a href="features/{row["page"]}">{row["feature"]}</a></td>']
        data = f'data-f="{row["feature"]}"'
        if harvested:
            data += f' data-d="{row["density"]!r}" data-m="{row["max"]!r}" data-a="{row["mean"]!r}"'
            cells += [f'<td class="n">{_percent(row["density"])}</td>', f'<td class="n">{_number(row["max"])}</td>',
                      f'<td class="n">{_number(row["mean"])}</td>',
                      f'<td class="tok">{_e(" · ".join(_shown(t) for t in row["top_tokens"][:4]))}</td>']
        cells += [f'<td class="tok">{_e(" · ".join(_shown(t) for t in row["promoted"]))}</td>',
                  f"<td>{_e(row['explanation'])}</td>",
                  "<td>" + "".join(f'<span class="flag {f}">{f}</span>' for f in row["flags"]) + "</td>"]
        body.append(f'<tr {data} data-s="{_e(row["search"])}">{"".join(cells)}</tr>')
    table = (f'<table id="features"><thead><tr>{"".join(head)}</tr></thead><tbody>\n' + "\n".join(body)
             + "\n</tbody></table>")
    return _page(f"Features · {meta['model']} {meta['hook_name']}", [*summary, table], "style.css", _INDEX_SCRIPT)


def _corpus_label(corpus: dict[str, Any]) -> str:
    if corpus.get("kind") == "texts":
        return f"{corpus.get('n_texts', 0):,} texts passed in"
    if corpus.get("kind") == "shards":
        return f"activation shards {corpus.get('path')}"
    return str(corpus.get("path", "?"))
