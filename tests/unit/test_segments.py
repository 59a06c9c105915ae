from __future__ import annotations

import random

import pytest

from qbench_tui.engine import segments
from qbench_tui.engine.records import RequestRecord
from qbench_tui.engine.segments import SegmentStats
from qbench_tui.engine.settle import SettleRule
from qbench_tui.engine.stats import percentile
from qbench_tui.engine.timeline import Timeline, window_shares


def closed_loop(c: int, per_worker: int, rng: random.Random) -> list[RequestRecord]:
    """c workers sending back to back: TTFT random, then 10 tokens over one second; in end order."""
    recs = []
    for w in range(c):
        t = w * 0.1
        for _ in range(per_worker):
            ttft = rng.uniform(0.01, 0.2)
            recs.append(RequestRecord(ok=True, segment=1, concurrency=c, worker=w, start=t, end=t + ttft + 1.0,
                                      ttft=ttft, itl=[1.0 / 9] * 9, out_tokens=10, in_tokens=5))
            t += ttft + 1.0
    return sorted(recs, key=lambda r: r.end)


def _segment(recs: list[RequestRecord]) -> SegmentStats:
    seg = SegmentStats(1, 4, 0.0, timeline=Timeline(0.0), rule=SettleRule(cv_max=0.5))
    for r in recs:
        seg.timeline.add(r)
        seg.add(r)
    end = max(r.end for r in recs)
    seg.close(end, horizon=end)
    return seg


@pytest.mark.parametrize("per_worker", [240, 750])  # ~960 requests: exact; ~3000: folded past the limit
def test_segment_window_summary_exact_then_folded(monkeypatch, per_worker):
    monkeypatch.setattr(segments, "EXACT_LIMIT", 1000)
    recs = closed_loop(4, per_worker, random.Random(2))
    seg = _segment(recs)
    assert seg.settled and seg.steady and seg.final(horizon=seg.t_end)
    lv = seg.result()
    w = lv.window
    # the population: started in the window (before its end, a step edge) and ended by the change
    counted = [r for r in recs if w.start <= r.start < w.started_until and r.end <= w.ended_by]
    ttfts = [r.ttft for r in counted]
    assert lv.completed == len(counted) and lv.segment == 1 and lv.mode == "live"
    if len(counted) < 1000:
        assert abs(lv.ttft.p50_s - percentile(ttfts, 50)) < 1e-9  # exact below the limit
    else:
        assert len(seg.tally.ttft.values) < 1000  # folded: memory no longer grows per request
        assert abs(lv.ttft.p50_s / percentile(ttfts, 50) - 1) < 0.005  # within a bin of the exact value
    assert abs(lv.avg_latency_s - (sum(ttfts) / len(ttfts) + 1.0)) < 1e-6
    # rates from the timeline's steps equal the exact per-request sums over the same (step-edged) window
    exact = window_shares(recs, w.start, w.end)
    assert lv.output_throughput == pytest.approx(exact.out_tokens / w.span_s, rel=1e-9)
    assert lv.request_throughput == pytest.approx(exact.requests / w.span_s, rel=1e-9)
    # and the loop's own law: 4 in flight, ~1.1 s each, 10 tokens each
    mean_e2el = sum(r.e2el for r in counted) / len(counted)
    assert lv.output_throughput == pytest.approx(4 / mean_e2el * 10, rel=0.02)


def test_a_segment_that_ends_before_settling_is_a_transition():
    recs = [r for r in closed_loop(4, 2, random.Random(1)) if r.end < 2.0]
    seg = _segment(recs)  # ended after ~2 s: shorter than the 3 s the steadiness test looks at
    assert seg.transition and not seg.settled and seg.result() is None and seg.final(horizon=10.0)


def test_old_requests_in_flight_delay_the_window():
    recs = closed_loop(4, 20, random.Random(3))
    seg = SegmentStats(2, 4, 0.0, timeline=Timeline(0.0), rule=SettleRule(cv_max=0.5))
    for r in recs:
        seg.timeline.add(r)
        seg.add(r)
    seg.note_older(5.3)  # the previous level's last request ended at 5.3 s
    end = max(r.end for r in recs)
    seg.advance(horizon=end, now=end)
    assert seg.settled_at is not None and seg.settled_at >= 5.3
