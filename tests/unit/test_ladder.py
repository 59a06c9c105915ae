"""The auto ladder's policy on synthetic curves (pure data, no server): where it grows, where it stops, how it
refines, and what it costs."""
from __future__ import annotations

from collections.abc import Callable

from qbench_tui.engine.knee import find_knee
from qbench_tui.engine.ladder import LadderSpec, next_step, over_saturated
from qbench_tui.engine.result import Latency, LevelResult, ServerLevel

TOKENS = 100  # output tokens per request


def closed_loop(c: int, tok_s: float, failed: int = 0, waiting: float | None = None) -> LevelResult:
    """A level as a closed loop at C produces it: Little's law gives the mean latency from the throughput."""
    lat = c * TOKENS / tok_s
    return LevelResult(max_concurrency=c, completed=50, failed=failed, output_throughput=tok_s,
                       request_throughput=tok_s / TOKENS, e2el=Latency(mean_s=lat, p50_s=lat, p99_s=1.2 * lat),
                       server=ServerLevel(max_waiting=waiting) if waiting is not None else None)


def drive(spec: LadderSpec, curve: Callable[[int], LevelResult], level_s: float = 10.0,
          limit: int = 40) -> tuple[list[LevelResult], str]:
    """Run the policy to the end on a curve; each level costs `level_s` of wall time."""
    levels: list[LevelResult] = []
    for _ in range(limit):
        step = next_step(spec, levels, elapsed_s=level_s * len(levels))
        if step.concurrency is None:
            return levels, step.why
        assert step.concurrency not in [lv.max_concurrency for lv in levels], "measured twice"
        levels.append(curve(step.concurrency))
    raise AssertionError(f"no end after {limit} levels: {[lv.max_concurrency for lv in levels]}")


def seqs_limited(c: int) -> LevelResult:  # a batch-slot limit at 16: flat past it
    return closed_loop(c, 100.0 * min(c, 16))


def compute(c: int) -> LevelResult:  # step time grows with the batch: a smooth approach to 1,000 tok/s
    return closed_loop(c, 1000.0 * c / (c + 4))


def test_rungs_are_geometric_and_end_at_the_maximum():
    assert LadderSpec(1, 64).rungs() == [1, 2, 4, 8, 16, 32, 64]
    assert LadderSpec(3, 20).rungs() == [3, 6, 12, 20]
    assert LadderSpec(5, 5).rungs() == [5]


def test_grows_then_stops_one_rung_past_a_hard_limit_and_refines():
    levels, why = drive(LadderSpec(start=2, max_concurrency=1024), seqs_limited)
    cs = [lv.max_concurrency for lv in levels]
    # one rung past the limit (32), never 64..1024: GPU time is not burned past the knee
    assert cs[:5] == [2, 4, 8, 16, 32] and max(cs) == 32
    # refinement below the knee: 12 then 14 (both under 90% of the plateau), so 16 stays the knee
    assert cs[5:] == [12, 14]
    assert "knee at 16" in why
    assert find_knee(levels).knee_concurrency == 16


def test_compute_bound_curve_knee_is_refined_between_rungs():
    levels, why = drive(LadderSpec(start=1), compute)
    cs = [lv.max_concurrency for lv in levels]
    # 8 -> 16 bought +20% for +100% concurrency (elasticity 0.2): growth stops at 16
    assert cs[:5] == [1, 2, 4, 8, 16] and max(cs) == 16
    # peak 800 at 16; 90% is 720: 12 (750) is within, 10 (714) is not -> knee 12, known to 20%
    assert cs[5:] == [12, 10]
    assert find_knee(levels).knee_concurrency == 12 and "knee at 12" in why


def test_no_saturation_runs_every_rung_to_the_maximum():
    levels, why = drive(LadderSpec(start=4, max_concurrency=50), lambda c: closed_loop(c, 90.0 * c))
    assert [lv.max_concurrency for lv in levels] == [4, 8, 16, 32, 50]
    assert "no saturation up to the maximum concurrency 50" in why


def test_time_budget_stops_before_a_level_that_would_not_fit():
    # 10 s a level, 35 s in all: after three levels (30 s) a fourth would end at 40 s
    levels, why = drive(LadderSpec(start=1, budget_s=35), lambda c: closed_loop(c, 90.0 * c))
    assert len(levels) == 3 and "time budget" in why


def test_a_failing_level_stops_the_ladder():
    levels, why = drive(LadderSpec(start=1), lambda c: closed_loop(c, 90.0 * c, failed=60 if c >= 4 else 0))
    assert [lv.max_concurrency for lv in levels] == [1, 2, 4] and "failed" in why


def test_over_saturation_needs_flat_throughput_and_rising_latency_or_queue():
    assert over_saturated(closed_loop(8, 800), closed_loop(16, 1500)) is None  # still paying
    flat = over_saturated(closed_loop(16, 1600), closed_loop(32, 1650))
    assert flat and "mean latency rose +94%" in flat
    # throughput fell: over-saturated whatever latency did
    assert "fell" in over_saturated(closed_loop(16, 1600), closed_loop(32, 1400))
    # flat throughput at a latency that did not rise (an open loop at its rate, say): the queue decides
    a = LevelResult(max_concurrency=16, completed=5, output_throughput=1600, e2el=Latency(mean_s=1.0))
    b = LevelResult(max_concurrency=32, completed=5, output_throughput=1620, e2el=Latency(mean_s=1.02))
    assert over_saturated(a, b) is None
    b.server = ServerLevel(max_waiting=14)
    assert "queue grew to 14" in over_saturated(a, b)


def test_the_same_levels_give_the_same_step_in_any_order():
    spec = LadderSpec(start=2)
    levels = [seqs_limited(c) for c in (2, 4, 8, 16, 32)]
    assert next_step(spec, levels) == next_step(spec, list(reversed(levels)))
    assert next_step(spec, levels).phase == "refine"
