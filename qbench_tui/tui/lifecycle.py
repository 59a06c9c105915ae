"""How the dashboard starts and ends (mixed into QBenchApp): waiting for a server that is not up yet, opening the
engine off the event loop, stopping on SIGINT / SIGTERM / SIGHUP as on `q`, and the exit status with its reason.

Every way out goes through one shutdown (save, stop the load, close the engine, stop the server). The engine also
saves whenever it stops (engine/session.py), so an exit that never reaches shutdown (Textual panicking when the
terminal vanished first) still leaves the results on disk. Nothing here draws."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from textual.worker import Worker, WorkerState

from qbench_tui.engine.server_wait import ServerNotReady, WaitStatus
from qbench_tui.engine.snapshot import Pause, ServerConfigChanged, SetConcurrency, Snapshot
from qbench_tui.server.handle import ServerState
from qbench_tui.server.proctree import LoopSignals
from qbench_tui.tui.link import close_quietly, open_engine, save_and_close
from qbench_tui.tui.outcome import Outcome

ENGINE_WORKER = "engine-start"

# blocking, in a worker thread: returns once the server answers; raises ServerNotReady when it never will (or the
# stop event is set); reports each wait through the callback (engine/server_wait.wait_until_up)
WaitServer = Callable[[Callable[[WaitStatus], None], threading.Event], object]


class Lifecycle:
    """The App declares the reactives this sets (`waiting`, `engine_failed`, `engine_up`): Textual binds them by
    the class that owns them."""

    SAVE_WAIT = 3.0  # on quit, how long to wait for the engine to report the saved paths

    def _init_lifecycle(self, wait_server: WaitServer | None) -> None:
        self._lc_wait_server = wait_server
        self._lc_stop_waiting = threading.Event()
        self._lc_wait_status: WaitStatus | None = None
        self._lc_loop: asyncio.AbstractEventLoop | None = None
        self._lc_signals: LoopSignals | None = None
        self._lc_signal_task: asyncio.Task | None = None
        self.outcome = Outcome()
        self.exit_reason = ""  # the line for stderr once the screen is restored ("" for a clean session)

    def _install_signals(self) -> None:
        self._lc_loop = asyncio.get_running_loop()
        self._lc_signals = LoopSignals(self._got_signal)
        self._lc_signals.install()

    def _uninstall_signals(self) -> None:
        if self._lc_signals is not None:
            self._lc_signals.uninstall()
            self._lc_signals = None

    def _got_signal(self, signum: int) -> None:
        """SIGTERM, SIGHUP (a closed terminal, a killed tmux session) and a real SIGINT end the session as `q`
        does, with the signal's exit status. A second signal does not cut the save short."""
        if self.outcome.signum is None:
            self.outcome.signum = signum
        if self._lc_signal_task is None:
            self._lc_signal_task = asyncio.get_running_loop().create_task(self.quit_session())

    # ------------------------------------------------------------------ start
    def _start_engine(self) -> None:
        self.run_worker(self._create_engine(), name=ENGINE_WORKER, exit_on_error=False, exclusive=True)

    def _waited(self, status: WaitStatus) -> None:  # from the waiting thread
        loop = self._lc_loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._show_wait, status)
            except RuntimeError:  # the app's loop closed meanwhile: nobody to tell
                pass

    def _show_wait(self, status: WaitStatus) -> None:
        if not self.closed:
            self._lc_wait_status = status
            self.waiting = status.line

    async def _create_engine(self) -> None:
        if self._lc_wait_server is not None:
            try:
                await asyncio.to_thread(self._lc_wait_server, self._waited, self._lc_stop_waiting)
            except ServerNotReady as e:
                if not self.closed:
                    self._no_engine(str(e), never_up=True)
                return
            self._lc_wait_server = None  # it answered: a later start (after a failed launch) needs no wait
            self.waiting = ""
        engine = await asyncio.to_thread(open_engine, self._engine_factory, lambda: self.closed)
        if engine is None:
            return
        if self.closed:  # closed between the thread's check and now
            await asyncio.to_thread(engine.close)
            return
        self.engine = engine
        self.engine_up = True
        label = self.server.config_label if self.server is not None else ""
        if label:
            self._send(ServerConfigChanged(label))
        if self.start_rate:  # --request-rate: the open loop from the start (the target kept for `o`)
            self._send(self.open_loop_command(self.start_rate))
        else:
            self._send(SetConcurrency(self.control.target))
        if self.start_paused:
            self._send(Pause())

    def _no_engine(self, why: str, never_up: bool = False) -> None:
        self.engine_error = why
        if never_up:
            self.outcome.never_up = why
        else:
            self.outcome.engine_failed = why
        self.waiting = ""
        self.engine_failed = why
        self.notify(why, severity="error", timeout=30)

    def _worker_state(self, event: Worker.StateChanged) -> None:
        """All worker failures land here (STYLE §2.13); QBenchApp routes Worker.StateChanged to it."""
        worker = event.worker
        if worker.state != WorkerState.ERROR:
            return
        if worker.name == ENGINE_WORKER:
            self._no_engine(f"engine failed to start: {worker.error}")
        else:
            self.engine_error = f"{worker.name} failed: {worker.error}"
            self.notify(self.engine_error, severity="error", timeout=30)

    # ------------------------------------------------------------------ end
    async def quit_session(self) -> None:
        await self.shutdown()
        code, self.exit_reason = self.exit_status()
        self.exit(return_code=code)

    def exit_status(self) -> tuple[int, str]:
        return self.outcome.result(self.snapshot)

    def _note_server_end(self) -> None:
        """Before qbench stops the server itself: did it end on its own?"""
        server = self.server
        if server is None or self.restart_flow.stopping or self.outcome.server_died:
            return
        if server.state in (ServerState.FAILED, ServerState.STOPPED):
            rc = server.returncode
            self.outcome.server_died = (f"the server {server.state} (exit code {rc if rc is not None else '?'})"
                                        + (f": {server.error}" if server.error else ""))

    def _begin_close(self) -> None:
        self.closed = True
        self._lc_stop_waiting.set()
        self._note_server_end()
        if self.engine is None and self._lc_wait_status is not None and not self.outcome.never_up:
            self.outcome.never_up = self._lc_wait_status.gave_up

    def _took(self, last: Snapshot | None) -> None:
        if last is not None and (self.snapshot is None or last.t >= self.snapshot.t):
            self.snapshot = last
            self.saved_paths = last.saved or self.saved_paths

    async def shutdown(self) -> None:
        """Save, stop the load, close the engine, stop the server. Idempotent; blocking calls run in threads."""
        if self.closed:
            return
        self._begin_close()
        engine = self.engine
        if engine is not None:
            self.notify("saving results and stopping…", timeout=self.SAVE_WAIT)
            self._took(await save_and_close(engine, self.out_dir, self.saved_paths, self.SAVE_WAIT, self.log.error))
            self._took(getattr(engine, "last", None))  # the engine's last word, drained while it closed
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    def close_all(self) -> None:
        """Blocking fallback for callers (and unmount): close the engine (which saves as it stops) and stop the
        server if still open."""
        if self.closed:
            return
        self._begin_close()
        if self.engine is not None:
            close_quietly(self.engine)
            self._took(getattr(self.engine, "last", None))
        if self.server is not None:
            self.server.stop()
