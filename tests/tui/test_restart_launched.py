"""`F` on the dashboard against a real LaunchedServer (tests/fakes/vllm, a stand-in `vllm` executable that serves
/health on its port): the process really restarts with the typed flags and the load resumes under the new label."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import Input

from qbench_tui.config import ServerConfig
from qbench_tui.engine.snapshot import Pause, Resume, ServerConfigChanged
from qbench_tui.server.launcher import LaunchedServer
from qbench_tui.tui.restart import RestartPhase
from qbench_tui.tui.screens.dashboard import DashboardScreen
from qbench_tui.tui.screens.startup import StartupScreen
from tests.server.test_launcher import FAKE, free_port, group_gone

from .conftest import build_app, notes, settle


@pytest.fixture(autouse=True)
def fake_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_VLLM_SERVER", "builtin")
    monkeypatch.setenv("FAKE_VLLM_DELAY", "0.01")
    for name in ("FAKE_VLLM_MODE", "FAKE_VLLM_ECHO_ENV", "FAKE_VLLM_PIDFILE", "FAKE_VLLM_NOISE"):
        monkeypatch.delenv(name, raising=False)


async def _until(pilot, pred, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await pilot.pause(0.1)
    return pred()


def idle(app) -> bool:
    return app.restart_flow.phase is RestartPhase.IDLE


async def test_restart_launched_server_from_the_dashboard(tmp_path: Path) -> None:
    argv_file = tmp_path / "argv.json"
    server = LaunchedServer(ServerConfig(model="fake-model", host="127.0.0.1", port=free_port(), vllm_bin=FAKE,
                                         startup_timeout=60.0, flags=(("max_num_seqs", 256),),
                                         env=(("FAKE_VLLM_ARGV_FILE", str(argv_file)),)), tmp_path)
    server.start()
    server.wait_ready(timeout=60)
    first_pgid = server.pgid
    app, eng, _ = build_app(server=server, out_dir=str(tmp_path / "res"))
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(app, pilot)
            assert eng.sent[0] == ServerConfigChanged("max_num_seqs=256")
            await pilot.press("F")
            await pilot.pause()
            app.screen.query_one(Input).value = "max_num_seqs=32 --enforce-eager"
            await pilot.press("enter")
            assert await _until(pilot, lambda: isinstance(app.screen, DashboardScreen) and idle(app)), (
                server.state, server.error, server.log_tail(8), app.screen, app.restart_flow.phase, notes(app))
            assert json.loads(argv_file.read_text())[-3:] == ["--max-num-seqs", "32", "--enforce-eager"]
            assert server.state == "ready" and group_gone(first_pgid)
            i = eng.sent.index(Pause())
            assert eng.sent[i + 1:i + 3] == [ServerConfigChanged("max_num_seqs=32 enforce_eager"), Resume()]
            assert await _until(pilot, lambda: any("server restarted: max_num_seqs=32 enforce_eager" in n
                                                   for n in notes(app)), timeout=10), notes(app)
            await pilot.press("q")
            await pilot.pause()
    finally:
        server.stop()
    assert server.state == "stopped" and group_gone(server.pgid)


async def test_restart_that_fails_shows_the_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = LaunchedServer(ServerConfig(model="fake-model", host="127.0.0.1", port=free_port(), vllm_bin=FAKE,
                                         startup_timeout=60.0), tmp_path)
    server.start()
    server.wait_ready(timeout=60)
    app, eng, _ = build_app(server=server, out_dir=str(tmp_path / "res"))
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(app, pilot)
            # the next start of the fake dies during startup, as vLLM does on a flag it rejects
            monkeypatch.setenv("FAKE_VLLM_MODE", "exit_during_startup")
            await pilot.press("F")
            await pilot.pause()
            app.screen.query_one(Input).value = "max_num_seqs=0"
            await pilot.press("enter")
            assert await _until(pilot, lambda: server.state == "failed")
            await settle(app, pilot)
            assert isinstance(app.screen, StartupScreen)
            assert await _until(pilot, lambda: app.screen.has_class("-failed"), timeout=10)
            assert Resume() not in eng.sent  # nothing to resume against
            # another try from the failed screen, with flags the server accepts: the load resumes
            monkeypatch.delenv("FAKE_VLLM_MODE")
            await pilot.press("F")
            await pilot.pause()
            app.screen.query_one(Input).value = "max_num_seqs=8"
            await pilot.press("enter")
            assert await _until(pilot, lambda: isinstance(app.screen, DashboardScreen) and idle(app))
            assert server.state == "ready" and eng.sent[-2:] == [ServerConfigChanged("max_num_seqs=8"), Resume()]
            await pilot.press("q")
            await pilot.pause()
    finally:
        server.stop()
    assert eng.closed


async def test_first_launch_fails_then_other_flags_start_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv_file = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_VLLM_MODE", "exit_during_startup")
    server = LaunchedServer(ServerConfig(model="fake-model", host="127.0.0.1", port=free_port(), vllm_bin=FAKE,
                                         startup_timeout=60.0, flags=(("max_num_seqs", 4096),),
                                         env=(("FAKE_VLLM_ARGV_FILE", str(argv_file)),)), tmp_path)
    server.start()
    app, eng, calls = build_app(server=server, out_dir=str(tmp_path / "res"))
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            assert await _until(pilot, lambda: server.state == "failed"), (server.state, server.log_tail(20),
                                                                           server.error, server.returncode)
            await settle(app, pilot)
            assert isinstance(app.screen, StartupScreen)
            assert await _until(pilot, lambda: "F: restart with other flags" in str(
                app.screen.query_one("#startup-status").render()), timeout=10)
            assert calls == []  # no load against a server that never came up
            monkeypatch.delenv("FAKE_VLLM_MODE")
            await pilot.press("F")
            await pilot.pause()
            app.screen.query_one(Input).value = "max_num_seqs=64"
            await pilot.press("enter")
            assert await _until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.engine is not None), (
                server.state, server.error, server.log_tail(8), app.screen, app.restart_flow.phase, app.engine, calls,
                notes(app))
            await app.workers.wait_for_complete()
            assert json.loads(argv_file.read_text())[-2:] == ["--max-num-seqs", "64"]
            assert calls == [1] and eng.sent[0] == ServerConfigChanged("max_num_seqs=64")
            await pilot.press("q")
            await pilot.pause()
    finally:
        server.stop()
    assert eng.closed
