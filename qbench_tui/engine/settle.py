"""When a level is steady enough to measure: the one rule, for headless levels and live segments alike.

A level's measurement window starts at the first step edge t0 such that
  1. every request in flight at t0 started at this level (after a change, the old level's requests have all
     finished: `clean_at` is when the last one did), and t0 is past the level's warm-up, if it has one; and
  2. output throughput is steady from t0 on: the per-`step_s` output tokens over [t0, t0 + lookback_s) have a
     coefficient of variation <= cv_max.
The test is made only on complete data: a step's tokens are all known once every request in flight started after
it (the caller's `horizon`), so the decision comes up to one request latency late and t0 lies in the past; the
records since t0 are kept, nothing is lost. When no t0 passes before `max_s` after the level began, the window
starts at max_s and the level is marked not steady.
"""
from __future__ import annotations

from dataclasses import dataclass

from .timeline import Timeline, step_cv

# Measured on the simulator's profiles at C=1..128 (3 s stretches of steady closed loops): the CV of 1 s output
# token counts is 0.01-0.08, up to 0.12 where waves of equal answers alias with the second; a ramp or a drain
# reads 0.2 and more. 0.15 passes the first and stops the second. 0.5 s counts were twice as noisy.
CV_MAX = 0.15
SETTLE_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class SettleRule:
    cv_max: float = CV_MAX
    lookback_s: float = 3.0
    step_s: float = 1.0  # a multiple of the timeline's step
    max_s: float = SETTLE_MAX_S  # the cap: measure from here on, marked not steady
    min_s: float = 0.0  # an explicit warm-up: never measure before it

    def describe(self) -> str:
        return (f"in flight all started at this level, then output tok/s per {self.step_s:g} s with CV <= "
                f"{self.cv_max:g} over {self.lookback_s:g} s (cap {self.max_s:g} s)")


class Settler:
    """The rule applied to one level as its data completes. `update` until `t0` is set; `steady` says how."""

    __slots__ = ("rule", "t_start", "timeline", "t0", "steady", "cv", "_next")

    def __init__(self, timeline: Timeline, t_start: float, rule: SettleRule) -> None:
        self.rule = rule
        self.t_start = t_start
        self.timeline = timeline
        self.t0: float | None = None
        self.steady: bool | None = None
        self.cv: float | None = None  # of the stretch that passed (or the last one tried, at the cap)
        self._next: float | None = None  # the next candidate t0 to test

    @property
    def settled(self) -> bool:
        return self.t0 is not None

    @property
    def cap_at(self) -> float:
        return self.timeline.ceil(self.t_start + self.rule.max_s)

    def update(self, horizon: float, clean_at: float | None, now: float, *,
               until: float | None = None) -> float | None:
        """Test every candidate whose lookback the data now cover (up to `horizon`, and `until`, the level's end
        when it has ended). `clean_at`: when the last older request finished, None while one is in flight.
        Returns t0 once decided."""
        if self.t0 is not None:
            return self.t0
        rule, tl = self.rule, self.timeline
        cap = self.cap_at
        end = horizon if until is None else min(horizon, until)
        if clean_at is not None:
            cand = max(tl.ceil(max(clean_at, self.t_start + rule.min_s)), self._next or 0.0)
            while cand < cap and cand + rule.lookback_s <= end:
                cv = step_cv(tl.out_per(cand, cand + rule.lookback_s, rule.step_s))
                self.cv = cv
                if cv is not None and cv <= rule.cv_max:
                    self.t0, self.steady = cand, True
                    return cand
                cand = tl.edge(tl.index(cand) + 1)
            self._next = cand
            if cand < cap:
                return None
        elif (now if until is None else min(now, until)) < cap:
            return None  # old requests still in flight, and the cap is not reached yet
        if until is not None and until <= cap:
            return None  # the level ended before its cap: a transition, never a measurement
        self.t0, self.steady = cap, False
        return cap

    def force(self, t0: float, steady: bool | None, cv: float | None = None) -> None:
        """A window decided elsewhere (a live level run by the load engine with this same rule)."""
        self.t0, self.steady, self.cv = t0, steady, cv
