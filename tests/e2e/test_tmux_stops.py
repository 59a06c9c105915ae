"""The dashboard in a real terminal (tmux) told to stop the ways the world stops it: SIGTERM, SIGHUP, the tmux
session killed (its terminal vanishes), a server that is not up yet or never comes; and the API key, which must
be in no saved file and nowhere on screen.

qbench runs under a small wrapper that records its exit status: the wrapper ignores SIGHUP (a handler, not
SIG_IGN, so qbench does not inherit it ignored), so the status of a qbench whose terminal was killed is still seen.
Every test parses the files written and checks, with psutil, that no qbench, engine or simulator process is left."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from qbench_tui.server.net import free_port
from qbench_tui.server.sim_child import SimServer
from tests.engine.test_tls_proxy import MARKER  # the one marker key the security tests send

pytestmark = pytest.mark.tmux

if shutil.which("tmux") is None:
    if os.environ.get("CI"):
        raise RuntimeError("tmux is required in CI (.ci/run installs it)")
    pytest.skip("tmux not installed (apt-get install tmux); CI installs it and runs this test",
                allow_module_level=True)

WRAP = """\
import signal, subprocess, sys
signal.signal(signal.SIGHUP, lambda *a: None)
rc = subprocess.call(sys.argv[2:])
open(sys.argv[1] + ".part", "w").write(str(rc))
__import__("os").replace(sys.argv[1] + ".part", sys.argv[1])
"""
FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakes" / "vllm"


class Term:
    """One tmux server of its own running one qbench command; the pane is read as the user would see it."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.tag = uuid.uuid4().hex
        self.socket = f"qbench-e2e-{os.getpid()}-{self.tag[:8]}"
        self.rc_file = tmp_path / "rc"
        wrap = tmp_path / "wrap.py"
        wrap.write_text(WRAP)
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in {"QBENCH_E2E_TAG": self.tag, **(env or {})}.items())
        py = shlex.quote(sys.executable)
        # COLUMNS/LINES from pytest's environment would pin the app to 80x24 whatever the window's size
        cmd = (f"unset COLUMNS LINES; {assigns} {py} {shlex.quote(str(wrap))} {shlex.quote(str(self.rc_file))} {py} -m qbench_tui.cli "
               f"{' '.join(shlex.quote(a) for a in args)}; sleep 60")
        self.tmux("new-session", "-d", "-s", "q", "-x", "160", "-y", "48", cmd)
        self.screens: list[str] = []  # every capture, for the key check

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=check,
                              timeout=30)

    def pane(self) -> str:
        text = self.tmux("capture-pane", "-p", "-t", "q", check=False).stdout
        self.screens.append(text)
        return text

    def wait_for(self, pred, timeout: float, what: str) -> str:
        end = time.monotonic() + timeout
        text = ""
        while time.monotonic() < end:
            text = self.pane()
            if pred(text):
                return text
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; screen was:\n{text}")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "q", *keys)

    def procs(self) -> list[psutil.Process]:
        """Processes started for this test (the environment tag), the wrapper included."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and p.environ().get("QBENCH_E2E_TAG") == self.tag:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def qbench(self) -> psutil.Process:
        """The qbench process itself (not the wrapper, not its engine or server children)."""
        for p in self.procs():
            try:
                if p.cmdline()[1:3] == ["-m", "qbench_tui.cli"]:
                    return p
            except psutil.NoSuchProcess:
                continue
        raise AssertionError("qbench is not running")

    def family(self) -> list[psutil.Process]:
        """qbench and everything under it now (engine process, simulator or launched server)."""
        q = self.qbench()
        return [q, *q.children(recursive=True)]

    def exit_status(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.rc_file.exists():
                return int(self.rc_file.read_text())
            time.sleep(0.2)
        raise AssertionError(f"qbench did not exit; screen was:\n{self.pane()}")

    def close(self) -> None:
        self.tmux("kill-server", check=False)


def gone(procs: list[psutil.Process], timeout: float = 20) -> list[psutil.Process]:
    """Those of `procs` still alive after `timeout` (zombies count as gone: nothing runs)."""
    end = time.monotonic() + timeout
    alive = procs
    while time.monotonic() < end:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def saved_run(out: Path) -> tuple[dict, list[dict], str]:
    """The one run's JSON, records and table, each parsed: a cut line or half-written file fails here."""
    (js,) = out.glob("benchmark_*.json")
    (jl,) = out.glob("benchmark_*.requests.jsonl")
    (txt,) = out.glob("benchmark_*.txt")
    records = [json.loads(line) for line in jl.read_text().splitlines()]
    table = txt.read_text()
    assert "Concurrency | Total Time (s)" in table
    return json.loads(js.read_text()), records, table


def done(text: str) -> int:
    m = re.search(r"done ([\d,]+)", text)
    return int(m.group(1).replace(",", "")) if m else 0


def _demo_running(term, out: Path) -> tuple[Term, list[psutil.Process]]:
    t = term(["demo", "--concurrency", "4", "--out", str(out)])
    # a level has settled by ~40 requests at C=4: the files must then hold it
    t.wait_for(lambda s: done(s) >= 40 and "RUNNING" in s, 120, "a running demo")
    return t, t.family()


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["TERM", "HUP"])
def test_a_stop_signal_saves_stops_everything_and_exits_128_plus_signum(term, tmp_path, sig, status):
    out = tmp_path / "results"
    t, family = _demo_running(term, out)
    assert len(family) >= 3, family  # qbench, its engine process, the simulator
    family[0].send_signal(sig)
    assert t.exit_status() == status
    assert gone(family) == []
    data, records, _ = saved_run(out)
    assert [lv["max_concurrency"] for lv in data["levels"]] == [4]
    assert len(records) >= 40 and data["levels"][0]["completed"] <= len(records)
    text = t.wait_for(lambda s: "stopped by" in s, 10, "the reason after the screen is restored")
    assert f"qbench: stopped by {signal.Signals(sig).name}" in text and "saved: " in text


def test_a_killed_tmux_session_saves_and_leaves_nothing_running(term, tmp_path):
    out = tmp_path / "results"
    t, family = _demo_running(term, out)
    t.tmux("kill-session", "-t", "q")  # the terminal vanishes: SIGHUP, and every write to it fails
    assert t.exit_status() == 129
    assert gone(family) == []
    data, records, _ = saved_run(out)
    assert [lv["max_concurrency"] for lv in data["levels"]] == [4] and len(records) >= 40


def test_tui_url_waits_for_a_server_that_comes_later_then_runs(term, tmp_path):
    port = free_port()
    out = tmp_path / "results"
    t = term(["tui", "--url", f"http://127.0.0.1:{port}", "--concurrency", "2", "--out", str(out)])
    text = t.wait_for(lambda s: "retry 2" in s, 60, "the wait, said")
    assert "WAITING" in text and f"waiting for http://127.0.0.1:{port}: connection refused, retry 2 in 1 s" in text
    sim = SimServer("h200-fast", port=port)  # the server comes up now, on the port the dashboard waits for
    sim.start()
    try:
        sim.wait_ready(60)
        # the longest wait between tries is 10 s: the dashboard finds it within that and runs
        t.wait_for(lambda s: "RUNNING" in s and done(s) >= 10, 90, "the load once the server answered")
        family = t.family()
        t.keys("q")
        assert t.exit_status() == 0
        assert gone(family) == []
    finally:
        sim.stop()
    data, records, _ = saved_run(out)
    assert records and all(r["ok"] for r in records)


def test_tui_url_a_server_that_never_comes_exits_1_naming_why(term, tmp_path):
    port = free_port()
    t = term(["tui", "--url", f"http://127.0.0.1:{port}", "--out", str(tmp_path / "results")])
    t.wait_for(lambda s: "retry 2" in s, 60, "the wait, said")
    family = t.family()
    t.keys("q")
    assert t.exit_status() == 1
    assert gone(family) == []
    text = t.wait_for(lambda s: "never answered" in s, 10, "the reason after the screen is restored")
    assert re.search(rf"qbench: http://127\.0\.0\.1:{port} never answered: connection refused \(\d+ tries in", text)


def test_the_api_key_is_in_no_saved_file_and_never_on_screen(term, tmp_path):
    out = tmp_path / "results"
    t = term(["demo", "--concurrency", "2", "--out", str(out), "--api-key", MARKER])
    t.wait_for(lambda s: done(s) >= 10, 120, "a running demo")
    t.keys("s")  # a save by hand too
    t.wait_for(lambda s: "Saved" in s or "saved" in s, 30, "the save")
    t.keys("q")
    assert t.exit_status() == 0
    saved_run(out)
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) >= 3 and not [f for f in files if MARKER.encode() in f.read_bytes()]
    assert t.screens and not [s for s in t.screens if MARKER in s]


def test_a_launched_servers_command_line_and_log_hide_the_key(term, tmp_path):
    cfg_dir, out = tmp_path / "cfg", tmp_path / "results"
    cfg_dir.mkdir()
    cfg = cfg_dir / "launch.toml"  # holds the key itself: not one of the files that must not
    cfg.write_text(f'''
[server]
model = "tiny"
port = {free_port()}
vllm_bin = "{FAKE_VLLM}"
startup_timeout = 60
api_key = "{MARKER}"
max_num_seqs = 16

[server.env]
FAKE_VLLM_PYTHON = "{sys.executable}"
FAKE_VLLM_SERVER = "sim"
FAKE_VLLM_ECHO_ENV = "VLLM_API_KEY"
FAKE_VLLM_MODE = "slow_start"
VLLM_API_KEY = "{MARKER}"

[load]
max_tokens = 16
''')
    t = term(["tui", "--launch", str(cfg), "--concurrency", "2", "--out", str(out), "--api-key", MARKER])
    # the startup screen: the command line the server runs with, and its log (which echoes the key's variable)
    text = t.wait_for(lambda s: "serve tiny" in s and "env VLLM_API_KEY=" in s, 60, "the startup screen")
    assert "--api-key ***" in text and "env VLLM_API_KEY=***" in text, text
    t.wait_for(lambda s: "RUNNING" in s and done(s) >= 5, 120, "the load on the launched server")
    t.keys("F")  # the restart screen names the flags the server runs with
    text = t.wait_for(lambda s: "now:" in s, 30, "the restart screen")
    assert "api_key=***" in text, text
    t.keys("Escape")
    t.wait_for(lambda s: "now:" not in s, 30, "the restart screen closed")  # a key right after Esc is alt+key
    family = t.family()
    t.keys("q")
    assert t.exit_status() == 0
    assert gone(family) == []
    saved_run(out)
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.name.startswith("vllm_") for f in files)  # the server's log is among them
    assert not [f for f in files if MARKER.encode() in f.read_bytes()]
    assert not [s for s in t.screens if MARKER in s]


def test_a_session_where_every_request_failed_exits_1_naming_the_error(term, tmp_path):
    sim = SimServer("h200-fast", extra=["--error-rate", "1.0"])  # every completion answers HTTP 500
    sim.start()
    try:
        sim.wait_ready(60)
        out = tmp_path / "results"
        t = term(["tui", "--url", sim.url, "--concurrency", "2", "--out", str(out)])
        t.wait_for(lambda s: re.search(r"failed [\d,]*[1-9]", s) is not None, 90, "failures on screen")
        family = t.family()
        t.keys("q")
        assert t.exit_status() == 1
        assert gone(family) == []
        text = t.wait_for(lambda s: "every request failed" in s, 10, "the reason after the screen is restored")
        assert re.search(r"qbench: every request failed \([\d,]+\): HTTP 500", text), text
        _, records, _ = saved_run(out)
        assert records and not any(r["ok"] for r in records)
    finally:
        sim.stop()
