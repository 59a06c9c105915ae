"""The auto ladder in a live session (the dashboard's `a`): the same policy on live segments, progress in words,
stopped by StopAuto or a hand-made change, the knee and its cause in the Snapshot, the load left where it belongs."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from qbench_tui.engine import auto_live
from qbench_tui.engine.auto_live import CAUSE_WORDS
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import EngineSession, SessionConfig
from qbench_tui.engine.snapshot import AutoLadder, SetConcurrency, Stop, StopAuto
from tests.engine.test_auto_profiles import assert_cause


@pytest.fixture
def fast_levels(monkeypatch):
    # a level is measured 1.5 s once settled (the product's 10 s): enough for a few 0.4 s requests per worker
    monkeypatch.setattr(auto_live, "MEASURE_S", 1.5)
    monkeypatch.setattr(auto_live, "LATENCIES_PER_LEVEL", 2.0)


async def _session(url: str, tmp_path, **cfg) -> tuple[EngineSession, asyncio.Task, list]:
    model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    spec = RequestSpec(url=url, model=model, max_tokens=32, ignore_eos=True)
    snaps: list = []
    session = EngineSession(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), min_segment_s=0.5, **cfg),
                            emit=snaps.append)
    task = asyncio.create_task(session.run())
    await _until(lambda: session.status == "running", 30, "session never started")
    return session, task, snaps


async def _until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)
    return v


async def test_live_ladder_finds_the_sequence_limit_and_holds_there(sim_proc, tmp_path, fast_levels):
    sim = sim_proc("seqs-limited", "--speed", "2")  # max_num_seqs 16: throughput flat past 16
    session, task, snaps = await _session(sim.url, tmp_path)
    try:
        session.handle(SetConcurrency(3))
        session.handle(AutoLadder(start=16, max_concurrency=64, budget_s=300, hold=True, seq=7))
        assert session.ack == 7 and session.auto_state.startswith("auto:")
        seen: set[str] = set()

        def done():
            seen.add(session.auto_state)
            return not session.auto.running

        await _until(done, 150, f"ladder never ended: {session.auto_state}")
        assert any(s.startswith("auto: level 16 settling") for s in seen), seen  # progress said while it ran
        k = session.auto.verdict
        cs = [lv.max_concurrency for lv in session.auto.levels]
        # one rung past the limit and no further; 16, the lowest level, is the knee: nothing to refine below it
        assert cs == [16, 32], cs
        assert k.saturated and k.knee_concurrency == 16, (cs, k.summary)
        assert_cause(session.auto.levels, k, "max_num_seqs")
        assert f"knee at 16 ({CAUSE_WORDS[k.cause_kind]})" in session.auto_state
        # hold: the load stays at the level found, not where the user had it (3)
        assert session.engine.target == k.interactive_concurrency
        session.refresh_rows()
        auto_pts = [p for p in session.curve if p.auto]
        assert sorted({p.concurrency for p in auto_pts}) == sorted(set(cs))
        assert all(p.tok_s > 0 for p in auto_pts)
        snap = session.snapshot()
        # the ladder has ended: the face's AUTO badge goes ("" = no ladder runs); its final words were the message
        assert snap.auto == "" and session.auto_state and snap.verdict is not None and snap.curve == session.curve
    finally:
        session.handle(Stop())
        await task


async def test_stop_auto_keeps_what_was_measured_and_a_hand_change_takes_over(sim_proc, tmp_path, fast_levels):
    sim = sim_proc("seqs-limited", "--speed", "2")
    session, task, _ = await _session(sim.url, tmp_path)
    try:
        session.handle(AutoLadder(start=2, max_concurrency=64, budget_s=300))
        await _until(lambda: len(session.auto.levels) >= 2, 60, f"no two levels: {session.auto_state}")
        session.handle(StopAuto())
        await _until(lambda: not session.auto.running, 10, "StopAuto did not stop it")
        kept = len(session.auto.levels)
        assert kept >= 2 and f"{kept} levels kept" in session.auto_state and "stopped by hand" in session.message
        assert session.engine.target == session.auto.levels[-1].max_concurrency * 2  # the load stays where it was

        session.handle(AutoLadder(start=2, max_concurrency=64, budget_s=300))
        await _until(lambda: session.engine.target == 2, 10, "second ladder did not start")
        session.handle(SetConcurrency(5))  # the user takes over
        await _until(lambda: not session.auto.running, 10, "a hand-made change did not stop it")
        assert "changed by hand to 5" in session.message and session.engine.target == 5
    finally:
        session.handle(Stop())
        await task
