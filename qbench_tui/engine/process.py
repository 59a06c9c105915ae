"""The engine in its own process, so that drawing never delays a timestamp.

Commands go down a pipe that the child watches with loop.add_reader (a key press reaches the workers at once,
not at the next tick). Snapshots come back through a small queue: the child never blocks on a slow face;
if the face falls behind, snapshots are dropped and the face simply shows the newest one it gets.
"""
from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import queue
import signal
import sys

from .child import child_signals_and_loop, die_with_parent
from .snapshot import Command, EngineStatus, Save, Snapshot, Stop


@contextlib.contextmanager
def _real_stdio():
    """A face like Textual replaces sys.stdout/sys.stderr with objects whose fileno() is not a real descriptor;
    multiprocessing passes sys.stderr.fileno() to its helper processes and fails ("bad value(s) in
    fds_to_keep"). Give it /dev/null for the duration of the spawn."""
    saved = sys.stdout, sys.stderr
    devnull = None
    try:
        for name in ("stdout", "stderr"):
            try:
                ok = getattr(sys, name).fileno() >= 0
            except Exception:
                ok = False
            if not ok:
                devnull = devnull or open(os.devnull, "w")
                setattr(sys, name, devnull)
        yield
    finally:
        sys.stdout, sys.stderr = saved
        if devnull is not None:
            devnull.close()


ENGINE_LOG = "qbench-engine.log"


def _quiet_child_output(log_dir: str) -> None:
    """The child shares the terminal the dashboard draws on: its stray output goes to a log file instead."""
    try:
        os.makedirs(log_dir, exist_ok=True)
        fd = os.open(os.path.join(log_dir, ENGINE_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _child_main(cfg, cmd_conn, snaps, quiet: bool = False) -> None:
    die_with_parent()
    # The face starts this process daemonic (multiprocessing ends it if the face exits without closing it), and a
    # daemonic process may not start children: the client shards (`--client-procs`) are this process's. They die
    # with it as it dies with the face (PDEATHSIG both ways), and the session closes them whenever it stops.
    mp.current_process().daemon = False
    if quiet:
        _quiet_child_output(cfg.out_dir)
    child_signals_and_loop()  # Ctrl-C and SIGHUP: the face sends Save and Stop instead
    from .session import EngineSession

    def emit(snap: Snapshot) -> None:
        try:
            if snap.status in (EngineStatus.STOPPED, EngineStatus.ERROR) or snap.saved:
                snaps.put(snap, timeout=2.0)  # replies the face waits for (and a last word it must not miss)
            else:
                snaps.put_nowait(snap)
        except queue.Full:
            pass

    async def main() -> None:
        session = EngineSession(cfg, emit)
        loop = asyncio.get_running_loop()

        def reply_saved() -> None:
            session.refresh_rows()
            emit(session.snapshot())

        def on_command() -> None:
            try:
                while cmd_conn.poll():
                    cmd = cmd_conn.recv()
                    session.handle(cmd)
                    if isinstance(cmd, Save):
                        reply_saved()
            except (EOFError, OSError):
                session.handle(Stop())  # the face is gone
                loop.remove_reader(cmd_conn.fileno())

        loop.add_reader(cmd_conn.fileno(), on_command)
        # the face died (PDEATHSIG) or the whole group was told to stop: the session saves as it stops
        loop.add_signal_handler(signal.SIGTERM, lambda: session.handle(Stop()))
        await session.run()

    asyncio.run(main())


class EngineProcess:
    """EngineLink over a child process: send(), poll(), close()."""

    def __init__(self, cfg, quiet: bool = False) -> None:
        """quiet: the face owns the terminal (the dashboard); the child's stray output goes to a log file."""
        ctx = mp.get_context("spawn")  # never fork a process that may hold a terminal UI's state
        with _real_stdio():
            self._cmd_r, self._cmd_w = ctx.Pipe(duplex=False)
            self._snaps = ctx.Queue(maxsize=32)
            self._proc = ctx.Process(target=_child_main, args=(cfg, self._cmd_r, self._snaps, quiet),
                                     daemon=True, name="qbench-engine")
            self._proc.start()
        self.last: Snapshot | None = None
        self._closed = False
        self._log = os.path.join(cfg.out_dir, ENGINE_LOG) if quiet else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.is_alive()

    def send(self, cmd: Command) -> None:
        if self._closed:
            return
        try:
            self._cmd_w.send(cmd)
        except (BrokenPipeError, OSError):
            pass

    def poll(self) -> Snapshot | None:
        newest = None
        while True:
            try:
                newest = self._snaps.get_nowait()
            except (queue.Empty, OSError, EOFError, ValueError):
                break
        if newest is not None:
            self.last = newest
        return newest

    def wait_for(self, pred, timeout: float = 5.0) -> Snapshot | None:
        """Block until a snapshot satisfies pred (for headless callers and tests)."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                snap = self._snaps.get(timeout=max(0.01, end - time.monotonic()))
            except (queue.Empty, OSError, EOFError):
                continue
            self.last = snap
            if pred(snap):
                return snap
        return None

    def close(self, timeout: float = 8.0) -> None:
        if self._closed:
            return
        import time

        self.send(Stop())
        end = time.monotonic() + timeout
        # keep draining while it exits: a child whose queue pipe is full cannot flush and exit
        while self._proc.is_alive() and time.monotonic() < end:
            self.poll()
            self._proc.join(0.05)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(2.0)
        if self._proc.is_alive():  # pragma: no cover - a wedged child
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.join(1.0)
        self._closed = True
        self.poll()
        for c in (self._cmd_w, self._cmd_r):
            c.close()
        self._snaps.cancel_join_thread()
        self._snaps.close()
        self._drop_empty_log()

    def _drop_empty_log(self) -> None:
        """The log exists for stray output; a run that had none should not leave an empty file with its results."""
        if self._log is None:
            return
        try:
            if os.path.getsize(self._log) == 0:
                os.unlink(self._log)
        except OSError:
            pass
