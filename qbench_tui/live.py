"""`qbench tui` and `qbench demo`: wire a server (attached, launched or simulated), the engine process and the
dashboard together. The UI process only draws; the engine and the simulator each run in their own process."""
from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from .server.handle import Phase


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pdeathsig() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
    except OSError:  # pragma: no cover
        pass


class SimServer:
    """The simulator in a child process, as a ServerHandle (so the dashboard's startup screen shows it)."""

    def __init__(self, profile: str, host: str = "127.0.0.1", port: int | None = None,
                 extra: list[str] | None = None) -> None:
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.argv = [sys.executable, "-m", "qbench_tui.server.sim", "--host", host, "--port", str(self.port),
                     "--profile", profile, *(extra or [])]
        self.command_line = " ".join(self.argv[2:])
        self._lines: collections.deque[str] = collections.deque(maxlen=500)
        self._phases: list[Phase] = []
        self._state = "starting"
        self._error = ""
        self._t0 = time.monotonic()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig, text=True, bufsize=1)
        self._phases.append(Phase("process started", 0.0, f"pid {self.proc.pid}"))
        threading.Thread(target=self._read, daemon=True, name="sim-log").start()
        threading.Thread(target=self._watch, daemon=True, name="sim-health").start()

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self._lines.append(line.rstrip("\n"))

    def _watch(self) -> None:
        import httpx

        while self._state == "starting":
            if self.proc and self.proc.poll() is not None:
                self._state, self._error = "failed", f"simulator exited with code {self.proc.returncode}"
                return
            try:
                if httpx.get(self.url + "/health", timeout=0.5).status_code == 200:
                    self._phases.append(Phase("ready", time.monotonic() - self._t0, self.url))
                    self._state = "ready"
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while self._state == "starting" and time.monotonic() < end:
            time.sleep(0.02)
        if self._state != "ready":
            raise RuntimeError(self._error or "simulator did not become ready\n" + "\n".join(self.log_tail(20)))

    @property
    def state(self) -> str:
        return self._state

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def error(self) -> str:
        return self._error

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def phases(self) -> list[Phase]:
        return list(self._phases)

    def log_tail(self, n: int = 40) -> list[str]:
        return list(self._lines)[-n:]

    def kv_cache_tokens(self) -> int | None:
        return None

    def max_concurrency(self) -> float | None:
        return None

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            if self._state != "failed":
                self._state = "stopped"
            return
        for sig, wait in ((signal.SIGINT, 3.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._state = "stopped"


def _engine_factory(args, cfg, url_fn, api_key, simulated: bool, server_label: str = ""):
    def factory():
        import asyncio

        from .engine.process import EngineProcess
        from .engine.records import RequestSpec
        from .engine.session import SessionConfig
        from .headless import discover

        url = url_fn().rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        model = cfg.load.model
        if not model:
            _, models = asyncio.run(discover(url, headers))
            model = models[0] if models else ""
        lc = cfg.load
        spec = RequestSpec(url=url, model=model, endpoint=lc.endpoint, max_tokens=lc.max_tokens,
                           temperature=lc.temperature, ignore_eos=lc.ignore_eos, api_key=api_key,
                           read_timeout=lc.timeout)
        sc = SessionConfig(spec=spec, prompt=lc.prompt, prompts_file=lc.prompts_file, prompt_len=lc.prompt_len,
                           unique_prefix=lc.unique_prefix, window_s=lc.window_s, out_dir=cfg.sweep.out,
                           simulated=simulated, server_config=server_label)
        return EngineProcess(sc, quiet=True)

    return factory


def _cfg(args: argparse.Namespace):
    from .cli import _config_from

    extra = {"sweep.out": getattr(args, "out", None), "load.window_s": getattr(args, "window", None),
             "load.concurrency": getattr(args, "concurrency", None)}
    return _config_from(args, extra)


def _run_app(factory, server, cfg, args, simulated: bool, title: str) -> int:
    from .tui.app import QBenchApp

    app = QBenchApp(factory, server=server, title=title, simulated=simulated, out_dir=cfg.sweep.out,
                    start_concurrency=cfg.load.concurrency, start_paused=bool(getattr(args, "paused", False)))
    try:
        app.run()
    finally:
        app.close_all()  # blocking fallback; a no-op when the app already shut everything down
        if server is not None:
            server.stop()
    if app.saved_paths:
        print("saved: " + "\n       ".join(app.saved_paths))
    return int(app.return_code or 0)


def run_demo(args: argparse.Namespace) -> int:
    from .config import resolve_api_key

    cfg = _cfg(args)
    api_key, _ = resolve_api_key(getattr(args, "api_key", None))
    sim = SimServer(args.profile)
    sim.start()
    factory = _engine_factory(args, cfg, lambda: sim.url, api_key, simulated=True,
                              server_label=f"simulator profile {args.profile}")
    return _run_app(factory, sim, cfg, args, True, f"qbench demo — SIMULATED vLLM ({args.profile})")


def run_tui(args: argparse.Namespace) -> int:
    from .cli import Usage
    from .config import resolve_api_key

    cfg = _cfg(args)
    api_key, _ = resolve_api_key(getattr(args, "api_key", None))
    given = [x for x in (getattr(args, "url", None), getattr(args, "launch", None), getattr(args, "sim", None)) if x]
    if len(given) > 1:
        raise Usage("give one of --url, --launch or --sim")
    if getattr(args, "sim", None):
        sim = SimServer(args.sim)
        sim.start()
        factory = _engine_factory(args, cfg, lambda: sim.url, api_key, True, f"simulator profile {args.sim}")
        return _run_app(factory, sim, cfg, args, True, f"qbench — SIMULATED vLLM ({args.sim})")
    if getattr(args, "launch", None):
        from .server.launcher import LaunchedServer, LaunchError

        server = LaunchedServer(cfg.server, cfg.sweep.out)
        try:
            server.start()
        except LaunchError as e:
            raise Usage(str(e)) from None

        def wait() -> None:
            try:
                server.wait_ready()
            except LaunchError:
                pass  # the startup screen shows state "failed", the exit code and the log tail

        threading.Thread(target=wait, daemon=True, name="vllm-ready").start()
        factory = _engine_factory(args, cfg, lambda: server.url, api_key, False,
                                  getattr(server, "config_label", ""))
        return _run_app(factory, server, cfg, args, False, f"qbench — {cfg.server.model}")
    url = getattr(args, "url", None) or cfg.load.url
    if not url:
        raise Usage("no server: give --url URL, --launch CONFIG or --sim PROFILE (or run `qbench demo`)")
    factory = _engine_factory(args, cfg, lambda: url, api_key, False)
    return _run_app(factory, None, cfg, args, False, f"qbench — {url}")
