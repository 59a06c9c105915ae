"""A level's measurement window, and THE way a windowed level is summed up, for headless levels and live segments.

`Bounds` is the window on the perf_counter clock (the records' clock); `Clocks` turns it into the saved
`LevelWindow` (monotonic for the server's scrapes, wall clock for people). Which requests count is written in
`LevelWindow`'s docstring and in each saved window's `rule`; `in_population` is that rule in code.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from .records import RequestRecord
from .result import LevelResult, LevelWindow
from .settle import SettleRule
from .stats import Finished, LevelTally, level_result
from .timeline import Shares, Timeline, step_cv, window_shares

SHORT_FACTOR = 3.0  # a window shorter than this many mean request latencies is flagged: too few request lives
CV_STEP_S = 1.0  # the settle rule's step: a window's CV reads as the settle test's would over it

WAVE_RULE = "wave: exactly C requests at once; all of them; rates over first start to last end"


def steady_rule(rule: SettleRule | None, warmup: float = 0.0) -> str:
    base = ("rates: output tokens arriving in [start, end) and each request's share of its life in it, per second; "
            "latencies: ok requests started in [start, started_until) and ended by ended_by; ")
    if rule is None:
        return base + f"no settle test: starts after the {warmup:g} s warm-up"
    return base + "settled: " + rule.describe()


@dataclass(frozen=True, slots=True)
class Bounds:
    """A window on the perf_counter clock; `t_start`: when the level began (for settle_s)."""

    t_start: float
    start: float
    end: float
    started_until: float
    ended_by: float
    steady: bool = True

    def counts(self, r: RequestRecord) -> bool:
        """The latency population: started in [start, started_until) and ended by ended_by."""
        return self.start <= r.start < self.started_until and r.end <= self.ended_by


@dataclass(frozen=True, slots=True)
class Clocks:
    """Offsets from perf_counter to the monotonic and wall clocks, read once (perf_counter and monotonic are the
    same clock on Linux; elsewhere they may not be)."""

    mono: float
    wall: float

    @classmethod
    def now(cls) -> Clocks:
        p = time.perf_counter()
        return cls(time.monotonic() - p, time.time() - p)

    def to_mono(self, t: float) -> float:
        return t + self.mono

    def window(self, b: Bounds, *, rule: str, cv: float | None, mean_e2el: float | None,
               wave: bool = False) -> LevelWindow:
        notes = []
        span = b.end - b.start
        if not wave and mean_e2el and span < SHORT_FACTOR * mean_e2el:
            notes.append(f"short window: {span:.1f} s < {SHORT_FACTOR:g} x the mean latency {mean_e2el:.2f} s")
        return LevelWindow(start=b.start, end=b.end, started_until=b.started_until, ended_by=b.ended_by,
                           start_monotonic=b.start + self.mono, end_monotonic=b.end + self.mono,
                           start_wall=b.start + self.wall, end_wall=b.end + self.wall,
                           settle_s=None if wave else b.start - b.t_start, steady=b.steady, cv=cv, rule=rule,
                           notes=tuple(notes))


def window_cv(records: Iterable[RequestRecord], b: Bounds) -> float | None:
    """CV of the window's output tokens per second (the settle test's measure, over the whole window)."""
    tl = Timeline(b.start, CV_STEP_S)
    for r in records:
        tl.add(r)
    return step_cv(tl.out_per(b.start, b.end, CV_STEP_S))


def windowed_result(tally: LevelTally, shares: Shares, b: Bounds, concurrency: int | None, clocks: Clocks, *,
                    rule: str, cv: float | None, ended_inside: int | None = None, **context) -> LevelResult:
    """A level over its window: rates from `shares` (what happened inside [start, end)), latencies from `tally`
    (the population). Shared by the headless summary and live segments."""
    span = b.end - b.start
    lv = level_result(tally, span, concurrency, Finished(shares.requests, shares.in_tokens, shares.out_tokens),
                      window_requests=ended_inside, **context)
    lv.window = clocks.window(b, rule=rule, cv=cv, mean_e2el=lv.e2el.mean_s)
    return lv


def summarize_window(records: list[RequestRecord], b: Bounds, concurrency: int | None, clocks: Clocks, *,
                     rule: str, **context) -> LevelResult:
    """A headless steady level from all its records (exact: no step rounding)."""
    tally = LevelTally().add_all(r for r in records if b.counts(r))
    inside = sum(1 for r in records if r.ok and b.start <= r.end < b.end)
    return windowed_result(tally, window_shares(records, b.start, b.end), b, concurrency, clocks, rule=rule,
                           cv=window_cv(records, b), ended_inside=inside, **context)
