"""The dashboard's open loop on the real engine session against the real simulator: the rate kept (sends and the
segment's achieved rate), Poisson gaps, a rate change a new segment, closed loop restored, the lag shown the
records' own, the saved levels carrying the rate, and a full cap flagged behind schedule."""
from __future__ import annotations

import asyncio
import itertools
import json
import statistics
from pathlib import Path

import numpy as np

from qbench_tui.engine.arrivals import intervals
from qbench_tui.engine.live_open import SLOT_BASE, behind_schedule, start_rate, step_rate
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.replay import read_timeline, steps
from qbench_tui.engine.session import EngineSession, SessionConfig
from qbench_tui.engine.snapshot import Pause, Save, SetConcurrency, SetMode, SetRate, Stop
from tests.levels_files import read_records

RATE = 40.0
N = 400  # sends in the rate's segment: the achieved rate's own noise is then ~5%, the seeded draws fix it


class Live:
    """A real EngineSession on the test's loop; snapshots kept as they are emitted."""

    def __init__(self, cfg: SessionConfig) -> None:
        self.snaps: list = []
        self.session = EngineSession(cfg, self.snaps.append)
        self.task = asyncio.get_running_loop().create_task(self.session.run())

    async def until(self, pred, timeout: float = 60.0):
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if self.snaps and pred(self.snaps[-1]):
                return self.snaps[-1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"not reached; last snapshot: {self.snaps[-1] if self.snaps else None}")

    async def close(self) -> None:
        self.session.handle(Stop())
        await asyncio.wait_for(self.task, 60)


def _cfg(sim, tmp_path, **kw) -> SessionConfig:
    spec = RequestSpec(url=sim.url, model="m", max_tokens=16)
    return SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), window_s=30, min_segment_s=0.3, **kw)


def _row(rate=None, c=None, n=1):
    return lambda s: any(r.completed >= n and (rate is None or r.request_rate == rate)
                         and (c is None or (r.concurrency == c and r.request_rate is None)) for r in s.segments)


def _sent(recs: list[dict], segment: int) -> list[dict]:
    return sorted((r for r in recs if r["segment"] == segment), key=lambda r: r["start"])


async def test_open_loop_keeps_its_rate_changes_live_and_returns_to_closed(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--model", "m")
    live = Live(_cfg(sim, tmp_path))
    s = live.session
    try:
        await live.until(lambda x: x.status == "running")
        s.handle(SetConcurrency(4, seq=1))
        await live.until(_row(c=4, n=20))
        s.handle(SetMode("open", RATE, seq=2))
        snap = await live.until(lambda x: x.ack >= 2 and x.mode == "open")
        assert snap.request_rate == RATE and snap.target_concurrency == 4  # the closed target, kept for the way back
        open_seg = snap.segment
        await live.until(lambda x: s.segments[open_seg].seen >= N)
        s.handle(SetRate(step_rate(RATE, -10), seq=3))  # PgDn: halved
        snap = await live.until(lambda x: x.ack >= 3 and x.request_rate == 20.0)
        assert snap.segment > open_seg and snap.mode == "open"
        await live.until(_row(rate=20.0, n=20))
        s.handle(SetMode("closed", seq=4))
        snap = await live.until(lambda x: x.ack >= 4 and x.mode == "closed")
        assert snap.target_concurrency == 4 and snap.request_rate is None
        await live.until(lambda x: sum(1 for r in x.segments if r.concurrency == 4 and r.request_rate is None
                                       and r.completed >= 20) >= 2)
        s.handle(Save(str(tmp_path), seq=5))
        await live.until(lambda x: x.ack >= 5 and x.saved)
    finally:
        await live.close()

    recs = read_records(Path(s.log.path))
    sent = _sent(recs, open_seg)
    assert len(sent) >= N and all(r["schedule_lag_s"] is not None for r in sent)
    assert all(r["worker"] >= SLOT_BASE for r in sent)  # its own connections, never a closed-loop worker's
    starts = [r["start"] for r in sent[:N]]
    rate = (N - 1) / (starts[-1] - starts[0])
    # the draws the segment's schedule made (seeded by the segment's number): the sends followed them ...
    gaps = list(itertools.islice(intervals(RATE, 1.0, open_seg), N - 1))
    due_rate = (N - 1) / sum(gaps)
    assert abs(rate - due_rate) / due_rate < 0.03
    assert abs(rate - RATE) / RATE < 0.10  # ... and they are the rate asked for
    sgaps = np.diff(starts)
    assert 0.85 < statistics.pstdev(sgaps) / statistics.fmean(sgaps) < 1.15  # Poisson: CV 1
    # the closed loop's requests carry no schedule
    assert all(r["schedule_lag_s"] is None for r in recs if r["worker"] < SLOT_BASE)

    saved = json.loads(Path(s.saved[1]).read_text())
    by_rate = {lv.get("request_rate"): lv for lv in saved["levels"]}
    assert {RATE, 20.0} <= set(by_rate)
    lv = by_rate[RATE]
    assert lv["mode"] == "live" and lv["burstiness"] == 1.0 and lv["schedule_lag_ms"]["p99"] is not None
    assert abs(lv["request_throughput"] - RATE) / RATE < 0.15  # over its window, as the table shows it
    assert sum(1 for lv in saved["levels"] if lv.get("request_rate") is None and lv["max_concurrency"] == 4) >= 2

    # the saved timeline replays the open stretches as rate levels, the closed ones at C
    levels = [st for st in steps(read_timeline(saved)) if st.kind == "level"]
    assert [(st.mode, st.rate) for st in levels] == [("steady", None), ("rate", RATE), ("rate", 20.0),
                                                     ("steady", None)]
    assert levels[0].concurrency == levels[-1].concurrency == 4 and levels[1].concurrency == 0


async def test_live_lag_is_the_records_and_a_full_cap_is_behind_schedule(sim_proc, tmp_path):
    """400 r/s through a cap of 2 on answers of tens of ms: requests wait for the cap, the lag says how long, the
    flag is LevelResult's rule; the in-flight count never passes the cap."""
    sim = sim_proc("h200-fast", "--model", "m")
    live = Live(_cfg(sim, tmp_path, start_rate=400.0, rate_cap=2))
    s = live.session
    try:
        snap = await live.until(lambda x: x.mode == "open" and x.schedule_lag.count >= 100)
        assert snap.rate_cap == 2 and snap.request_rate == 400.0
        s.handle(Pause(seq=1))
        await live.until(lambda x: x.ack >= 1 and x.in_flight == 0)
        s.log.flush()
        snap = s.snapshot()
        assert max(x.in_flight for x in live.snaps) <= 2
    finally:
        await live.close()
    lags = [r["schedule_lag_s"] for r in read_records(Path(s.log.path)) if r["schedule_lag_s"] is not None]
    view = snap.schedule_lag
    assert view.count == len(lags)  # every one of them ended inside the 30 s window
    assert abs(view.p50 - float(np.percentile(lags, 50))) < 1e-5
    assert abs(view.p99 - float(np.percentile(lags, 99))) < 1e-5
    assert snap.behind_schedule and behind_schedule(400.0, view.p99)
    assert view.p50 > 0.05  # the median request waited for the cap
    rows = [r for r in snap.segments if r.request_rate == 400.0]
    assert rows and rows[0].behind_schedule and rows[0].concurrency == 2


def test_rate_steps_and_start():
    assert step_rate(10.0, 1) == 11.0 and step_rate(10.0, -1) == 9.1
    assert step_rate(10.0, 10) == 20.0 and step_rate(10.0, -10) == 5.0
    r = 1.0
    for _ in range(30):  # every press moves the shown number
        nxt = step_rate(r, 1)
        assert nxt > r
        r = nxt
    assert start_rate(0.0, 37.4) == 37.0 and start_rate(5.0, 37.4) == 5.0 and start_rate(0.0, 0.0) == 1.0
    assert not behind_schedule(10.0, 0.01) and behind_schedule(10.0, 0.06) and not behind_schedule(None, 1.0)
