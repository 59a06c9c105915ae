"""The open-file limit: qbench raises its soft limit to what the concurrency needs (up to the hard limit), and
refuses a level that cannot fit in one line, before anything starts. Real subprocesses under a low limit."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile

from tests.fakes.scripted_sse import ScriptedSSEServer


def _qbench(*args: str, soft: int, hard: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("QBENCH_API_KEY", "OPENAI_API_KEY")}
    return subprocess.run([sys.executable, "-m", "qbench_tui.cli", *args], capture_output=True, text=True,
                          timeout=180, env=env, cwd=tempfile.mkdtemp(prefix="qbench-test-"),
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


def test_a_level_over_the_hard_limit_is_refused_before_it_starts(tmp_path):
    with ScriptedSSEServer() as srv:
        r = _qbench("run", "--url", srv.url, "-c", "300", "--requests", "300", soft=256, hard=256)
        s = _qbench("sweep", "--url", srv.url, "--levels", "2,300", "--out", str(tmp_path / "o"), soft=256, hard=256)
        assert srv.connections == 0
    for p in (r, s):
        assert p.returncode == 2, p.stderr
        line = p.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert "concurrency 300 needs about 428 open files" in line and "may open only 256" in line
        assert "ulimit -n 428" in line and "at most 128" in line
    assert not (tmp_path / "o").exists()


def test_the_soft_limit_is_raised_to_fit(sim_proc, tmp_path):
    sim = sim_proc("h200-fast")
    # 100 connections cannot fit in 64 descriptors: only a raised limit lets every request through
    r = _qbench("run", "--url", sim.url, "-c", "100", "--requests", "100", "--max-tokens", "2", "--json",
                soft=64, hard=4096)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["completed"] == 100
