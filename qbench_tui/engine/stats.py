"""Pure statistics over RequestRecords: percentiles, THE level summarizer (LevelTally -> LevelResult) and display
views (the live rolling window is engine/rolling.py; a level's window, engine/window.py).

No numpy: the engine process stays light, and these lists are small enough for sorted() + bisect.
"""
from __future__ import annotations

import math
import re
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import NamedTuple

from qbench_tui.engine.histogram import LogHistogram
from qbench_tui.engine.records import RequestRecord
from qbench_tui.engine.result import ClientLevel, Dist, EndpointStat, Latency, LevelResult, TurnStat
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


def to_ms(v: float | None) -> float | None:
    return None if v is None else v * 1000.0


class Samples:
    """One latency's values over a level (seconds): exact in a list up to `limit` values (None: no limit), then
    folded into a LogHistogram so a long level stays flat in memory (a float in a list costs 32 B, which at C=256
    on the simulator grew the engine by ~51 MiB/hour: bench/soak.py). limit=0: the histogram from the start.

    compact: the exact values in an array of doubles (8 B each, not 32) for a summary read once at the end (a
    headless level); a live segment reads its percentiles several times a second and keeps the list, which it
    sorts in place."""

    __slots__ = ("values", "hist", "limit")

    def __init__(self, limit: int | None = None, compact: bool = False) -> None:
        self.values: list[float] | array = array("d") if compact else []
        self.hist: LogHistogram | None = None
        self.limit = limit

    def add(self, v: float) -> None:
        self.values.append(v)
        if self.limit is not None and len(self.values) >= self.limit:
            self.fold()

    def extend(self, vs: Sequence[float]) -> None:
        if self.limit == 0:
            if self.hist is None:
                self.hist = LogHistogram()
            self.hist.add_many(vs)
            return
        self.values.extend(vs)
        if self.limit is not None and len(self.values) >= self.limit:
            self.fold()

    def fold(self) -> None:
        if self.hist is None:
            self.hist = LogHistogram()
        self.hist.add_many(self.values)
        del self.values[:]

    def __len__(self) -> int:
        return len(self.values) + (self.hist.count if self.hist is not None else 0)

    def dist(self, top: float | None) -> Dist | None:
        """The same percentiles for a non-latency (lengths, lag); `top`: the largest value, kept by the caller."""
        if not len(self):
            return None
        lat = self.latency()
        return Dist(lat.mean_s, lat.p50_s, lat.p90_s, lat.p99_s, top)

    def latency(self) -> Latency:
        if self.hist is not None:
            self.fold()
            p50, p90, p99 = self.hist.percentiles(50, 90, 99)
            return Latency(self.hist.mean, p50, p90, p99)
        xs = self.values
        if not xs:
            return Latency()
        if isinstance(xs, array):
            xs = sorted(xs)  # compact: read once, at the level's end
        else:
            # sorted in place (order is not needed elsewhere): timsort on an almost-sorted list is ~linear, where
            # nine sorted copies per second cost 88 ms of engine-loop time at 90k requests (bench/soak.py)
            xs.sort()
        return Latency(sum(xs) / len(xs), _pct_sorted(xs, 50), _pct_sorted(xs, 90), _pct_sorted(xs, 99))


_REFUSAL_NUMBERS = re.compile(r"\d[\d,]*( prompt| output| tokens of history)")


class LevelTally:
    """What a level's summary needs, accumulated record by record: a live segment adds records as they finish,
    a headless level adds its list at the end. Warm-up records are dropped entirely; failed ones count in
    `failed` and `failures` only."""

    __slots__ = ("completed", "failed", "in_tokens", "out_tokens", "estimated", "failures", "ttft", "tpot", "e2el",
                 "itl", "first_start", "last_end", "in_lens", "out_lens", "lag", "tops", "refused", "refused_reasons",
                 "turns", "endpoints", "_limits")

    def __init__(self, exact_limit: int | None = None, itl_exact: bool = True, compact: bool = False) -> None:
        self.completed = self.failed = self.in_tokens = self.out_tokens = self.estimated = 0
        self.failures: Counter[str] = Counter()
        self.ttft, self.tpot, self.e2el = (Samples(exact_limit, compact) for _ in range(3))
        # ITL has one value per token (tens of millions over a soak): a live segment bins it from the start
        self.itl = Samples(None if itl_exact else 0)
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.in_lens, self.out_lens, self.lag = (Samples(exact_limit, compact) for _ in range(3))
        self.tops = [0.0, 0.0, 0.0]  # the largest input length, output length and schedule lag
        self.refused = 0
        self.refused_reasons: Counter[str] = Counter()
        self.turns: dict[int, list] = {}  # turn -> [ok requests, TTFT samples, prompt tokens]
        self.endpoints: dict[str, LevelTally] = {}  # several endpoints: each one's own tally (no deeper)
        self._limits = (exact_limit, compact)

    def add(self, r: RequestRecord) -> None:
        if r.warmup:
            return
        if r.refused:  # never sent: no time, no tokens, not a failure of the server
            self.refused += 1
            # by kind, not by length: "N prompt + N output tokens > max_model_len 4,096" (the record keeps the numbers)
            self.refused_reasons[_REFUSAL_NUMBERS.sub(r"N\1", r.error) if r.error else "refused"] += 1
            return
        if r.endpoint:
            sub = self.endpoints.get(r.endpoint)
            if sub is None:
                sub = self.endpoints[r.endpoint] = LevelTally(*self._limits[:1], itl_exact=False,
                                                              compact=self._limits[1])
            sub.add(replace(r, endpoint=""))
        if r.scheduled is not None:  # open loop: a failed request was late too
            lag = max(0.0, r.start - r.scheduled)
            self.lag.add(lag)
            self.tops[2] = max(self.tops[2], lag)
        self.first_start = r.start if self.first_start is None else min(self.first_start, r.start)
        self.last_end = r.end if self.last_end is None else max(self.last_end, r.end)
        if not r.ok:
            self.failed += 1
            self.failures[r.error or "unknown"] += 1
            return
        self.completed += 1
        self.in_tokens += r.in_tokens
        self.out_tokens += r.out_tokens
        self.estimated += r.tokens_estimated
        if r.in_tokens:
            self.in_lens.add(r.in_tokens)
            self.tops[0] = max(self.tops[0], r.in_tokens)
        self.out_lens.add(r.out_tokens)
        self.tops[1] = max(self.tops[1], r.out_tokens)
        if r.ttft is not None:
            self.ttft.add(r.ttft)
        if (tp := r.tpot) is not None:
            self.tpot.add(tp)
        self.e2el.add(r.e2el)
        if r.itl:
            self.itl.extend(r.itl)
        if r.turn:
            t = self.turns.get(r.turn)
            if t is None:
                t = self.turns[r.turn] = [0, Samples(*self._limits), 0]
            t[0] += 1
            if r.ttft is not None:
                t[1].add(r.ttft)
            t[2] += r.in_tokens

    def endpoint_stats(self, duration_s: float) -> tuple[EndpointStat, ...]:
        rate = (lambda x: x / duration_s) if duration_s and duration_s > 0 else (lambda x: None)
        return tuple(EndpointStat(url, t.completed, t.failed, t.out_tokens, rate(t.out_tokens), t.ttft.latency(),
                                  t.e2el.latency(), dict(t.failures.most_common()))
                     for url, t in sorted(self.endpoints.items()))

    def turn_stats(self) -> tuple[TurnStat, ...]:
        return tuple(TurnStat(k, n, ttft.latency(), (tokens / n) if n else None)
                     for k, (n, ttft, tokens) in sorted(self.turns.items()))

    def add_all(self, records: Iterable[RequestRecord]) -> LevelTally:
        for r in records:
            self.add(r)
        return self

    @property
    def span_s(self) -> float:
        """First measured start to last end (the classic 'total time'); 0 without records."""
        if self.first_start is None or self.last_end is None:
            return 0.0
        return self.last_end - self.first_start


# A headless level's per-request values stay exact up to this many each (8 B apiece: 1.6 MB per latency at the
# limit), then fold into the log histogram as a live segment's do past its 20k; its ITLs are binned from the start
# (one per token: hundreds per request), as live ones are: off by at most one 0.5% bin.
HEADLESS_EXACT = 200_000


def headless_tally() -> LevelTally:
    """The tally of a headless steady or open-loop level (and of one interrupted): bounded in memory however
    long the level runs."""
    return LevelTally(HEADLESS_EXACT, itl_exact=False, compact=True)


class Finished(NamedTuple):
    """What a level's rates count when that is not simply its own ok requests: a windowed level's requests,
    prompt tokens and output tokens inside its window (floats: a request half inside counts 0.5; timeline.py)."""

    requests: float
    in_tokens: float
    out_tokens: float


def level_result(tally: LevelTally, duration_s: float, max_concurrency: int | None,
                 finished: Finished | None = None, **context) -> LevelResult:
    """THE summarizer, for headless levels and live segments alike: the `vllm bench serve --save-result` numbers
    of one level plus ours. Throughputs are over `duration_s` (the caller's measured level time) and count
    `finished` when given, else the level's ok requests. `context` fills LevelResult's other fields (mode,
    segment, server, client, ...)."""
    done = finished or Finished(tally.completed, tally.in_tokens, tally.out_tokens)
    positive = bool(duration_s) and duration_s > 0
    rate = (lambda x: x / duration_s) if positive else (lambda x: None)
    return LevelResult(
        completed=tally.completed, failed=tally.failed, duration_s=duration_s,
        total_input_tokens=tally.in_tokens, total_output_tokens=tally.out_tokens,
        request_throughput=rate(done.requests), output_throughput=rate(done.out_tokens),
        total_token_throughput=rate(done.in_tokens + done.out_tokens), max_concurrency=max_concurrency,
        ttft=tally.ttft.latency(), tpot=tally.tpot.latency(), itl=tally.itl.latency(), e2el=tally.e2el.latency(),
        failures=dict(tally.failures.most_common()), tokens_estimated=tally.estimated,
        input_lens=tally.in_lens.dist(tally.tops[0]), output_lens=tally.out_lens.dist(tally.tops[1]),
        schedule_lag=tally.lag.dist(tally.tops[2]), refused=tally.refused,
        refused_reasons=dict(tally.refused_reasons.most_common()), turns=tally.turn_stats(),
        endpoints=tally.endpoint_stats(duration_s), **context,
    )


def summarize(records: Iterable[RequestRecord], duration: float, max_concurrency: int | None) -> dict:
    """The run-format dict of a list of records (level_result(...).to_json()), for callers that want JSON."""
    return level_result(LevelTally().add_all(records), duration, max_concurrency).to_json()


class ClientTally:
    """Per-second samples of the load engine's own CPU and worst event-loop lag while a level runs."""

    __slots__ = ("cpu", "lag")

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.lag: list[float] = []

    def add(self, cpu_pct: float | None, lag_ms: float) -> None:
        if cpu_pct is not None:
            self.cpu.append(cpu_pct)
        self.lag.append(lag_ms)

    def __len__(self) -> int:
        return len(self.lag)

    def result(self, cpu_pct: float | None = None) -> ClientLevel | None:
        """cpu_pct: the producer's exact figure over the level, when it has one (else the samples' mean)."""
        if not self.lag:
            return None if cpu_pct is None else ClientLevel(cpu_pct=cpu_pct)
        if cpu_pct is None and self.cpu:
            cpu_pct = sum(self.cpu) / len(self.cpu)
        return ClientLevel(cpu_pct=cpu_pct, loop_lag_ms=sum(self.lag) / len(self.lag),
                           max_loop_lag_ms=max(self.lag))


# ---------------------------------------------------------------- display views


def log_edges(lo: float = 0.001, hi: float = 120.0, n: int = 40) -> tuple[float, ...]:
    """n bins -> n+1 log-spaced edges from lo to hi (seconds)."""
    if not (0 < lo < hi) or n < 1:
        raise ValueError("need 0 < lo < hi and n >= 1")
    ratio = math.log(hi / lo)
    edges = [lo * math.exp(ratio * i / n) for i in range(n + 1)]
    edges[-1] = hi
    return tuple(edges)


DEFAULT_EDGES = log_edges()


def latency_view(values: Sequence[float], edges: Sequence[float] = DEFAULT_EDGES) -> LatencyView:
    """Binned counts and summary numbers of `values` (seconds) for the face."""
    if not values:
        return LatencyView(edges=tuple(edges), counts=(0,) * (len(edges) - 1))
    xs = sorted(values)
    # Bin the sorted values with one bisect per edge instead of one per value (50k ITLs: ~14 ms -> ~4 ms,
    # and this runs at the snapshot rate on the engine loop). Same bins as LogHistogram.view(): under the first
    # inner edge -> bin 0, at or over the last inner edge -> the last bin.
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
