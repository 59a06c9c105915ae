"""The live control rules as plain data: intent until acknowledged (LiveControl), one bounds rule
(clamp_concurrency), the restart flow's transitions (RestartFlow), and the engine's side of the ack and status."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import EngineSession, SessionConfig
from qbench_tui.engine.snapshot import (
    MAX_CONCURRENCY,
    AutoLadder,
    EngineStatus,
    Pause,
    ResetWindow,
    Resume,
    SetConcurrency,
    Snapshot,
    StopAuto,
    clamp_concurrency,
)
from qbench_tui.tui.control import LiveControl
from qbench_tui.tui.restart import RestartFlow, RestartPhase

from .fakes import sample_snapshot


def snap(target: int, status: EngineStatus = EngineStatus.RUNNING, ack: int = 0) -> Snapshot:
    return replace(sample_snapshot(), target_concurrency=target, status=status, ack=ack)


def test_clamp_is_the_one_bounds_rule():
    cases = {-5: 0, 0: 0, 7: 7, MAX_CONCURRENCY: MAX_CONCURRENCY, MAX_CONCURRENCY + 1: MAX_CONCURRENCY, 9.7: 9}
    assert {n: clamp_concurrency(n) for n in cases} == cases


def test_intent_shows_until_acknowledged_then_the_engine_rules():
    c = LiveControl(target=8, paused=False)
    assert (c.target, c.paused, c.pending) == (8, False, False)  # before any snapshot: what will be asked
    up = c.stamp(SetConcurrency(9))
    pause = c.stamp(Pause())
    assert (up.seq, pause.seq) == (1, 2) and up == SetConcurrency(9)  # seq is not part of what a command means
    c.seen(snap(8, ack=0))  # the engine has applied neither yet
    assert (c.target, c.paused, c.pending) == (9, True, True)
    c.seen(snap(9, ack=1))  # the first applied, the pause still on its way
    assert (c.target, c.paused) == (9, True) and c.pending
    c.seen(snap(9, EngineStatus.PAUSED, ack=2))
    assert (c.target, c.paused, c.pending) == (9, True, False)
    c.seen(snap(40, EngineStatus.RUNNING, ack=2))  # moved by something else (a level, a sweep): the engine's word
    assert (c.target, c.paused) == (40, False)


def test_a_ladder_asked_for_shows_until_acknowledged_then_snapshot_auto_rules():
    c = LiveControl(target=8, paused=False)
    assert not c.auto
    c.stamp(AutoLadder(start=8))
    c.seen(replace(snap(8, ack=0), auto=""))  # not applied yet: the face shows what it asked for
    assert c.auto and c.pending
    c.seen(replace(snap(8, ack=1), auto="auto: level 8 settling 1 s"))
    assert c.auto and not c.pending
    c.stamp(StopAuto())
    c.seen(replace(snap(8, ack=1), auto="auto: level 8 settling 2 s"))
    assert not c.auto  # asked to stop: shown stopped before the engine says so
    c.seen(replace(snap(8, ack=2), auto=""))
    assert not c.auto and not c.pending


def test_unrelated_commands_are_numbered_but_hold_no_intent():
    c = LiveControl(target=0, paused=True)
    assert c.stamp(ResetWindow()).seq == 1 and not c.pending
    assert c.stamp(SetConcurrency(MAX_CONCURRENCY + 10)).seq == 2 and c.target == MAX_CONCURRENCY
    c.stamp(Resume())
    assert c.paused is False


def test_restart_flow_transitions():
    f = RestartFlow()
    assert f.phase is RestartPhase.IDLE and not f.active
    f.begin(load_running=True)
    assert f.phase is RestartPhase.STOPPING and f.stopping and f.active
    with pytest.raises(RuntimeError):
        f.begin(load_running=False)  # F while restart() is still stopping the old server
    with pytest.raises(RuntimeError):
        f.finish()  # "ready" from the old process means nothing yet
    f.launched()
    assert f.phase is RestartPhase.STARTING and not f.stopping
    f.begin(load_running=False)  # another try after a failed start: the first attempt's intent stays
    f.launched()
    assert f.finish() is True and f.phase is RestartPhase.IDLE
    with pytest.raises(RuntimeError):
        f.launched()
    f.begin(load_running=False)
    f.launched()
    assert f.finish() is False  # the load was paused when F was pressed: it stays paused


@pytest.fixture
def session(tmp_path):
    emitted: list[Snapshot] = []
    # nothing listens on port 1: the session's version probe and /metrics polls fail at once, which is fine here
    s = EngineSession(SessionConfig(spec=RequestSpec(url="http://127.0.0.1:1", model="m"), prompt="hi",
                                    out_dir=str(tmp_path)), emitted.append)
    s.emitted = emitted  # type: ignore[attr-defined]
    return s


async def test_the_engine_acknowledges_and_clamps(session):
    assert session.snapshot().ack == 0 and session.snapshot().status is EngineStatus.STARTING
    session.handle(Pause(seq=4))  # paused workers wait instead of sending: only the bookkeeping is under test
    session.handle(SetConcurrency(MAX_CONCURRENCY + 1, seq=5))
    s = session.snapshot()
    assert (s.ack, s.target_concurrency) == (5, MAX_CONCURRENCY)
    session.handle(SetConcurrency(0, seq=6))
    session.handle(SetConcurrency(0, seq=7))  # a no-op for the engine, still acknowledged
    assert session.snapshot().ack == 7
    await session.engine.stop()


async def test_a_session_that_breaks_says_error_in_its_last_snapshot(session):
    def broken() -> None:
        raise RuntimeError("segment table exploded")

    session.refresh_rows = broken
    with pytest.raises(RuntimeError, match="exploded"):
        await asyncio.wait_for(session.run(), 30)
    last = session.emitted[-1]
    assert last.status is EngineStatus.ERROR and "segment table exploded" in last.message


def test_mode_and_rate_show_the_intent_until_acknowledged():
    from qbench_tui.engine.snapshot import MAX_RATE, MIN_RATE, SetMode, SetRate, clamp_rate

    c = LiveControl(8, False)
    assert c.mode == "closed" and c.rate == 0.0
    c.stamp(SetMode("open", 0.0))  # the engine picks the start: nothing to show until it says
    assert c.mode == "open" and c.rate == 0.0 and c.pending
    c.seen(replace(snap(8, ack=0), mode="closed"))
    assert c.mode == "open"  # not applied yet
    c.seen(replace(snap(8, ack=1), mode="open", request_rate=12.0))
    assert c.mode == "open" and c.rate == 12.0 and not c.pending and c.target == 8
    c.stamp(SetRate(13.0))
    assert c.rate == 13.0
    c.seen(replace(snap(8, ack=1), mode="open", request_rate=12.0))
    assert c.rate == 13.0
    c.seen(replace(snap(8, ack=2), mode="open", request_rate=13.0))
    c.stamp(SetMode("closed", concurrency=8))
    assert c.mode == "closed" and c.target == 8
    c.seen(replace(snap(8, ack=3), mode="closed", request_rate=None))
    assert c.mode == "closed" and c.rate == 13.0  # the last open rate: what `o` returns to
    assert clamp_rate(0) == MIN_RATE and clamp_rate(1e9) == MAX_RATE and clamp_rate(float("nan")) == MIN_RATE
