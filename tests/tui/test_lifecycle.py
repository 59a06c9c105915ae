"""How the dashboard starts and ends: waiting for a server that is not up yet, signals that save and exit
128+signum, the exit status and its reason, the reasons the engine paused itself, the log panel's newest lines."""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import replace

import pytest

from qbench_tui.engine.server_wait import ServerNotReady, WaitStatus, delay_for, wait_until_up
from qbench_tui.engine.snapshot import EngineStatus, Resume, Save, ServerView, SetConcurrency, Stop
from qbench_tui.tui.outcome import Outcome
from qbench_tui.tui.widgets.panels import Field

from .conftest import build_app, notes, settle, until
from .fakes import FakeEngine, FakeServer, sample_snapshot


def field(app, selector: str) -> str:
    return app.screen.query_one(selector, Field).text


# ---------------------------------------------------------------- the exit status (pure)


def test_outcome_clean_session_is_0():
    assert Outcome().result(sample_snapshot()) == (0, "")
    assert Outcome().result(None) == (0, "")  # quit before the engine said anything


@pytest.mark.parametrize(("snap_changes", "outcome", "want"), [
    ({"completed_total": 0, "failed_total": 40, "last_error": "HTTP 404: no such model"}, {},
     "every request failed (40): HTTP 404: no such model"),
    ({"paused_why": "error budget: 40 failures in a row"}, {}, "load paused: error budget: 40 failures in a row"),
    ({"paused_why": "results disk full: No space left on device (/r)"}, {},
     "load paused: results disk full: No space left on device (/r)"),
    ({"save_error": "save failed: [Errno 28] No space left on device"}, {},
     "save failed: [Errno 28] No space left on device"),
    ({"server": ServerView(reachable=True, error="server unreachable: ConnectError")}, {},
     "server unreachable: ConnectError (at the end)"),
    ({"status": EngineStatus.ERROR, "message": "engine error: RuntimeError: boom"}, {},
     "engine error: RuntimeError: boom"),
    ({}, {"server_died": "the server failed (exit code -9): killed"}, "the server failed (exit code -9): killed"),
    ({}, {"never_up": "http://h:1 never answered: connection refused (4 tries in 7 s)"},
     "http://h:1 never answered: connection refused (4 tries in 7 s)"),
])
def test_outcome_problems_exit_1_with_the_reason(snap_changes, outcome, want):
    code, reason = Outcome(**outcome).result(replace(sample_snapshot(), **snap_changes))
    assert (code, reason) == (1, want)


def test_outcome_a_signal_wins_the_status_and_keeps_the_other_problems():
    snap = replace(sample_snapshot(), completed_total=0, failed_total=3, last_error="HTTP 500")
    assert Outcome(signum=signal.SIGTERM).result(snap) == (143, "stopped by SIGTERM; every request failed (3): HTTP 500")
    assert Outcome(signum=signal.SIGHUP).result(sample_snapshot()) == (129, "stopped by SIGHUP")
    assert Outcome(signum=signal.SIGINT).result(None) == (130, "stopped by SIGINT")


def test_outcome_a_dead_server_is_not_also_reported_unreachable():
    snap = replace(sample_snapshot(), server=ServerView(reachable=True, error="server unreachable: refused"))
    code, reason = Outcome(server_died="the server failed (exit code 1)").result(snap)
    assert code == 1 and reason == "the server failed (exit code 1)"


# ---------------------------------------------------------------- waiting for the server (engine/server_wait)


def test_delays_double_up_to_the_cap():
    assert [delay_for(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_wait_retries_what_is_worth_retrying_and_reports_each_wait():
    calls: list[int] = []
    seen: list[WaitStatus] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionRefusedError(111, "Connection refused")
        return "up"

    got = wait_until_up(attempt, lambda e: "connection refused", url="http://h:1", say=seen.append,
                        stop=threading.Event(), delay=lambda n: 0.0)
    assert got == "up" and len(calls) == 4
    assert [s.retry for s in seen] == [1, 2, 3]
    assert seen[2].line == "waiting for http://h:1: connection refused, retry 3 in 0 s"


def test_wait_gives_up_at_once_on_an_answer_no_retry_changes():
    def attempt():
        raise RuntimeError("http://h:1/v1/models answered HTTP 401: the server wants an API key")

    with pytest.raises(ServerNotReady, match="HTTP 401: the server wants an API key"):
        wait_until_up(attempt, lambda e: None, url="http://h:1", say=lambda s: None, stop=threading.Event())


@pytest.mark.timeout(30)
def test_a_stop_ends_the_wait_at_once_naming_what_the_server_did():
    stop = threading.Event()

    def say(s: WaitStatus) -> None:
        if s.retry == 2:
            stop.set()  # as q pressed during the second wait

    def attempt():
        raise ConnectionRefusedError(111, "Connection refused")

    clock = iter(range(100)).__next__
    with pytest.raises(ServerNotReady) as ei:
        # an hour before the second retry: only the stop can end this test in time
        wait_until_up(attempt, lambda e: "connection refused", url="http://h:1", say=say, stop=stop,
                      delay=lambda n: 0.0 if n == 1 else 3600.0, clock=clock)
    assert str(ei.value).startswith("http://h:1 never answered: connection refused (2 tries in ")


# ---------------------------------------------------------------- the dashboard waits, then runs


class ScriptedWait:
    """wait_server for the App: fails `fails` times (reporting each wait), then answers; `fatal` gives up at once.
    Each wait blocks on the stop event like the real one, `gate` releases it (the test decides when)."""

    def __init__(self, fails: int = 2, fatal: str = "") -> None:
        self.fails = fails
        self.fatal = fatal
        self.gate = threading.Event()
        self.calls = 0

    def __call__(self, say, stop: threading.Event) -> None:
        if self.fatal:
            raise ServerNotReady(self.fatal)
        for n in range(1, self.fails + 1):
            self.calls += 1
            status = WaitStatus("http://127.0.0.1:9", "connection refused", n, 2.0, float(n))
            say(status)
            while not self.gate.is_set():
                if stop.wait(0.02):
                    raise ServerNotReady(status.gave_up)
            self.gate.clear()


async def test_the_dashboard_waits_for_the_server_saying_so_then_runs():
    wait = ScriptedWait(fails=2)
    app, eng, calls = build_app(wait_server=wait)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await until(pilot, lambda: "retry 1" in app.waiting)
        await pilot.pause()
        assert "WAITING" in field(app, "#state")
        assert "waiting for http://127.0.0.1:9: connection refused, retry 1 in 2 s" in field(app, "#why")
        assert calls == []  # no engine while the server is not up
        wait.gate.set()
        assert await until(pilot, lambda: "retry 2" in app.waiting)
        wait.gate.set()
        assert await until(pilot, lambda: app.engine is not None)
        await settle(app, pilot)
        assert calls == [1] and eng.sent[0] == SetConcurrency(8)
        assert "RUNNING" in field(app, "#state") and field(app, "#why") == ""
        await pilot.press("q")
        await pilot.pause()
    assert app.exit_status() == (0, "")


async def test_a_server_that_never_comes_exits_1_naming_why():
    wait = ScriptedWait(fails=3)
    app, _, calls = build_app(wait_server=wait)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await until(pilot, lambda: "retry 1" in app.waiting)
        await pilot.press("q")
        await pilot.pause()
    assert calls == []
    assert app.return_code == 1
    code, reason = app.exit_status()
    assert code == 1 and reason == "http://127.0.0.1:9 never answered: connection refused (1 try in 1 s)"


async def test_an_answer_no_wait_changes_shows_and_exits_1():
    why = "http://h:1/v1/models answered HTTP 401: the server wants an API key; give --api-key KEY or set QBENCH_API_KEY"
    app, _, calls = build_app(wait_server=ScriptedWait(fatal=why))
    async with app.run_test(size=(160, 40)) as pilot:
        assert await until(pilot, lambda: bool(app.engine_failed))
        await pilot.pause()
        assert "NO ENGINE" in field(app, "#state") and "HTTP 401" in field(app, "#why")
        assert any("HTTP 401" in n for n in notes(app))
        await pilot.press("q")
        await pilot.pause()
    assert calls == [] and app.exit_status() == (1, why)


# ---------------------------------------------------------------- signals save and set the status


@pytest.fixture
def fallback_handlers():
    """A Python handler under the App's: should the App's not be installed, a signal lands here, not on pytest
    (and the test fails on `caught`)."""
    caught: list[int] = []
    prev = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
            for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    yield caught
    for s, h in prev.items():
        signal.signal(s, h)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
async def test_a_stop_signal_saves_stops_and_exits_128_plus_signum(fallback_handlers, sig, status):
    server = FakeServer(state="ready")
    app, eng, _ = build_app(server=server, out_dir="res")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        os.kill(os.getpid(), sig)
        assert await until(pilot, lambda: app.closed and eng.closed)
        await pilot.pause()
    assert fallback_handlers == []  # the App's handler took it
    assert eng.sent[-2:] == [Save("res"), Stop()]
    assert server.stopped >= 1
    assert app.saved_paths == ("res/qbench_fake.txt", "res/qbench_fake.json")
    assert app.return_code == status
    assert app.exit_status() == (status, f"stopped by {signal.Signals(sig).name}")
    assert signal.getsignal(sig) is not signal.SIG_DFL  # the handler from before is back


async def test_a_signal_while_waiting_for_the_server_exits_143(fallback_handlers):
    app, _, calls = build_app(wait_server=ScriptedWait(fails=5))
    async with app.run_test(size=(120, 40)) as pilot:
        assert await until(pilot, lambda: bool(app.waiting))
        os.kill(os.getpid(), signal.SIGTERM)
        assert await until(pilot, lambda: app.closed)
        await pilot.pause()
    assert fallback_handlers == [] and calls == []
    code, reason = app.exit_status()
    assert code == 143 and reason.startswith("stopped by SIGTERM; http://127.0.0.1:9 never answered")


# ---------------------------------------------------------------- the exit status from the session's end


async def test_quitting_after_every_request_failed_exits_1():
    eng = FakeEngine(replace(sample_snapshot(), completed_total=0, failed_total=12,
                             last_error="HTTP 404: The model `x` does not exist."))
    app, _, _ = build_app(eng)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 1
    assert app.exit_status()[1] == "every request failed (12): HTTP 404: The model `x` does not exist."


async def test_quitting_after_the_server_died_exits_1():
    server = FakeServer(state="ready")
    app, _, _ = build_app(server=server)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        server.fail(returncode=-9, error="killed")
        await settle(app, pilot, ticks=5)
        await pilot.press("q")
        await pilot.pause()
    assert app.exit_status() == (1, "the server failed (exit code -9): killed")


async def test_a_server_that_failed_to_start_exits_1():
    server = FakeServer()
    app, _, _ = build_app(server=server)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        server.fail(returncode=1, error="CUDA out of memory")
        await settle(app, pilot)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 1 and "CUDA out of memory" in app.exit_status()[1]


# ---------------------------------------------------------------- the engine paused itself


async def test_the_control_bar_says_why_the_engine_paused_and_resume_clears_it():
    why = "error budget: 40 failures in a row and no success: HTTP 404: The model `x` does not exist."
    eng = FakeEngine()
    app, _, _ = build_app(eng)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(app, pilot)
        eng.push(replace(sample_snapshot(), status=EngineStatus.PAUSED, paused_why=why))
        await settle(app, pilot)
        assert "PAUSED" in field(app, "#state")
        assert why in field(app, "#why")
        await pilot.press("space")  # the resume key
        await pilot.pause()
        assert eng.sent[-1] == Resume()
        assert "RUNNING" in field(app, "#state") and field(app, "#why") == ""  # the intent shows at once


# ---------------------------------------------------------------- the log panel


async def test_the_log_panel_shows_the_newest_lines():
    server = FakeServer(state="ready")
    server._log = [f"INFO line {i}" for i in range(200)] + ["ERROR torch.OutOfMemoryError: the fatal one"]
    app, _, _ = build_app(server=server)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot, ticks=6)
        text = field(app, "#log-text").splitlines()
        rows = app.screen.query_one("#log-text").size.height
        assert rows > 2 and len(text) == rows  # as many as fit, no more
        assert text[-1] == "ERROR torch.OutOfMemoryError: the fatal one"
        assert "INFO line 0" not in text


# ---------------------------------------------------------------- what `tui --url` waits for (commands/live.py)


def _discover_error(url: str, need_model: bool = True, key: str | None = None) -> Exception:
    import asyncio

    from qbench_tui.headless import Unreachable, discover

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        asyncio.run(discover(url, headers, need_model=need_model))
    except Unreachable as e:
        return e
    raise AssertionError("discover did not fail")


def test_what_the_dashboard_waits_for_and_what_it_gives_up_on_at_once():
    from qbench_tui.commands.live import _retriable
    from tests.engine.test_probe import FakeServer, free_port_url

    assert _retriable(_discover_error(free_port_url())) == "connection refused"  # nothing listening yet
    with FakeServer(want_key="sk-right") as srv:  # a proxy that wants a key: no wait changes that
        assert _retriable(_discover_error(srv.url)) is None
        assert _retriable(_discover_error(srv.url, key="sk-wrong")) is None
    with FakeServer() as srv:
        srv.routes["/v1/models"] = (503, b'{"detail":"upstream down"}', "application/json")
        assert _retriable(_discover_error(srv.url)) == "HTTP 503"  # a proxy whose upstream is not up yet
        srv.routes.pop("/v1/models")
        assert _retriable(_discover_error(srv.url)) is None  # 404: the base URL is wrong


def test_the_url_wait_ends_at_once_on_a_missing_key_naming_it():
    from types import SimpleNamespace

    from qbench_tui.commands.live import _url_waiter
    from qbench_tui.config import FleetConfig, LoadConfig
    from tests.engine.test_probe import FakeServer

    cfg = SimpleNamespace(load=LoadConfig(), fleet=FleetConfig())
    found: list[str] = []
    seen: list[WaitStatus] = []
    with FakeServer(want_key="sk-right") as srv:
        with pytest.raises(ServerNotReady, match=r"answered HTTP 401 .*give --api-key KEY or set QBENCH_API_KEY"):
            _url_waiter(srv.url, None, cfg, found)(seen.append, threading.Event())
        assert seen == [] and found == []
        _url_waiter(srv.url, "sk-right", cfg, found)(seen.append, threading.Event())
    assert found == ["Qwen/Qwen2.5-14B-Instruct-AWQ"] and seen == []


def test_a_vanished_terminal_makes_writes_no_ops_and_says_so():
    import sys

    from qbench_tui.tui.terminal import GuardedTerminal

    class DeadTty:
        def __init__(self) -> None:
            self.tries = 0

        def write(self, text: str) -> int:
            self.tries += 1
            raise OSError(5, "Input/output error")  # what a hung-up pty answers

        def flush(self) -> None:
            raise OSError(5, "Input/output error")

        def fileno(self) -> int:
            return 2

    dead = DeadTty()
    saved = sys.stderr, sys.__stderr__
    sys.stderr = sys.__stderr__ = dead  # type: ignore[misc]
    try:
        with GuardedTerminal() as term:
            assert sys.__stderr__ is not dead and sys.__stderr__.fileno() == 2
            assert not term.gone
            assert sys.__stderr__.write("\x1b[?25h") == 6  # Textual's writer thread would have died here
            sys.__stderr__.flush()
            sys.stderr.write("a panic's traceback")
            assert term.gone and dead.tries == 1  # once gone, nothing more is tried
        assert sys.__stderr__ is dead and sys.stderr is dead  # put back
    finally:
        sys.stderr, sys.__stderr__ = saved  # type: ignore[misc]
