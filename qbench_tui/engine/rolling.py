"""The live view's rolling window: the last `window_s` seconds of COMPLETE data.

A request's tokens are known only when it ends, so "the last five seconds" ends at the load engine's horizon
(the start of the oldest request in flight, engine/load.py): [h - window_s, h). Over it:
- rates are what happened inside it (the timeline: tokens by arrival, requests by their share of life), so a
  short window does not jump with each wave of requests, and with nothing in flight it falls to 0 within
  window_s instead of showing the last rate;
- latency views cover the requests whose FIRST TOKEN came in it: the population the server's own mean TTFT
  (its histogram's deltas over the same span) covers, so the two compare;
- failures count by when they ended.
Under several endpoints each record names its endpoint; the window keeps a few counters per endpoint beside its
own (requests, tokens, the TTFT values: the same records, split, not a second window), for the dashboard's rows.
"""
from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable, Sequence
from itertools import count
from time import perf_counter

from .histogram import LogHistogram
from .records import RequestRecord
from .snapshot import LatencyView
from .stats import DEFAULT_EDGES
from .timeline import Timeline, first_token_at


def _key(r: RequestRecord) -> float:
    t = first_token_at(r) if r.ok else None
    return r.end if t is None else t


class RollingWindow:
    """`timeline`: the load engine's (it adds every record to it); without one the window keeps its own.
    `horizon(now)`: up to when the data are complete (default: now). Records are expected roughly in end order;
    a straggler added late is evicted late, never lost."""

    def __init__(self, window_s: float = 5.0, now: float | None = None, *, timeline: Timeline | None = None,
                 horizon: Callable[[float], float] | None = None, min_span_s: float = 0.5) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        t0 = perf_counter() if now is None else now
        self._own = timeline is None
        self.timeline = Timeline(t0) if timeline is None else timeline
        self._horizon = horizon or (lambda now: now)
        self._seq = count()
        self._pending: list[tuple[float, int, RequestRecord]] = []  # not yet reached by the horizon
        self._recs: deque[tuple[float, RequestRecord]] = deque()
        # values of the ok records, in the order of _recs, so the 4 Hz snapshot copies them in C
        self._ttft: deque[float] = deque()
        self._e2el: deque[float] = deque()
        self._itl = LogHistogram()  # every ITL of the window, not a newest-N sample
        self._t0 = t0
        self._h = t0
        self._out_tokens = 0
        self._completed = 0
        self._failed = 0
        self._failures: Counter[str] = Counter()
        self._eps: dict[str, _EndpointCounts] = {}  # several endpoints: each one's share of the window

    def reset(self, now: float) -> None:
        self._pending.clear()
        self._recs.clear()
        self._ttft.clear()
        self._e2el.clear()
        self._itl.clear()
        self._t0 = self._h = now
        self._out_tokens = self._completed = self._failed = 0
        self._failures.clear()
        self._eps.clear()

    def add(self, rec: RequestRecord) -> None:
        if self._own:
            self.timeline.add(rec)
        heapq.heappush(self._pending, (_key(rec), next(self._seq), rec))

    def _enter(self, key: float, rec: RequestRecord) -> None:
        self._recs.append((key, rec))
        if rec.endpoint:
            ep = self._eps.get(rec.endpoint)
            if ep is None:
                ep = self._eps[rec.endpoint] = _EndpointCounts()
            ep.enter(rec)
        if rec.ok:
            self._completed += 1
            self._out_tokens += rec.out_tokens
            self._e2el.append(rec.e2el)
            if rec.ttft is not None:
                self._ttft.append(rec.ttft)
            if rec.itl:
                self._itl.add_many(rec.itl)
        else:
            self._failed += 1
            self._failures[rec.error or "unknown"] += 1

    def _leave(self, rec: RequestRecord) -> None:
        if rec.endpoint:
            self._eps[rec.endpoint].leave(rec)
        if rec.ok:
            self._completed -= 1
            self._out_tokens -= rec.out_tokens
            self._e2el.popleft()
            if rec.ttft is not None:
                self._ttft.popleft()
            if rec.itl:
                self._itl.remove_many(rec.itl)
        else:
            self._failed -= 1
            k = rec.error or "unknown"
            self._failures[k] -= 1
            if self._failures[k] <= 0:
                del self._failures[k]

    def evict(self, now: float) -> None:
        """Move the window to end at the horizon (never backwards)."""
        h = self._h = max(self._h, self._horizon(now))
        pend = self._pending
        while pend and pend[0][0] < h:
            key, _, rec = heapq.heappop(pend)
            if key >= self._t0:  # before a reset: not this window's
                self._enter(key, rec)
        cutoff = h - self.window_s
        recs = self._recs
        while recs and recs[0][0] < cutoff:
            self._leave(recs.popleft()[1])

    def bounds(self, now: float) -> tuple[float, float]:
        """[start, end) of the window on the perf_counter clock, on the timeline's step edges."""
        self.evict(now)
        tl = self.timeline
        end = tl.floor(self._h)
        start = max(tl.floor(self._h - self.window_s), tl.ceil(self._t0))
        return min(start, end), end

    def span(self, now: float) -> float:
        a, b = self.bounds(now)
        return max(self.min_span_s, b - a)

    def out_tok_s(self, now: float) -> float:
        a, b = self.bounds(now)
        return self.timeline.totals(a, b).out_tokens / max(self.min_span_s, b - a)

    def req_s(self, now: float) -> float:
        a, b = self.bounds(now)
        return self.timeline.totals(a, b).requests / max(self.min_span_s, b - a)

    @property
    def completed(self) -> int:
        return self._completed

    @property
    def failed(self) -> int:
        return self._failed

    def __len__(self) -> int:
        return len(self._recs)

    def ttft_values(self) -> list[float]:
        return list(self._ttft)

    def e2el_values(self) -> list[float]:
        return list(self._e2el)

    def itl_view(self, edges: Sequence[float] = DEFAULT_EDGES) -> LatencyView:
        """Every ITL of the window's ok records, binned (percentiles within a 0.5% bin: see LogHistogram)."""
        return self._itl.view(edges)

    def failures(self) -> dict[str, int]:
        return dict(self._failures.most_common())

    @property
    def out_tokens(self) -> int:
        """Output tokens of the ok records in the window (the denominator of an endpoint's share)."""
        return self._out_tokens

    def endpoint_counts(self, url: str) -> _EndpointCounts | None:
        """That endpoint's records in the window (None: none seen since the window began)."""
        return self._eps.get(url)


class _EndpointCounts:
    """One endpoint's records in the window: counts and its ok records' TTFTs, in window order (they leave from
    the left as the window's own do, so a deque pops them in order)."""

    __slots__ = ("completed", "failed", "out_tokens", "ttft")

    def __init__(self) -> None:
        self.completed = self.failed = self.out_tokens = 0
        self.ttft: deque[float] = deque()

    def enter(self, rec: RequestRecord) -> None:
        if rec.ok:
            self.completed += 1
            self.out_tokens += rec.out_tokens
            if rec.ttft is not None:
                self.ttft.append(rec.ttft)
        else:
            self.failed += 1

    def leave(self, rec: RequestRecord) -> None:
        if rec.ok:
            self.completed -= 1
            self.out_tokens -= rec.out_tokens
            if rec.ttft is not None:
                self.ttft.popleft()
        else:
            self.failed -= 1
