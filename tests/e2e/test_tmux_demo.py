"""End to end in a real terminal: tmux runs `qbench demo`, keys are sent, the captured pane is read."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.tmux

if shutil.which("tmux") is None:
    if os.environ.get("CI"):
        raise RuntimeError("tmux is required in CI (.ci/run installs it)")
    pytest.skip("tmux not installed (apt-get install tmux); CI installs it and runs this test",
                allow_module_level=True)


def tmux(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True, check=check, timeout=30)


SOCKET = f"qbench-e2e-{os.getpid()}"


def pane() -> str:
    return tmux("capture-pane", "-p", "-t", "demo").stdout


def wait_for(pred, timeout: float, what: str) -> str:
    end = time.monotonic() + timeout
    text = ""
    while time.monotonic() < end:
        text = pane()
        if pred(text):
            return text
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; screen was:\n{text}")


def tagged_processes(tag: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if f"QBENCH_E2E_TAG={tag}".encode() in (d / "environ").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


def client_tok_s(text: str) -> float:
    m = re.search(r"client ([\d,.]+) tok/s", text)
    return float(m.group(1).replace(",", "")) if m else 0.0


def test_demo_in_a_real_terminal(tmp_path):
    tag = uuid.uuid4().hex
    out = tmp_path / "results"
    cmd = (f"QBENCH_E2E_TAG={tag} {shlex.quote(sys.executable)} -m qbench_tui.cli demo --concurrency 4 "
           f"--out {shlex.quote(str(out))}; sleep 0.5")
    tmux("new-session", "-d", "-s", "demo", "-x", "160", "-y", "48", cmd)
    try:
        text = wait_for(lambda t: client_tok_s(t) > 0, 90, "tokens/s on screen")
        assert "SIMULATED" in text and "target  4" in text
        for _ in range(3):
            tmux("send-keys", "-t", "demo", "Up")
        text = wait_for(lambda t: "target  7" in t and "in flight 7" in t, 30, "the new concurrency")
        tmux("send-keys", "-t", "demo", "PageUp")
        wait_for(lambda t: "target  17" in t, 30, "concurrency +10")
        tmux("send-keys", "-t", "demo", "q")
        end = time.monotonic() + 30
        while time.monotonic() < end and tmux("has-session", "-t", "demo", check=False).returncode == 0:
            time.sleep(0.2)
        assert tmux("has-session", "-t", "demo", check=False).returncode != 0, "qbench did not quit"
    finally:
        tmux("kill-server", check=False)
    # quitting saves: the classic table, the JSON and the request records
    assert len(list(out.glob("benchmark_*.txt"))) == 1
    assert len(list(out.glob("benchmark_*.json"))) == 1
    assert list(out.glob("benchmark_*.requests.jsonl"))[0].read_text().strip()
    # nothing left running: not the simulator, not the engine process
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and tagged_processes(tag):
        time.sleep(0.2)
    assert tagged_processes(tag) == []
