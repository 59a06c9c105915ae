"""Pure statistics over RequestRecords: percentiles, the `vllm bench serve` summary, histograms, rolling window.

No numpy: the engine process stays light, and these lists are small enough for sorted() + bisect.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from itertools import accumulate
from time import perf_counter

from qbench_tui.engine.records import RequestRecord
from qbench_tui.engine.snapshot import LatencyView


def percentile(values: Sequence[float], q: float) -> float | None:
    """np.percentile(values, q) with linear interpolation; q in 0..100. None for no values."""
    if not values:
        return None
    xs = sorted(values)
    return _pct_sorted(xs, q)


def _pct_sorted(xs: Sequence[float], q: float) -> float:
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    n = len(xs)
    if n == 1:
        return float(xs[0])
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(xs[lo] + (xs[hi] - xs[lo]) * frac)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def to_ms(v: float | None) -> float | None:
    return None if v is None else v * 1000.0


_ms = to_ms


def _dist_ms(prefix: str, values: Sequence[float]) -> dict:
    xs = sorted(values)
    if not xs:
        return {f"mean_{prefix}_ms": None, f"median_{prefix}_ms": None, f"p90_{prefix}_ms": None,
                f"p99_{prefix}_ms": None}
    return {
        f"mean_{prefix}_ms": _ms(_mean(xs)),
        f"median_{prefix}_ms": _ms(_pct_sorted(xs, 50)),
        f"p90_{prefix}_ms": _ms(_pct_sorted(xs, 90)),
        f"p99_{prefix}_ms": _ms(_pct_sorted(xs, 99)),
    }


def summarize(records: Iterable[RequestRecord], duration: float, max_concurrency: int | None) -> dict:
    """The `vllm bench serve --save-result` numbers for one level, plus our extras.

    Warm-up records are dropped entirely; failed records count in `failed` and `failures` only. Throughputs
    are over `duration` (the caller's measured level time). Latencies in ms; None where there is no data.
    """
    ok: list[RequestRecord] = []
    failures: Counter[str] = Counter()
    for r in records:
        if r.warmup:
            continue
        if r.ok:
            ok.append(r)
        else:
            failures[r.error or "unknown"] += 1
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tpots = [t for t in (r.tpot for r in ok) if t is not None]
    itls = [x for r in ok for x in r.itl]
    e2els = [r.e2el for r in ok]
    total_in = sum(r.in_tokens for r in ok)
    total_out = sum(r.out_tokens for r in ok)
    rate = (lambda x: x / duration) if duration and duration > 0 else (lambda x: None)
    out = {
        "completed": len(ok),
        "failed": sum(failures.values()),
        "duration": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": rate(len(ok)),
        "output_throughput": rate(total_out),
        "total_token_throughput": rate(total_in + total_out),
        "max_concurrency": max_concurrency,
    }
    out.update(_dist_ms("ttft", ttfts))
    out.update(_dist_ms("tpot", tpots))
    out.update(_dist_ms("itl", itls))
    out.update(_dist_ms("e2el", e2els))
    out["total_time_s"] = duration
    out["avg_latency_s"] = _mean(e2els)
    out["failures"] = dict(failures.most_common())
    out["tokens_estimated"] = sum(1 for r in ok if r.tokens_estimated)
    return out


# ---------------------------------------------------------------- histograms


def log_edges(lo: float = 0.001, hi: float = 120.0, n: int = 40) -> tuple[float, ...]:
    """n bins -> n+1 log-spaced edges from lo to hi (seconds)."""
    if not (0 < lo < hi) or n < 1:
        raise ValueError("need 0 < lo < hi and n >= 1")
    ratio = math.log(hi / lo)
    edges = [lo * math.exp(ratio * i / n) for i in range(n + 1)]
    edges[-1] = hi
    return tuple(edges)


DEFAULT_EDGES = log_edges()


def _bin(edges: Sequence[float], v: float) -> int:
    # values under the first edge / over the last one land in the end bins so nothing disappears from the chart
    i = bisect_right(edges, v) - 1
    return 0 if i < 0 else min(i, len(edges) - 2)


class LatencyHistogram:
    """Counts on fixed log-spaced bins (seconds); cumulative, for a whole level or run."""

    __slots__ = ("edges", "counts", "count", "total", "max")

    def __init__(self, lo: float = 0.001, hi: float = 120.0, n: int = 40) -> None:
        self.edges = log_edges(lo, hi, n)
        self.counts = [0] * n
        self.count = 0
        self.total = 0.0
        self.max: float | None = None

    def add(self, v: float) -> None:
        self.counts[_bin(self.edges, v)] += 1
        self.count += 1
        self.total += v
        if self.max is None or v > self.max:
            self.max = v

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)


def latency_view(values: Sequence[float], edges: Sequence[float] = DEFAULT_EDGES) -> LatencyView:
    """Binned counts and summary numbers of `values` (seconds) for the face."""
    if not values:
        return LatencyView(edges=tuple(edges), counts=(0,) * (len(edges) - 1))
    xs = sorted(values)
    # Bin the sorted values with one bisect per edge instead of one per value (50k ITLs: ~14 ms -> ~4 ms,
    # and this runs at the snapshot rate on the engine loop). Same bins as _bin(): under the first inner edge
    # -> bin 0, at or over the last inner edge -> the last bin.
    nb = len(edges) - 1
    cuts = [0] + [bisect_left(xs, e) for e in edges[1:nb]] + [len(xs)]
    counts = [cuts[k + 1] - cuts[k] for k in range(nb)]
    return LatencyView(
        edges=tuple(edges),
        counts=tuple(counts),
        count=len(xs),
        mean=sum(xs) / len(xs),
        p50=_pct_sorted(xs, 50),
        p90=_pct_sorted(xs, 90),
        p99=_pct_sorted(xs, 99),
        max=xs[-1],
    )


class FineHistogram:
    """Counts on fine log bins (0.5% wide) that values can leave as well as enter: the rolling window's ITLs.

    Why not sorted(values) per snapshot, as the exact views do: at C=256 the 10 s window holds ~240k ITLs; the
    newest 50k, sorted and binned, cost ~7 ms on the engine loop four times a second, and those stalls were the
    ITL/first-read p99 tails of the live session (bench/fidelity.py: engine ITL p99 5.2 ms at C=256, headless
    0.5 ms). Here each value costs a log() when it enters and when it leaves (spread over the records as they
    finish and expire), and a view is one cumulative sum over ~3.2k bins (~0.1 ms). Percentiles and max are bin
    midpoints: within 0.25% of the exact value. Saved results (segments, sweeps) stay exact; this is the face's
    live view only.
    """

    __slots__ = ("counts", "count", "total", "_k", "_lo", "_n")

    RATIO = 1.005

    def __init__(self, lo: float = 1e-5, hi: float = 100.0) -> None:
        self._lo = lo
        self._k = 1.0 / math.log(self.RATIO)
        self._n = int(math.ceil(math.log(hi / lo) * self._k)) + 1
        self.counts = [0] * (self._n + 1)  # [0]: under lo (incl. zero gaps), [n]: over hi
        self.count = 0
        self.total = 0.0

    def _idx(self, v: float) -> int:
        if v < self._lo:
            return 0
        i = int(math.log(v / self._lo) * self._k) + 1
        return i if i < self._n else self._n

    def add_many(self, values: Iterable[float]) -> None:
        c, lo, k, n, log = self.counts, self._lo, self._k, self._n, math.log
        for v in values:
            if v < lo:
                c[0] += 1
            else:
                i = int(log(v / lo) * k) + 1
                c[i if i < n else n] += 1
            self.count += 1
            self.total += v

    def remove_many(self, values: Iterable[float]) -> None:
        c, lo, k, n, log = self.counts, self._lo, self._k, self._n, math.log
        for v in values:
            if v < lo:
                c[0] -= 1
            else:
                i = int(log(v / lo) * k) + 1
                c[i if i < n else n] -= 1
            self.count -= 1
            self.total -= v
        if self.count == 0:
            self.total = 0.0  # no float residue once empty

    def clear(self) -> None:
        self.counts = [0] * (self._n + 1)
        self.count = 0
        self.total = 0.0

    def _value(self, i: int) -> float:
        """The geometric middle of fine bin i (0 for the under-range bin)."""
        if i <= 0:
            return 0.0
        return self._lo * self.RATIO ** (i - 0.5)

    def view(self, edges: Sequence[float]) -> LatencyView:
        nb = len(edges) - 1
        if self.count <= 0:
            return LatencyView(edges=tuple(edges), counts=(0,) * nb)
        cum = list(accumulate(self.counts))
        n = self.count

        def pct(q: float) -> float:
            # the nearest-rank value: the first bin whose cumulative count reaches q% of n
            return self._value(bisect_left(cum, max(1, math.ceil(n * q / 100))))

        # display bins from the fine ones: values under the first inner edge -> bin 0, at or over the last -> last
        cuts = [0] + [min(self._idx(e), self._n) for e in edges[1:nb]] + [len(self.counts)]
        counts = tuple((cum[b - 1] if b else 0) - (cum[a - 1] if a else 0) for a, b in zip(cuts, cuts[1:]))
        top = bisect_left(cum, n)  # the highest non-empty bin
        return LatencyView(edges=tuple(edges), counts=counts, count=n, mean=self.total / n,
                           p50=pct(50), p90=pct(90), p99=pct(99), max=self._value(top))


# ---------------------------------------------------------------- rolling window


class RollingWindow:
    """Records that ended in the last `window_s` seconds (perf_counter clock), with running totals.

    Records are expected roughly in end order (they are added as they finish); eviction goes from the left, so
    a straggler added late is evicted late, never lost. Rates divide by min(window_s, time since reset), floored
    at `min_span_s` so the first few milliseconds of a run don't show absurd rates.
    """

    def __init__(self, window_s: float = 10.0, now: float | None = None, *, min_span_s: float = 0.5) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._recs: deque[RequestRecord] = deque()
        # values of the ok records, kept in record order beside _recs so the 4 Hz snapshot copies them in C
        # (list(deque)) instead of walking ~10k records and their properties
        self._ttft: deque[float] = deque()
        self._e2el: deque[float] = deque()
        self._itl = FineHistogram()  # every ITL of the window, not a newest-N sample
        self._t0 = perf_counter() if now is None else now
        self._out_tokens = 0
        self._completed = 0
        self._failed = 0
        self._failures: Counter[str] = Counter()

    def reset(self, now: float) -> None:
        self._recs.clear()
        self._ttft.clear()
        self._e2el.clear()
        self._itl.clear()
        self._t0 = now
        self._out_tokens = self._completed = self._failed = 0
        self._failures.clear()

    def add(self, rec: RequestRecord) -> None:
        self._recs.append(rec)
        if rec.ok:
            self._completed += 1
            self._out_tokens += rec.out_tokens
            self._e2el.append(rec.end - rec.start)
            if rec.ttft is not None:
                self._ttft.append(rec.ttft)
            if rec.itl:
                self._itl.add_many(rec.itl)
        else:
            self._failed += 1
            self._failures[rec.error or "unknown"] += 1

    def evict(self, now: float) -> None:
        cutoff = now - self.window_s
        recs = self._recs
        while recs and recs[0].end < cutoff:
            r = recs.popleft()
            if r.ok:
                self._completed -= 1
                self._out_tokens -= r.out_tokens
                self._e2el.popleft()
                if r.ttft is not None:
                    self._ttft.popleft()
                if r.itl:
                    self._itl.remove_many(r.itl)
            else:
                self._failed -= 1
                k = r.error or "unknown"
                self._failures[k] -= 1
                if self._failures[k] <= 0:
                    del self._failures[k]

    def span(self, now: float) -> float:
        return max(self.min_span_s, min(self.window_s, now - self._t0))

    def out_tok_s(self, now: float) -> float:
        self.evict(now)
        return self._out_tokens / self.span(now)

    def req_s(self, now: float) -> float:
        self.evict(now)
        return self._completed / self.span(now)

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
        """Every ITL of the window's ok records, binned (percentiles within 0.25%: see FineHistogram)."""
        return self._itl.view(edges)

    def failures(self) -> dict[str, int]:
        return dict(self._failures.most_common())
