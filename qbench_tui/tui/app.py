"""qbench's Textual face.

The app never does HTTP and never measures anything: it drains Snapshots from an EngineLink at 4 Hz, paints them,
and turns keys into Commands. Charts repaint at most once a second and only when their data changed, because a
plotext build costs tens of milliseconds (see ARCHITECTURE.md, "Drawing budget").

Target and paused belong to the engine; the app shows its own intent only until the engine acknowledges it
(tui/control.py). What the dashboard shows of that state is bound into it (data_bind): screens never read the App.
Starting (after waiting for the server) and ending (q, ctrl+c, signals, the exit status) are tui/lifecycle.py's.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.reactive import var
from textual.screen import Screen
from textual.worker import Worker

from qbench_tui.engine.live_open import step_rate
from qbench_tui.engine.snapshot import (
    AutoLadder,
    Command,
    Pause,
    ResetWindow,
    Resume,
    Save,
    ServerConfigChanged,
    SetConcurrency,
    SetMode,
    SetRate,
    Snapshot,
    StopAuto,
    clamp_concurrency,
    clamp_rate,
)
from qbench_tui.server.handle import ServerHandle, ServerState
from qbench_tui.tui.control import LiveControl
from qbench_tui.tui.lifecycle import Lifecycle, WaitServer
from qbench_tui.tui.link import EngineLink, drain
from qbench_tui.tui.palette import dashboard_commands
from qbench_tui.tui.restart import RestartFlow
from qbench_tui.tui.screens.concurrency_input import ConcurrencyInput
from qbench_tui.tui.screens.dashboard import DashboardScreen
from qbench_tui.tui.screens.help import HelpScreen
from qbench_tui.tui.screens.restart_server import RestartServer
from qbench_tui.tui.screens.startup import StartupScreen

RESTART_WORKER = "server-restart"
LOG_LINES = 200  # more than any log panel is tall: the panel keeps the newest that fit (widgets/panels.LogPanel)


class QBenchApp(Lifecycle, App):
    CSS_PATH = "app.tcss"
    BINDINGS = [
        # ctrl+c must tear everything down, not just print Textual's "press ctrl+q" hint
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]
    POLL_PERIOD = 0.25  # numbers at 4 Hz
    LOG_EVERY = 4  # log tail every 4th poll: once a second

    # what the dashboard shows of the live control state (bound into it; see DashboardScreen)
    target: var[int] = var(0)
    paused: var[bool] = var(False)
    auto: var[bool] = var(False)
    mode: var[str] = var("closed")  # "open": the arrows change the request rate, not the concurrency
    rate: var[float] = var(0.0)
    simulated: var[bool] = var(False)
    engine_up: var[bool] = var(False)
    waiting: var[str] = var("")  # "waiting for URL: connection refused, retry 3 in 2 s" while the server is not up
    engine_failed: var[str] = var("")  # why there is no engine and will be none (shown until quit)

    def __init__(
        self,
        engine_factory: Callable[[], EngineLink],
        *,
        server: ServerHandle | None = None,
        title: str = "qbench",
        simulated: bool = False,
        out_dir: str = "results",
        start_concurrency: int = 8,
        start_paused: bool = False,
        poll_period: float = POLL_PERIOD,
        auto_ladder: AutoLadder | None = None,
        wait_server: WaitServer | None = None,
        start_rate: float = 0.0,
        burstiness: float = 1.0,
        rate_cap: int = 0,
    ) -> None:
        """wait_server: for a server given by URL, which may not be up yet (tui/lifecycle.py). start_rate: start
        in open loop at this many requests/s (`--request-rate`); burstiness and rate_cap (`--burstiness`,
        `--max-concurrency`, 0: no cap) shape every open loop `o` starts."""
        super().__init__()
        self._init_lifecycle(wait_server)
        self._engine_factory = engine_factory
        self.server = server
        self.base_title = title
        self.out_dir = out_dir
        self.start_paused = start_paused
        self.poll_period = poll_period  # tests poll faster: ticks, not seconds, are what they wait for
        # what `a` asks for (maximum, budget, SLO, hold from the command line); its start is the target then
        self.auto_ladder = auto_ladder if auto_ladder is not None else AutoLadder()

        self.engine: EngineLink | None = None
        self.snapshot: Snapshot | None = None
        self.control = LiveControl(start_concurrency, start_paused)
        self.start_rate = clamp_rate(start_rate) if start_rate else 0.0
        self.burstiness = burstiness
        self.rate_cap = rate_cap
        self.restart_flow = RestartFlow()
        self.set_reactive(QBenchApp.simulated, simulated)  # the title is set on mount, not here
        self._show_control()
        self.engine_error = ""
        self.saved_paths: tuple[str, ...] = ()  # latest Snapshot.saved seen (also after quit, for the CLI)
        self.clock: Callable[[], float] = time.monotonic
        self.closed = False
        self.dashboard: DashboardScreen | None = None
        self.startup: StartupScreen | None = None
        self._ticks = 0
        self._last_message = ""
        self._poll_failed = False
        self._server_state = server.state if server is not None else ""

    # ------------------------------------------------------------------ lifecycle
    async def on_mount(self) -> None:
        self._install_signals()
        self.dashboard = DashboardScreen(show_log=self.server is not None).data_bind(
            QBenchApp.target, QBenchApp.paused, QBenchApp.auto, QBenchApp.simulated, QBenchApp.engine_up,
            QBenchApp.waiting, QBenchApp.engine_failed, QBenchApp.mode, QBenchApp.rate)
        # wait for the dashboard's widgets: a snapshot applied before its on_mount would be painted over
        await self.push_screen(self.dashboard)
        self._update_title()
        if self.server is not None and self.server.state != ServerState.READY:
            self.startup = StartupScreen(self.server, self.clock, self.poll_period)
            await self.push_screen(self.startup)
        else:
            self._start_engine()
        self.set_interval(self.poll_period, self._tick)

    def _update_title(self) -> None:
        self.title = self.base_title
        self.sub_title = "SIMULATED server" if self.simulated else (
            self.snapshot.server.model if self.snapshot is not None else ""
        )

    def watch_simulated(self) -> None:
        self._update_title()

    def _show_control(self) -> None:
        self.target, self.paused, self.auto = self.control.target, self.control.paused, self.control.auto
        self.mode, self.rate = self.control.mode, self.control.rate

    @on(Worker.StateChanged)
    def _route_worker_state(self, event: Worker.StateChanged) -> None:
        self._worker_state(event)

    def _tick(self) -> None:
        self._ticks += 1
        if self._exiting() or self.dashboard is None or not self.dashboard.is_attached:
            return
        if self.startup is not None:
            self._tick_startup()
            return
        now = self.clock()
        latest = self._drain()
        log_due = self.server is not None and self._ticks % self.LOG_EVERY == 1
        if log_due:
            self._watch_server()
        if latest is None and not log_due:
            return
        dash = self.dashboard
        try:
            with self.batch_update():
                if latest is not None:
                    self._apply(latest, now)
                if log_due and self.server is not None:
                    dash.show_log_lines(self.server.log_tail(LOG_LINES), self.server.state)
        except NoMatches:
            # only while the app tears down: the screen is still attached but its panels are already gone
            if not self._exiting():
                raise

    def _drain(self) -> Snapshot | None:
        if self.engine is None:
            return None
        try:
            return drain(self.engine)
        except Exception as exc:  # a dead pipe must not kill the face: show it, keep the keys working
            if not self._poll_failed:
                self._poll_failed = True
                self.engine_error = f"engine link: {exc}"
                self.notify(self.engine_error, severity="error", timeout=30)
            return None

    def _exiting(self) -> bool:
        return self.closed or not self.is_running  # Textual clears _running first thing in its shutdown

    def _watch_server(self) -> None:
        """A server that dies under load must be impossible to miss."""
        server = self.server
        assert server is not None
        if self.restart_flow.active:  # the restart's own stop is not a death
            return
        state = server.state
        if state != self._server_state and state in (ServerState.FAILED, ServerState.STOPPED) and not self.closed:
            rc = server.returncode
            self._note_server_end()
            if self.engine is not None and self._server_state == ServerState.READY:
                # died under load: stop sending into the void and keep what was measured so far
                self._stop_ladder_for("the server died")
                self._send(Pause())
                self._send(Save(self.out_dir))
            self.notify(
                f"server {state} (exit code {rc if rc is not None else '?'}) {server.error}".strip()
                + ("; load paused, results saved" if self.engine is not None else ""),
                severity="error",
                timeout=30,
            )
        self._server_state = state

    def _tick_startup(self) -> None:
        """Only decides when to leave the startup screen; the screen repaints itself (screens/startup.py)."""
        assert self.startup is not None and self.server is not None
        if self.restart_flow.stopping:
            return  # the old process may still answer "ready" until restart() has stopped it
        if self.server.state == ServerState.READY and self.screen is self.startup:  # (a palette on top: later)
            self.pop_screen()
            self.startup = None
            if self.restart_flow.active:
                self._restarted()
            else:
                self._start_engine()

    def _apply(self, snap: Snapshot, now: float) -> None:
        self.snapshot = snap
        self.control.seen(snap)
        self._show_control()
        if snap.simulated:
            self.simulated = True  # (its watcher retitles)
        if not self.sub_title:
            self._update_title()
        assert self.dashboard is not None
        self.dashboard.show(snap, now)
        if snap.saved and snap.saved != self.saved_paths:
            self.saved_paths = snap.saved
            self.notify("\n".join(snap.saved), title="Saved", timeout=10)
        if snap.message and snap.message != self._last_message:
            self.notify(snap.message, severity="warning", timeout=8)
        self._last_message = snap.message

    # ------------------------------------------------------------------ commands
    def _send(self, cmd: Command) -> bool:
        if self.engine is None or self.closed:
            self.notify(self.engine_error or "engine not running yet", severity="warning", timeout=3)
            return False
        self.engine.send(self.control.stamp(cmd))
        self._show_control()
        return True

    def set_concurrency(self, n: int) -> None:
        n = clamp_concurrency(n)
        # e.g. "down" at 0: no new segment for a non-change; in open loop any C is a change (back to closed)
        if n != self.control.target or self.control.mode == "open":
            self._stop_ladder_for("a level set by hand")
            self._send(SetConcurrency(n))

    def _stop_ladder_for(self, why: str) -> None:
        """A hand on the controls ends the ladder: it cannot hold a level to steady while the level moves. What
        it measured stays (StopAuto keeps its levels); the new level is a hand-made point on the same curve."""
        if self.control.auto and self._send(StopAuto()):
            self.notify(f"auto ladder stopped: {why} (its levels are kept)", severity="warning", timeout=5)

    def action_toggle_auto(self) -> None:
        if self.control.auto:
            if self._send(StopAuto()):
                self.notify("auto ladder stopped: its levels are kept", timeout=4)
            return
        start = max(1, self.control.target)
        if self._send(replace(self.auto_ladder, start=start)):
            self.notify(f"auto ladder from C={start}: each level held until steady; a stops it", timeout=5)
            if self.dashboard is not None:
                self.dashboard.show_curve()

    def action_change_concurrency(self, delta: int) -> None:
        """The step keys: the concurrency by `delta` in closed loop; in open loop the rate, ×1.1 per step and ×2
        per page (engine/live_open.step_rate: rates span orders of magnitude, a fixed step fits none of them)."""
        if self.control.mode == "open":
            if self.control.rate:  # 0: the engine has not said which rate it started from yet
                self.set_rate(step_rate(self.control.rate, delta))
            return
        self.set_concurrency(self.control.target + delta)

    def set_rate(self, rate: float) -> None:
        rate = clamp_rate(rate)
        if rate != self.control.rate:
            self._stop_ladder_for("a rate set by hand")
            self._send(SetRate(rate))

    def open_loop_command(self, rate: float = 0.0) -> SetMode:
        """What `o` (or the start with --request-rate) asks for: the rate (0: the engine starts from the request
        throughput it measures now), the command line's burstiness and cap, the closed target to return to."""
        return SetMode("open", rate, self.burstiness, self.rate_cap, self.control.target)

    def action_toggle_mode(self) -> None:
        """`o`: closed loop <-> open loop. Open starts at the rate used last (or --request-rate), else at the
        request throughput measured now; closed returns to the target concurrency kept meanwhile."""
        if self.control.mode == "open":
            if self._send(SetMode("closed", concurrency=self.control.target)):
                self.notify(f"closed loop: concurrency {self.control.target}", timeout=3)
            return
        self._stop_ladder_for("the open loop started")
        rate = self.control.rate or self.start_rate
        if self._send(self.open_loop_command(rate)):
            said = f"{rate:g} requests/s" if rate else "the request rate measured now"
            self.notify(f"open loop at {said}: ↑/↓ ×1.1, PgUp/PgDn ×2; o: back to closed", timeout=5)

    def action_ask_concurrency(self) -> None:
        """In open loop too: a concurrency typed is a closed loop at it (the engine ends the open loop)."""
        def done(value: int | None) -> None:
            if value is not None:
                self.set_concurrency(value)

        self.push_screen(ConcurrencyInput(self.control.target), done)

    def action_toggle_pause(self) -> None:
        if not self.control.paused:
            self._stop_ladder_for("the load was paused")
        self._send(Resume() if self.control.paused else Pause())

    def action_reset_window(self) -> None:
        if self._send(ResetWindow()):
            self.notify("rolling window reset", timeout=2)

    def action_save(self) -> None:
        if self._send(Save(self.out_dir)):
            self.notify(f"saving to {self.out_dir}/ …", timeout=2)

    def action_restart_server(self) -> None:
        server = self.server
        if server is None or not server.restartable:
            self.notify("restart with other flags needs a server qbench launched (--launch CONFIG)",
                        severity="warning", timeout=6)
            return
        # from the dashboard, or from a startup screen whose server failed (first launch or an earlier restart)
        failed = (self.startup is not None and server.state in (ServerState.FAILED, ServerState.STOPPED)
                  and not self.restart_flow.stopping)
        if (self.restart_flow.active or self.startup is not None) and not failed:
            self.notify("the server is starting", severity="warning", timeout=3)
            return

        def done(overrides: dict | None) -> None:
            if overrides:
                self.restart_server(overrides)

        self.push_screen(RestartServer(server.config_label, server.command_line), done)

    def restart_server(self, overrides: dict) -> None:
        """Pause the load (closing the segment), restart the server with `overrides` in a thread, show its startup
        again; when it is ready, label what follows with the new flags and resume if the load was running."""
        assert self.server is not None
        running = self.engine is not None and not self.control.paused
        self.restart_flow.begin(load_running=running)
        if self.engine is not None:
            self._stop_ladder_for("the server restarts with other flags")
        if running:
            self._send(Pause())
        if self.startup is not None:  # another try after a failed start: the same screen, its clock restarted
            self.startup.restart_clock()
        else:
            self.startup = StartupScreen(self.server, self.clock, self.poll_period)
            self.push_screen(self.startup)
        self.run_worker(self._do_restart(overrides), name=RESTART_WORKER, exit_on_error=False, exclusive=True)

    async def _do_restart(self, overrides: dict) -> None:
        server = self.server
        assert server is not None
        try:
            await asyncio.to_thread(server.restart, overrides)
        except Exception as e:  # a launch check (executable, port) failed: the startup screen shows the state
            self.notify(f"restart failed: {e}", severity="error", timeout=30)
            return
        finally:
            self.restart_flow.launched()
        try:
            await asyncio.to_thread(server.wait_ready)  # a LaunchedServer sees /health only while someone waits
        except Exception:
            pass  # the startup screen shows state "failed", the exit code and the log tail

    def _restarted(self) -> None:
        resume = self.restart_flow.finish()
        self._server_state = ServerState.READY
        assert self.server is not None
        label = self.server.config_label
        if self.engine is None:  # the first launch had failed: start the load as a normal startup would
            self._start_engine()
            self.notify(f"server started: {label or 'default flags'}", timeout=8)
            return
        if label:
            self._send(ServerConfigChanged(label))
        if resume:
            self._send(Resume())
        self.notify(f"server restarted: {label or 'default flags'}", timeout=8)

    def action_show_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_cycle_latency(self) -> None:
        if self.dashboard is not None:
            self.dashboard.action_cycle_latency()

    async def action_quit(self) -> None:
        await self.quit_session()

    async def action_cancel_startup(self) -> None:
        await self.quit_session()  # a server that failed to start makes it exit 1 (tui/outcome.py)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if screen is self.dashboard:
            yield from dashboard_commands(self)

    def on_unmount(self) -> None:
        # exits that bypass quit_session (an exception, a panic when the terminal vanished, App.exit from elsewhere)
        # must not orphan the engine or the server
        self.close_all()
        self._uninstall_signals()
