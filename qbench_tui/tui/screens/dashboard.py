"""The live dashboard. Keys live here (not on the App) so modal screens never see them.

The screen is handed its state and never reads the App: target, paused, whether a ladder runs, simulated, whether
an engine runs, the loop's mode and its rate are bound in (data_bind) and passed on to the control bar; Snapshots
and log lines arrive through show()/show_log_lines(). The key bindings name app actions (`app.save`): a message to
whoever runs the screen, not a reference to it.

Wide screens show the saturation curve beside the throughput chart. Narrow ones fold it into the `l` cycle, after
the three latency histograms: the curve then takes the histogram's place (and on short screens the segment table's
too; its verdict is in the curve panel). Two CurvePanels exist for that, one per place; only the visible one draws.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Footer, Header

from qbench_tui.engine.snapshot import Snapshot
from qbench_tui.tui.widgets.curve import CurvePanel
from qbench_tui.tui.widgets.endpoints import EndpointsPanel
from qbench_tui.tui.widgets.panels import (
    ControlBar,
    FailuresPanel,
    GpuPanel,
    LatencyPanel,
    LogPanel,
    ServerPanel,
    StatusLine,
    ThroughputPanel,
)
from qbench_tui.tui.widgets.segments import KneeLine, SegmentTable


class DashboardScreen(Screen):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]

    BINDINGS = [
        # priority: arrows and paging must reach the control even if a panel ever takes focus
        Binding("up,plus", "app.change_concurrency(1)", "+1", priority=True, key_display="↑/+"),
        Binding("down,minus", "app.change_concurrency(-1)", "-1", priority=True, key_display="↓/-"),
        Binding("pageup,shift+up", "app.change_concurrency(10)", "+10", show=False, priority=True),
        Binding("pagedown,shift+down", "app.change_concurrency(-10)", "-10", show=False, priority=True),
        Binding("c", "app.ask_concurrency", "Set C"),
        Binding("a", "app.toggle_auto", "Auto"),
        Binding("o", "app.toggle_mode", "Open/closed loop", show=False),
        Binding("space", "app.toggle_pause", "Pause"),
        Binding("r", "app.reset_window", "Reset", show=False),
        Binding("l", "cycle_latency", "View", show=False),
        Binding("s", "app.save", "Save"),
        Binding("F", "app.restart_server", "Flags", show=False),
        Binding("question_mark", "app.show_help", "Help", key_display="?"),
        Binding("q", "app.quit", "Quit"),
    ]

    # bound in by whoever pushes the screen (QBenchApp.on_mount), bound on into the ControlBar
    target: var[int] = var(0)
    paused: var[bool] = var(False)
    auto: var[bool] = var(False)
    mode: var[str] = var("closed")  # "open": the control shows the request rate instead of the target
    rate: var[float] = var(0.0)
    simulated: var[bool] = var(False)
    engine_up: var[bool] = var(False)
    waiting: var[str] = var("")  # while there is no engine yet: the server is not up, and the next retry
    engine_failed: var[str] = var("")  # there will be no engine: why

    VIEWS = ("ttft", "itl", "e2el", "curve")  # what `l` steps through; on wide screens only the curve is folded
    VIEW_TITLES = {"ttft": "TTFT", "itl": "ITL", "e2el": "E2E latency", "curve": "saturation curve"}

    def __init__(self, *, show_log: bool) -> None:
        super().__init__(id="dashboard")
        self.show_log = show_log
        self.view = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield ControlBar(id="control").data_bind(DashboardScreen.target, DashboardScreen.paused,
                                                 DashboardScreen.auto, DashboardScreen.simulated,
                                                 DashboardScreen.engine_up, DashboardScreen.waiting,
                                                 DashboardScreen.engine_failed, DashboardScreen.mode,
                                                 DashboardScreen.rate)
        with Horizontal(id="row-top"):
            yield ThroughputPanel(id="throughput", classes="panel")
            yield CurvePanel(id="curve", classes="panel")
            yield ServerPanel(id="server", classes="panel")
        yield LatencyPanel(id="latency")
        yield CurvePanel(id="curve-fold", classes="panel")
        with Horizontal(id="row-bottom"):
            with Vertical(id="seg-box", classes="panel") as box:
                box.border_title = "Segments"
                yield SegmentTable(id="segments")
                yield KneeLine(id="knee")
            yield EndpointsPanel(id="endpoints", classes="panel")  # shown only under several endpoints
            with Vertical(id="side"):
                yield FailuresPanel(id="failures", classes="panel")
                yield GpuPanel(id="gpu", classes="panel")
                if self.show_log:
                    yield LogPanel(id="log", classes="panel")
        yield StatusLine(id="status")
        yield Footer()

    def show(self, snap: Snapshot, now: float) -> None:
        """One tick: numbers always, charts through their own <= 1 Hz gates."""
        self.query_one(ControlBar).show(snap)
        self.query_one(ThroughputPanel).show(snap, now)
        self.query_one(LatencyPanel).show(snap, now)
        for curve in self.query(CurvePanel):  # both: text is cheap, and a hidden chart replots when it shows
            curve.show(snap, now)
        self.query_one(ServerPanel).show(snap, now)
        self.query_one(FailuresPanel).show(snap)
        self.query_one(GpuPanel).show(snap)
        self.query_one(EndpointsPanel).show(snap)
        self.query_one(SegmentTable).show(snap.segments)
        self.query_one(KneeLine).show(snap.knee)
        self.query_one(StatusLine).show(snap)

    def show_log_lines(self, lines: list[str], state: str) -> None:
        if self.show_log:
            self.query_one(LogPanel).show_lines(lines, state)

    def _show_view(self, i: int) -> None:
        self.view = i % len(self.VIEWS)
        kind = self.VIEWS[self.view]
        if kind != "curve":
            self.query_one(LatencyPanel).select(kind)
        self.set_class(kind == "curve", "-curve")

    def action_cycle_latency(self) -> None:
        self._show_view(self.view + 1)
        if self.has_class("-narrow"):
            self.notify(f"showing: {self.VIEW_TITLES[self.VIEWS[self.view]]} (l: next)", timeout=1.5)

    def show_curve(self) -> None:
        """Bring the saturation curve into view (a ladder was started); on wide screens it always is."""
        if self.VIEWS[self.view] != "curve":
            self._show_view(self.VIEWS.index("curve"))
