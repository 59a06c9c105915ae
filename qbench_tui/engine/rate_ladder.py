"""The auto ladder over request rates (pure): which offered rate to measure next, given the open-loop levels so far.

engine/ladder.py's shape on a float axis: grow x GROWTH from `start` while the server keeps up; stop growing at
the first rate it did not keep up with — in an open loop that is the over-saturation signature: the achieved rate
plateaus below the offered one while the backlog (latency, the server's queue, the schedule lag) grows for as long
as the level lasts (engine/open_signals.py). One rung past the knee is all the GPU time spent there. Then bisect
between the last rate kept up and the first one not, until the two are within `refine_ratio`. Stop early at
`max_rate`, at the time `budget_s` (a level is started only when the average level so far still fits), and when a
level fails too much to measure anything.

No state: it reads the levels it is given (run_plan's results), as the concurrency ladder does.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .knee import KNEE_SHARE, LATENCY_RISE, rate_knee_level
from .ladder import GROWTH, MAX_FAILED_SHARE, REFINE_RATIO
from .open_signals import rate_words, sustained
from .result import LevelResult


@dataclass(frozen=True, slots=True)
class RateLadderSpec:
    start: float = 1.0  # requests/s
    max_rate: float = 1024.0
    budget_s: float = 900.0
    share: float = KNEE_SHARE
    growth: float = GROWTH
    refine_ratio: float = REFINE_RATIO

    def rungs(self) -> list[float]:
        """start, start x growth, ... up to and including max_rate."""
        out, r = [], self.start
        while r < self.max_rate * (1 - 1e-9):
            out.append(r)
            r *= self.growth
        out.append(self.max_rate)
        return out


@dataclass(frozen=True, slots=True)
class RateStep:
    rate: float | None  # the next offered rate to measure; None: the ladder is done
    phase: str  # "grow" | "refine" | "done"
    why: str


def _key(rate: float) -> float:
    return round(rate, 6)


def _nice(rate: float) -> float:
    """A bisection point people can type again: three significant digits."""
    return float(f"{rate:.3g}")


def next_rate_step(spec: RateLadderSpec, levels: Sequence[LevelResult], elapsed_s: float = 0.0) -> RateStep:
    """The next rate to measure. `levels`: what the ladder measured, in any order (a rate measured twice counts by
    its latest); `elapsed_s`: the ladder's wall time so far."""
    by_r: dict[float, LevelResult] = {}
    for lv in levels:
        if lv.request_rate:
            by_r[_key(lv.request_rate)] = lv
    if levels:
        last = levels[-1]
        n = last.completed + last.failed
        if n == 0 or last.failed / n > MAX_FAILED_SHARE:
            return RateStep(None, "done", f"stopped: rate {rate_words(last.request_rate)} had {last.failed} failed "
                                          f"of {n} requests")

    def fits() -> bool:
        return not levels or elapsed_s + elapsed_s / len(levels) <= spec.budget_s

    def budget_done() -> RateStep:
        return RateStep(None, "done", f"time budget: {elapsed_s:.0f} s of {spec.budget_s:.0f} s used, another "
                                      "level would not fit")

    measured: list[LevelResult] = []
    saturated = ""
    for r in spec.rungs():
        lv = by_r.get(_key(r))
        if lv is None:
            if not fits():
                return budget_done()
            prev = measured[-1].request_rate if measured else None
            return RateStep(r, "grow", f"growing: rate {rate_words(r)}"
                            + (f" (x{spec.growth:g} from {rate_words(prev)})" if prev is not None else ""))
        if not lv.completed:
            saturated = f"rate {rate_words(r)} completed no request"
            break
        measured.append(lv)
        _, bad, why = sustained(measured, LATENCY_RISE)
        if bad is not None:
            saturated = why
            break
    if not saturated:
        return RateStep(None, "done", f"no saturation up to the maximum rate {rate_words(spec.max_rate)}")
    pts = sorted((lv for lv in by_r.values() if lv.completed), key=lambda lv: lv.request_rate or 0.0)
    good, bad, why = sustained(pts, LATENCY_RISE)
    knee = rate_knee_level(pts, spec.share)
    if bad is None:  # a refined level kept up after all: the knee stands where the data put it
        return RateStep(None, "done", f"knee at {rate_words(knee.request_rate)} ({saturated})")
    lo, hi = good.request_rate or 0.0, bad.request_rate or 0.0
    mid = _nice((lo + hi) / 2)
    if hi / lo <= spec.refine_ratio or not lo < mid < hi or _key(mid) in by_r:
        return RateStep(None, "done", f"knee at {rate_words(knee.request_rate)}: kept up at {rate_words(lo)}, not "
                                      f"at {rate_words(hi)}, within {spec.refine_ratio - 1:.0%} ({why})")
    if not fits():
        return budget_done()
    first = {_key(x) for x in by_r} <= {_key(x) for x in spec.rungs()}  # say once why growth stopped
    return RateStep(mid, "refine", f"refining between {rate_words(lo)} (kept up) and {rate_words(hi)} (not): rate "
                                   f"{rate_words(mid)}" + (f" ({saturated})" if first else ""))
