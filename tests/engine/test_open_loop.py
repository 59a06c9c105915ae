"""Open-loop levels on the real simulator: the schedule kept (rate, CV), the cap holding in-flight requests and the
lag it causes made visible, and the measured requests all ending under load."""
from __future__ import annotations

import itertools
import statistics

from qbench_tui.engine.arrivals import schedule
from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.open_loop import run_open, schedule_lag
from qbench_tui.engine.records import RequestSpec


def _engine(sim, records):
    spec = RequestSpec(url=sim.url, model="m", max_tokens=16)
    return LoadEngine(spec, lambda i: f"prompt {i}", on_record=records.append)


async def test_poisson_arrivals_keep_their_rate_and_cv(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m")
    records: list = []
    eng = _engine(sim, records)
    n = 400
    try:
        recs, bounds = await run_open(eng, schedule(40.0, 1.0, seed=5), requests=n)
    finally:
        await eng.stop()
    measured = sorted((r for r in recs if bounds.counts(r)), key=lambda r: r.start)
    assert len(measured) == n and all(r.ok for r in measured)
    sends = [r.start for r in measured]
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    rate = (len(sends) - 1) / (sends[-1] - sends[0])
    # the schedule's own draws decide these (seeded); what is checked is that the sends followed it
    due = list(itertools.islice(schedule(40.0, 1.0, seed=5), n))
    due_rate = (n - 1) / (due[-1] - due[0])
    assert abs(rate - due_rate) / due_rate < 0.05
    cv = statistics.pstdev(gaps) / statistics.fmean(gaps)
    assert 0.85 < cv < 1.15  # Poisson: 1
    assert all(r.scheduled is not None and r.start >= r.scheduled for r in measured)


async def test_a_full_cap_shows_as_schedule_lag_not_fewer_requests(sim_proc):
    """The simulator's fast profile at 16 output tokens answers in tens of ms; at 400 req/s with a cap of 2 the
    cap is the limit: requests go out late, and the lag says by how much."""
    sim = sim_proc("h200-fast", "--model", "m")
    records: list = []
    eng = _engine(sim, records)
    try:
        recs, bounds = await run_open(eng, schedule(400.0, 1.0, seed=1), requests=200, max_concurrency=2)
    finally:
        await eng.stop()
    measured = [r for r in recs if bounds.counts(r)]
    assert len(measured) == 200
    assert {r.worker for r in recs} <= {0, 1}  # two slots, two connections
    lag = sorted(schedule_lag(measured))
    assert lag[len(lag) // 2] > 0.05  # the median request waited for the cap


async def test_measured_requests_end_under_load(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m")
    records: list = []
    eng = _engine(sim, records)
    try:
        recs, bounds = await run_open(eng, schedule(50.0, 1.0, seed=2), duration=2.0)
    finally:
        await eng.stop()
    measured = [r for r in recs if bounds.counts(r)]
    assert measured
    last_end = max(r.end for r in measured)
    # arrivals went on after the window until the last measured request ended
    assert any(r.start >= bounds.started_until and r.start <= last_end for r in recs)
