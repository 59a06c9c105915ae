"""One server in a child process qbench owns: start it, poll /health while watching its return code, fail with
the exit code and the log tail, stop it (SIGINT, SIGTERM, SIGKILL to the whole group; idempotent).

Shaped like vLLM's own test helper `RemoteOpenAIServer` (tests/utils.py), plus what a long-lived supervisor needs
(proctree.py: own session, PDEATHSIG, a watchdog, the registry atexit and signal handlers stop). Subclasses say
what to run (`_prepare`) and may watch each output line (`_on_line`): LaunchedServer (vLLM; phases, log file,
secrets, restart with other flags) and SimServer (the simulator). Together with those hooks this implements
handle.ServerHandle.

stdout is drained continuously: a full pipe would stall the server.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from qbench_tui.server import phases as _ph
from qbench_tui.server import proctree
from qbench_tui.server.handle import Phase, ServerState
from qbench_tui.server.net import health_ok

TAIL_ON_ERROR = 40
_LIVE_STATES = (ServerState.STARTING, ServerState.READY)


class LaunchError(RuntimeError):
    """The server could not be started or did not become ready. str(e) is the whole user-facing message."""


def _signame(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _how(code: int) -> str:
    return f"was killed by {_signame(code)}" if code < 0 else f"exited with code {code}"


class ChildServer:
    """A server process qbench started. Subclasses set `what` and implement `_prepare`."""

    what = "server"  # names it in messages: "vLLM exited with code 1 during startup"
    restartable = False
    use_watchdog = True  # a server with children of its own needs it (see proctree)
    log_ring = 2000
    health_interval = 0.5  # seconds between /health polls while starting
    stop_timeouts = (15.0, 10.0)  # seconds SIGINT, then SIGTERM, get before the next step
    timeout_hint = ""  # appended to the startup-timeout message

    def __init__(self, url: str, startup_timeout: float = 60.0) -> None:
        self.url = url
        self.command_line = ""
        self.config_label = ""
        self.startup_timeout = startup_timeout
        self.pid: int | None = None
        self.pgid: int | None = None
        self.owner_pid = os.getpid()  # a forked child (multiprocessing) must never stop its parent's server
        self._lock = threading.RLock()  # start / stop / restart, one at a time
        self._cv = threading.Condition()  # new log lines / phases
        self._proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=self.log_ring)
        self._tracker = _ph.PhaseTracker()
        self._state = ServerState.STOPPED
        self._error = ""
        self._returncode: int | None = None
        self._t0 = 0.0
        self._stopping = False
        self._stop_depth = 0

    # -- what subclasses provide -------------------------------------------------------------------------

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        """Checks before a start (raise through self._refuse), then the argv and the environment to run."""
        raise NotImplementedError

    def _spawn_failed(self) -> None:
        """Undo what _prepare set up when the process could not be started."""

    def _redact(self, line: str) -> str:
        return line

    def _on_line(self, line: str, t: float) -> None:
        """Each output line (cleaned, redacted), in the reader thread, before it is stored."""

    def _after_stop(self) -> None:
        """The process group is gone (e.g. close a log file)."""

    def _reconfigure(self, overrides: Mapping[str, Any]) -> None:
        raise LaunchError(f"the {self.what} cannot be restarted with other flags")

    def _where(self) -> str:
        """Where the whole log is, for error messages ("" when only the tail is kept)."""
        return ""

    # -- ServerHandle --------------------------------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        self._check_exit()
        return self._state

    @property
    def returncode(self) -> int | None:
        self._check_exit()
        return self._returncode

    @property
    def error(self) -> str:
        self._check_exit()
        return self._error

    def phases(self) -> list[Phase]:
        with self._cv:
            return list(self._tracker.phases)

    def log_tail(self, n: int = 40) -> list[str]:
        with self._cv:
            return list(self._lines)[-n:] if n > 0 else []

    def kv_cache_tokens(self) -> int | None:
        with self._cv:
            return self._tracker.kv_tokens

    def max_concurrency(self) -> float | None:
        with self._cv:
            return self._tracker.max_conc[1] if self._tracker.max_conc else None

    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self._t0 if self._t0 else 0.0

    # -- start -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Check, then spawn. Returns at once; use wait_ready() for readiness."""
        with self._lock:
            if self.alive():
                raise LaunchError(f"{self.what} is already running (pid {self.pid})")
            if self._proc is not None:
                self.stop()  # a previous run that died on its own: reap it, end its watchdog
            argv, env = self._prepare()
            with self._cv:
                self._lines.clear()
                self._tracker = _ph.PhaseTracker()
            self._state, self._error, self._returncode = ServerState.STARTING, "", None
            self._stopping = False
            self._t0 = time.monotonic()
            try:
                self._proc = proctree.SPAWNER.popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True, preexec_fn=proctree.pdeathsig_preexec(), close_fds=True,
                )
            except OSError as e:
                self._spawn_failed()
                self._refuse(f"could not start {argv[0]}: {e.strerror or e}")
            self.pid = self.pgid = self._proc.pid  # start_new_session: the child leads its own group
            self.owner_pid = os.getpid()
            self._tracker.started_detail = f"pid {self.pid}"
            proctree.register(self)
            if self.use_watchdog:
                self._watchdog = proctree.start_watchdog(self.pgid)
            self._reader = threading.Thread(target=self._read, args=(self._proc,), name=f"{self.what}-log",
                                            daemon=True)
            self._reader.start()

    def _refuse(self, msg: str) -> None:
        self._state, self._error = ServerState.FAILED, msg
        err = LaunchError(msg)
        err.__suppress_context__ = True  # the message says it all; no "during handling of OSError" noise
        raise err

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            # tqdm redraws with \r: keep the latest state of the bar
            shown = text.rsplit("\r", 1)[-1] if "\r" in text else text
            # colour codes would be noise in a log file, the dashboard's log panel and error messages
            shown = self._redact(_ph.strip_ansi(shown))
            t = self.elapsed()
            self._on_line(shown, t)
            with self._cv:
                self._lines.append(shown)
                self._tracker.feed(shown, t)
                self._cv.notify_all()
        try:
            proc.stdout.close()
        except OSError:
            pass
        with self._cv:
            self._cv.notify_all()

    def _check_exit(self) -> None:
        """Notice a child that died on its own (crash after ready) without anyone polling."""
        proc = self._proc
        if proc is None or self._stopping or self._state not in _LIVE_STATES:
            return
        code = proc.poll()
        if code is None:
            return
        with self._lock:
            # self._proc may be a successor by now: restart() holds the lock while this thread waits for it
            if self._proc is not proc or self._stopping or self._state not in _LIVE_STATES:
                return
            self._returncode = code
            when = "during startup" if self._state == ServerState.STARTING else "while serving"
            self._error = f"{self.what} {_how(code)} {when}"
            self._state = ServerState.FAILED
        # reap the rest of the group (an orphaned vLLM EngineCore would hold GPU memory)
        threading.Thread(target=self._reap, args=(proc,), name=f"{self.what}-reap", daemon=True).start()

    def _reap(self, proc: subprocess.Popen) -> None:
        """stop(), but only for the process that died: a restart() may have started a new one before this thread
        got the lock, and stop() acts on whatever runs now (seen: the new server SIGINTed during its startup)."""
        with self._lock:
            if self._proc is proc:
                self.stop()

    # -- readiness -------------------------------------------------------------------------------------

    def _ready_detail(self) -> str:
        return "/health 200"

    def wait_ready(self, timeout: float | None = None,
                   on_phase: Callable[[Phase], None] | None = None) -> None:
        """Block until the first 200 from /health; on_phase gets each phase (in this thread) as it is seen.
        Raises LaunchError (and stops the process) on exit, timeout or stop()."""
        limit = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delivered: dict[str, str] = {}
        next_poll = 0.0
        poll_now = (_ph.API_SERVER, _ph.READY)
        polled_for = ""

        def deliver(final: bool = False) -> None:
            if on_phase is None:
                return
            seen = self.phases()
            now = self.elapsed()
            for i, ph in enumerate(seen):
                # The newest phase is held back briefly: its detail often grows on the very next line (KV cache
                # size, then max concurrency; load time, then GiB). Delivered again only if it grows later.
                if not final and i == len(seen) - 1 and now - ph.at < 0.3 and ph.name != _ph.READY:
                    break
                if delivered.get(ph.name) != ph.detail:
                    delivered[ph.name] = ph.detail
                    on_phase(ph)

        while True:
            deliver()
            proc = self._proc
            if proc is None:
                raise LaunchError(f"{self.what} was not started")
            if self._state == ServerState.READY and proc.poll() is None:
                deliver(final=True)
                return  # another thread saw it ready
            if self._state == ServerState.STOPPED or (self._stopping and self._state != ServerState.FAILED):
                raise LaunchError(f"{self.what} was stopped before it became ready")
            code = proc.poll()
            if code is not None:
                msg = self._fail_exit(code)
                deliver(final=True)
                raise LaunchError(msg)
            now = time.monotonic()
            seen = self.phases()
            if seen and seen[-1].name in poll_now and polled_for != seen[-1].name:
                polled_for, next_poll = seen[-1].name, now  # it says it is up: ask now, not at the next poll
            if now >= next_poll:
                next_poll = now + self.health_interval
                if self.url and health_ok(self.url, timeout=min(2.0, max(0.2, deadline - now))):
                    with self._cv:
                        self._tracker.add(Phase(_ph.READY, self.elapsed(), self._ready_detail()))
                    with self._lock:
                        if self._state == ServerState.STARTING:
                            self._state = ServerState.READY
                    deliver(final=True)
                    return
            if time.monotonic() >= deadline:
                msg = self._fail_timeout(limit)
                deliver(final=True)
                raise LaunchError(msg)
            with self._cv:
                self._cv.wait(timeout=max(0.01, min(0.1, next_poll - time.monotonic())))

    def _tail_text(self, lines: list[str]) -> str:
        return f"\n--- last {len(lines)} log lines{self._where()} ---\n" + "\n".join(lines)

    def _fail_exit(self, code: int) -> str:
        if self._stopping and self._state != ServerState.FAILED:
            return f"{self.what} was stopped before it became ready"  # by stop() from another thread
        if self._reader is not None:
            self._reader.join(timeout=3.0)  # take in its last words
        lines = self.log_tail(TAIL_ON_ERROR)
        errors = [ln for ln in lines if _ph.is_error_line(ln)]
        msg = f"{self.what} {_how(code)} during startup"
        if errors:
            msg += f": {_ph.clean(errors[-1])}"
        msg += self._tail_text(lines)
        with self._lock:
            self._returncode = code
            self._state, self._error = ServerState.FAILED, msg
        self.stop()
        return msg

    def _fail_timeout(self, limit: float) -> str:
        elapsed = self.elapsed()
        last = self.phases()
        at = f"; last phase: {last[-1].name} at {last[-1].at:.1f} s" if last else "; it printed nothing"
        msg = (f"{self.what} did not become ready within {limit:g} s (waited {elapsed:.1f} s{at}); stopped it."
               f"{' ' + self.timeout_hint if self.timeout_hint else ''}"
               + self._tail_text(self.log_tail(TAIL_ON_ERROR)))
        self.stop()
        with self._lock:
            self._state, self._error = ServerState.FAILED, msg
        return msg

    # -- stop ------------------------------------------------------------------------------------------

    def stop(self, timeout_int: float | None = None, timeout_term: float | None = None) -> None:
        """SIGINT to the leader, wait for the whole group to end; then SIGTERM the group, wait; then SIGKILL
        the group. Idempotent; safe from any thread."""
        t_int = self.stop_timeouts[0] if timeout_int is None else timeout_int
        t_term = self.stop_timeouts[1] if timeout_term is None else timeout_term
        with self._lock:
            if self._stop_depth:
                return  # re-entered from a signal handler while this thread was already stopping
            self._stop_depth += 1
            try:
                self._stop(t_int, t_term)
            finally:
                self._stop_depth -= 1

    def _stop(self, timeout_int: float, timeout_term: float) -> None:
        proc = self._proc
        if os.getpid() != self.owner_pid:
            return  # a forked child (multiprocessing) must never stop its parent's server
        if proc is None:
            if self._state != ServerState.FAILED:
                self._state = ServerState.STOPPED
            return
        self._stopping = True
        code = proctree.terminate_group(proc, self.pgid or proc.pid, timeout_int, timeout_term)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2.0)
        self._after_stop()
        proctree.end_watchdog(self._watchdog)
        self._watchdog = None
        if self._returncode is None:
            self._returncode = code
        if self._state != ServerState.FAILED:
            self._state = ServerState.STOPPED
        proctree.unregister(self)
        with self._cv:
            self._cv.notify_all()

    # -- restart / context manager -----------------------------------------------------------------------

    def restart(self, overrides: Mapping[str, Any]) -> None:
        """Stop, apply flag overrides, start again; call wait_ready() afterwards. Raises LaunchError when this
        server cannot take other flags (see `restartable`)."""
        if not self.restartable:
            raise LaunchError(f"the {self.what} cannot be restarted with other flags")
        with self._lock:  # one step for other threads: none sees the stopped gap or acts on the old process
            self.stop()
            self._reconfigure(overrides)
            self._state, self._error, self._returncode = ServerState.STOPPED, "", None
            self.start()

    def __enter__(self) -> ChildServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} pid={self.pid} state={self._state}>"
