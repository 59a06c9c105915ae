"""A sparkline on a fixed scale, with its axis written beside it.

Textual's Sparkline stretches its data between the data's own min and max, so a KV cache sitting at 20-21% drew
as bars from empty to full. Here the same height always means the same value ([0, top]), and the left column says
what the scale is. Eighth blocks per column, one value per column, newest at the right: microseconds to draw.
"""
from __future__ import annotations

from rich.segment import Segment
from textual.strip import Strip
from textual.widget import Widget

_BLOCKS = " ▁▂▃▄▅▆▇█"


def column_levels(value: float, top: float, rows: int) -> list[int]:
    """Eighths (0..8) for each row of one column, top row first."""
    frac = 0.0 if top <= 0 else min(1.0, max(0.0, value / top))
    total = int(round(frac * rows * 8))
    return [min(8, max(0, total - (rows - 1 - r) * 8)) for r in range(rows)]


class ScaleSpark(Widget):
    DEFAULT_CSS = """
    ScaleSpark { height: 2; color: $success; }
    ScaleSpark > .scale-spark--axis { color: $text-muted; }
    """
    COMPONENT_CLASSES = {"scale-spark--axis"}

    def __init__(self, top: float = 1.0, *, top_label: str = "100%", bottom_label: str = "0%",
                 span_label: str = "0-100%", **kw) -> None:
        super().__init__(**kw)
        self.top = top
        self.labels = (top_label, bottom_label, span_label)
        self.values: tuple[float, ...] = ()

    def set_values(self, values: tuple[float, ...]) -> bool:
        if values == self.values:
            return False
        self.values = values
        self.refresh()
        return True

    def _label_width(self, rows: int) -> int:
        top_label, bottom_label, span_label = self.labels
        return (len(span_label) if rows == 1 else max(len(top_label), len(bottom_label))) + 1

    def render_line(self, y: int) -> Strip:
        width, rows = self.size.width, self.size.height
        lw = self._label_width(rows)
        if width <= lw or rows <= 0:
            return Strip.blank(width)
        top_label, bottom_label, span_label = self.labels
        if rows == 1:
            label = span_label
        else:
            label = top_label if y == 0 else bottom_label if y == rows - 1 else ""
        axis = self.get_component_rich_style("scale-spark--axis")
        cols = width - lw
        vals = self.values[-cols:]
        cells = "".join(_BLOCKS[column_levels(v, self.top, rows)[y]] for v in vals)
        return Strip([Segment(label.rjust(lw - 1) + "┤", axis), Segment(cells.ljust(cols), self.rich_style)],
                     width)
