"""The simulator in a child process for tests (tests/server/conftest.py's sim_server), and a deadline poll."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from qbench_tui.server.sim_child import SimServer

REPO = Path(__file__).resolve().parents[1]


class SimProcess(SimServer):
    """The product's SimServer child, plus what the simulator tests read: every output line and the exit."""

    @property
    def lines(self) -> list[str]:
        return self.log_tail(self.log_ring)

    def wait(self, timeout: float) -> int | None:
        """The exit code once the process has ended on its own, None if it still runs after `timeout`."""
        proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


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
