"""A level's measurement window, and THE way a windowed level is summed up, for headless levels and live segments.

`Bounds` is the window on the perf_counter clock (the records' clock); `Clocks` turns it into the saved
`LevelWindow` (monotonic for the server's scrapes, wall clock for people). Which requests count is written in
`LevelWindow`'s docstring and in each saved window's `rule`; `Bounds.counts` is that rule in code.

Two ways to the same numbers: `summarize_window` from a list of every record of the level (the definition, and
what a test recomputes against), and `WindowTally`, fed each record as it finishes, which keeps only the few
records whose place in the window is not known yet, so a long headless level stays flat in memory.
"""
from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import count

from .records import RequestRecord
from .result import LevelResult, LevelWindow
from .settle import SettleRule
from .stats import Finished, LevelTally, headless_tally, level_result
from .timeline import Shares, Timeline, shares, step_cv, window_shares

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
    tally = headless_tally().add_all(r for r in records if b.counts(r))
    inside = sum(1 for r in records if r.ok and b.start <= r.end < b.end)
    return windowed_result(tally, window_shares(records, b.start, b.end), b, concurrency, clocks, rule=rule,
                           cv=window_cv(records, b), ended_inside=inside, **context)


class WindowTally:
    """`summarize_window`'s numbers, built as the level's records finish instead of from their list at the end.

    Every record of the level goes to `add` (warm-up and failed ones too, as summarize_window is given them).
    Until the window's start is known (`open`) records wait in a buffer; from then on each one is folded into
    the rates over [start, end) (shares and the per-second CV timeline), the count that ended inside and, when it
    is in the population, the tally, and dropped. What the caller promises, which makes the sums exact:

    - `open(start, until)` and every `until_at_least(t)`: `start` is the window's final start, and no record
      given before `close` that started in [start, t) falls outside the final started_until (t is a lower bound
      of it, or no request started at or after the final one: a tripped level sends nothing more);
    - every record given before `close` ended before the window's end (the end is read from the same monotonic
      clock after them), so its share of [start, end) is its share of [start, +inf).

    A record that started at or after the lower bound waits in a heap until a higher bound or `close` decides it
    (the requests started while the load is held after the window's last start: about a concurrency's worth).
    `result()` after `close`. `held`: the records waiting now; `waited`: how many waited for the start;
    `max_late`: the most that waited on the bound at once.
    """

    def __init__(self) -> None:
        self.tally = headless_tally()
        self._waiting: list[RequestRecord] = []  # before the start is known
        self._late: list[tuple[float, int, RequestRecord]] = []  # started at or after the bound: a heap by start
        self._seq = count()
        self.start: float | None = None
        self._until = -math.inf
        self.bounds: Bounds | None = None
        self._timeline: Timeline | None = None
        self._req = self._inp = self._out = 0.0
        self._inside = 0
        self.waited = 0
        self.max_late = 0

    @property
    def held(self) -> int:
        return len(self._waiting) + len(self._late)

    def add(self, r: RequestRecord) -> None:
        if self.start is None:
            self._waiting.append(r)
        else:
            self._fold(r)

    def open(self, start: float, until: float) -> None:
        """The window starts at `start`; started_until is at least `until`."""
        if self.start is not None:
            if start != self.start:
                raise ValueError(f"window already opened at {self.start}, not {start}")
            self.until_at_least(until)
            return
        self.start = start
        self._until = until
        self._timeline = Timeline(start, CV_STEP_S)
        waiting, self._waiting = self._waiting, []
        self.waited = len(waiting)
        for r in waiting:
            self._fold(r)

    def until_at_least(self, t: float) -> None:
        if t <= self._until:
            return
        self._until = t
        late = self._late
        while late and late[0][0] < t:
            self.tally.add(heapq.heappop(late)[2])

    def close(self, b: Bounds) -> None:
        """The final window: the records still undecided are decided by it, and every later one exactly."""
        if self.start is None:
            self.open(b.start, b.started_until)
        elif b.start != self.start:
            raise ValueError(f"window opened at {self.start}, closed with start {b.start}")
        self.bounds = b
        late, self._late = self._late, []
        for _, _, r in late:
            if b.counts(r):
                self.tally.add(r)

    def _fold(self, r: RequestRecord) -> None:
        t0, b = self.start, self.bounds
        assert t0 is not None and self._timeline is not None
        s = shares(r, t0, math.inf if b is None else b.end)
        self._req += s.requests
        self._inp += s.in_tokens
        self._out += s.out_tokens
        self._timeline.add(r)
        if b is not None:
            self._inside += r.ok and t0 <= r.end < b.end
            if b.counts(r):
                self.tally.add(r)
            return
        self._inside += r.ok and t0 <= r.end  # it ended before the end (promised)
        if r.start < t0:
            return
        if r.start < self._until:
            self.tally.add(r)
        else:
            heapq.heappush(self._late, (r.start, next(self._seq), r))
            self.max_late = max(self.max_late, len(self._late))

    def result(self, concurrency: int | None, clocks: Clocks, *, rule: str, **context) -> LevelResult:
        b = self.bounds
        if b is None or self._timeline is None:
            raise RuntimeError("WindowTally.result() before close()")
        cv = step_cv(self._timeline.out_per(b.start, b.end, CV_STEP_S))
        return windowed_result(self.tally, Shares(self._req, self._inp, self._out), b, concurrency, clocks,
                               rule=rule, cv=cv, ended_inside=self._inside, **context)
