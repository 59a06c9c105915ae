"""The auto ladder's policy (pure): which concurrency to measure next, given the levels measured so far.

Grow geometrically (x GROWTH from `start`) while throughput keeps answering the added load; stop growing at the
first over-saturated step, in the spirit of GuideLLM's over-saturation detection (latency or the queue rising while
throughput is flat): in a closed loop, Little's law (C = X x R) says that once throughput X stops growing, every
added request only waits, so latency R rises in proportion. One rung past the knee is all the GPU time spent there.
Then refine by bisection between the last level below the knee and the knee itself (the lowest level within
`share` of the peak, as `find_knee` defines it) until the two are within REFINE_RATIO. Stop early at
`max_concurrency`, at the time `budget_s` (a level is started only when the average level so far still fits), and
when a level fails too much to measure anything.

The policy keeps no state: it reads the levels it is given (headless: run_plan's results; live: the ladder's own
segments), so the same function drives `qbench sweep --auto` and the dashboard's `a`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .knee import ELASTICITY_FLOOR, KNEE_SHARE, LATENCY_RISE
from .result import LevelResult

GROWTH = 2.0
REFINE_RATIO = 1.25  # refinement stops when the knee and the level below it are within 25%
DROP = 0.05  # throughput fell by more than 5%: over-saturated whatever latency did
MAX_FAILED_SHARE = 0.5  # a level with more failures than this measures the errors, not the server


@dataclass(frozen=True, slots=True)
class LadderSpec:
    start: int = 1
    max_concurrency: int = 1024
    budget_s: float = 900.0
    share: float = KNEE_SHARE
    growth: float = GROWTH
    refine_ratio: float = REFINE_RATIO

    def rungs(self) -> list[int]:
        """start, start x growth, ... up to and including max_concurrency."""
        out, c = [], max(1, self.start)
        while c < self.max_concurrency:
            out.append(c)
            c = max(c + 1, int(round(c * self.growth)))
        out.append(max(1, self.max_concurrency))
        return out


@dataclass(frozen=True, slots=True)
class Step:
    concurrency: int | None  # the next level to measure; None: the ladder is done
    phase: str  # "grow" | "refine" | "done"
    why: str  # in words, for progress lines and the results' notes


def over_saturated(lo: LevelResult, hi: LevelResult) -> str | None:
    """Why going from `lo` to the higher `hi` bought (almost) no throughput, in words; None when it still paid."""
    c0, c1 = lo.max_concurrency or 0, hi.max_concurrency or 0
    t0, t1 = lo.output_throughput or 0.0, hi.output_throughput or 0.0
    if c1 <= c0 or t0 <= 0:
        return None
    gain = t1 / t0 - 1
    if gain < -DROP:
        return f"throughput fell {gain:+.0%} from C={c0} to C={c1}"
    elasticity = gain / (c1 / c0 - 1)
    if elasticity >= ELASTICITY_FLOOR:
        return None
    l0, l1 = lo.avg_latency_s, hi.avg_latency_s
    w0 = (lo.server.max_waiting if lo.server else None) or 0.0
    w1 = (hi.server.max_waiting if hi.server else None) or 0.0
    if l0 and l1 and l1 / l0 - 1 >= LATENCY_RISE:
        return (f"C={c0} -> {c1}: throughput {gain:+.0%} for {c1 / c0 - 1:+.0%} concurrency while mean latency "
                f"rose {l1 / l0 - 1:+.0%}")
    if w1 > w0 and w1 >= 1:
        return f"C={c0} -> {c1}: throughput {gain:+.0%} while the server's queue grew to {w1:.0f}"
    return None


def _failed_too_much(lv: LevelResult) -> bool:
    n = lv.completed + lv.failed
    return n == 0 or lv.failed / n > MAX_FAILED_SHARE


def next_step(spec: LadderSpec, levels: Sequence[LevelResult], elapsed_s: float = 0.0) -> Step:
    """The next level to measure. `levels`: what the ladder measured, in any order (a concurrency measured twice
    counts by its latest); `elapsed_s`: the ladder's wall time so far, levels and settling included."""
    by_c: dict[int, LevelResult] = {}
    for lv in levels:
        if lv.max_concurrency:
            by_c[lv.max_concurrency] = lv
    if levels and _failed_too_much(levels[-1]):
        lv = levels[-1]
        return Step(None, "done", f"stopped: level {lv.max_concurrency} had {lv.failed} failed of "
                                  f"{lv.completed + lv.failed} requests")

    def fits() -> bool:
        return not levels or elapsed_s + elapsed_s / len(levels) <= spec.budget_s

    def budget_done() -> Step:
        return Step(None, "done", f"time budget: {elapsed_s:.0f} s of {spec.budget_s:.0f} s used, another level "
                                  "would not fit")

    prev: LevelResult | None = None
    saturated = ""
    for c in spec.rungs():
        lv = by_c.get(c)
        if lv is None:
            if not fits():
                return budget_done()
            return Step(c, "grow", f"growing: level {c}" + (f" (x{spec.growth:g} from {prev.max_concurrency})"
                                                             if prev is not None else ""))
        if prev is not None and (why := over_saturated(prev, lv)):
            saturated = why
            break
        prev = lv
    if not saturated:
        return Step(None, "done", f"no saturation up to the maximum concurrency {spec.max_concurrency}")
    pts = sorted((lv for lv in by_c.values() if lv.completed), key=lambda lv: lv.max_concurrency or 0)
    peak = max(lv.output_throughput or 0.0 for lv in pts)
    knee = next(lv for lv in pts if (lv.output_throughput or 0.0) >= spec.share * peak)
    k = knee.max_concurrency or 0
    below = [lv.max_concurrency or 0 for lv in pts if (lv.max_concurrency or 0) < k]
    if not below:
        return Step(None, "done", f"knee at {k}, the lowest level measured ({saturated})")
    lo = max(below)
    mid = (lo + k) // 2
    if k / lo <= spec.refine_ratio or mid <= lo or mid in by_c:
        return Step(None, "done", f"knee at {k}, between {lo} and {k} within {spec.refine_ratio - 1:.0%} "
                                  f"({saturated})")
    if not fits():
        return budget_done()
    first = set(by_c) <= set(spec.rungs())  # say once why growth stopped
    return Step(mid, "refine", f"refining between {lo} and {k}: level {mid}" + (f" ({saturated})" if first else ""))
