"""run_plan's `plans` for `qbench sweep --auto`: the ladder policy's next level as a LevelPlan, then the hold at the
level found when asked, then None — over concurrencies (engine/ladder.py) or, RateAutoPlans, over request rates
(engine/rate_ladder.py). The levels after the first `n_ladder` are the hold, not the ladder: the verdict is judged
on the ladder's own levels."""
from __future__ import annotations

import time


class AutoPlans:
    def __init__(self, ladder, plan, hold_s: float = 0.0, slo=(), say=lambda line: None) -> None:
        self.ladder, self.plan, self.hold_s, self.slo, self.say = ladder, plan, hold_s, slo, say
        self.t0: float | None = None
        self.done = None  # the ladder's last Step, once it said it is done
        self.n_ladder: int | None = None  # how many results the ladder measured (set when it is done)
        self.hold_at: int | float | None = None

    def ladder_levels(self, levels: list) -> list:
        return levels if self.n_ladder is None else levels[:self.n_ladder]

    # the axis: the next step (its value None when done), where to hold, and how to say it
    def _step(self, results: list, elapsed: float):
        from ..engine.ladder import next_step

        step = next_step(self.ladder, results, elapsed)
        return step, step.concurrency

    def _hold(self, results: list):
        from ..engine.knee import find_knee

        k = find_knee(results, self.ladder.share, self.slo)
        return k.interactive_concurrency or k.knee_concurrency or k.peak_concurrency

    def _where(self, value) -> str:
        return f"concurrency {value}"

    def __call__(self, results: list):
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        if self.done is not None:
            return None  # the hold (if any) has run
        step, value = self._step(results, now - self.t0)
        if value is not None:
            self.say(f"ladder: {step.why}")
            return self.plan(value, None)
        self.done, self.n_ladder = step, len(results)
        self.say(f"ladder done: {step.why}")
        if self.hold_s > 0 and results:
            self.hold_at = self._hold(results)
            if self.hold_at:
                self.say(f"holding at {self._where(self.hold_at)} for {self.hold_s:g} s")
                return self.plan(self.hold_at, self.hold_s)
        return None


class RateAutoPlans(AutoPlans):
    """The same over offered request rates (`--auto --request-rate START`)."""

    def _step(self, results: list, elapsed: float):
        from ..engine.rate_ladder import next_rate_step

        step = next_rate_step(self.ladder, results, elapsed)
        return step, step.rate

    def _hold(self, results: list):
        from ..engine.knee import find_knee

        k = find_knee(results, self.ladder.share, self.slo, axis="request_rate")
        return k.interactive_request_rate or k.knee_request_rate or k.batch_request_rate

    def _where(self, value) -> str:
        return f"{value:g} req/s"
