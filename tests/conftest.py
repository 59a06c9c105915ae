"""Shared fixtures: a real simulator process on a free 127.0.0.1 port (see qbench_tui.server.sim_child.SimServer)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qbench_tui.server.sim_child import SimServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sim_proc():
    """Factory: sim_proc(profile="h200-fast", *extra_flags) -> a ready SimServer; all are stopped at teardown."""
    started: list[SimServer] = []

    def start(profile: str = "h200-fast", *extra: str) -> SimServer:
        s = SimServer(profile, extra=list(extra))
        started.append(s)
        s.start()
        s.wait_ready(60)
        return s

    yield start
    for s in started:
        s.stop()


def run_qbench(*args: str, timeout: float = 180, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("QBENCH_API_KEY", None)
    e.pop("OPENAI_API_KEY", None)
    e.update(env or {})
    # a fresh working folder: `qbench run` saves into ./results by default, which must not be the checkout
    cwd = kw.get("cwd") or tempfile.mkdtemp(prefix="qbench-test-")
    return subprocess.run([sys.executable, "-m", "qbench_tui.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=cwd)


@pytest.fixture
def term(tmp_path):
    """Factory: term(args, env=None) -> a qbench command in a real tmux terminal (tests/e2e/test_tmux_stops.Term);
    whatever it started is killed and the session closed at teardown, pass or fail."""
    import psutil

    from tests.e2e.test_tmux_stops import Term

    made: list[Term] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Term:
        t = Term(tmp_path, args, env)
        made.append(t)
        return t

    yield start
    for t in made:
        for p in t.procs():  # a failed test must not leave a load running
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        t.close()
