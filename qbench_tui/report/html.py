"""A report or comparison as ONE self-contained HTML file: styles inline, charts inline SVG (charts.svg_chart), no
script, no font, image or stylesheet fetched from anywhere — it opens the same offline, from a mail attachment or a
CI artifact, years later."""
from __future__ import annotations

import html
import re

from .charts import Chart, svg_chart
from .document import Bullets, Document, Heading, Table

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.6em 0 1em;font-variant-numeric:tabular-nums;font-size:.92em}
th,td{border:1px solid #d0d0d0;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;font-weight:600}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
footer{margin-top:3em;color:#777;font-size:.85em}
"""
_CODE = re.compile(r"`([^`]+)`")


def _text(s: str) -> str:
    """Escaped, with `backticks` as <code> (the sentences quote commands that way in every format)."""
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(s, quote=False))


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    rows = "".join("<tr>" + "".join(f"<td>{_text(c)}</td>" for c in r) + "</tr>" for r in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _chart(c: Chart) -> str:
    if c.empty():
        return f"<p>{_text(c.title)}: no data to draw.</p>"
    cap = f"<figcaption>{_text(c.caption)}</figcaption>" if c.caption else ""
    return f'<figure class="chart" data-chart="{html.escape(c.key)}">{svg_chart(c)}{cap}</figure>'


def render_html(doc: Document) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width,initial-scale=1">',
           f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(doc.title)}</h1>"]
    if doc.banner:
        out.append(f'<p class="banner">{html.escape(doc.banner)}</p>')
    for sec in doc.sections:
        out.append(f'<section id="{sec.key}"><h2>{html.escape(sec.title)}</h2>')
        for b in sec.blocks:
            if isinstance(b, Heading):
                out.append(f"<h3>{html.escape(b.text)}</h3>")
            elif isinstance(b, str):
                out.append(f"<p>{_text(b)}</p>")
            elif isinstance(b, Bullets):
                out.append("<ul>" + "".join(f"<li>{_text(i)}</li>" for i in b.items) + "</ul>")
            elif isinstance(b, Table):
                out.append(_table(b))
            elif isinstance(b, Chart):
                out.append(_chart(b))
        out.append("</section>")
    from .. import __version__

    out.append(f"<footer>Written by qbench-tui {html.escape(__version__)} from the results file(s) named above; "
               "every number and sentence is computed from them.</footer></body></html>")
    return "\n".join(out) + "\n"
