"""The one log-binned latency histogram (seconds): the rolling window's ITLs and a long segment's folded values.

Bins are 0.5% wide (RATIO) from LO to HI, plus an under-range bin (zero gaps: several tokens in one read) and an
over-range bin, so nothing added is ever lost. Values can leave as well as enter (the rolling window removes the
ITLs of expiring records), and memory is fixed (~4.2k counters) however many values pass through.

The percentile rule is the exact one's (`stats.percentile`, numpy's default "linear"): at 0-based rank
r = q/100 * (n - 1), the order statistics floor(r) and floor(r) + 1 interpolated linearly. Each order statistic is
estimated from its bin: the bin's c values are taken as spread evenly in log space, the j-th at (j + 0.5) / c of
the bin's width. Why this rule: one rule for exact lists and histograms means a level's p99 does not jump when its
values are folded, and small counts interpolate between neighbours as the exact rule does. An estimate is off by
at most one bin (0.5%), typically far less; it never exceeds the largest value added while that is known.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import accumulate

from .snapshot import LatencyView

RATIO = 1.005
LO = 1e-5  # 10 us: below this a gap is a zero gap
HI = 1e4  # seconds: past any read timeout


class LogHistogram:
    """Counts on fine log bins; add_many / remove_many are the hot path (tight loops, a log() per value).

    Why it exists (measured): at C=256 the live 10 s window holds ~240k ITLs; sorting and binning the newest 50k
    per snapshot cost ~7 ms of engine-loop time four times a second, and those stalls were the ITL/first-read p99
    tails of the live session (bench/fidelity.py: engine ITL p99 5.2 ms at C=256, headless 0.5 ms). Here each
    value costs a log() when it enters and when it leaves, and a view is one cumulative sum (~0.1 ms)."""

    __slots__ = ("counts", "count", "total", "_max", "_k", "_n")

    def __init__(self) -> None:
        self._k = 1.0 / math.log(RATIO)
        self._n = int(math.ceil(math.log(HI / LO) * self._k)) + 1
        self.counts = [0] * (self._n + 1)  # [0]: under LO, [1..n-1]: [LO*R^(i-1), LO*R^i), [n]: at or over HI
        self.count = 0
        self.total = 0.0
        self._max: float | None = None  # the exact largest value while it is known (None: empty or removed)

    def _idx(self, v: float) -> int:
        if v < LO:
            return 0
        i = int(math.log(v / LO) * self._k) + 1
        return i if i < self._n else self._n

    def add_many(self, values: Sequence[float]) -> None:
        if not values:
            return
        c, k, n, log = self.counts, self._k, self._n, math.log
        for v in values:
            if v < LO:
                c[0] += 1
            else:
                i = int(log(v / LO) * k) + 1
                c[i if i < n else n] += 1
        was = self.count
        self.count += len(values)
        self.total += sum(values)
        top = max(values)
        if was == 0:
            self._max = top
        elif self._max is not None and top > self._max:
            self._max = top

    def add(self, v: float) -> None:
        self.add_many((v,))

    def remove_many(self, values: Sequence[float]) -> None:
        """Take back values that were added (the caller's contract: removing what never entered corrupts)."""
        if not values:
            return
        c, k, n, log = self.counts, self._k, self._n, math.log
        for v in values:
            if v < LO:
                c[0] -= 1
            else:
                i = int(log(v / LO) * k) + 1
                c[i if i < n else n] -= 1
        self.count -= len(values)
        self.total -= sum(values)
        if self.count <= 0:
            self.clear()  # no float residue once empty
        elif self._max is not None and max(values) >= self._max:
            self._max = None  # the largest value left: from the bins from now on

    def clear(self) -> None:
        self.counts = [0] * (self._n + 1)
        self.count = 0
        self.total = 0.0
        self._max = None

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None

    def _lower(self, i: int) -> float:
        return LO * RATIO ** (i - 1)

    def _top(self, cum: list[int]) -> float:
        if self._max is not None:
            return self._max
        i = bisect_left(cum, self.count)  # the highest non-empty bin
        if i <= 0:
            return 0.0
        return HI if i >= self._n else self._lower(i) * math.sqrt(RATIO)

    def _order(self, cum: list[int], k: int, top: float) -> float:
        """The estimated k-th smallest value (0-based)."""
        i = bisect_right(cum, k)  # the first bin whose cumulative count passes k
        if i == 0:
            return 0.0
        if i >= self._n:
            return top
        c = self.counts[i]
        v = self._lower(i) * RATIO ** ((k - (cum[i] - c) + 0.5) / c)
        return top if v > top else v

    def _pct(self, cum: list[int], q: float) -> float:
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile q must be in [0, 100], got {q}")
        rank = (self.count - 1) * q / 100.0
        lo = math.floor(rank)
        top = self._top(cum)
        v = self._order(cum, lo, top)
        frac = rank - lo
        if frac <= 0.0 or lo + 1 >= self.count:
            return v
        return v + (self._order(cum, lo + 1, top) - v) * frac

    @property
    def max(self) -> float | None:
        if self.count <= 0:
            return None
        return self._top(list(accumulate(self.counts)))

    def percentile(self, q: float) -> float | None:
        return self.percentiles(q)[0]

    def percentiles(self, *qs: float) -> tuple[float | None, ...]:
        """Several percentiles from one cumulative sum."""
        if self.count <= 0:
            return (None,) * len(qs)
        cum = list(accumulate(self.counts))
        return tuple(self._pct(cum, q) for q in qs)

    def view(self, edges: Sequence[float]) -> LatencyView:
        """Display bins and summary numbers for the face. Display bins from the fine ones: values under the first
        inner edge go to bin 0, at or over the last one to the last bin."""
        nb = len(edges) - 1
        if self.count <= 0:
            return LatencyView(edges=tuple(edges), counts=(0,) * nb)
        cum = list(accumulate(self.counts))
        cuts = [0] + [self._idx(e) for e in edges[1:nb]] + [len(self.counts)]
        counts = tuple((cum[b - 1] if b else 0) - (cum[a - 1] if a else 0) for a, b in zip(cuts, cuts[1:]))
        return LatencyView(edges=tuple(edges), counts=counts, count=self.count, mean=self.total / self.count,
                           p50=self._pct(cum, 50), p90=self._pct(cum, 90), p99=self._pct(cum, 99),
                           max=self._top(cum))
