"""A windowed level summed up as its records finish (window.WindowTally) equals the same level summed up from the
list of all its records (window.summarize_window), and the headless driver no longer holds that list: what is
alive at once is about the concurrency, not the level's request count."""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import random

import pytest

from qbench_tui.engine.arrivals import schedule
from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.open_loop import run_open
from qbench_tui.engine.records import RequestRecord, RequestSpec
from qbench_tui.engine.result import LevelResult
from qbench_tui.engine.stats import LevelTally, headless_tally, percentile
from qbench_tui.engine.window import Bounds, Clocks, WindowTally, summarize_window
from qbench_tui.headless import LevelPlan, run_plan

CLOCKS = Clocks(mono=0.0, wall=1.7e9)


def assert_same(got: LevelResult, want: LevelResult) -> None:
    """Every field equal; floats to 1e-9 (the sums are added in another order)."""
    _same(dataclasses.asdict(got), dataclasses.asdict(want), "level")


def _same(x, y, where: str) -> None:
    if isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for k in x:
            _same(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), where
        for i, (a, b) in enumerate(zip(x, y)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(x, float) or isinstance(y, float):
        assert x == pytest.approx(y, rel=1e-9, abs=1e-12), (where, x, y)
    else:
        assert x == y, (where, x, y)


# ---------------------------------------------------------------- the fold rules, on a synthetic level


def _synthetic(seed: int, c: int = 6, warm_end: float = 1.0, horizon: float = 12.0) -> list[RequestRecord]:
    """Closed-loop-shaped records: C workers back to back, some failed, some instant, some without a content
    event, warm-up ones first."""
    rng = random.Random(seed)
    recs = []
    for w in range(c):
        t = rng.uniform(0.0, 0.3)
        while t < horizon:
            life = 0.0 if rng.random() < 0.05 else rng.uniform(0.05, 1.5)
            ok = life > 0 and rng.random() > 0.1
            ttft, itl, out = None, [], 0
            if ok:
                out = rng.randint(1, 25)
                if rng.random() > 0.05:
                    ttft = rng.uniform(0.01, life / 2)
                    n = rng.randint(0, out - 1)
                    gaps = [rng.random() for _ in range(n)]
                    scale = (life - ttft) * rng.uniform(0.5, 0.999) / (sum(gaps) or 1.0)
                    itl = [g * scale for g in gaps]
            recs.append(RequestRecord(ok=ok, segment=1, concurrency=c, worker=w, start=t, end=t + life, ttft=ttft,
                                      itl=itl, out_tokens=out, in_tokens=rng.randint(1, 500),
                                      error="" if ok else "HTTP 500: boom", status=None if ok else 500,
                                      warmup=t < warm_end))
            t += life + rng.uniform(0.0, 0.02)
    return recs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bound", ["final", "rising", "trip"])
def test_fold_equals_the_batch_summary(seed, bound):
    recs = _synthetic(seed)
    rng = random.Random(1000 + seed)
    t0 = rng.uniform(1.5, 2.5)
    lo = t0 + rng.uniform(3.0, 5.0)  # what the runner knows of started_until while the level runs
    until = lo + (0.7 if bound == "trip" else 0.0)  # a trip after the window's starts moves it on
    end = max(r.end for r in recs if t0 <= r.start < until) + 1e-3  # the last measured request has ended
    b = Bounds(0.0, t0, end, until, end)
    t_open = t0 + 1.5  # the settle test knows the start only afterwards

    w = WindowTally()
    steps = [t0 + (lo - t0) * k / 8 for k in range(1, 9)]
    for r in sorted(recs, key=lambda r: r.end):  # they finish in the order they end
        if w.start is None and r.end >= t_open:
            w.open(t0, steps[0] if bound == "rising" else lo)
        if bound == "rising" and w.start is not None:
            while len(steps) > 1 and r.end > steps[0]:  # the bound rises with time
                steps.pop(0)
                w.until_at_least(steps[0])
        if w.bounds is None and r.end >= end:
            w.close(b)
        w.add(r)
    assert w.held == 0 and w.waited > 0

    want = summarize_window(recs, b, 6, CLOCKS, rule="r", mode="steady")
    got = w.result(6, CLOCKS, rule="r", mode="steady")
    assert_same(got, want)
    assert got.completed > 10 and got.window_requests and got.output_throughput
    if bound != "final":
        assert w.max_late > 0  # records did wait on the bound, and were decided right


def test_result_needs_the_window_and_one_start():
    w = WindowTally()
    with pytest.raises(RuntimeError):
        w.result(1, CLOCKS, rule="r")
    w.open(1.0, 2.0)
    with pytest.raises(ValueError):
        w.open(1.5, 2.0)
    with pytest.raises(ValueError):
        w.close(Bounds(0.0, 1.5, 3.0, 2.0, 3.0))


# ---------------------------------------------------------------- real levels on the simulator


def _engine(sim, records: list, **kw) -> LoadEngine:
    spec = RequestSpec(url=sim.url, model="m", max_tokens=24, **kw)
    return LoadEngine(spec, lambda i: f"prompt {i}", on_record=records.append)


async def _steady(sim, **kw):
    records: list = []
    eng = _engine(sim, records)
    w = WindowTally()
    try:
        kept = await eng.run_steady(summary=w, **kw)
    finally:
        await eng.stop()
    assert kept == []  # folded, not kept
    return records, eng.last_bounds, w


@pytest.mark.parametrize("kw", [
    {"c": 8, "duration": 2.0},  # settled by the standard rule
    {"c": 6, "requests": 150, "warmup": 0.5, "settle": None},  # --requests: edges on send stamps
    {"c": 12, "requests": 300},
], ids=["duration-settled", "requests-warmup", "requests-settled"])
async def test_steady_level_streamed_equals_batch(sim_proc, kw):
    sim = sim_proc("h200-fast", "--model", "m")
    records, b, w = await _steady(sim, **kw)
    assert b is not None and b.steady
    want = summarize_window(records, b, kw["c"], CLOCKS, rule="r", mode="steady")
    got = w.result(kw["c"], CLOCKS, rule="r", mode="steady")
    assert_same(got, want)
    if "requests" in kw:
        assert got.completed == kw["requests"]
    assert got.completed > 0 and got.output_throughput and got.window_requests
    assert len(records) > got.completed  # the level ran on after its window's starts: the hold and the drain
    # nothing is left undecided, and only requests that started during the hold waited on the bound
    hold = sum(1 for r in records if r.start >= b.started_until and r.end <= b.end)
    assert w.held == 0 and w.max_late <= hold < got.completed

    # what folding costs: ITL binned from the start (one 0.5% bin at most), every per-request value exact
    exact = LevelTally().add_all(r for r in records if b.counts(r))
    for q in ("mean_s", "p50_s", "p90_s", "p99_s"):
        assert getattr(got.ttft, q) == pytest.approx(getattr(exact.ttft.latency(), q), rel=1e-12)
        assert getattr(got.e2el, q) == pytest.approx(getattr(exact.e2el.latency(), q), rel=1e-12)
        assert getattr(got.itl, q) == pytest.approx(getattr(exact.itl.latency(), q), rel=0.005)


async def test_tripped_steady_level_streamed_equals_batch(sim_proc):
    # half the requests fail: the rate rule trips the level mid-way, its window runs to the trip
    sim = sim_proc("h200-fast", "--model", "m", "--error-rate", "0.5")
    records: list = []
    eng = _engine(sim, records, max_error_rate=0.1)
    w = WindowTally()
    try:
        await asyncio.wait_for(eng.run_steady(8, duration=600.0, settle=None, summary=w), timeout=60)
    finally:
        await eng.stop()
    b = eng.last_bounds
    assert eng.tripped and b is not None and not b.steady
    want = summarize_window(records, b, 8, CLOCKS, rule="r", mode="steady")
    got = w.result(8, CLOCKS, rule="r", mode="steady")
    assert_same(got, want)
    assert got.completed > 0 and got.failed > 0


@pytest.mark.parametrize("kw", [
    {"due": "rate", "duration": 2.0, "warmup": 0.3, "max_concurrency": 4},
    {"due": "trace", "requests": 120},
], ids=["rate-capped", "trace"])
async def test_open_loop_level_streamed_equals_batch(sim_proc, kw):
    sim = sim_proc("h200-fast", "--model", "m")
    records: list = []
    eng = _engine(sim, records)
    w = WindowTally()
    kw = dict(kw)
    due = schedule(150.0, 1.0, seed=3) if kw.pop("due") == "rate" else [i / 80 for i in range(kw["requests"])]
    try:
        kept, b = await run_open(eng, due, summary=w, **kw)
    finally:
        await eng.stop()
    assert kept == [] and b is not None
    c = kw.get("max_concurrency")
    want = summarize_window(records, b, c, CLOCKS, rule="r", mode="rate")
    got = w.result(c, CLOCKS, rule="r", mode="rate")
    assert_same(got, want)
    assert got.completed > 0 and got.schedule_lag is not None
    # the schedule lag reaches the .requests.jsonl: the record carries its due time before on_record sees it
    assert all(r.scheduled is not None and r.to_json()["schedule_lag_s"] is not None for r in records)


# ---------------------------------------------------------------- memory: bounded by count, not by N


def _alive_records() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is RequestRecord)


def test_headless_level_holds_about_c_records_not_n(sim_proc):
    # short answers at C=8: over a thousand requests in a few seconds; no settle test, so the window starts at
    # the first look (what waits for the start is a tick's worth of requests)
    sim = sim_proc("h200-fast", "--model", "m")
    spec = RequestSpec(url=sim.url, model="m", max_tokens=4)
    c = 8
    seen = [0]
    peak = [0]
    base = _alive_records()  # whatever an earlier test left for the collector

    def on_record(rec, level):
        seen[0] += 1
        if seen[0] % 25 == 0:
            peak[0] = max(peak[0], _alive_records() - base)

    levels, stopped = asyncio.run(run_plan(spec, lambda i: "hi", [LevelPlan(c, "steady", 5.0, settle=False)],
                                           on_record=on_record))
    assert stopped is None and len(levels) == 1
    lv = levels[0]
    n = seen[0]
    # in flight, plus what finishes while the start is not known yet (the first 0.1 s tick) and during the hold
    # after the last measured start (up to a tick past the longest measured request): half a second, with room
    bound = c + 0.5 * n / lv.duration_s
    print(f"records: {n}, alive at most {peak[0]}, bound {bound:.0f}")
    assert n >= 5 * bound  # a level far longer than the bound
    assert 0 < peak[0] <= bound, (peak[0], bound, n)
    assert _alive_records() - base <= c  # after the level: none kept


def test_headless_tally_folds_past_its_limit(monkeypatch):
    from qbench_tui.engine import stats

    monkeypatch.setattr(stats, "HEADLESS_EXACT", 100)
    t = headless_tally()
    rng = random.Random(7)
    xs = [rng.lognormvariate(-2.0, 0.5) for _ in range(1000)]
    for i, x in enumerate(xs):
        t.add(RequestRecord(ok=True, segment=1, concurrency=1, worker=0, start=float(i), end=i + x, ttft=x / 4,
                            itl=[x / 8, x / 8], out_tokens=3, in_tokens=10))
    assert len(t.e2el.values) < 100 and t.e2el.hist is not None  # folded: memory no longer grows with N
    got = t.e2el.latency()
    for q, v in ((50, got.p50_s), (90, got.p90_s), (99, got.p99_s)):
        assert v == pytest.approx(percentile(xs, q), rel=0.005)  # within one 0.5% bin
    assert got.mean_s == pytest.approx(sum(xs) / len(xs), rel=1e-9)
