"""Helpers for tests that need a simulated vLLM server in a child process (used by tests/server/conftest.py)."""
from __future__ import annotations

import collections
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimProcess:
    """A simulator in a child process (`python -m qbench_tui.server.sim`)."""

    def __init__(self, args: list[str], port: int | None, wait: float, expect_banner: bool):
        self.args = [sys.executable, "-m", "qbench_tui.server.sim", "--host", "127.0.0.1",
                     "--port", str(port or 0), *args]
        self.lines: collections.deque[str] = collections.deque(maxlen=500)
        self._banner = threading.Event()
        self.url = f"http://127.0.0.1:{port}" if port else ""
        self.port = port or 0
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=str(REPO), env=env, start_new_session=True)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if expect_banner:
            if not self._banner.wait(wait):
                self.stop()
                raise RuntimeError(f"simulator did not start: rc={self.proc.returncode} output={list(self.lines)}")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = re.search(r"listening on (http://\S+)", line)
            if m and not self._banner.is_set():
                self.url = m.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                self._banner.set()

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self._reader.join(2)
            self.proc.stdout.close()



def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll predicate() until truthy (returns its value) or raise after timeout."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            v = predicate()
            if v:
                return v
        except Exception as e:
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last_exc!r})")
