"""Arithmetic over a run of ServerSamples: counter deltas that survive server restarts, rates, the prefix-cache
hit rate, the server's own histogram means, maxima."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from qbench_tui.engine.metrics_parse import ServerSample


class ServerSeries:
    """The last `maxlen` samples (an hour at 1 Hz) with reset-aware counter deltas."""

    def __init__(self, maxlen: int = 3600) -> None:
        self._s: deque[ServerSample] = deque(maxlen=maxlen)

    def add(self, s: ServerSample) -> None:
        self._s.append(s)

    def clear(self) -> None:
        self._s.clear()

    def __len__(self) -> int:
        return len(self._s)

    def __iter__(self):
        return iter(tuple(self._s))

    def latest(self) -> ServerSample | None:
        return self._s[-1] if self._s else None

    def _since(self, since_t: float | None) -> list[ServerSample]:
        if since_t is None:
            return list(self._s)
        return [s for s in self._s if s.t >= since_t]

    @staticmethod
    def _delta(samples: Iterable[ServerSample], field: str) -> float | None:
        prev: ServerSample | None = None
        pv: float | None = None
        total = 0.0
        for s in samples:
            v = getattr(s, field)
            if v is None:
                continue
            if pv is not None and prev is not None:
                restarted = v < pv or (s.start_time is not None and prev.start_time is not None
                                       and s.start_time != prev.start_time)
                # After a restart the counter began again at 0, so its whole value accrued since then.
                total += v if restarted else v - pv
            prev, pv = s, v
        return None if pv is None else total

    def delta(self, field: str, since_t: float | None = None) -> float | None:
        """Counter increase over the samples taken at or after since_t (all when None); None without values."""
        return self._delta(self._since(since_t), field)

    def rate(self, field: str, window_s: float, now: float) -> float | None:
        """Increase per second over the last window_s, divided by the time the samples actually span."""
        got = [s for s in self._since(now - window_s) if getattr(s, field) is not None]
        if len(got) < 2:
            return None
        span = got[-1].t - got[0].t
        if span <= 0:
            return None
        d = self._delta(got, field)
        return None if d is None else d / span

    def hit_rate(self, since_t: float | None = None) -> float | None:
        """Prefix-cache hits / queries over the range (token weighted); the V0 gauge when there are no counters."""
        got = self._since(since_t)
        dq = self._delta(got, "prefix_cache_queries")
        if dq is None:
            for s in reversed(got):
                if s.prefix_cache_hit_rate_gauge is not None:
                    return s.prefix_cache_hit_rate_gauge
            return None
        if dq <= 0:
            return None
        dh = self._delta(got, "prefix_cache_hits")
        return None if dh is None else dh / dq

    def mean(self, name: str, since_t: float | None = None) -> float | None:
        """The server's mean of a histogram ("ttft", "queue_time") over the range, from its _sum/_count deltas
        (None when no request was observed in it)."""
        got = self._since(since_t)
        n = self._delta(got, f"{name}_count")
        if not n or n <= 0:
            return None
        total = self._delta(got, f"{name}_sum")
        return None if total is None else total / n

    def max(self, field: str, since_t: float | None = None) -> float | None:
        vals = [v for s in self._since(since_t) if (v := getattr(s, field)) is not None]
        return max(vals) if vals else None

    def history(self, field: str, n: int) -> list[float | None]:
        """The last n values of field, oldest first (None where a sample lacked it)."""
        if n <= 0:
            return []
        tail = list(self._s)[-n:]
        return [getattr(s, field) for s in tail]
