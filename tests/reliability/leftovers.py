"""After a test: nothing it started is still running (nginx, a simulator, qbench, an engine process)."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

from qbench_tui.server import proctree

WATCHED = ("nginx", "qbench_tui", "qbench")


def running_descendants() -> list[str]:
    """This process's live descendants whose command line names nginx or qbench (zombies do not count)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline()) or p.name()
            if p.status() != psutil.STATUS_ZOMBIE and any(w in cmd for w in WATCHED):
                out.append(f"{p.pid}: {cmd[:120]}")
        except psutil.NoSuchProcess:
            continue
    return out


def assert_nothing_left(grace: float = 5.0) -> None:
    """A stopped child may need a moment to be reaped; anything still there after `grace` seconds is a leak."""
    deadline = time.monotonic() + grace
    left = running_descendants()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = running_descendants()
    assert not left, f"still running after the test: {left}"


def stop_group(proc: subprocess.Popen | None, wait: float = 10.0) -> None:
    """SIGTERM a server started in its own process group (nginx, prometheus), SIGKILL what is left; the whole group
    is gone when this returns."""
    if proc is None:
        return
    pgid = proc.pid
    if proc.poll() is None:
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(5)
    deadline = time.monotonic() + 5
    while proctree.group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if proctree.group_alive(pgid):
        proctree.killpg(pgid, signal.SIGKILL)
