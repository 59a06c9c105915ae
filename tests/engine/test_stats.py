from __future__ import annotations

import math
import random

import pytest

from qbench_tui.engine.histogram import LogHistogram
from qbench_tui.engine.records import RequestRecord
from qbench_tui.engine.result import LevelResult
from qbench_tui.engine.rolling import RollingWindow
from qbench_tui.engine.snapshot import LatencyView
from qbench_tui.engine.stats import (
    Finished,
    LevelTally,
    latency_view,
    level_result,
    log_edges,
    percentile,
    summarize,
)

approx = pytest.approx

VLLM_KEYS = [
    "completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
    "output_throughput", "total_token_throughput", "max_concurrency",
    *[f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "median", "p90", "p99")],
]
EXTRA_KEYS = ["total_time_s", "avg_latency_s", "failures", "tokens_estimated"]


@pytest.mark.parametrize(
    "values,q,want",
    [
        ([4, 1, 3, 2], 50, 2.5),
        ([4, 1, 3, 2], 90, 3.7),  # pos (n-1)*q = 2.7
        ([4, 1, 3, 2], 99, 3.97),
        ([4, 1, 3, 2], 0, 1.0),
        ([4, 1, 3, 2], 100, 4.0),
        ([10, 20, 30, 40, 50], 50, 30.0),
        ([10, 20, 30, 40, 50], 90, 46.0),  # pos 3.6
        ([10, 20, 30, 40, 50], 99, 49.6),
        ([5.0], 99, 5.0),
    ],
)
def test_percentile_matches_numpy_linear(values, q, want):
    assert percentile(values, q) == approx(want)


def test_percentile_empty_and_bad_q():
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def _rec(ok=True, start=0.0, end=1.0, ttft=0.1, itl=(), out=1, inp=0, error="", warmup=False, est=False):
    return RequestRecord(ok=ok, segment=1, concurrency=3, worker=0, start=start, end=end, ttft=ttft,
                         itl=list(itl), out_tokens=out, in_tokens=inp, error=error, warmup=warmup,
                         tokens_estimated=est)


def _records():
    return [
        _rec(start=0, end=1.0, ttft=0.1, itl=[0.2, 0.3], out=3, inp=10),  # tpot 0.45
        _rec(start=0, end=2.0, ttft=0.3, itl=[0.4], out=2, inp=20),  # tpot 1.7
        _rec(start=1, end=1.5, ttft=0.2, itl=[], out=1, inp=5, est=True),  # no tpot (out <= 1)
        _rec(ok=False, ttft=None, out=0, error="HTTP 500: x"),
        _rec(ok=False, ttft=None, out=0, error="read timeout"),
        _rec(ok=False, ttft=None, out=0, error="read timeout"),
        _rec(start=0, end=50.0, ttft=40.0, itl=[9.0], out=100, inp=100, warmup=True),
        _rec(ok=False, ttft=None, error="warm failure", warmup=True),
    ]


def test_summarize_keys_exact():
    # the run format, plus where the level came from and the server's view (null here)
    assert list(summarize(_records(), 4.0, 3)) == VLLM_KEYS + EXTRA_KEYS + ["mode", "server", "interrupted", "input_lens",
                                                                          "output_lens"]


def test_level_result_attributes_are_seconds():
    lv = level_result(LevelTally().add_all(_records()), 4.0, 3)
    assert isinstance(lv, LevelResult)
    assert (lv.completed, lv.failed, lv.duration_s, lv.max_concurrency) == (3, 3, 4.0, 3)
    assert (lv.ttft.mean_s, lv.ttft.p50_s, lv.ttft.p90_s, lv.ttft.p99_s) == approx((0.2, 0.2, 0.28, 0.298))
    assert lv.avg_latency_s == approx(3.5 / 3) and lv.e2el.p50_s == approx(1.0)
    assert lv.failures == {"read timeout": 2, "HTTP 500: x": 1}  # most frequent first
    # rates over what finished in a window, when the caller says so (a timed steady level)
    w = level_result(LevelTally().add_all(_records()), 2.0, 3, Finished(1, 10, 3), window_requests=1)
    assert (w.request_throughput, w.output_throughput, w.total_token_throughput) == approx((0.5, 1.5, 6.5))
    assert w.total_output_tokens == 6 and w.to_json()["window_requests"] == 1


def test_level_tally_span_is_first_start_to_last_end():
    t = LevelTally().add_all(_records())
    assert t.span_s == approx(2.0)  # the warm-up record that ended at 50 s does not count
    assert LevelTally().span_s == 0.0


def test_summarize_values():
    s = summarize(_records(), 4.0, 3)
    assert (s["completed"], s["failed"], s["duration"], s["max_concurrency"]) == (3, 3, 4.0, 3)
    assert (s["total_input_tokens"], s["total_output_tokens"]) == (35, 6)
    assert s["request_throughput"] == approx(0.75)
    assert s["output_throughput"] == approx(1.5)
    assert s["total_token_throughput"] == approx(41 / 4)
    assert [s[f"{k}_ttft_ms"] for k in ("mean", "median", "p90", "p99")] == approx([200, 200, 280, 298])
    assert [s[f"{k}_tpot_ms"] for k in ("mean", "median", "p90", "p99")] == approx([1075, 1075, 1575, 1687.5])
    assert [s[f"{k}_itl_ms"] for k in ("mean", "median", "p90", "p99")] == approx([300, 300, 380, 398])
    assert [s[f"{k}_e2el_ms"] for k in ("mean", "median", "p90", "p99")] == approx([3500 / 3, 1000, 1800, 1980])
    assert s["total_time_s"] == 4.0
    assert s["avg_latency_s"] == approx(3.5 / 3)
    assert s["failures"] == {"read timeout": 2, "HTTP 500: x": 1}
    assert s["tokens_estimated"] == 1


def test_summarize_no_data_is_none():
    s = summarize([_rec(ok=False, ttft=None, error="e")], 0.0, None)
    assert s["completed"] == 0 and s["failed"] == 1
    assert s["request_throughput"] is None
    for k in VLLM_KEYS:
        if k.endswith("_ms"):
            assert s[k] is None, k
    assert s["avg_latency_s"] is None and s["max_concurrency"] is None


def test_log_edges_and_display_bins():
    edges = log_edges(0.001, 120.0, 40)
    assert len(edges) == 41 and edges[0] == 0.001 and edges[-1] == 120.0
    ratios = [b / a for a, b in zip(edges, edges[1:])]
    assert max(ratios) == approx(min(ratios))
    h = LogHistogram()
    h.add_many([0.0001, 0.005, 0.05, 0.5, 0.5, 5, 500])
    v = h.view(log_edges(0.001, 100.0, 5))  # edges 0.001, 0.01, 0.1, 1, 10, 100
    assert v.counts == (2, 1, 2, 1, 1)  # under-range into the first bin, over-range into the last
    assert v.count == 7 and v.max == 500


def test_latency_view():
    edges = log_edges(0.001, 100.0, 5)
    v = latency_view([0.5, 0.05, 0.002, 5.0], edges)
    assert isinstance(v, LatencyView)
    assert v.counts == (1, 1, 1, 1, 0) and v.edges == edges
    assert v.count == 4 and v.max == 5.0
    assert v.mean == approx((0.5 + 0.05 + 0.002 + 5.0) / 4)
    assert v.p50 == approx(0.275)  # sorted [0.002, 0.05, 0.5, 5.0], pos 1.5
    assert v.p99 == approx(0.5 + 4.5 * 0.97)
    empty = latency_view([], edges)
    assert empty.count == 0 and empty.p50 is None and sum(empty.counts) == 0


def _wrec(end, ok=True, out=10, itl=(0.01,), err=""):
    return RequestRecord(ok=ok, segment=0, concurrency=1, worker=0, start=end - 1.0, end=end, ttft=0.2,
                         itl=list(itl), out_tokens=out, error=err)


def test_rolling_window_rates_young_and_full():
    w = RollingWindow(10.0, now=100.0)
    w.add(_wrec(101.0))
    w.add(_wrec(102.0, out=30))
    # young window: 2 s since start, not 10
    assert w.out_tok_s(102.0) == approx(40 / 2)
    assert w.req_s(102.0) == approx(1.0)
    # later: full window, the first record evicted at t=111.5 (ended 101 < 101.5)
    w.add(_wrec(110.0, out=50))
    # tokens that ARRIVED in [101.5, 111.5): the second request's came at 101.2, though it ended at 102
    assert w.out_tok_s(111.5) == approx(50 / 10)
    # the latency views: requests whose first token came in the window (the first two's came before 101.5)
    assert w.completed == 1 and len(w) == 1


def test_rolling_window_failures_values_and_reset():
    w = RollingWindow(5.0, now=0.0)
    w.add(_wrec(1.0, ok=False, err="read timeout"))
    w.add(_wrec(2.0, ok=False, err="read timeout"))
    w.add(_wrec(3.0, ok=False, err="HTTP 500: x"))
    w.add(_wrec(4.0, itl=(0.1, 0.2)))
    w.evict(4.0)  # records join the views when the window's end (the horizon) reaches them
    assert w.failures() == {"read timeout": 2, "HTTP 500: x": 1}
    assert w.ttft_values() == [0.2] and w.e2el_values() == approx([1.0])
    v = w.itl_view()
    # the exact rule's p50 of [0.1, 0.2] (numpy linear), within a bin
    assert v.count == 2 and v.mean == approx(0.15) and v.p50 == approx(0.15, rel=0.005)
    assert v.max == approx(0.2, rel=0.003)
    w.evict(6.5)  # drops the records that ended at 1.0
    assert w.failures() == {"read timeout": 1, "HTTP 500: x": 1} and w.failed == 2
    w.evict(8.5)
    assert w.failures() == {} and w.failed == 0
    w.evict(9.5)
    assert w.itl_view().count == 0  # the ITLs leave with their record
    w.add(_wrec(10.0, itl=(0.3,)))
    w.reset(20.0)
    assert len(w) == 0 and w.req_s(20.1) == 0.0 and w.itl_view().count == 0
    w.add(_wrec(21.0))
    assert w.req_s(22.0) == approx(1 / 2.0)


def test_rolling_window_itl_view_covers_the_whole_window():
    # every ITL of the window counts (the old view kept only the newest 50k values)
    w = RollingWindow(100.0, now=0.0)
    w.add(_wrec(1.0, itl=[0.001] * 40_000))
    w.add(_wrec(2.0, itl=[0.004] * 30_000))
    w.evict(2.0)
    v = w.itl_view()
    assert v.count == 70_000 and v.p50 == approx(0.001, rel=0.003) and v.p90 == approx(0.004, rel=0.003)


def test_log_histogram_view_matches_exact_views():
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(0.02), 0.8) for _ in range(20_000)] + [0.0] * 50 + [500.0]
    h = LogHistogram()
    h.add_many(values)
    edges = log_edges(1e-4, 10.0, 40)
    got, exact = h.view(edges), latency_view(values, edges)
    assert got.count == exact.count and got.mean == approx(exact.mean, rel=1e-9)
    for q in ("p50", "p90", "p99"):
        assert getattr(got, q) == approx(getattr(exact, q), rel=0.005), q
    assert got.max == 500.0  # the largest value is kept exactly while it is in
    # the bar chart: the same bins up to values within half a fine bin of a display edge
    moved = sum(abs(a - b) for a, b in zip(got.counts, exact.counts))
    assert sum(got.counts) == len(values) and moved <= 0.01 * len(values)
    # removing what was added leaves nothing behind
    h.remove_many(values[:10_000])
    rest = values[10_000:]
    assert h.count == len(rest) and h.view(edges).p50 == approx(latency_view(rest, edges).p50, rel=0.006)
    h.remove_many(rest)
    assert h.count == 0 and h.total == 0.0 and not any(h.counts) and h.view(edges).p50 is None


def test_rolling_window_rate_floor_and_horizon():
    w = RollingWindow(10.0, now=0.0, min_span_s=0.5)
    w.add(_wrec(0.6))
    assert math.isfinite(w.req_s(0.61)) and w.req_s(0.61) == approx(0.5 / 0.5)  # [0, 0.5): half of a 1 s life
    # the window ends where the data are complete: with a request in flight since 1.0, nothing after it counts yet
    h = {"t": 1.0}
    w = RollingWindow(10.0, now=0.0, horizon=lambda now: min(now, h["t"]))
    w.add(_wrec(3.0, out=20))  # started at 2.0, after the one still in flight
    assert w.out_tok_s(3.0) == 0.0 and len(w) == 0
    h["t"] = 3.0
    assert w.out_tok_s(3.0) == approx(20 / 3.0) and len(w) == 1
