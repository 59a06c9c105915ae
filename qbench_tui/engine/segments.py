"""One measured segment per concurrency level visited, kept compact so a long session stays flat in memory.

TTFT, TPOT and E2EL keep one float per request (exact percentiles). ITL has one value per token, which over a
ten-minute soak is tens of millions of floats, so it goes into a log histogram with ~1.2% wide bins: its
percentiles are within about half a bin (0.6%) of the exact ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .records import RequestRecord
from .stats import _pct_sorted
from .stats import to_ms as _ms

_LO, _PER_DECADE, _DECADES = 1e-5, 200, 8  # 10 us .. 1000 s
EXACT_LIMIT = 20_000  # per-request values kept exactly per segment before folding into a histogram


class LogHistogram:
    __slots__ = ("counts", "total", "sum", "max")

    def __init__(self) -> None:
        self.counts = [0] * (_PER_DECADE * _DECADES + 1)
        self.total = 0
        self.sum = 0.0
        self.max = 0.0

    def add_many(self, values: list[float]) -> None:
        counts, top = self.counts, len(self.counts) - 1
        k = _PER_DECADE
        for v in values:
            i = 0 if v <= _LO else min(top, int(math.log10(v / _LO) * k) + 1)
            counts[i] += 1
        self.total += len(values)
        if values:
            self.sum += sum(values)
            self.max = max(self.max, max(values))

    def percentile(self, q: float) -> float | None:
        if not self.total:
            return None
        rank = q / 100 * (self.total - 1)
        seen = 0
        for i, c in enumerate(self.counts):
            if c and seen + c > rank:
                if i == 0:
                    return _LO
                lo = _LO * 10 ** ((i - 1) / _PER_DECADE)
                hi = _LO * 10 ** (i / _PER_DECADE)
                frac = (rank - seen + 0.5) / c
                return min(self.max, lo + (hi - lo) * frac)
            seen += c
        return self.max

    @property
    def mean(self) -> float | None:
        return self.sum / self.total if self.total else None


@dataclass
class SegmentStats:
    segment: int
    concurrency: int
    t_start: float  # perf_counter when the segment began
    t_end: float | None = None
    completed: int = 0
    failed: int = 0
    in_tokens: int = 0
    out_tokens: int = 0
    estimated: int = 0
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    e2el: list[float] = field(default_factory=list)
    # Past EXACT_LIMIT values a list folds into a log histogram (like ITL): a Python float in a list costs 32 B,
    # which at C=256 on the simulator grew the engine by ~51 MiB/hour (bench/soak.py).
    folded: dict[str, LogHistogram] = field(default_factory=dict)
    itl: LogHistogram = field(default_factory=LogHistogram)
    failures: dict[str, int] = field(default_factory=dict)
    first_start: float | None = None
    last_end: float | None = None
    server: dict | None = None  # frozen server stats when the segment closes
    # Throughput counts what FINISHED while this segment was current (whatever segment the request started in):
    # a rate over the segment's own wall time. Counting the requests that started in it instead would keep
    # adding tokens to a closed segment whose duration no longer grows, inflating its rate.
    explicit: bool = False  # a level asked for (RunLevel), never filtered as a transition
    server_config: str = ""  # the launched server's flags while this segment ran ("" when not known)
    done_in: int = 0
    out_tokens_in: int = 0
    in_tokens_in: int = 0

    def add_throughput(self, r: RequestRecord) -> None:
        if r.ok:
            self.done_in += 1
            self.out_tokens_in += r.out_tokens
            self.in_tokens_in += r.in_tokens

    def add(self, r: RequestRecord) -> None:
        if r.warmup:
            return
        self.first_start = r.start if self.first_start is None else min(self.first_start, r.start)
        self.last_end = r.end if self.last_end is None else max(self.last_end, r.end)
        if not r.ok:
            self.failed += 1
            self.failures[r.error] = self.failures.get(r.error, 0) + 1
            return
        self.completed += 1
        self.in_tokens += r.in_tokens
        self.out_tokens += r.out_tokens
        self.estimated += r.tokens_estimated
        if r.ttft is not None:
            self.ttft.append(r.ttft)
        if (tp := r.tpot) is not None:
            self.tpot.append(tp)
        self.e2el.append(r.e2el)
        self.itl.add_many(r.itl)
        if len(self.e2el) >= EXACT_LIMIT:
            self._fold()

    def _fold(self) -> None:
        for name in ("ttft", "tpot", "e2el"):
            vals = getattr(self, name)
            self.folded.setdefault(name, LogHistogram()).add_many(vals)
            vals.clear()

    def seconds(self, now: float) -> float:
        return (self.t_end if self.t_end is not None else now) - self.t_start

    def summary(self, now: float) -> dict:
        """The run format (vllm bench serve keys) over this segment; duration = the segment's wall time."""
        dur = self.seconds(now)
        d: dict = {
            "completed": self.completed,
            "failed": self.failed,
            "duration": dur,
            "total_input_tokens": self.in_tokens,
            "total_output_tokens": self.out_tokens,
            "request_throughput": self.done_in / dur if dur > 0 else 0.0,
            "output_throughput": self.out_tokens_in / dur if dur > 0 else 0.0,
            "total_token_throughput": (self.in_tokens_in + self.out_tokens_in) / dur if dur > 0 else 0.0,
            "max_concurrency": self.concurrency,
        }
        if self.folded:
            self._fold()
        for name, vals in (("ttft", self.ttft), ("tpot", self.tpot), ("e2el", self.e2el)):
            if name in self.folded:
                h = self.folded[name]
                d[f"mean_{name}_ms"] = _ms(h.mean)
                d[f"median_{name}_ms"] = _ms(h.percentile(50))
                d[f"p90_{name}_ms"] = _ms(h.percentile(90))
                d[f"p99_{name}_ms"] = _ms(h.percentile(99))
                continue
            # sorted in place (order is not needed elsewhere): timsort on an almost-sorted list is ~linear,
            # where nine sorted copies per second cost 88 ms of engine-loop time at 90k requests (bench/soak.py)
            vals.sort()
            d[f"mean_{name}_ms"] = _ms(sum(vals) / len(vals)) if vals else None
            d[f"median_{name}_ms"] = _ms(_pct_sorted(vals, 50)) if vals else None
            d[f"p90_{name}_ms"] = _ms(_pct_sorted(vals, 90)) if vals else None
            d[f"p99_{name}_ms"] = _ms(_pct_sorted(vals, 99)) if vals else None
        d["mean_itl_ms"] = _ms(self.itl.mean)
        d["median_itl_ms"] = _ms(self.itl.percentile(50))
        d["p90_itl_ms"] = _ms(self.itl.percentile(90))
        d["p99_itl_ms"] = _ms(self.itl.percentile(99))
        d["total_time_s"] = dur
        if "e2el" in self.folded:
            d["avg_latency_s"] = self.folded["e2el"].mean
        else:
            d["avg_latency_s"] = sum(self.e2el) / len(self.e2el) if self.e2el else None
        d["failures"] = dict(self.failures)
        d["tokens_estimated"] = self.estimated
        d["segment"] = self.segment
        d["mode"] = "live"
        d["server"] = self.server
        if self.server_config:
            d["server_config"] = self.server_config
        return d
