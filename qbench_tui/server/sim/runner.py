"""Run the simulator under uvicorn: in the foreground (CLI) or in a background thread with its own loop (tests, demo).

The socket is bound by us so port 0 works and so slow start can keep the port bound but not listening (connections
are refused, as while real vLLM loads its engine).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from ..net import url_for
from .app import CutStream, SimApp, TruthRecorder
from .faults import Faults
from .profile import Profile, load_profile

# Ground-truth records held in memory for SimHandle.truth() (thread mode: tests read a handful). A simulator in its
# own process holds none: its readers have --record-truth's file, streamed a line per request, and holding 100k
# records (each with its chunk times) grew `qbench sim` from 52 to 473 MB in two minutes at high concurrency.
THREAD_TRUTH_KEEP = 2_000


class _DropCutStreamLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, CutStream)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropCutStreamLogs) for f in logger.filters):
        logger.addFilter(_DropCutStreamLogs())


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class SimServer:
    """One simulated vLLM server: app + engine + uvicorn on a socket bound at construction."""

    def __init__(self, profile: Profile | str = "h200-fast", host: str = "127.0.0.1", port: int = 0, *,
                 model_name: str | None = None, metrics_schema: str = "v1", speed: float = 1.0, seed: int = 0,
                 record_truth: str | None = None, faults: Faults | None = None, hard_crash: bool = True,
                 log_level: str = "warning", on_listening: Callable[[SimServer], None] | None = None,
                 keep_truth: int = 0):
        self.profile = load_profile(profile)
        self.faults = faults or Faults()
        # nobody to read the truth: build none (no per-chunk bookkeeping on the hot path either)
        self.truth = TruthRecorder(record_truth, keep=keep_truth) if record_truth or keep_truth > 0 else None
        self.app = SimApp(self.profile, model_name=model_name, metrics_schema=metrics_schema, faults=self.faults,
                          speed=speed, seed=seed, truth=self.truth)
        self.host = host
        self.sock = bind_socket(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = url_for(host, self.port)
        self.hard_crash = hard_crash
        self.on_listening = on_listening
        self.listening = threading.Event()
        self.crashed = False
        _install_log_filter()
        self.config = uvicorn.Config(self.app, host=host, port=self.port, loop="none", http="httptools",
                                     lifespan="off", access_log=False, log_level=log_level,
                                     timeout_keep_alive=30, backlog=4096,
                                     # like vLLM 0.13: in-flight streams are cut, not drained, on shutdown
                                     timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(self.config)

    @property
    def model_name(self) -> str:
        return self.app.model_name

    def banner(self) -> str:
        return f"qbench sim (SIMULATED vLLM) profile={self.profile.name} listening on {self.url}"

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        f = self.faults
        if f.refuse_seconds > 0:
            await asyncio.sleep(f.refuse_seconds)
        if f.unhealthy_seconds > 0:
            self.app.healthy_at = loop.time() + f.unhealthy_seconds
        self.app.engine.start()
        self.sock.listen(4096)
        crash_handle = None
        if f.crash_after > 0:
            crash_handle = loop.call_later(f.crash_after, self._crash)
        task = loop.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started and not task.done():
            await asyncio.sleep(0.005)
        if self.server.started:
            self.listening.set()
            if self.on_listening is not None:
                self.on_listening(self)
        try:
            await task
        finally:
            if crash_handle is not None:
                crash_handle.cancel()
            await self.app.engine.stop()
            if self.truth is not None:
                self.truth.close()
            self.listening.set()

    def _crash(self) -> None:
        self.crashed = True
        if self.hard_crash:
            print(f"qbench sim: simulated crash (--crash-after {self.faults.crash_after})", file=sys.stderr,
                  flush=True)
            os._exit(1)
        # in-thread servers cannot take the process down: drop everything at once instead
        self.server.should_exit = True
        self.server.force_exit = True

    def request_stop(self) -> None:
        self.server.should_exit = True


class SimHandle:
    """A simulator running in a background thread. `.url`, `.stop()`, `.truth()`, `.metrics`, `.engine`.

    Also satisfies qbench_tui.server.handle.ServerHandle, so a face can show it like a launched server.
    """

    def __init__(self, server: SimServer, thread: threading.Thread, loop: asyncio.AbstractEventLoop):
        self.server = server
        self._thread = thread
        self._loop = loop
        self._t0 = time.monotonic()
        self._stopped = False
        self.url = server.url
        self.port = server.port
        self.model_name = server.model_name
        self.profile = server.profile
        self.command_line = (f"qbench sim --host {server.host} --port {server.port} --profile {server.profile.name} "
                             + " ".join(server.faults.cli_args())).strip() + "  # in-process thread"

    # ---- ServerHandle protocol
    @property
    def state(self) -> str:
        if self._stopped or not self._thread.is_alive():
            return "failed" if self.server.crashed else "stopped"
        if not self.server.listening.is_set() or self.server.app._unhealthy():
            return "starting"
        return "failed" if self.server.app.engine.dead else "ready"

    @property
    def returncode(self) -> int | None:
        return None if self._thread.is_alive() else (1 if self.server.crashed else 0)

    @property
    def error(self) -> str:
        if self.server.crashed:
            return f"simulated crash after {self.server.faults.crash_after} s"
        return "simulated engine died" if self.server.app.engine.dead else ""

    def phases(self) -> list:
        from ..handle import Phase

        out = [Phase("process started", 0.0)]
        p = self.profile
        out.append(Phase("KV cache", 0.0, f"KV cache {p.kv_cache_tokens:,} tokens, max concurrency "
                                          f"{p.max_concurrency:.1f}x"))
        if self.server.listening.is_set():
            out.append(Phase("API server", 0.0, self.url))
            out.append(Phase("ready", 0.0))
        return out

    def log_tail(self, n: int = 40) -> list[str]:
        return [self.server.banner()][-n:] if self.server.listening.is_set() else []

    def kv_cache_tokens(self) -> int | None:
        return self.profile.kv_cache_tokens

    def max_concurrency(self) -> float | None:
        return self.profile.max_concurrency

    @property
    def engine(self):
        return self.server.app.engine

    @property
    def metrics(self):
        return self.server.app.metrics

    def truth(self) -> list[dict[str, Any]]:
        """The newest requests' ground truth (at most the keep_truth given to start_in_thread), oldest first."""
        rec = self.server.truth
        return list(rec.records) if rec is not None else []

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped = True
        if self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self.server.request_stop)
            except RuntimeError:
                pass
            self._thread.join(timeout)
            if self._thread.is_alive():
                try:
                    self._loop.call_soon_threadsafe(setattr, self.server.server, "force_exit", True)
                except RuntimeError:
                    pass
                self._thread.join(timeout)
        try:
            self.server.sock.close()
        except OSError:
            pass

    def __enter__(self) -> SimHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def start_in_thread(profile: Profile | str = "h200-fast", host: str = "127.0.0.1", port: int = 0, *,
                    model_name: str | None = None, metrics_schema: str = "v1", speed: float = 1.0, seed: int = 0,
                    record_truth: str | None = None, wait: float = 10.0, keep_truth: int = THREAD_TRUTH_KEEP,
                    **faults: Any) -> SimHandle:
    """Start a simulator in a daemon thread and return once it accepts connections (or slow start has begun).

    `faults` are Faults fields (error_rate=0.1, cut_rate=..., metrics="garbage", ...). crash_after stops the server
    abruptly instead of exiting the process. `keep_truth`: how many of the newest requests' ground truth .truth()
    holds (the file, if any, gets every one).
    """
    server = SimServer(profile, host, port, model_name=model_name, metrics_schema=metrics_schema, speed=speed,
                       seed=seed, record_truth=record_truth, faults=Faults(**faults), hard_crash=False,
                       keep_truth=keep_truth)
    loop = _new_loop()

    def target() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve())
        finally:
            loop.close()

    thread = threading.Thread(target=target, name=f"qbench-sim-{server.port}", daemon=True)
    thread.start()
    if server.faults.refuse_seconds <= 0:
        deadline = time.monotonic() + wait
        while not server.listening.wait(0.01):
            if time.monotonic() > deadline or not thread.is_alive():
                break
        if not server.listening.is_set():
            raise RuntimeError("simulator did not start listening")
    return SimHandle(server, thread, loop)
