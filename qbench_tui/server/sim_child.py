"""The simulator (`python -m qbench_tui.server.sim`) in a child process, as a ServerHandle: `qbench demo` and
`qbench tui --sim` show its startup like a launched vLLM's, and the tests run it the same way."""
from __future__ import annotations

import os
import re
import shlex
import sys
import threading

from qbench_tui.server import phases as _ph
from qbench_tui.server.handle import Phase
from qbench_tui.server.net import free_port, url_for
from qbench_tui.server.supervisor import ChildServer, LaunchError

_BANNER = re.compile(r"listening on https?://\S+:(\d+)")


class SimServer(ChildServer):
    """port=None picks a free port now (the URL is known at once); port=0 lets the simulator bind one itself
    (no race with another process) and the URL is learned from its banner."""

    what = "simulator"
    use_watchdog = False  # one process, no children: PDEATHSIG covers it
    health_interval = 0.05  # it is up in about a second; a 0.5 s poll would be a third of that
    stop_timeouts = (3.0, 3.0)
    log_ring = 500

    def __init__(self, profile: str, host: str = "127.0.0.1", port: int | None = None,
                 extra: list[str] | None = None, startup_timeout: float = 60.0) -> None:
        self.host = host
        self.port = free_port(host) if port is None else port
        super().__init__(url_for(host, self.port) if self.port else "", startup_timeout)
        self.profile = profile
        extra = list(extra or [])
        self.argv = [sys.executable, "-m", "qbench_tui.server.sim", "--host", host, "--port", str(self.port),
                     "--profile", profile, *extra]
        self.command_line = shlex.join(["qbench", "sim", *self.argv[3:]])
        self.config_label = " ".join([f"simulator profile {profile}", *extra])

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        return list(self.argv), dict(os.environ, PYTHONUNBUFFERED="1")

    def start(self) -> None:
        """Spawn, and watch for readiness in the background (so `state` turns ready with nobody waiting, as the
        dashboard's startup screen expects); wait_ready() may still be called."""
        super().start()
        with self._cv:
            self._tracker.add(Phase(_ph.PROCESS_STARTED, 0.0, f"pid {self.pid}"))
        threading.Thread(target=self._watch, name="simulator-ready", daemon=True).start()

    def _watch(self) -> None:
        try:
            self.wait_ready()
        except LaunchError:
            pass  # state, error and the log tail say what happened

    def _on_line(self, line: str, t: float) -> None:
        if self.port == 0:
            m = _BANNER.search(line)
            if m:  # the banner names the listening address (0.0.0.0, say); clients need the reachable one
                self.port = int(m.group(1))
                self.url = url_for(self.host, self.port)

    def _ready_detail(self) -> str:
        return self.url
