"""Live results table: one row per level visited (a concurrency, or an open loop's rate: "4 r/s", "≤C" its cap,
"late" when it fell behind its schedule), cells updated in place; under it the knee verdict."""
from __future__ import annotations

from textual.markup import escape
from textual.widgets import DataTable

from qbench_tui.engine.snapshot import SegmentRow
from qbench_tui.tui.widgets.fmt import dur, num, pct
from qbench_tui.tui.widgets.panels import Field

COLUMNS = (
    ("seg", "#"),
    ("level", "level"),
    ("seconds", "secs"),
    ("req_s", "req/s"),
    ("tok_s", "tok/s"),
    ("avg", "avg lat"),
    ("ttft50", "TTFT50"),
    ("ttft99", "TTFT99"),
    ("itl50", "ITL50"),
    ("prefix", "prefix"),
    ("done", "done/failed"),
)


def level_cell(r: SegmentRow) -> str:
    if r.request_rate is None:
        return str(r.concurrency)
    cap = f" ≤{r.concurrency}" if r.concurrency else ""
    return f"{r.request_rate:g} r/s{cap}" + (" late" if r.behind_schedule else "")


def row_cells(r: SegmentRow) -> tuple[str, ...]:
    return (
        str(r.segment),
        level_cell(r),
        f"{r.seconds:.0f}",
        num(r.req_s, 2),
        num(r.tok_s, 1),
        dur(r.avg_latency),
        dur(r.ttft_p50),
        dur(r.ttft_p99),
        dur(r.itl_p50),
        pct(r.prefix_hit_rate),
        f"{r.completed:,}/{r.failed:,}",
    )


class SegmentTable(DataTable):
    DEFAULT_CSS = """
    SegmentTable { height: 1fr; }
    """

    def __init__(self, **kw) -> None:
        super().__init__(cursor_type="none", zebra_stripes=True, show_cursor=False, **kw)
        self.can_focus = False  # arrows belong to the concurrency control
        self._rows: dict[int, tuple[str, ...]] = {}
        self._flags = False
        self.cell_updates = 0

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def show(self, rows: tuple[SegmentRow, ...]) -> None:
        # the server's flags get a column once the session has seen more than one set (a restart with `F`)
        if not self._flags and len({r.server_config for r in rows}) > 1:
            self.add_column("server flags", key="flags", default="")
            self._flags = True
            self._rows = {k: v + ("",) for k, v in self._rows.items()}
        columns = COLUMNS + ((("flags", "server flags"),) if self._flags else ())
        seen = set()
        added = False
        for r in rows:
            seen.add(r.segment)
            cells = row_cells(r) + ((r.server_config,) if self._flags else ())
            old = self._rows.get(r.segment)
            if old is None:
                self.add_row(*cells, key=str(r.segment))
                added = True
            else:
                for (col, _), new, prev in zip(columns, cells, old):
                    if new != prev:
                        self.update_cell(str(r.segment), col, new)
                        self.cell_updates += 1
            self._rows[r.segment] = cells
        for gone in [s for s in self._rows if s not in seen]:
            self.remove_row(str(gone))
            del self._rows[gone]
        if added:
            self.scroll_end(animate=False)

    def on_resize(self) -> None:
        # the newest level is the one to see: stay at the end when the verdict line below takes a row
        self.scroll_end(animate=False)

    def watch_virtual_size(self) -> None:
        # new rows are measured on a later refresh than the show() that added them: follow the end from here too
        self.scroll_end(animate=False)


class KneeLine(Field):
    """The live saturation verdict (Snapshot.knee) over the current server config's levels; hidden until the
    engine has two levels to compare."""

    def __init__(self, **kw) -> None:
        super().__init__("", **kw)
        self.display = False

    def show(self, knee: str) -> None:
        if bool(knee) != self.display:  # a display change relayouts: only when it flips
            self.display = bool(knee)
        if not knee:
            return
        colour = "$warning" if knee.startswith("saturated") else (
            "$success" if knee.startswith("no saturation") else "$text-muted")
        self.set(f"[b {colour}]knee[/] {escape(knee)}")
        self.tooltip = knee
