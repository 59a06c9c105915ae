"""One conformance test for every ServerHandle the app can be handed: the launched vLLM (LaunchedServer with the
stand-in `vllm`), the simulator child (SimServer), and the test double the TUI tests use. What the dashboard's
startup screen, log panel, restart flow and exit path read must mean the same on all of them."""
from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from qbench_tui.config import ServerConfig
from qbench_tui.server.handle import Phase, ServerHandle, ServerState
from qbench_tui.server.launcher import LaunchedServer
from qbench_tui.server.net import free_port
from qbench_tui.server.proctree import group_alive, live_children
from qbench_tui.server.sim_child import SimServer
from qbench_tui.server.supervisor import LaunchError
from tests.sim_process import wait_until
from tests.tui.fakes import FakeServer

FAKE_VLLM = str(Path(__file__).resolve().parents[1] / "fakes" / "vllm")


@dataclass
class Case:
    """How to get one kind of handle going. `process`: it runs a real process that serves HTTP on `url`."""

    make: Callable[[Path, bool], ServerHandle]  # (tmp_path, fail_during_startup) -> a handle, not started
    start: Callable[[ServerHandle], None]
    drive: Callable[[ServerHandle, bool], None] = lambda h, fail: None  # what moves a double on (a test's hand)
    process: bool = True


def _launched(tmp_path: Path, fail: bool) -> LaunchedServer:
    env = (("FAKE_VLLM_PYTHON", sys.executable), ("FAKE_VLLM_SERVER", "builtin"), ("FAKE_VLLM_DELAY", "0.01"),
           ("FAKE_VLLM_MODE", "exit_during_startup" if fail else ""))
    return LaunchedServer(ServerConfig(model="fake-model", host="127.0.0.1", port=free_port(), vllm_bin=FAKE_VLLM,
                                       startup_timeout=60.0, env=env), tmp_path)


def _sim(tmp_path: Path, fail: bool) -> SimServer:
    return SimServer("no-such-profile" if fail else "tiny-cpu", port=0, extra=["--speed", "20"])


def _drive_fake(h: FakeServer, fail: bool) -> None:
    if fail:
        h.fail(returncode=1, error="CUDA out of memory")
    else:
        h.advance()


CASES = {
    "launched-vllm": Case(_launched, lambda h: h.start()),
    "simulator-child": Case(_sim, lambda h: h.start()),
    # restartable, as the dashboard's F key needs; the simulator child covers a handle that refuses
    "test-double": Case(lambda tmp_path, fail: FakeServer(restartable=True), lambda h: None, _drive_fake,
                        process=False),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


@pytest.fixture
def handles():
    made: list[ServerHandle] = []
    yield made
    for h in made:
        h.stop()


def _health(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url + "/health", timeout=5) as r:
        return r.status


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_lifecycle(case: Case, handles: list, tmp_path: Path) -> None:
    h = case.make(tmp_path, False)
    handles.append(h)
    assert isinstance(h, ServerHandle)
    assert isinstance(h.url, str) and isinstance(h.command_line, str) and h.command_line
    assert isinstance(h.config_label, str) and isinstance(h.restartable, bool)
    case.start(h)
    assert h.state is ServerState.STARTING and h.state == "starting"
    case.drive(h, False)
    seen: list[Phase] = []
    h.wait_ready(timeout=60, on_phase=seen.append)

    assert h.state is ServerState.READY and h.alive() and h.error == "" and h.returncode is None
    names = [p.name for p in h.phases()]
    assert names and names[0] == "process started" and names[-1] == "ready"
    assert [p.at for p in h.phases()] == sorted(p.at for p in h.phases())
    assert seen and seen[-1].name == "ready"
    tail = h.log_tail(5)
    assert tail and len(tail) <= 5 and all(isinstance(ln, str) for ln in tail)
    assert h.log_tail(0) == []
    kv, conc = h.kv_cache_tokens(), h.max_concurrency()
    assert kv is None or isinstance(kv, int)
    assert conc is None or isinstance(conc, float)
    if case.process:
        assert h.url.startswith("http://127.0.0.1:") and _health(h.url) == 200
        assert h in live_children()  # atexit and the signal handlers will stop it
        pid = h.pid

    if h.restartable:
        h.restart({"max_num_seqs": 8})
        assert h.state is ServerState.STARTING
        case.drive(h, False)
        h.wait_ready(timeout=60)
        assert h.state is ServerState.READY and h.alive() and "max_num_seqs=8" in h.config_label
        if case.process:
            assert h.pid != pid and _gone(pid)
            pid = h.pid
    else:
        label = h.config_label
        with pytest.raises(RuntimeError):  # LaunchError for the real ones
            h.restart({"max_num_seqs": 8})
        assert h.state is ServerState.READY and h.alive() and h.config_label == label  # untouched

    h.stop()
    assert h.state is ServerState.STOPPED and not h.alive() and h.returncode is not None
    h.stop()  # idempotent
    assert h.state is ServerState.STOPPED
    if case.process:
        assert wait_until(lambda: _gone(pid), timeout=10) and not group_alive(pid)
        assert h not in live_children()
        with pytest.raises(OSError):
            _health(h.url)


def test_startup_failure_says_why(case: Case, handles: list, tmp_path: Path) -> None:
    h = case.make(tmp_path, True)
    handles.append(h)
    case.start(h)
    case.drive(h, True)
    with pytest.raises(RuntimeError) as ei:  # LaunchError for the real ones
        h.wait_ready(timeout=60)
    assert h.state is ServerState.FAILED and h.error and not h.alive()
    assert h.returncode not in (None, 0) and h.log_tail(1)
    if case.process:
        msg = str(ei.value)
        assert isinstance(ei.value, LaunchError) and h.error == msg
        assert "during startup" in msg and f"code {h.returncode}" in msg
        assert "--- last " in msg and h.log_tail(1)[0] in msg  # the log tail is in the message
        assert wait_until(lambda: _gone(h.pid), timeout=10)
    h.stop()
    assert h.state is ServerState.FAILED  # a stop does not hide why it ended

