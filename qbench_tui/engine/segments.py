"""One measured segment per concurrency level visited, kept compact so a long session stays flat in memory.

A segment is measured as a headless steady level is (engine/settle.py, engine/window.py): its window starts
once the old level's requests have all finished and throughput is steady, and ends at the next change; its
rates are what happened inside the window (the load engine's timeline), its latencies those of the requests
that started in the window and ended before the change. A segment that never settled is a transition (a key
repeat on the way to another level): kept in the records, never a level.

Its records are kept only until the window is known (settling needs complete data, up to one latency late);
after that they go one by one into the latency tally. TTFT, TPOT and E2EL keep one float per request (exact
percentiles) up to EXACT_LIMIT values, then fold into the log histogram (engine/histogram.py); ITL has one value
per token, which over a ten-minute soak is tens of millions of floats, so it is binned from the start. Binned
percentiles are within one 0.5% bin of the exact ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .records import RequestRecord
from .result import LevelResult, ServerLevel, server_level
from .server_series import ServerSeries
from .settle import Settler, SettleRule
from .stats import ClientTally, LevelTally, level_result
from .timeline import Timeline, step_cv
from .window import CV_STEP_S, WAVE_RULE, Bounds, Clocks, steady_rule, windowed_result

EXACT_LIMIT = 20_000  # per-request values kept exactly per segment before folding into a histogram
INF = float("inf")
LIVE_OPEN_RULE = ("live open loop: rates: output tokens arriving in [start, end) and each request's share of its "
                  "life in it, per second; latencies: ok requests started in [start, started_until) and ended by "
                  "ended_by; starts once the previous level's requests have all ended (no CV test: arrivals are "
                  "random by design); schedule lag = actual send - due time")


def _tally() -> LevelTally:
    return LevelTally(EXACT_LIMIT, itl_exact=False)  # the limit read now, so a test can lower it


@dataclass
class SegmentStats:
    segment: int
    concurrency: int
    t_start: float  # perf_counter when the segment began
    t_end: float | None = None
    mono_start: float | None = None  # time.monotonic() when it began
    tally: LevelTally = field(default_factory=_tally)  # the latency population (a wave: every request)
    server: ServerLevel | None = None  # the server over the window, frozen once the window is final
    client: ClientTally = field(default_factory=ClientTally)  # the load engine's CPU / loop lag while current
    explicit: bool = False  # a level asked for (RunLevel): its window comes from the load engine's own run
    server_config: str = ""  # the launched server's flags while this segment ran ("" when not known)
    rule: SettleRule = field(default_factory=SettleRule)
    wave: bool = False  # a RunLevel wave: the classic, every request, first start to last end
    seen: int = 0  # this segment's records, ok or not
    older_end: float | None = None  # the last end of an older level's request that finished while current
    clean_at: float | None = None  # when the last older request finished (known once none is in flight)
    never_clean: bool = False  # ended while an older level's request was still running: never a level
    settler: Settler | None = None
    timeline: Timeline | None = None  # the load engine's (what happened when); set by the session
    started_until: float = INF  # the latency population's bounds (set when the segment ends)
    ended_by: float = INF
    window_end: float | None = None  # rates end here (a step edge) once the segment has ended
    transition: bool = False  # ended without settling: never a level
    rate: float | None = None  # an open-loop segment: the request rate held (`concurrency` is its cap, 0: none)
    burstiness: float | None = None
    _held: list[RequestRecord] = field(default_factory=list)  # records not yet in (or out of) the tally
    _frontier: float = -INF  # a current segment: the tally holds the requests that started before this edge
    _asof: float = -INF  # ... and ended by this time

    # ------------------------------------------------------------ records

    def add(self, r: RequestRecord) -> None:
        """One of this segment's own records (r.segment == segment)."""
        self.seen += 1
        if self.wave:
            self.tally.add(r)
        else:
            self._held.append(r)

    def note_older(self, end: float) -> None:
        """An older level's request finished while this segment was current."""
        self.older_end = end if self.older_end is None else max(self.older_end, end)

    @property
    def completed(self) -> int:
        return self.tally.completed

    @property
    def failed(self) -> int:
        return self.tally.failed

    @property
    def settled(self) -> bool:
        """The window's start is known (the ladder waits on this before it trusts a live level)."""
        return self.wave or (self.settler is not None and self.settler.settled)

    @property
    def steady(self) -> bool:
        return self.wave or bool(self.settler is not None and self.settler.steady)

    def seconds(self, now: float) -> float:
        return (self.t_end if self.t_end is not None else now) - self.t_start

    # ------------------------------------------------------------ the window

    @property
    def settled_at(self) -> float | None:
        """The window's start (perf_counter) once settled, as of the last advance()."""
        return self.settler.t0 if self.settler is not None and not self.wave else None

    def _tl(self) -> Timeline:
        if self.timeline is None:
            self.timeline = Timeline(self.t_start)
        return self.timeline

    def advance(self, horizon: float, now: float) -> None:
        """Settle when the data allow, then move the held records the horizon has passed into the tally.
        `horizon`: the load engine's, up to when every request's tokens are known."""
        if self.wave:
            return
        timeline = self._tl()
        if self.settler is None:
            self.settler = Settler(timeline, self.t_start, self.rule)
        if self.clean_at is None and not self.never_clean and horizon >= self.t_start:
            self.clean_at = max(self.t_start, self.older_end or self.t_start)
        if not self.settler.settled and not self.explicit and not self.transition:
            until = None if self.t_end is None else timeline.floor(self.t_end)
            self.settler.update(horizon, self.clean_at, now, until=until)
            if not self.settler.settled and until is not None and min(horizon, now) >= until:
                self.transition = True  # every candidate its time allowed was tried
        t0 = self.settler.t0
        if self.transition:
            self._held = []
        if t0 is None or (self.explicit and self.t_end is None):
            return
        if self.t_end is None:
            # a current level: only requests that started before the horizon are final as a set (of those that
            # started after it, only the quick ones have ended yet: adding them now would favour them)
            self._frontier = max(self._frontier, timeline.floor(horizon))
            self._asof = now
            limit = self._frontier
        else:
            limit = self.started_until  # ended: whatever counts has ended by the change
            # ... but its rates wait for its last requests' tokens (until then they end where the data do)
            self._frontier = max(self._frontier, min(timeline.floor(horizon), self.window_end or -INF))
        keep = []
        for r in self._held:
            if r.start >= self.started_until or r.start < t0:
                continue  # never in the population
            if r.start < limit:
                if r.end <= self.ended_by:
                    self.tally.add(r)
            else:
                keep.append(r)
        self._held = keep

    def close(self, t_end: float, horizon: float, bounds: Bounds | None = None) -> None:
        """The segment's load stopped at t_end. An explicit level takes the load engine's window (`bounds`, the
        same rule run by run_steady), or is a wave when there is none."""
        self.t_end = t_end
        timeline = self._tl()
        if self.explicit:
            if bounds is None or bounds.t_start < self.t_start:
                self.wave = True
                self.tally.add_all(self._held)
                self._held = []
                return
            self.settler = Settler(timeline, bounds.t_start, self.rule)
            self.settler.force(bounds.start, bounds.steady)
            self.started_until, self.ended_by = bounds.started_until, bounds.ended_by
            self.window_end = timeline.floor(bounds.end)
        else:
            if self.clean_at is None and horizon < self.t_start:
                self.never_clean = True
            self.window_end = timeline.floor(t_end)
            self.started_until = self.window_end
            self.ended_by = t_end
        self.advance(horizon, t_end)

    def final(self, horizon: float) -> bool:
        """Ended, and nothing can change its numbers any more (its window's tokens are all known)."""
        if self.t_end is None:
            return False
        if self.wave or self.transition:
            return True
        return self.settled and self.window_end is not None and horizon >= self.window_end and not self._held

    def bounds(self) -> Bounds | None:
        """The window so far: a level that has ended has its own end; a current one ends where the data are
        complete. None before settling, and for a transition."""
        t0 = self.settler.t0 if self.settler is not None else None
        if t0 is None or self.transition:
            return None
        if self.t_end is not None and self.window_end is not None:
            end, until, by = min(self.window_end, self._frontier), self.started_until, self.ended_by
        else:  # current: up to where the data are complete, as the tally was last advanced
            end = until = self._frontier
            by = self._asof
        if end <= t0:
            return None
        return Bounds(self.settler.t_start, t0, end, until, by, bool(self.settler.steady))

    def result(self, now: float | None = None, server: ServerLevel | None = None,
               clocks: Clocks | None = None) -> LevelResult | None:
        """This segment as a level, as of the last advance() (None while there is no window yet; `now` is not
        used: the window ends where the data were complete). `server`: the server over the window (the
        session's `segment_result` gives it; a final segment keeps its own, frozen)."""
        timeline = self._tl()
        clocks = clocks or Clocks.now()
        srv = self.server if self.server is not None else server
        if self.wave:
            lv = level_result(self.tally, self.tally.span_s, self.concurrency, segment=self.segment, mode="live",
                              server=srv, server_config=self.server_config, client=self.client.result())
            if self.tally.first_start is not None and self.tally.last_end is not None:
                b = Bounds(self.tally.first_start, self.tally.first_start, self.tally.last_end,
                           self.tally.last_end, self.tally.last_end)
                lv.window = clocks.window(b, rule=WAVE_RULE, cv=None, mean_e2el=lv.e2el.mean_s, wave=True)
            return lv
        b = self.bounds()
        if b is None:
            return None
        cv = step_cv(timeline.out_per(b.start, b.end, CV_STEP_S))
        if self.rate is None:
            c, rule, open_loop = self.concurrency, steady_rule(self.rule), {}
        else:  # as headless open levels are: the cap (None: none) and the rate asked for
            c, rule = self.concurrency or None, LIVE_OPEN_RULE
            open_loop = {"request_rate": self.rate, "burstiness": self.burstiness}
        return windowed_result(self.tally, timeline.totals(b.start, b.end), b, c, clocks,
                               rule=rule, cv=cv, segment=self.segment, mode="live", server=srv,
                               server_config=self.server_config, client=self.client.result(), **open_loop)

    def level(self, series: ServerSeries, horizon: float, now: float, clocks: Clocks) -> LevelResult | None:
        """advance(), then this segment as a level with the server's stats over the same window: the scrapes
        inside it (a wave: from its start to its end). Once nothing can change it, those are frozen."""
        if self.server is None:
            self.advance(horizon, now)
            server = None
            if self.wave:
                end = self.t_end if self.t_end is not None else now
                server = server_level(series, self.mono_start, clocks.to_mono(end))
            elif (b := self.bounds()) is not None:
                server = server_level(series, clocks.to_mono(b.start), clocks.to_mono(b.end))
            if self.final(horizon):
                self.server = server
        else:
            server = self.server
        return self.result(now, server, clocks)
