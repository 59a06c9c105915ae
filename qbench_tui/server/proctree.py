"""Process-tree control for the servers qbench starts: nothing they start may outlive qbench.

- A server runs in its own session/process group, so the terminal's Ctrl-C reaches qbench only and qbench decides
  how to stop it (SIGINT to the leader, then SIGTERM and SIGKILL to the whole group: vLLM's EngineCore is a child
  of the API server).
- A normal exit, Ctrl-C and a Python crash go through `stop()` / atexit (`stop_all`); SIGTERM and SIGHUP (a dropped
  SSH session) through `install_signal_handlers()` while no load runs (launch, discovery) and through `LoopSignals`
  while one does (the command cancels the load, saves, then stops the server); a SIGKILLed qbench through
  PR_SET_PDEATHSIG on the leader plus a tiny watchdog process that kills the group when qbench's pid goes away
  (vLLM's EngineCore has no parent-death watch of its own, so PDEATHSIG on the API server alone can orphan it).
- PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so children are always forked from the
  main thread or from one long-lived spawner thread, never from a short-lived worker thread.
"""
from __future__ import annotations

import atexit
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

STRAGGLER_GRACE = 5.0  # seconds the rest of the group gets once the leader itself has exited
USE_WATCHDOG = True  # tests turn it off to check PR_SET_PDEATHSIG on its own
_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def set_pdeathsig(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send this process `sig` when its parent (thread) dies, even by SIGKILL. False where the
    platform has no such thing."""
    prctl = _prctl()
    if prctl is None:
        return False
    return prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn doing set_pdeathsig() in the child. Everything is looked up before fork, so the child only
    makes two system calls (preexec_fn runs between fork and exec)."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    getppid, kill, getpid = os.getppid, os.kill, os.getpid
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if getppid() != parent:  # the parent died before prctl took effect
            kill(getpid(), sigterm)

    return preexec


# ---------------------------------------------------------------------------------------------------- groups


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process is in group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # kill(0) also succeeds for zombies nobody reaped yet; they hold no memory or ports
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return True
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError, OSError):
            continue
    return False


def killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_running(proc: subprocess.Popen, pgid: int) -> bool:
    if proc.poll() is None:  # also reaps the leader, so a dead one stops counting as a group member
        return True
    return group_alive(pgid)


def terminate_group(proc: subprocess.Popen, pgid: int, timeout_int: float, timeout_term: float) -> int | None:
    """SIGINT to the leader, wait for the whole group to end; then SIGTERM the group, wait; then SIGKILL it.
    Returns the leader's exit code (None if it could not be reaped)."""
    for sig, wait in ((signal.SIGINT, timeout_int), (signal.SIGTERM, timeout_term), (signal.SIGKILL, 5.0)):
        if not _group_running(proc, pgid):
            break
        if sig == signal.SIGINT and proc.poll() is None:
            # Ctrl-C for the leader alone: vLLM's API server then stops its EngineCore in order. SIGINT to the
            # whole group (what a terminal does) kills EngineCore first and vLLM logs an EngineDeadError traceback.
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
        else:
            killpg(pgid, sig)
        end = time.monotonic() + wait
        leader_gone = False
        while time.monotonic() < end and _group_running(proc, pgid):
            if not leader_gone and proc.poll() is not None:
                leader_gone = True
                # the leader is done; what is left of its group gets a short grace, not the full wait
                end = min(end, time.monotonic() + STRAGGLER_GRACE)
            time.sleep(0.05)
    code = proc.poll()
    if code is None:
        try:
            code = proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            code = None
    return code


# Runs beside the server; kills its group when qbench's pid goes away (SIGKILL, OOM killer) and exits as soon as
# the group is empty. It is its own session so the terminal's SIGHUP/SIGINT do not stop it first.
_WATCHDOG = r"""
import os, signal, sys, time
pgid, parent = int(sys.argv[1]), int(sys.argv[2])
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
def alive():
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
def running():  # like alive(), but unreaped zombies (their parent died too) do not count
    try:
        names = os.listdir("/proc")
    except OSError:
        return alive()
    for name in names:
        if name.isdigit():
            try:
                with open("/proc/" + name + "/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
while alive():
    if os.getppid() != parent:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                sys.exit(0)
            end = time.monotonic() + wait
            while time.monotonic() < end and running():
                time.sleep(0.1)
        sys.exit(0)
    time.sleep(0.25)
"""


def start_watchdog(pgid: int) -> subprocess.Popen | None:
    """The watchdog for group `pgid` (None when turned off or it could not start: PDEATHSIG still covers the
    leader)."""
    if not USE_WATCHDOG:
        return None
    try:
        return SPAWNER.popen([sys.executable, "-S", "-c", _WATCHDOG, str(pgid), str(os.getpid())],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, close_fds=True)
    except OSError:
        return None


def end_watchdog(watchdog: subprocess.Popen | None) -> None:
    if watchdog is None:
        return
    try:
        watchdog.kill()
        watchdog.wait(timeout=2.0)
    except (OSError, subprocess.TimeoutExpired):
        pass


class _Spawner:
    """One long-lived thread that forks children when popen() is called off the main thread (see module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._jobs: collections.deque = collections.deque()
        self._cv = threading.Condition(self._lock)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        if threading.current_thread() is threading.main_thread():
            return subprocess.Popen(*args, **kwargs)
        done = threading.Event()
        box: dict[str, Any] = {}
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="qbench-spawner", daemon=True)
                self._thread.start()
            self._jobs.append((args, kwargs, box, done))
            self._cv.notify()
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["proc"]

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    self._cv.wait()
                args, kwargs, box, done = self._jobs.popleft()
            try:
                box["proc"] = subprocess.Popen(*args, **kwargs)
            except BaseException as e:  # handed back to the caller's thread
                box["error"] = e
            done.set()


SPAWNER = _Spawner()

# ---------------------------------------------------------------------------------------------------- registry


class Stoppable(Protocol):
    owner_pid: int

    def stop(self) -> None: ...


_LIVE: set[Stoppable] = set()
_LIVE_LOCK = threading.Lock()
_HANDLERS_INSTALLED: dict[int, Any] = {}


def register(child: Stoppable) -> None:
    with _LIVE_LOCK:
        _LIVE.add(child)


def unregister(child: Stoppable) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(child)


def live_children() -> list[Any]:
    """Servers this process started and has not stopped. Empty in a forked child (e.g. a multiprocessing engine
    process): only the process that started a server may stop it."""
    with _LIVE_LOCK:
        return [s for s in _LIVE if s.owner_pid == os.getpid()]


def stop_all() -> None:
    """Stop every server this process started (atexit, signal handlers, crash paths)."""
    for s in live_children():
        try:
            s.stop()
        except Exception:  # one failure must not keep the others alive
            pass


atexit.register(stop_all)


def install_signal_handlers() -> bool:
    """Stop started servers on SIGTERM and SIGHUP, then behave as before (chain to the previous handler, else
    exit with 128+signal). A signal that was ignored (e.g. SIGHUP under nohup) stays ignored. Main thread only;
    returns False when it could not install."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None or sig in _HANDLERS_INSTALLED:
            continue
        prev = signal.getsignal(sig)
        if prev == signal.SIG_IGN:
            continue
        _HANDLERS_INSTALLED[sig] = prev

        def handler(signum: int, frame: Any, _prev: Any = prev) -> None:
            stop_all()  # a no-op in a forked child that inherited this handler
            if callable(_prev) and _prev not in (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler):
                _prev(signum, frame)
                return
            raise SystemExit(128 + signum)

        signal.signal(sig, handler)
    return True


def uninstall_signal_handlers() -> None:
    """Put back the handlers install_signal_handlers() replaced (tests, embedding)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, prev in list(_HANDLERS_INSTALLED.items()):
        signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        del _HANDLERS_INSTALLED[sig]


STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 130 for SIGINT, 143 SIGTERM, 129 SIGHUP."""
    return 128 + int(signum)


class LoopSignals:
    """While an asyncio loop runs, SIGINT / SIGTERM / SIGHUP call `on_signal(signum)` on that loop; nothing is
    raised anywhere. A handler that raises inside a network callback can be swallowed by the transport (the run went
    on and exited 0), so the caller decides what stopping means (cancel the load, save, exit 128+signum).

    A signal that was ignored when installed (SIGHUP under nohup) stays ignored. On uninstall the Python-level
    handlers that were there before come back (asyncio alone would leave SIG_DFL). Main thread only."""

    def __init__(self, on_signal: Callable[[int], None], signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.on_signal = on_signal
        self.signals = signals
        self.received: int | None = None  # the first signal seen
        self._loop: Any = None
        self._prev: dict[int, Any] = {}

    def _fire(self, signum: int) -> None:
        if self.received is None:
            self.received = signum
        self.on_signal(signum)

    def install(self, loop: Any = None) -> bool:
        import asyncio

        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = loop or asyncio.get_running_loop()
        for sig in self.signals:
            prev = signal.getsignal(sig)
            if prev == signal.SIG_IGN:
                continue
            self._prev[sig] = prev
            self._loop.add_signal_handler(sig, self._fire, int(sig))
        return True

    def uninstall(self) -> None:
        for sig, prev in list(self._prev.items()):
            try:
                self._loop.remove_signal_handler(sig)
            except (RuntimeError, ValueError):  # the loop is already closed
                pass
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            del self._prev[sig]

    def __enter__(self) -> LoopSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
