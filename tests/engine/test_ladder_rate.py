"""The auto ladder over request rates on constructed open-loop levels (pure data, no server): where it grows,
where it stops, how it bisects, what it costs; and that the concurrency ladder is untouched by it."""
from __future__ import annotations

from collections.abc import Callable

from qbench_tui.engine.knee import find_knee
from qbench_tui.engine.ladder import LadderSpec, next_step
from qbench_tui.engine.rate_ladder import RateLadderSpec, next_rate_step
from qbench_tui.engine.result import Latency, LevelResult, ServerLevel

TOKENS = 100  # output tokens per request
DURATION = 10.0  # seconds of arrivals per level
SERVICE = 0.5  # seconds a request takes on an idle server


def open_loop(rate: float, capacity: float, failed: int = 0) -> LevelResult:
    """A level as an open loop at `rate` produces it on a server that completes at most `capacity` requests/s:
    below it the achieved rate is the offered one less the drain at the end; past it the queue grows by
    (rate - capacity) per second for the whole level, and so do latency and the server's waiting count."""
    n = int(rate * DURATION)
    served = min(rate, capacity)
    backlog = max(0.0, rate - capacity) * DURATION  # requests still queued when the arrivals stop
    span = DURATION + SERVICE + backlog / capacity
    lat = SERVICE + (backlog / capacity) / 2  # on average a request waited half the final backlog
    return LevelResult(max_concurrency=None, completed=n, failed=failed, request_rate=rate, burstiness=1.0,
                       request_throughput=n / span, output_throughput=n * TOKENS / span,
                       e2el=Latency(mean_s=lat, p50_s=lat, p99_s=2 * lat),
                       server=ServerLevel(max_waiting=backlog, max_running=served * SERVICE))


def drive(spec: RateLadderSpec, curve: Callable[[float], LevelResult], level_s: float = 10.0,
          limit: int = 40) -> tuple[list[LevelResult], str]:
    levels: list[LevelResult] = []
    for _ in range(limit):
        step = next_rate_step(spec, levels, elapsed_s=level_s * len(levels))
        if step.rate is None:
            return levels, step.why
        assert step.rate not in [lv.request_rate for lv in levels], "measured twice"
        levels.append(curve(step.rate))
    raise AssertionError(f"no end after {limit} levels: {[lv.request_rate for lv in levels]}")


def test_rungs_are_geometric_floats_and_end_at_the_maximum():
    assert RateLadderSpec(0.5, 4).rungs() == [0.5, 1, 2, 4]
    assert RateLadderSpec(1.5, 10).rungs() == [1.5, 3, 6, 10]
    assert RateLadderSpec(3, 3).rungs() == [3]


def test_grows_stops_at_the_first_rate_not_kept_up_and_bisects_to_the_capacity():
    levels, why = drive(RateLadderSpec(start=1, max_rate=1024), lambda r: open_loop(r, capacity=5.0))
    rs = [lv.request_rate for lv in levels]
    # 8 req/s on a 5 req/s server: one rung past it, never 16..1024
    assert rs[:4] == [1, 2, 4, 8] and max(rs) == 8
    # bisection between the last rate kept up and the first not: 6 (not kept up), then 5 (kept up)
    assert rs[4:] == [6, 5], rs
    assert "knee at 5 req/s" in why and "kept up at 5 req/s, not at 6 req/s" in why
    k = find_knee(levels)
    assert k.axis == "request_rate" and k.saturated and k.knee_request_rate == 5
    assert k.knee_concurrency is None and k.batch_request_rate == 5


def test_bisection_points_are_three_significant_digits():
    levels, why = drive(RateLadderSpec(start=1, max_rate=64), lambda r: open_loop(r, capacity=10.5))
    rs = [lv.request_rate for lv in levels]
    assert rs[:5] == [1, 2, 4, 8, 16] and rs[5:] == [12, 10], rs  # 12 not kept up, 10 kept: within 20%
    assert all(float(f"{r:.3g}") == r for r in rs)
    assert "knee at 10 req/s" in why


def test_no_saturation_runs_every_rung_to_the_maximum_rate():
    levels, why = drive(RateLadderSpec(start=2, max_rate=20), lambda r: open_loop(r, capacity=100.0))
    assert [lv.request_rate for lv in levels] == [2, 4, 8, 16, 20]
    assert "no saturation up to the maximum rate 20 req/s" in why


def test_time_budget_stops_before_a_level_that_would_not_fit():
    levels, why = drive(RateLadderSpec(start=1, budget_s=35), lambda r: open_loop(r, capacity=100.0))
    assert len(levels) == 3 and "time budget" in why


def test_a_failing_level_stops_the_ladder():
    levels, why = drive(RateLadderSpec(start=1), lambda r: open_loop(r, 100.0, failed=500 if r >= 4 else 0))
    assert [lv.request_rate for lv in levels] == [1, 2, 4] and "failed" in why


def test_a_shortfall_without_a_growing_backlog_is_noise_not_saturation():
    # a Poisson count came out short at 8 req/s (achieved 80% of the offered), but latency and the queue are flat
    a, b = open_loop(4, 100.0), open_loop(8, 100.0)
    b.request_throughput = 0.8 * 8
    step = next_rate_step(RateLadderSpec(start=4, max_rate=32), [a, b])
    assert step.phase == "grow" and step.rate == 16


def test_the_same_levels_give_the_same_step_in_any_order():
    spec = RateLadderSpec(start=1)
    levels = [open_loop(r, 5.0) for r in (1, 2, 4, 8)]
    assert next_rate_step(spec, levels) == next_rate_step(spec, list(reversed(levels)))
    assert next_rate_step(spec, levels).phase == "refine" and next_rate_step(spec, levels).rate == 6


def test_the_concurrency_ladder_ignores_nothing_it_used_to_read():
    # closed-loop levels carry no rate: the concurrency ladder and knee behave as before
    lv = [LevelResult(max_concurrency=c, completed=50, output_throughput=100.0 * min(c, 16),
                      e2el=Latency(mean_s=c * TOKENS / (100.0 * min(c, 16)))) for c in (2, 4, 8, 16, 32)]
    assert next_step(LadderSpec(start=2), lv).concurrency == 12
    assert find_knee(lv).axis == "concurrency" and find_knee(lv).knee_concurrency == 16
