"""plotext charts that draw only when their data changed, and at most once per PERIOD.

`PlotextPlot.render()` rebuilds the whole figure on every repaint, so the data is replotted only here (never in
a per-tick path), the series are cut to the columns that can show them, and the widget is refreshed only after a
replot. Colours come from the theme as explicit RGB: a named ANSI colour would go through the terminal's palette,
which differs between dark and light themes and terminals.
"""
from __future__ import annotations

from collections.abc import Hashable

from textual.color import Color
from textual_plotext import PlotextPlot

from qbench_tui.tui.widgets.fmt import num

FALLBACK_RGB = {"primary": (0, 120, 215), "secondary": (0, 160, 160), "accent": (255, 160, 0),
                "warning": (255, 166, 43), "error": (220, 50, 50), "success": (80, 180, 80)}


class Chart(PlotextPlot):
    """Subclasses say what the chart shows (`key`) and how to plot it (`plot`); this decides when."""

    PERIOD = 1.0  # seconds between replots at most

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.draws = 0  # replots, for tests and the CPU bench
        self._drawn: Hashable = None
        self._last_draw = -1e9

    def on_mount(self) -> None:
        super().on_mount()
        self.app.theme_changed_signal.subscribe(self, self._theme_changed)

    def _theme_changed(self, _theme) -> None:
        self._drawn = None
        self.call_after_refresh(self.maybe_draw, 0.0, True)

    def on_resize(self) -> None:
        # how many points fit follows the width; a resize is rare, so replot now rather than wait for new data
        self.call_after_refresh(self.maybe_draw, 0.0, True)

    def render(self):
        # what was plotted for another size (points kept, ticks thinned) is replotted for this one before it is
        # built: a resize between the replot and this frame must not show the old size's choices
        size = (self.size.width, self.size.height)
        if isinstance(self._drawn, tuple) and self._drawn[1:] != size:
            key = self.key()
            if key is not None:
                self._drawn = (key, *size)
                self.plt.clear_data()
                self.plot()
                self.draws += 1
        return super().render()

    def tick_fractions(self) -> tuple[float, ...]:
        """Where y ticks go, as shares of the top: one per data row at most (the frame and the x labels take
        three rows), so no two labels compete for a row."""
        rows = self.size.height - 3
        if rows < 4:
            return (0.0, 1.0)
        return (0.0, 0.5, 1.0) if rows < 8 else (0.0, 0.25, 0.5, 0.75, 1.0)

    def rgb(self, name: str) -> tuple[int, int, int]:
        try:
            return Color.parse(self.app.theme_variables[name]).rgb
        except Exception:
            return FALLBACK_RGB.get(name, (128, 128, 128))

    def shown(self) -> bool:
        """Laid out and visible: a chart inside a folded panel keeps its old size, so ancestors are asked too."""
        if not self.is_attached or self.size.width <= 0 or self.size.height <= 0:
            return False
        return all(node.display for node in self.ancestors_with_self if hasattr(node, "display"))

    def key(self) -> Hashable:
        """What the chart shows now (compared with what it last drew); None: nothing to draw yet."""
        raise NotImplementedError

    def plot(self) -> None:
        """Plot the data onto self.plt (already cleared)."""
        raise NotImplementedError

    def maybe_draw(self, now: float, force: bool = False) -> bool:
        if not force and now - self._last_draw < self.PERIOD:
            return False
        if not self.shown():
            return False
        key = (self.key(), self.size.width, self.size.height)
        if key[0] is None or key == self._drawn:
            return False
        self._drawn = key
        if not force:
            self._last_draw = now
        self.plt.clear_data()
        self.plot()
        self.refresh()
        self.draws += 1
        return True


class TimeChart(Chart):
    """Series over time, one point per second, newest at x = 0 ("seconds ago"). `ylim` fixes the y axis (as
    KV usage's 0-100%) instead of following the data."""

    def __init__(self, *, ylim: tuple[float, float] | None = None, **kw) -> None:
        super().__init__(**kw)
        self.ylim = ylim
        self._series: tuple[tuple[str, tuple[float, ...]], ...] = ()  # (theme colour, values)

    def set_series(self, *series: tuple[str, tuple[float, ...]]) -> None:
        self._series = series

    def points(self) -> int:
        # y tick labels take ~8 columns; more points than columns is wasted work
        return max(2, self.size.width - 8)

    def key(self) -> Hashable:
        if not self._series:
            return None
        keep = self.points()
        return tuple((colour, values[-keep:]) for colour, values in self._series)

    def drawn_lengths(self) -> tuple[int, ...]:
        """How many points of each series the last replot drew (tests: never more than the columns)."""
        drawn = self._drawn[0] if isinstance(self._drawn, tuple) else ()
        return tuple(len(values) for _, values in drawn or ())

    def plot(self) -> None:
        plt = self.plt
        keep = self.points()
        top = 0.0
        longest = max((min(keep, len(values)) for _, values in self._series), default=0)
        if longest > 1:  # whole seconds on the x axis, not -26.0 / -19.5
            step = next((s for s in (1, 2, 5, 10, 15, 20, 30, 60, 120) if (longest - 1) / s <= 5), 240)
            ticks = list(range(-((longest - 1) // step) * step, 1, step))
            plt.xticks(ticks, [str(t) for t in ticks])
        for colour, values in self._series:
            values = values[-keep:]
            if values:
                n = len(values)
                plt.plot([i - n + 1 for i in range(n)], list(values), marker="braille", color=self.rgb(colour))
                top = max(top, max(values))
        if self.ylim is not None:
            plt.ylim(*self.ylim)
        elif top > 0:
            plt.ylim(0, top * 1.1)
            ticks = [top * f for f in self.tick_fractions()]
            plt.yticks(ticks, [num(t) for t in ticks])
