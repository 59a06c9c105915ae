"""qbench's Textual face.

The app never does HTTP and never measures anything: it drains Snapshots from an EngineLink at 4 Hz, paints them,
and turns keys into Commands. Charts repaint at most once a second and only when their data changed, because a
plotext build costs tens of milliseconds (see ARCHITECTURE.md, "Drawing budget").
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from functools import partial

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from qbench_tui.engine.snapshot import (
    Command,
    Pause,
    ResetWindow,
    Resume,
    Save,
    ServerConfigChanged,
    SetConcurrency,
    Snapshot,
    Stop,
)
from qbench_tui.server.handle import ServerHandle
from qbench_tui.tui.link import EngineLink
from qbench_tui.tui.screens.concurrency_input import MAX_CONCURRENCY, ConcurrencyInput
from qbench_tui.tui.screens.dashboard import DashboardScreen
from qbench_tui.tui.screens.help import HelpScreen
from qbench_tui.tui.screens.restart_server import RestartServer
from qbench_tui.tui.screens.startup import StartupScreen

ENGINE_WORKER = "engine-start"
RESTART_WORKER = "server-restart"


class QBenchApp(App):
    CSS_PATH = "app.tcss"
    BINDINGS = [
        # ctrl+c must tear everything down, not just print Textual's "press ctrl+q" hint
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]
    POLL_PERIOD = 0.25  # numbers at 4 Hz
    LOG_EVERY = 4  # log tail once a second
    SYNC_AFTER = 1.0  # seconds after our last command before the engine's target/paused overrule ours
    SAVE_WAIT = 3.0  # on quit, how long to wait for the engine to report the saved paths

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
    ) -> None:
        super().__init__()
        self._engine_factory = engine_factory
        self.server = server
        self.base_title = title
        self.simulated = simulated
        self.out_dir = out_dir
        self.start_concurrency = max(0, min(MAX_CONCURRENCY, start_concurrency))
        self.start_paused = start_paused

        self.engine: EngineLink | None = None
        self.snapshot: Snapshot | None = None
        self.target = self.start_concurrency
        self.paused = start_paused
        self.engine_error = ""
        self.saved_paths: tuple[str, ...] = ()  # latest Snapshot.saved seen (also after quit, for the CLI)
        self.clock: Callable[[], float] = time.monotonic
        self.closed = False
        self.dashboard: DashboardScreen | None = None
        self.startup: StartupScreen | None = None
        self._last_cmd = -math.inf
        self._ticks = 0
        self._last_message = ""
        self._poll_failed = False
        self._server_state = server.state if server is not None else ""
        # a restart with other flags in progress: "stopped" is expected, the startup screen is back
        self._restarting = False
        self._restart_launched = False
        self._resume_after_restart = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_simulated(self) -> bool:
        return self.simulated or bool(self.snapshot is not None and self.snapshot.simulated)

    async def on_mount(self) -> None:
        self.dashboard = DashboardScreen(show_log=self.server is not None)
        # wait for the dashboard's widgets: a snapshot applied before its on_mount would be painted over
        await self.push_screen(self.dashboard)
        self._update_title()
        if self.server is not None and self.server.state != "ready":
            self.startup = StartupScreen(self.server, self.clock)
            await self.push_screen(self.startup)
        else:
            self._start_engine()
        self.set_interval(self.POLL_PERIOD, self._tick)

    def _update_title(self) -> None:
        self.title = self.base_title
        self.sub_title = "SIMULATED server" if self.is_simulated else (
            self.snapshot.server.model if self.snapshot is not None else ""
        )

    def _start_engine(self) -> None:
        # the factory may spawn a process: keep it off the event loop
        self.run_worker(self._create_engine(), name=ENGINE_WORKER, exit_on_error=False, exclusive=True)

    def _make_engine(self) -> EngineLink | None:
        """Runs in a thread. If the app closed meanwhile (this worker may even have been cancelled), the thread
        itself closes the new engine, so quitting during startup cannot orphan an engine process."""
        engine = self._engine_factory()
        if self.closed:
            engine.close()
            return None
        return engine

    async def _create_engine(self) -> None:
        engine = await asyncio.to_thread(self._make_engine)
        if engine is None:
            return
        if self.closed:  # closed between the thread's check and now
            await asyncio.to_thread(engine.close)
            return
        self.engine = engine
        label = getattr(self.server, "config_label", "") if self.server is not None else ""
        if label:
            self._send(ServerConfigChanged(label))
        self._send(SetConcurrency(self.target))
        if self.start_paused:
            self._send(Pause())
        if self.dashboard is not None:
            self.dashboard.show_control(self.snapshot)

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        """All worker failures land here (STYLE §2.13)."""
        worker = event.worker
        if worker.state != WorkerState.ERROR:
            return
        if worker.name == ENGINE_WORKER:
            self.engine_error = f"engine failed to start: {worker.error}"
        else:
            self.engine_error = f"{worker.name} failed: {worker.error}"
        self.notify(self.engine_error, severity="error", timeout=30)

    def _tick(self) -> None:
        self._ticks += 1
        if self._exiting() or self.dashboard is None or not self.dashboard.is_attached:
            return
        now = self.clock()
        if self.startup is not None:
            try:
                self._tick_startup()
            except NoMatches:
                if not self._exiting():
                    raise
            return
        latest: Snapshot | None = None
        engine = self.engine
        if engine is not None:
            try:
                for _ in range(64):  # poll() returns the newest; the bound only guards a misbehaving link
                    snap = engine.poll()
                    if snap is None:
                        break
                    latest = snap
            except Exception as exc:  # a dead pipe must not kill the face: show it, keep the keys working
                if not self._poll_failed:
                    self._poll_failed = True
                    self.engine_error = f"engine link: {exc}"
                    self.notify(self.engine_error, severity="error", timeout=30)
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
                    dash.show_log_lines(self.server.log_tail(30), self.server.state)
        except NoMatches:
            # only while the app tears down: the screen is still attached but its panels are already gone
            if not self._exiting():
                raise

    def _exiting(self) -> bool:
        return self.closed or not self.is_running  # Textual clears _running first thing in its shutdown

    def _watch_server(self) -> None:
        """A server that dies under load must be impossible to miss."""
        server = self.server
        assert server is not None
        if self._restarting:
            return
        state = server.state
        if state != self._server_state and state in ("failed", "stopped") and not self.closed:
            rc = server.returncode
            if self.engine is not None and self._server_state == "ready":
                # died under load: stop sending into the void and keep what was measured so far
                self.engine.send(Pause())
                self.engine.send(Save(self.out_dir))
                self.paused = True
            self.notify(
                f"server {state} (exit code {rc if rc is not None else '?'}) {server.error}".strip()
                + ("; load paused, results saved" if self.engine is not None else ""),
                severity="error",
                timeout=30,
            )
        self._server_state = state

    def _tick_startup(self) -> None:
        assert self.startup is not None and self.server is not None
        state = self.server.state
        self.startup.refresh_view()
        if self._restarting and not self._restart_launched:
            return  # the old process may still answer "ready" until restart() has stopped it
        if state == "ready" and self.screen is self.startup:  # (a palette on top: switch on a later tick)
            self.pop_screen()
            self.startup = None
            if self._restarting:
                self._restarted()
            else:
                self._start_engine()

    def _apply(self, snap: Snapshot, now: float) -> None:
        was_sim = self.is_simulated
        self.snapshot = snap
        if now - self._last_cmd > self.SYNC_AFTER:
            self.target = snap.target_concurrency
            self.paused = snap.status == "paused"
        if self.is_simulated != was_sim or not self.sub_title:
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
        self.engine.send(cmd)
        self._last_cmd = self.clock()
        return True

    def set_concurrency(self, n: int) -> None:
        n = max(0, min(MAX_CONCURRENCY, int(n)))
        if n == self.target:  # e.g. "down" at 0: no new segment for a non-change
            return
        if self._send(SetConcurrency(n)):
            self.target = n
            if self.dashboard is not None:
                self.dashboard.show_control(self.snapshot)

    def action_change_concurrency(self, delta: int) -> None:
        self.set_concurrency(self.target + delta)

    def action_ask_concurrency(self) -> None:
        def done(value: int | None) -> None:
            if value is not None:
                self.set_concurrency(value)

        self.push_screen(ConcurrencyInput(self.target), done)

    def action_toggle_pause(self) -> None:
        if self._send(Resume() if self.paused else Pause()):
            self.paused = not self.paused
            if self.dashboard is not None:
                self.dashboard.show_control(self.snapshot)

    def action_reset_window(self) -> None:
        if self._send(ResetWindow()):
            self.notify("rolling window reset", timeout=2)

    def action_save(self) -> None:
        if self._send(Save(self.out_dir)):
            self.notify(f"saving to {self.out_dir}/ …", timeout=2)

    def action_restart_server(self) -> None:
        server = self.server
        if server is None or not callable(getattr(server, "restart", None)):
            self.notify("restart with other flags needs a server qbench launched (--launch CONFIG)",
                        severity="warning", timeout=6)
            return
        # from the dashboard, or from a startup screen whose server failed (first launch or an earlier restart)
        failed = (self.startup is not None and server.state in ("failed", "stopped")
                  and (not self._restarting or self._restart_launched))
        if (self._restarting or self.startup is not None) and not failed:
            self.notify("the server is starting", severity="warning", timeout=3)
            return

        def done(overrides: dict | None) -> None:
            if overrides:
                self.restart_server(overrides)

        self.push_screen(RestartServer(getattr(server, "config_label", ""), server.command_line), done)

    def restart_server(self, overrides: dict) -> None:
        """Pause the load (closing the segment), restart the server with `overrides` in a thread, show its startup
        again; when it is ready, label what follows with the new flags and resume if the load was running."""
        assert self.server is not None
        if not self._restarting:  # a retry keeps the first attempt's intent
            self._resume_after_restart = self.engine is not None and not self.paused
        if self.engine is not None and not self.paused:
            self._send(Pause())
            self.paused = True
        self._restarting, self._restart_launched = True, False
        if self.startup is not None:  # another try after a failed start: the same screen, its clock restarted
            self.startup.t0 = self.clock()
        else:
            self.startup = StartupScreen(self.server, self.clock)
            self.push_screen(self.startup)
        self.run_worker(self._do_restart(overrides), name=RESTART_WORKER, exit_on_error=False, exclusive=True)

    async def _do_restart(self, overrides: dict) -> None:
        server = self.server
        try:
            await asyncio.to_thread(server.restart, overrides)  # type: ignore[union-attr]
        except Exception as e:  # a launch check (executable, port) failed: the startup screen shows the state
            self.notify(f"restart failed: {e}", severity="error", timeout=30)
            return
        finally:
            self._restart_launched = True
        wait = getattr(server, "wait_ready", None)  # a LaunchedServer sees /health only while someone waits
        if callable(wait):
            try:
                await asyncio.to_thread(wait)
            except Exception:
                pass  # the startup screen shows state "failed", the exit code and the log tail

    def _restarted(self) -> None:
        self._restarting = False
        self._server_state = "ready"
        label = getattr(self.server, "config_label", "")
        if self.engine is None:  # the first launch had failed: start the load as a normal startup would
            self._start_engine()
            self.notify(f"server started: {label or 'default flags'}", timeout=8)
            return
        if label:
            self._send(ServerConfigChanged(label))
        if self._resume_after_restart and self._send(Resume()):
            self.paused = False
        if self.dashboard is not None:
            self.dashboard.show_control(self.snapshot)
        self.notify(f"server restarted: {label or 'default flags'}", timeout=8)

    def action_show_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_cycle_latency(self) -> None:
        if self.dashboard is not None:
            self.dashboard.action_cycle_latency()

    async def action_quit(self) -> None:
        await self.shutdown()
        self.exit()

    async def action_cancel_startup(self) -> None:
        await self.shutdown()
        self.exit(return_code=1 if self.server is not None and self.server.state == "failed" else 0)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if screen is not self.dashboard:
            return
        for delta in (1, -1, 10, -10):
            verb = "Raise" if delta > 0 else "Lower"
            yield SystemCommand(f"Concurrency {delta:+d}", f"{verb} the target concurrency by {abs(delta)}",
                                partial(self.action_change_concurrency, delta))
        yield SystemCommand("Set concurrency…", "Type a target concurrency (0..4096)", self.action_ask_concurrency)
        yield SystemCommand("Pause / resume", "Pause or resume the load", self.action_toggle_pause)
        yield SystemCommand("Reset window", "Restart the rolling window", self.action_reset_window)
        yield SystemCommand("Save results", f"Write results to {self.out_dir}/ now", self.action_save)
        if self.server is not None and callable(getattr(self.server, "restart", None)):
            yield SystemCommand("Restart server with other flags…", "Pause, restart vllm serve with changed flags, "
                                "resume", self.action_restart_server)
        yield SystemCommand("Cycle latency histogram", "Show the next latency histogram", self.action_cycle_latency)
        yield SystemCommand("Help: qbench keys", "Show every qbench key", self.action_show_help)

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self) -> None:
        """Save, stop the load, close the engine, stop the server. Idempotent; blocking calls run in threads."""
        if self.closed:
            return
        self.closed = True
        engine = self.engine
        if engine is not None:
            self.notify("saving results and stopping…", timeout=self.SAVE_WAIT)
            try:
                before = self.saved_paths
                engine.send(Save(self.out_dir))
                engine.send(Stop())
                await self._await_saved(engine, before)
            except Exception as exc:  # the engine may already be gone; still close what we can
                self.log.error(f"qbench: sending Save/Stop failed: {exc!r}")
            try:
                await asyncio.to_thread(engine.close)
            except Exception as exc:
                self.log.error(f"qbench: engine.close failed: {exc!r}")
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    async def _await_saved(self, engine: EngineLink, before: tuple[str, ...]) -> None:
        """Give the engine a moment to report the final save, so the CLI can print the paths after exit."""
        deadline = self.clock() + self.SAVE_WAIT
        while self.clock() < deadline:
            snap = engine.poll()
            if snap is not None:
                self.snapshot = snap
                if snap.saved and snap.saved != before:
                    self.saved_paths = snap.saved
                    return
            await asyncio.sleep(0.05)

    def close_all(self) -> None:
        """Blocking fallback for callers (and unmount): close the engine and stop the server if still open."""
        if self.closed:
            return
        self.closed = True
        if self.engine is not None:
            try:
                self.engine.send(Stop())
            except Exception:
                pass
            try:
                self.engine.close()
            except Exception:
                pass
        if self.server is not None:
            self.server.stop()

    def on_unmount(self) -> None:
        # exits that bypass action_quit (an exception, App.exit from elsewhere) must not orphan the engine/server
        self.close_all()


def demo(argv: list[str] | None = None) -> int:
    """`python -m qbench_tui.tui.app`: the dashboard on an evolving FakeEngine (no engine, no server, no HTTP)."""
    import argparse

    from qbench_tui.tui.fake_engine import FakeEngine

    ap = argparse.ArgumentParser(prog="python -m qbench_tui.tui.app", description=demo.__doc__)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--paused", action="store_true")
    a = ap.parse_args(argv)
    app = QBenchApp(lambda: FakeEngine(evolve=True), title="qbench (fake engine)", simulated=True,
                    start_concurrency=a.concurrency, start_paused=a.paused, out_dir="/tmp/qbench-fake")
    app.run()
    if app.saved_paths:
        print("saved:", *app.saved_paths, sep="\n  ")
    return app.return_code or 0


if __name__ == "__main__":
    raise SystemExit(demo())
