"""No vLLM outlives qbench: a small program launches the fake `vllm` through LaunchedServer, then is sent
SIGTERM / SIGHUP / SIGINT, crashes, or is SIGKILLed; the fake (and its own child) must be gone soon after."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from qbench_tui.server.net import free_port
from qbench_tui.server.proctree import group_alive as _group_alive
from qbench_tui.server.proctree import install_signal_handlers, uninstall_signal_handlers

ROOT = Path(__file__).resolve().parents[2]
FAKE = str(ROOT / "tests" / "fakes" / "vllm")

PROGRAM = textwrap.dedent(
    """
    import json, os, signal, sys, time
    sys.path.insert(0, {root!r})
    # as in a terminal session: a test run under nohup would hand SIGHUP down ignored, and an ignored SIGHUP
    # rightly stays ignored (install_signal_handlers)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    from qbench_tui.config import ServerConfig
    from qbench_tui.server import launcher, proctree

    how, port, log_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    proctree.USE_WATCHDOG = os.environ.get("TEST_WATCHDOG", "1") == "1"
    proctree.install_signal_handlers()
    cfg = ServerConfig(model="m", port=port, vllm_bin={fake!r}, startup_timeout=60.0,
                       env=(("FAKE_VLLM_MODE", os.environ.get("TEST_FAKE_MODE", "")),
                            ("FAKE_VLLM_PIDFILE", os.path.join(log_dir, "pids"))))
    s = launcher.LaunchedServer(cfg, log_dir)
    s.start()
    s.wait_ready()
    print(json.dumps({{"pid": s.pid, "pgid": s.pgid}}), flush=True)
    if how == "crash":
        raise RuntimeError("qbench crashed")
    time.sleep(600)
    """
)


def gone(pid_or_pgid: int, group: bool, within: float = 20.0) -> bool:
    import psutil

    end = time.monotonic() + within
    while time.monotonic() < end:
        if group:
            if not _group_alive(pid_or_pgid):
                return True
        else:
            try:
                if psutil.Process(pid_or_pgid).status() == psutil.STATUS_ZOMBIE:
                    return True  # dead; its new parent has not reaped it yet
            except psutil.NoSuchProcess:
                return True
        time.sleep(0.05)
    return False


def run_program(tmp_path: Path, how: str, env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, dict]:
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM.format(root=str(ROOT), fake=FAKE))
    env = dict(os.environ, FAKE_VLLM_PYTHON=sys.executable, FAKE_VLLM_SERVER="builtin", FAKE_VLLM_DELAY="0.01")
    env.update(env_extra or {})
    proc = subprocess.Popen([sys.executable, str(prog), how, str(free_port()), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        pytest.fail(f"program did not get the server ready: {proc.stderr.read()}")
    return proc, json.loads(line)


def pids_of(tmp_path: Path) -> dict[str, int]:
    return {role: int(pid) for role, pid in (ln.split() for ln in (tmp_path / "pids").read_text().splitlines())}


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGHUP, 128 + signal.SIGHUP)])
def test_signal_to_qbench_stops_vllm(tmp_path: Path, sig: int, code: int) -> None:
    proc, info = run_program(tmp_path, "wait")
    try:
        assert _group_alive(info["pgid"])
        proc.send_signal(sig)
        assert proc.wait(60) == code
        # the handler stopped vLLM before the program exited, not some time later
        assert not _group_alive(info["pgid"])
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_stops_vllm(tmp_path: Path) -> None:
    proc, info = run_program(tmp_path, "wait")
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) != 0
        assert "KeyboardInterrupt" in proc.stderr.read()
        assert not _group_alive(info["pgid"])  # atexit stopped it
    finally:
        proc.kill()
        proc.wait()


def test_crash_stops_vllm(tmp_path: Path) -> None:
    proc, info = run_program(tmp_path, "crash")
    try:
        assert proc.wait(60) == 1
        assert "qbench crashed" in proc.stderr.read()
        assert not _group_alive(info["pgid"])
    finally:
        proc.kill()
        proc.wait()


def test_sigkill_pdeathsig_alone_ends_vllm(tmp_path: Path) -> None:
    proc, info = run_program(tmp_path, "wait", {"TEST_WATCHDOG": "0"})
    try:
        assert gone(info["pid"], group=False, within=0.0) is False  # alive before the kill
        proc.kill()
        proc.wait(30)
        assert gone(info["pid"], group=False)
        assert gone(info["pgid"], group=True)
    finally:
        proc.kill()
        proc.wait()


def test_sigkill_watchdog_ends_vllms_children_too(tmp_path: Path) -> None:
    # vLLM's EngineCore has no parent-death watch: PDEATHSIG ends the API server, the watchdog ends the rest
    proc, info = run_program(tmp_path, "wait", {"TEST_FAKE_MODE": "engine_child"})
    pids = pids_of(tmp_path)
    try:
        assert pids["api"] == info["pid"] and not gone(pids["engine"], group=False, within=0.0)
        proc.kill()
        proc.wait(30)
        assert gone(pids["api"], group=False)
        assert gone(pids["engine"], group=False)
        assert gone(info["pgid"], group=True)
    finally:
        proc.kill()
        proc.wait()


def test_install_signal_handlers_chains_and_respects_ignored() -> None:
    calls: list[int] = []
    prev_term, prev_hup = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup: keep ignoring it
    try:
        assert install_signal_handlers()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)
        end = time.monotonic() + 5
        while not calls and time.monotonic() < end:
            time.sleep(0.01)
        assert calls == [signal.SIGTERM]
    finally:
        uninstall_signal_handlers()
        signal.signal(signal.SIGTERM, prev_term)
        signal.signal(signal.SIGHUP, prev_hup)
