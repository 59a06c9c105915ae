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
    # (its edge is the first send's stamp, so the count of --requests is exact)
    assert b is not None and not b.steady and b.t_start <= b.start <= min(r.start for r in recs)
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
    # refused connections back off (engine/backoff.py): a handful per worker, not thousands (a slower machine only
    # lowers it); 2 workers stay under the automatic budget of 20 in a row over this short run
    assert len(records) < 100


def test_engine_does_not_import_textual():
    code = ("import sys, qbench_tui.engine.load, qbench_tui.engine.request, qbench_tui.engine.http1, "
            "qbench_tui.engine.openai_stream, qbench_tui.engine.stats, qbench_tui.engine.sse; "
            "assert 'textual' not in sys.modules, 'textual imported'")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=root)


# ------------------------------------------------------------ backoff and the error budget, on the real simulator

NO_BUDGET = 10**9  # max_consecutive_failures that never trips: the backoff alone is under test


def _sim_engine(sim, records, model=None, **kw):
    spec = RequestSpec(url=sim.url, model=model or "m", max_tokens=8, **kw)
    return LoadEngine(spec, lambda i: f"prompt {i}", on_record=records.append)


def _backoff_send_bound(workers: int, elapsed: float) -> int:
    """Sends `workers` backing-off workers can make in `elapsed` s: a worker's k-th send follows k-1 waits
    uniform on [0, ceiling(n)], whose means are half the ceilings; allowing each worker every send whose mean
    waits fit in twice the time covers the jitter (1e5 simulated runs of 20 workers x 4 s never exceeded it)."""
    from qbench_tui.engine.backoff import jitter_ceiling

    sends, mean_wait, n = 1, 0.0, 0
    while mean_wait + jitter_ceiling(n) / 2 <= 2 * elapsed:
        mean_wait += jitter_ceiling(n) / 2
        sends, n = sends + 1, n + 1
    return workers * sends


async def test_instant_500s_back_off(sim_proc):
    sim = sim_proc("h200-fast", "--error-rate", "1.0", "--model", "m")
    records = []
    eng = _sim_engine(sim, records, max_consecutive_failures=NO_BUDGET)
    loop = asyncio.get_running_loop()
    t = loop.time()
    try:
        await eng.start(20)
        await asyncio.sleep(3.0)
    finally:
        await eng.stop()
    elapsed = loop.time() - t
    assert records and all(r.status == 500 for r in records)
    assert len({r.worker for r in records}) == 20
    bound = _backoff_send_bound(20, elapsed)
    # without the backoff these were thousands a second (the issue: ~7,200/s at C=20)
    assert bound < 400 and len(records) <= bound, (len(records), bound)
    assert eng.tripped is None


async def test_retry_after_is_honoured(sim_proc):
    sim = sim_proc("h200-fast", "--rate-limit-rate", "1.0", "--retry-after", "1", "--model", "m")
    records = []
    eng = _sim_engine(sim, records, max_consecutive_failures=NO_BUDGET)
    try:
        await eng.start(3)
        await wait_for(lambda: len(records) >= 9)  # three sends per worker: two waits each
    finally:
        await eng.stop()
    assert all(r.status == 429 and r.retry_after == 1.0 for r in records)
    by_worker: dict[int, list] = {}
    for r in records:
        by_worker.setdefault(r.worker, []).append(r)
    gaps = [b.start - a.end for rs in by_worker.values() for a, b in zip(rs, rs[1:])]
    assert len(gaps) >= 6
    assert min(gaps) >= 0.999  # (clock granularity) each worker waited at least what the server asked between its sends


async def test_a_long_wait_ends_when_the_worker_must_stop(sim_proc):
    sim = sim_proc("h200-fast", "--rate-limit-rate", "1.0", "--retry-after", "30", "--model", "m")
    records = []
    eng = _sim_engine(sim, records, max_consecutive_failures=NO_BUDGET)
    try:
        await eng.start(2)
        await wait_for(lambda: len(records) == 2)  # both now wait >= 30 s
        eng.set_concurrency(1)  # the lower target ends worker 1's wait: it exits long before 30 s
        await wait_for(lambda: eng.workers == 1, timeout=10)
        eng.pause()  # a pause ends the wait (nothing is to be sent) ...
        await asyncio.sleep(0.1)  # (lets the worker wake: a few loop turns)
        eng.resume()  # ... so, resumed, worker 0 sends at once
        await wait_for(lambda: len(records) == 3, timeout=10)
        assert records[-1].worker == 0
        # a steady level whose every request is refused ends at its duration, not after the 30 s waits
        recs = await asyncio.wait_for(eng.run_steady(2, duration=0.5), timeout=15)
        assert recs and all(r.status == 429 for r in recs)
    finally:
        await eng.stop()


async def test_wrong_model_trips_the_budget_and_pauses(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m")
    records = []
    eng = _sim_engine(sim, records, model="nope")
    try:
        await eng.start(20)
        await wait_for(lambda: eng.tripped is not None)
        msg = eng.tripped
        assert msg.startswith("error budget: 40 failures in a row and no success")
        assert "HTTP 404: The model `nope` does not exist." in msg
        assert eng.paused
        await wait_for(lambda: eng.in_flight == 0)
        sent = len(records)
        assert 40 <= sent <= 60  # the 40 that tripped it, plus at most the requests then in flight
        await asyncio.sleep(1.0)
        assert len(records) == sent  # paused: nothing more goes out
        # a level asked for while tripped sends nothing
        assert await eng.run_steady(4, duration=1.0) == [] and eng.last_bounds is None
        eng.resume()
        assert eng.tripped is None and not eng.paused
        await wait_for(lambda: len(records) > sent)  # sending again, and the server still says no: trips again
        await wait_for(lambda: eng.tripped is not None)
        assert "does not exist" in eng.tripped
    finally:
        await eng.stop()


async def test_a_tripped_steady_level_ends_early_with_its_records(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m")
    records = []
    eng = _sim_engine(sim, records, model="nope", max_consecutive_failures=30)
    try:
        recs = await asyncio.wait_for(eng.run_steady(10, duration=600.0), timeout=60)  # not the 600 s
    finally:
        await eng.stop()
    assert eng.tripped and eng.tripped.startswith("error budget: 30 failures in a row")
    assert len(recs) >= 30 and all(r.status == 404 for r in recs)
    b = eng.last_bounds
    assert b is not None and not b.steady  # measured from the start, as any level that never settled
    assert all(b.counts(r) for r in recs)


async def test_a_wave_trips_on_one_round():
    with ScriptedSSEServer(default=Scenario(kind="http_error", status=502, error_body=b"bad gateway")) as srv:
        eng = _engine(srv)
        try:
            recs = await eng.run_wave(25)
            assert len(recs) == 25
            assert eng.tripped and "25 failures in a row" in eng.tripped and "HTTP 502" in eng.tripped
            assert await eng.run_wave(25) == []  # the next level does not run against it
        finally:
            await eng.stop()
    assert srv.snapshot()["total"] == 25
