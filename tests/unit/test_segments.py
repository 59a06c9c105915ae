from __future__ import annotations

import random

from qbench_tui.engine import segments
from qbench_tui.engine.records import RequestRecord
from qbench_tui.engine.segments import SegmentStats
from qbench_tui.engine.stats import percentile


def rec(ttft: float, e2el: float, n: int = 10) -> RequestRecord:
    return RequestRecord(ok=True, segment=1, concurrency=4, worker=0, start=0.0, end=e2el, ttft=ttft,
                         itl=[(e2el - ttft) / (n - 1)] * (n - 1), out_tokens=n, in_tokens=5)


def test_segment_summary_exact_then_folded(monkeypatch):
    monkeypatch.setattr(segments, "EXACT_LIMIT", 1000)
    rng = random.Random(2)
    seg = SegmentStats(1, 4, 0.0)
    ttfts = []
    for _ in range(999):
        t = rng.uniform(0.01, 0.2)
        ttfts.append(t)
        seg.add(rec(t, t + 1.0))
    lv = seg.result(10.0)
    assert abs(lv.ttft.p50_s - percentile(ttfts, 50)) < 1e-9  # exact below the limit
    for _ in range(2001):
        t = rng.uniform(0.01, 0.2)
        ttfts.append(t)
        seg.add(rec(t, t + 1.0))
    lv = seg.result(10.0)
    assert len(seg.tally.ttft.values) < 1000  # folded: memory no longer grows per request
    assert lv.completed == 3000 and lv.segment == 1 and lv.mode == "live"
    assert abs(lv.ttft.p50_s / percentile(ttfts, 50) - 1) < 0.005  # within a bin of the exact value
    assert abs(lv.avg_latency_s - (sum(ttfts) / len(ttfts) + 1.0)) < 1e-6
    assert lv.tpot.p99_s is not None and lv.output_throughput == 0.0  # nothing finished while current
