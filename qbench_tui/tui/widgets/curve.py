"""The saturation view: throughput and latency against concurrency, one point per measured level, the knee marked,
the verdict, its cause and the two recommendations in words.

Points come from Snapshot.curve (the current server config's levels, ladder and hand-made alike) and the words from
Snapshot.verdict. x is log2(concurrency), because a ladder doubles: equal steps stay equally wide, and the
refinement points between two rungs fall between them.
"""
from __future__ import annotations

import math
from collections.abc import Hashable

from textual.app import ComposeResult
from textual.containers import Container, Vertical
from textual.markup import escape

from qbench_tui.engine.knee import Knee
from qbench_tui.engine.snapshot import CurvePoint, Snapshot
from qbench_tui.tui.widgets.charts import Chart
from qbench_tui.tui.widgets.fmt import dur_short, ladder_words, num
from qbench_tui.tui.widgets.panels import Field

MARK_HAND, MARK_LADDER, MARK_UNSTEADY = "●", "◆", "○"
TOK_COLOUR, P50_COLOUR, P99_COLOUR, KNEE_COLOUR, UNSTEADY_COLOUR = "primary", "secondary", "accent", "warning", "error"
Y_AXIS_COLUMNS = 7  # what plotext's y tick labels and the frame take from a chart's width


def marker(p: CurvePoint) -> str:
    return MARK_UNSTEADY if not p.steady else MARK_LADDER if p.auto else MARK_HAND


def thin_ticks(levels: list[int], columns: int) -> list[int]:
    """The levels whose labels fit on an axis `columns` wide (log2 spaced), keeping the first and the last:
    refinement puts levels close together (32, 40, 48), and overlapping labels read as one wrong number."""
    if not levels:
        return []
    lo, hi = math.log2(levels[0]), math.log2(levels[-1])
    span = max(hi - lo, 1e-9)

    def col(c: int) -> float:
        return (math.log2(c) - lo) / span * columns

    kept: list[int] = []
    for c in levels:
        if kept and col(c) - col(kept[-1]) < len(str(kept[-1])) / 2 + len(str(c)) / 2 + 1:
            if c != levels[-1]:
                continue
            kept.pop()  # the last level always shows: it is where the ladder is now
        kept.append(c)
    return kept


def _point(curve: tuple[CurvePoint, ...], c: int | None) -> CurvePoint | None:
    return next((p for p in curve if p.concurrency == c), None)


def _advice(label: str, c: int | None, curve: tuple[CurvePoint, ...]) -> str:
    if c is None:
        return ""
    p = _point(curve, c)
    # short enough for both on one 78-column row (80x24)
    nums = f" {num(p.tok_s)} tok/s p99 {dur_short(p.e2el_p99)}" if p is not None else ""
    return f"{label} [b]C={c}[/]{nums}"


def verdict_lines(curve: tuple[CurvePoint, ...], verdict: Knee | None,
                  auto: str = "") -> tuple[str, str, str, str]:
    """(verdict, cause, interactive, batch) as markup; empty strings where there is nothing to say yet."""
    if not curve:
        if auto:
            return ("[$text-muted]the ladder's first level is settling: a point shows once it is measured[/]",
                    "", "", "")
        return ("[$text-muted]no level measured yet: [b]a[/b] runs the auto ladder, or set levels by hand[/]",
                "", "", "")
    if verdict is None:
        if len(curve) > 1:
            return (f"{len(curve)} levels measured: the verdict comes with the next refresh", "", "", "")
        p = curve[0]
        return (f"one level measured (C={p.concurrency}: {num(p.tok_s)} tok/s): a second one shows the trend",
                "", "", "")
    peak = (f"peak [b]{num(verdict.peak_output_throughput)}[/] tok/s at C={verdict.peak_concurrency}"
            if verdict.peak_concurrency is not None else "")
    if verdict.saturated:
        head = f"[b $warning]SATURATED[/] past [b]C={verdict.knee_concurrency}[/] · {peak}"
        cause = f"why: {escape(verdict.cause or 'not named')}"
    else:
        top = max(p.concurrency for p in curve)
        head = f"[b $success]not saturated[/] up to C={top} · {peak}"
        cause = "[$text-muted]throughput still grows with load: try higher levels[/]"
    inter_label = "interactive (SLO)" if verdict.slo and verdict.goodput_concurrency is not None else "interactive"
    inter = _advice(inter_label, verdict.interactive_concurrency, curve)
    if verdict.slo and verdict.interactive_concurrency is None:
        inter = f"interactive: [b $error]no level met the SLO[/] ({escape(verdict.slo)})"
    return head, cause, inter, _advice("batch", verdict.batch_concurrency, curve)


def tooltip(verdict: Knee | None) -> str:
    if verdict is None:
        return ""
    parts = [verdict.summary]
    parts += verdict.advice()
    return "\n\n".join(x for x in parts if x)


class CurveChart(Chart):
    """One chart against log2(concurrency): `kind` "tok" (output tok/s) or "lat" (E2E latency p50 and p99)."""

    def __init__(self, kind: str, **kw) -> None:
        super().__init__(**kw)
        self.kind = kind
        self._curve: tuple[CurvePoint, ...] = ()
        self._knee: int | None = None

    def set_data(self, curve: tuple[CurvePoint, ...], knee: int | None) -> None:
        # by concurrency, so the line joins neighbours whatever order the levels were visited in
        self._curve, self._knee = tuple(sorted(curve, key=lambda p: p.concurrency)), knee

    def key(self) -> Hashable:
        return (self._curve, self._knee) if self._curve else None

    def series(self) -> list[tuple[str, list[float | None]]]:
        if self.kind == "tok":
            return [(TOK_COLOUR, [p.tok_s for p in self._curve])]
        return [(P50_COLOUR, [p.e2el_p50 for p in self._curve]), (P99_COLOUR, [p.e2el_p99 for p in self._curve])]

    def plot(self) -> None:
        plt = self.plt
        pts = self._curve
        levels = [max(1, p.concurrency) for p in pts]
        xs = [math.log2(c) for c in levels]
        top = 0.0
        for colour, ys in self.series():
            rgb = self.rgb(colour)
            line = [(x, y) for x, y in zip(xs, ys) if y is not None]
            if len(line) > 1:
                plt.plot([x for x, _ in line], [y for _, y in line], marker="braille", color=rgb)
            for p, x, y in zip(pts, xs, ys):
                if y is not None:
                    plt.scatter([x], [y], marker=marker(p), color=self.rgb(UNSTEADY_COLOUR) if not p.steady else rgb)
                    top = max(top, y)
        if self._knee is not None and self._knee >= 1:
            plt.vline(math.log2(self._knee), color=self.rgb(KNEE_COLOUR))
        pad = 0.35 if len(xs) > 1 and xs[-1] > xs[0] else 1.0
        plt.xlim(xs[0] - pad, xs[-1] + pad)
        ticks = thin_ticks(levels, max(4, self.size.width - Y_AXIS_COLUMNS))
        plt.xticks([math.log2(c) for c in ticks], [str(c) for c in ticks])
        top = top or 1.0
        plt.ylim(0, top * 1.15)
        fracs = self.tick_fractions()
        label = num if self.kind == "tok" else dur_short
        plt.yticks([top * f for f in fracs], [label(top * f) if f else "0" for f in fracs])


class CurvePanel(Vertical):
    """The verdict in words over the two charts. Text follows every snapshot; the charts replot through their
    own <= 1 Hz gate, and only when a point, the knee or the size changed."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.border_title = "Saturation · vs concurrency"

    def compose(self) -> ComposeResult:
        yield Field("", classes="curve-verdict")
        yield Field("", classes="curve-advice")
        with Container(classes="curve-charts"):
            with Vertical(classes="curve-block"):
                yield Field(f"[${TOK_COLOUR}]━[/] tok/s  {MARK_HAND} by hand {MARK_LADDER} ladder "
                            f"[${UNSTEADY_COLOUR}]{MARK_UNSTEADY}[/] unsteady", classes="curve-legend")
                yield CurveChart("tok", classes="curve-tok")
            with Vertical(classes="curve-block"):
                yield Field(f"E2E latency [${P50_COLOUR}]━[/] p50 [${P99_COLOUR}]━[/] p99  [${KNEE_COLOUR}]┃[/] knee",
                            classes="curve-legend")
                yield CurveChart("lat", classes="curve-lat")

    def show(self, snap: Snapshot, now: float) -> None:
        self.border_title = (f"Saturation · ladder: {escape(ladder_words(snap.auto))}" if snap.auto
                             else "Saturation · vs concurrency")
        head, cause, inter, batch = verdict_lines(snap.curve, snap.verdict, snap.auto)
        text = self.query_one(".curve-verdict", Field)
        text.set(f"{head}\n{cause}")
        advice = self.query_one(".curve-advice", Field)
        # short screens give the advice one row: both on it, interactive first
        advice.set(f"{inter}\n{batch}" if advice.size.height >= 2 else "  ·  ".join(x for x in (inter, batch) if x))
        tip = tooltip(snap.verdict) or None
        if tip != text.tooltip:
            text.tooltip = tip
        knee = snap.verdict.knee_concurrency if snap.verdict is not None and snap.verdict.saturated else None
        for chart in self.query(CurveChart):
            chart.set_data(snap.curve, knee)
            chart.maybe_draw(now)

    @property
    def draws(self) -> int:
        return sum(c.draws for c in self.query(CurveChart))
