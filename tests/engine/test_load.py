from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from qbench_tui.engine.load import LoadEngine, level_duration
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.stats import summarize
from tests.fakes.scripted_sse import Scenario, ScriptedSSEServer


async def wait_for(pred, timeout=20.0, step=0.01):
    """Poll until pred() is true; bounded so a broken engine fails the test instead of hanging it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


@pytest.fixture
def slow_server():
    # ~0.3 s per request: long enough that workers are observably in flight
    s = ScriptedSSEServer(default=Scenario(tokens=10, delay=0.03)).start()
    try:
        yield s
    finally:
        s.stop()


def _engine(srv, records=None, **kw):
    spec = RequestSpec(url=srv.url, model="m", **kw)
    return LoadEngine(spec, lambda i: f"prompt {i}", on_record=records.append if records is not None else None)


async def test_live_concurrency_up_and_down(slow_server):
    srv = slow_server
    records = []
    eng = _engine(srv, records)
    try:
        await eng.start(2)
        assert eng.target == 2 and eng.segment == 1
        await wait_for(lambda: srv.snapshot()["current"] == 2)
        eng.set_concurrency(5)
        assert eng.segment == 2
        await wait_for(lambda: srv.snapshot()["current"] == 5)
        assert eng.in_flight == 5
        eng.set_concurrency(1)
        assert eng.segment == 3
        await wait_for(lambda: eng.workers == 1 and srv.snapshot()["current"] == 1)
        srv.reset_counts()
        n = len(records)
        await wait_for(lambda: len(records) >= n + 3)
        assert srv.snapshot()["max_current"] == 1
        # shrinking let the busy workers finish: nothing was cut
        assert srv.snapshot()["aborted"] == 0
    finally:
        await eng.stop()
    assert records and all(r.ok for r in records), [r.error for r in records if not r.ok]
    assert {r.segment for r in records} <= {1, 2, 3}
    assert any(r.segment == 2 and r.concurrency == 5 for r in records)


async def test_shrink_to_zero_never_cancels(slow_server):
    srv = slow_server
    records = []
    eng = _engine(srv, records)
    try:
        await eng.start(4)
        await wait_for(lambda: srv.snapshot()["current"] == 4)
        eng.set_concurrency(0)
        await wait_for(lambda: eng.workers == 0)
        assert eng.in_flight == 0
        snap = srv.snapshot()
        assert snap["aborted"] == 0 and snap["current"] == 0
        assert len(records) == snap["total"] and all(r.ok for r in records)
    finally:
        await eng.stop()


async def test_pause_stops_new_requests(slow_server):
    srv = slow_server
    eng = _engine(srv)
    try:
        await eng.start(3)
        await wait_for(lambda: srv.snapshot()["current"] == 3)
        eng.pause()
        assert eng.paused
        await wait_for(lambda: eng.in_flight == 0)
        total = srv.snapshot()["total"]
        await asyncio.sleep(0.5)  # several request-lengths: no new request may start
        assert srv.snapshot()["total"] == total and eng.in_flight == 0
        assert srv.snapshot()["aborted"] == 0
        eng.resume()
        await wait_for(lambda: srv.snapshot()["total"] > total)
    finally:
        await eng.stop()


async def test_wave_sends_exactly_c(slow_server):
    srv = slow_server
    records = []
    eng = _engine(srv, records)
    try:
        recs = await eng.run_wave(6)
    finally:
        await eng.stop()
    snap = srv.snapshot()
    assert snap["total"] == 6 and len(recs) == 6 and records == recs
    assert snap["max_current"] == 6  # all at once
    assert all(r.ok and r.concurrency == 6 for r in recs)
    assert len({r.segment for r in recs}) == 1
    assert eng.last_level_duration == pytest.approx(level_duration(recs))
    assert eng.last_level_duration >= max(r.e2el for r in recs)


async def test_steady_with_request_count(slow_server):
    srv = slow_server
    eng = _engine(srv)
    try:
        recs = await eng.run_steady(3, requests=10)
    finally:
        await eng.stop()
    snap = srv.snapshot()
    b = eng.last_bounds
    assert b is not None and b.steady and b.t_start <= b.start < b.started_until <= b.end == b.ended_by
    measured = [r for r in recs if b.counts(r)]
    # exactly the 10 that started first once settled, all ended while the load was still held at 3
    assert len(measured) == 10 and all(r.ok for r in measured)
    assert sorted(measured, key=lambda r: r.start) == sorted((r for r in recs if r.start >= b.start),
                                                             key=lambda r: r.start)[:10]
    assert any(r.start >= b.started_until for r in recs)  # the 11th kept the load up while they finished
    assert len(recs) == snap["total"] and snap["max_current"] <= 3
    assert eng.workers == 0 and eng.in_flight == 0
    assert eng.last_level_duration == pytest.approx(b.end - b.start)


async def test_steady_duration_with_warmup_excluded():
    with ScriptedSSEServer(default=Scenario(tokens=4, delay=0.02)) as srv:
        eng = _engine(srv)
        try:
            seg0 = eng.segment
            recs = await eng.run_steady(2, duration=0.6, warmup=0.3)
        finally:
            await eng.stop()
        snap = srv.snapshot()
    warm = [r for r in recs if r.warmup]
    measured = [r for r in recs if not r.warmup]
    assert warm and measured
    assert len(recs) == snap["total"]  # in-flight requests at the end were awaited and kept
    assert all(r.ok for r in recs)
    assert all(r.segment == seg0 for r in recs)
    first_measured = min(r.start for r in measured)
    assert all(r.start < first_measured for r in warm)
    s = summarize(recs, eng.last_level_duration, 2)
    assert s["completed"] == len(measured)
    assert eng.last_level_duration > 0


async def test_level_after_live_load_drains_first_and_keeps_segment(slow_server):
    srv = slow_server
    records = []
    eng = _engine(srv, records)
    try:
        await eng.start(4)
        await wait_for(lambda: srv.snapshot()["current"] == 4)
        seg = eng.new_segment()
        recs = await eng.run_wave(2)
        # the 4 live requests finished (not cut) before the wave started
        assert srv.snapshot()["aborted"] == 0
        live = [r for r in records if r not in recs]
        assert len(live) == 4 and all(r.ok for r in live)
        assert min(r.start for r in recs) >= max(r.end for r in live)
        assert [r.segment for r in recs] == [seg, seg] and eng.segment == seg
        assert eng.workers == 0 and eng.target == 0
    finally:
        await eng.stop()


async def test_cancelled_level_drains_without_cutting(slow_server):
    srv = slow_server
    eng = _engine(srv)
    try:
        task = asyncio.create_task(eng.run_steady(3, duration=60.0))
        await wait_for(lambda: srv.snapshot()["current"] == 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert eng.target == 0
        await wait_for(lambda: eng.workers == 0)
        assert srv.snapshot()["aborted"] == 0 and eng.in_flight == 0
    finally:
        await eng.stop()


async def test_steady_needs_an_end(slow_server):
    eng = _engine(slow_server)
    with pytest.raises(ValueError):
        await eng.run_steady(2)
    await eng.stop()


async def test_failures_recorded_not_raised():
    with ScriptedSSEServer(default=Scenario(kind="http_error", status=503, error_body=b'{"error":{"message":"down"}}')) as srv:
        eng = _engine(srv)
        try:
            recs = await eng.run_steady(2, requests=4)
        finally:
            await eng.stop()
    b = eng.last_bounds
    assert all(r.error == "HTTP 503: down" for r in recs)
    # nothing succeeds, so there is nothing to settle: measured at once, marked not steady
    assert b is not None and not b.steady and b.start == b.t_start
    assert len([r for r in recs if b.counts(r)]) == 4


async def test_stop_cancels_in_flight_and_records_nothing_partial():
    with ScriptedSSEServer(default=Scenario(tokens=5, delay=1.0)) as srv:
        records = []
        eng = _engine(srv, records)
        await eng.start(2)
        await wait_for(lambda: srv.snapshot()["current"] == 2)
        await eng.stop()
        assert eng.workers == 0 and eng.in_flight == 0
        assert records == []


async def test_dead_server_fails_without_busy_loop():
    import socket

    with socket.socket() as sk:  # a port nobody listens on
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    records = []
    eng = LoadEngine(RequestSpec(url=f"http://127.0.0.1:{port}", model="m"), lambda i: "p", records.append)
    try:
        await eng.start(2)
        await wait_for(lambda: len(records) >= 4)
        await asyncio.sleep(0.3)
    finally:
        await eng.stop()
    assert all(not r.ok and r.error.startswith("connect error") for r in records)
    # fast failures back off 0.1 s each: ~2 workers x 0.3 s / 0.1 s, not thousands (a slower machine only lowers it)
    assert len(records) < 100


def test_engine_does_not_import_textual():
    code = ("import sys, qbench_tui.engine.load, qbench_tui.engine.request, qbench_tui.engine.http1, "
            "qbench_tui.engine.openai_stream, qbench_tui.engine.stats, qbench_tui.engine.sse; "
            "assert 'textual' not in sys.modules, 'textual imported'")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=root)
