"""Pre-binned histogram drawn with block characters.

The engine ships bin edges and counts (LatencyView); re-binning raw samples in plotext's `hist` on every repaint
is what made the prototype slow, and even plotext `bar` costs a full figure build. A column of eighth-blocks per
bin costs microseconds and renders the same on dark and light themes (it takes the widget's `color`).
"""
from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from qbench_tui.engine.snapshot import LatencyView
from qbench_tui.tui.widgets.fmt import dur_short

_BLOCKS = " ▁▂▃▄▅▆▇█"


def layout_columns(counts: tuple[int, ...], width: int) -> tuple[list[int], int, int]:
    """Trim empty outer bins, then map the remaining bins onto `width` columns.

    Returns (column heights in counts, first bin, last bin + 1).
    """
    nz = [i for i, c in enumerate(counts) if c]
    if not nz or width <= 0:
        return [], 0, 0
    lo, hi = nz[0], nz[-1] + 1
    bins = list(counts[lo:hi])
    n = len(bins)
    if n <= width:
        per = max(1, width // n)
        cols = [c for c in bins for _ in range(per)]
    else:  # more bins than columns: sum neighbours
        cols = [sum(bins[j * n // width:(j + 1) * n // width]) for j in range(width)]
    return cols, lo, hi


class HistogramBars(Widget):
    DEFAULT_CSS = """
    HistogramBars {
        height: 1fr;
        min-height: 3;
        color: $accent;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._view: LatencyView | None = None
        self._lines: list[Strip] | None = None

    def set_view(self, view: LatencyView) -> bool:
        """Returns True when the picture changed (and a repaint was queued)."""
        if view is self._view or (
            self._view is not None and view.counts == self._view.counts and view.edges == self._view.edges
        ):
            return False
        self._view = view
        self._lines = None
        self.refresh()
        return True

    def on_resize(self) -> None:
        self._lines = None

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines = None  # theme change: colours are baked into the cached strips

    def _build(self, width: int, height: int) -> list[Strip]:
        # rich_style carries the theme's background too, so empty cells match the panel on light themes
        style = self.rich_style
        muted = style + Style(dim=True)
        bar_style = style
        v = self._view
        if v is None or not v.counts or not any(v.counts):
            blank = [Strip.blank(width, style) for _ in range(max(0, height - 1))]
            msg = "no samples yet"[:width]
            return blank + [Strip([Segment(msg.ljust(width), muted)])]
        rows = max(1, height - 1)
        cols, lo, hi = layout_columns(v.counts, width)
        top = max(cols) or 1
        levels = [int(round(c / top * rows * 8)) if c else 0 for c in cols]
        levels = [max(1, lv) if c else 0 for lv, c in zip(levels, cols)]
        lines: list[Strip] = []
        for r in range(rows):
            floor = (rows - 1 - r) * 8
            chars = []
            for lv in levels:
                fill = lv - floor
                chars.append(_BLOCKS[8] if fill >= 8 else _BLOCKS[fill] if fill > 0 else " ")
            text = "".join(chars).ljust(width)
            lines.append(Strip([Segment(text, bar_style)]))
        left = dur_short(v.edges[lo]) if len(v.edges) > lo else ""
        right = dur_short(v.edges[hi]) if len(v.edges) > hi else ""
        gap = width - len(left) - len(right)
        axis = (left + " " * gap + right) if gap >= 1 else left[:width].ljust(width)
        lines.append(Strip([Segment(axis, muted)]))
        return lines

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        if self._lines is None or len(self._lines) != height:
            self._lines = self._build(width, height)
        if 0 <= y < len(self._lines):
            return self._lines[y]
        return Strip.blank(width, self.rich_style)
