"""What a report or a comparison is made of — paragraphs, bullet lists, tables and charts in titled sections — and
its plain-text and markdown rendering (HTML: html.py); plus the Run (one results file as read) that the builders
(writeup.py, compare.py) take, and the number formats they share, so every format shows the same digits."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .charts import Chart, text_chart
from .cost import Cost, usd

if TYPE_CHECKING:
    from ..engine.knee import Knee
    from ..engine.result import LevelResult


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Heading:
    """A sub-heading inside a section ("Latency trend" under "Analysis")."""

    text: str


Block = str | Heading | Bullets | Table | Chart  # a str is a paragraph


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def key(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")


@dataclass
class Document:
    title: str
    banner: str = ""  # shown above everything (a SIMULATED warning)
    sections: list[Section] = field(default_factory=list)


@dataclass
class Run:
    """One results file as read: its top-level object, its levels by concurrency, and the verdict."""

    path: str
    doc: dict[str, Any]
    levels: list[LevelResult]
    knee: Knee
    label: str = ""  # how tables and legends name it (the file name, made unique by the caller)

    def __post_init__(self) -> None:
        self.label = self.label or Path(self.path).name
        if self.rate_axis:  # a rate ladder measures out of order (bisection comes back down): read by rate
            self.levels = sorted(self.levels, key=lambda lv: lv.request_rate or 0.0)

    @property
    def tool(self) -> str:
        return str(self.doc.get("tool") or "qbench-tui")

    @property
    def simulated(self) -> bool:
        return bool(self.doc.get("simulated"))

    @property
    def rate_axis(self) -> bool:
        """Its levels read along the offered request rate (an open-loop sweep), not the concurrency."""
        return self.knee.rate_axis or (bool(self.levels) and all(lv.request_rate for lv in self.levels))

    def x(self, lv: LevelResult) -> float | int | None:
        """A level's place on the run's axis: its offered rate (req/s) or its concurrency."""
        return lv.request_rate if self.rate_axis else lv.max_concurrency

    def name(self, x: float | int | None) -> str:
        """A level as the text names it: "4 req/s" or "C=4"."""
        return ("-" if x is None else f"{x:g} req/s") if self.rate_axis else f"C={x}"

    def level(self, c: float | int | None) -> LevelResult | None:
        """The level at `c` on the run's axis (a rate run: its offered rate)."""
        if c is None:
            return None
        return next((lv for lv in self.levels if self.x(lv) is not None and abs(self.x(lv) - c) < 1e-9), None)


def lat(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f} s" if v >= 1 else f"{v * 1000:.0f} ms" if v >= 0.1 else f"{v * 1000:.1f} ms"


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def rel(a: float | None, b: float | None) -> str:
    return "-" if not a or b is None else f"{b / a - 1:+.0%}"


def num(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def tok(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


# -- rendering: plain text and markdown --------------------------------------------------------------------------

def _text_table(t: Table) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in t.rows)) if t.rows else len(h) for i, h in enumerate(t.headers)]
    # the first column names the row (a level, a metric): read left-aligned; numbers line up on the right
    line = lambda cells: " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                    for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(t.headers), "-+-".join("-" * w for w in widths), *(line(r) for r in t.rows)]


def _md_cell(c: str) -> str:
    return c.replace("|", "\\|").replace("\n", " ")


def _wrap(text: str, width: int, **kw) -> list[str]:
    # never inside a word: flags (--max-num-seqs), paths and numbers stay whole, so they can be copied
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False, **kw)


def _block(b: Block, markdown: bool, width: int) -> list[str]:
    if isinstance(b, Heading):
        return [f"### {b.text}"] if markdown else [b.text, "~" * len(b.text)]
    if isinstance(b, str):
        return [b] if markdown else _wrap(b, width)
    if isinstance(b, Bullets):
        if markdown:
            return [f"- {item}" for item in b.items]
        return [ln for item in b.items for ln in _wrap(item, width, initial_indent="- ", subsequent_indent="  ")]
    if isinstance(b, Table):
        if not markdown:
            return _text_table(b)
        return ["| " + " | ".join(_md_cell(h) for h in b.headers) + " |",
                "|" + "|".join("---:" if i else "---" for i in range(len(b.headers))) + "|",
                *("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows)]
    chart = text_chart(b, width=min(width, 100))
    out = ["```text", chart, "```"] if markdown else [chart]
    if b.caption:
        out += ["", f"*{b.caption}*"] if markdown else _wrap(b.caption, width)
    return out


def render_text(doc: Document, markdown: bool = False, width: int = 100) -> str:
    """The document as plain text (`--format txt`, the terminal) or GitHub-flavoured markdown."""
    if markdown:
        out = [f"# {doc.title}", ""] + ([f"> **{doc.banner}**", ""] if doc.banner else [])
    else:
        out = [doc.title, "=" * min(width, len(doc.title))] + ([f"*** {doc.banner} ***"] if doc.banner else [])
    for sec in doc.sections:
        if out[-1] != "":
            out.append("")
        out += [f"## {sec.title}", ""] if markdown else [sec.title, "-" * len(sec.title)]
        for b in sec.blocks:
            out += _block(b, markdown, width)
            if markdown or not isinstance(b, Heading):
                out.append("")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def usd_per_m(cost: Cost | None, tok_s: float | None) -> str:
    return usd(cost.per_million(tok_s)) if cost else "-"
