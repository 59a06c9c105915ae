from __future__ import annotations

import random

from qbench_tui.engine import segments
from qbench_tui.engine.records import RequestRecord
from qbench_tui.engine.segments import LogHistogram, SegmentStats
from qbench_tui.engine.stats import percentile


def rec(ttft: float, e2el: float, n: int = 10) -> RequestRecord:
    return RequestRecord(ok=True, segment=1, concurrency=4, worker=0, start=0.0, end=e2el, ttft=ttft,
                         itl=[(e2el - ttft) / (n - 1)] * (n - 1), out_tokens=n, in_tokens=5)


def test_log_histogram_percentiles_within_a_bin():
    rng = random.Random(1)
    vals = [rng.lognormvariate(-3, 0.5) for _ in range(20000)]
    h = LogHistogram()
    h.add_many(vals)
    for q in (50, 90, 99):
        exact = percentile(vals, q)
        assert abs(h.percentile(q) - exact) / exact < 0.012
    assert abs(h.mean - sum(vals) / len(vals)) < 1e-9


def test_segment_summary_exact_then_folded(monkeypatch):
    monkeypatch.setattr(segments, "EXACT_LIMIT", 1000)
    rng = random.Random(2)
    seg = SegmentStats(1, 4, 0.0)
    ttfts = []
    for _ in range(999):
        t = rng.uniform(0.01, 0.2)
        ttfts.append(t)
        seg.add(rec(t, t + 1.0))
    d = seg.summary(10.0)
    assert abs(d["median_ttft_ms"] - percentile(ttfts, 50) * 1000) < 1e-6  # exact below the limit
    for _ in range(2001):
        t = rng.uniform(0.01, 0.2)
        ttfts.append(t)
        seg.add(rec(t, t + 1.0))
    d = seg.summary(10.0)
    assert len(seg.ttft) < 1000  # folded: memory no longer grows per request
    assert d["completed"] == 3000
    assert abs(d["median_ttft_ms"] / (percentile(ttfts, 50) * 1000) - 1) < 0.012
    assert abs(d["avg_latency_s"] - (sum(ttfts) / len(ttfts) + 1.0)) < 1e-6
    assert d["p99_tpot_ms"] is not None and d["output_throughput"] == 0.0  # nothing finished while current
