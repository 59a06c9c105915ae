"""Charts against concurrency for reports: what to draw (Chart, Series, Mark) and two ways to draw it — plotext text
for the terminal and markdown, matplotlib's SVG backend for HTML (vector, inline, no script and no network).

A Chart holds data only; the builder (writeup.py, compare.py) decides which series and marks it has, so a chart
shows the same numbers as the tables beside it.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field

TEXT_MARKERS = ("•", "+", "*", "o", "x", "~", "^", "=")  # one per series: text has no colour to tell them apart
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_X_SPAN = 16  # levels spanning 16x or more (a doubling ladder) read better on a log axis


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    xs: tuple[float, ...]
    ys: tuple[float | None, ...]  # None: no value at that level (not drawn)
    dashed: bool = False
    group: str = ""  # series of one run share a colour (its p50 solid, its p99 dashed); "" = its own

    def points(self) -> list[tuple[float, float]]:
        return [(x, y) for x, y in zip(self.xs, self.ys) if y is not None and math.isfinite(y)]


@dataclass(frozen=True, slots=True)
class Mark:
    """A point worth naming on the chart: the knee, drawn with a vertical line through it."""

    label: str
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    ylabel: str
    series: tuple[Series, ...]
    marks: tuple[Mark, ...] = ()
    xlabel: str = "concurrency"
    caption: str = ""  # one sentence under the chart: what to read from it
    key: str = field(default="chart")  # a stable id ("throughput", "latency") for HTML anchors and tests

    def xs(self) -> list[float]:
        return sorted({x for s in self.series for x, _ in s.points()})

    def log_x(self) -> bool:
        xs = [x for x in self.xs() if x > 0]
        return len(xs) > 2 and max(xs) / min(xs) >= LOG_X_SPAN

    def empty(self) -> bool:
        return not any(s.points() for s in self.series)


def _ticks(xs: list[float], most: int) -> list[float]:
    """At most `most` of the levels themselves as x ticks, spread evenly, first and last kept."""
    if len(xs) <= most:
        return xs
    step = (len(xs) - 1) / (most - 1)
    return sorted({xs[round(i * step)] for i in range(most)})


def _label(x: float) -> str:
    return f"{x:g}"


def text_chart(chart: Chart, width: int = 90, height: int = 16) -> str:
    """The chart as plain text (no ANSI colour: it goes into files and markdown fences too)."""
    if chart.empty():
        return f"{chart.title}: no data to draw"
    from plotext._figure import _figure_class  # a figure of its own: plotext's module-level one is shared state

    fig = _figure_class()
    fig.theme("clear")
    fig.plotsize(width, height)
    log = chart.log_x()
    if log:
        fig.xscale("log")
    for i, s in enumerate(chart.series):
        pts = s.points()
        if pts:
            fig.plot([x for x, _ in pts], [y for _, y in pts], label=s.label,
                     marker=TEXT_MARKERS[i % len(TEXT_MARKERS)])
    for m in chart.marks:
        fig.vline(m.x)
        fig.scatter([m.x], [m.y], label=m.label, marker="K")
    xs = _ticks(chart.xs(), max(2, width // 8))
    fig.xticks(xs, [_label(x) for x in xs])
    fig.title(chart.title)
    fig.xlabel(chart.xlabel + (" (log scale)" if log else ""))
    fig.ylabel(chart.ylabel)
    return "\n".join(line.rstrip() for line in _ANSI.sub("", fig.build()).splitlines())


# a palette that stays apart for colour-blind readers (Okabe-Ito), in series order
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def svg_chart(chart: Chart, width_in: float = 7.5, height_in: float = 3.6) -> str:
    """The chart as one inline <svg> element (text kept as text, so it is searchable and small)."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "qbench", "font.size": 9}):
        fig = Figure(figsize=(width_in, height_in))
        FigureCanvasSVG(fig)
        ax = fig.add_subplot()
        colour = {}
        for i, s in enumerate(chart.series):
            pts = s.points()
            c = colour.setdefault(s.group or s.label, _COLOURS[len(colour) % len(_COLOURS)])
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", markersize=3.5, label=s.label,
                        color=c, linestyle="--" if s.dashed else "-", linewidth=1.6, gid=f"series-{i}")
        for j, m in enumerate(chart.marks):
            ax.axvline(m.x, color="#777777", linestyle=":", linewidth=1, gid=f"mark-line-{j}")
            ax.plot([m.x], [m.y], marker="D", markersize=7, color="#000000", linestyle="none", label=m.label,
                    gid=f"mark-{j}")
            ax.annotate(m.label, (m.x, m.y), textcoords="offset points", xytext=(6, -12), fontsize=8)
        if chart.log_x():
            ax.set_xscale("log", base=2)
        xs = chart.xs()
        ax.set_xticks(xs, [_label(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(chart.xlabel)
        ax.set_ylabel(chart.ylabel)
        ax.set_title(chart.title)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    start = text.find("<svg")
    svg = text[start:]
    # an id per chart, so a page with several charts (and a test) can tell them apart
    return svg.replace("<svg ", f'<svg id="chart-{chart.key}" role="img" aria-label="{_attr(chart.title)}" ', 1)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
