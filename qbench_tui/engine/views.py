"""What the face is shown, built from the engine's own types (pure): the live classic table's rows, the
throughput/latency-versus-concurrency curve, server tokens/s between scrapes, and why the client may be the limit."""
from __future__ import annotations

from collections.abc import Iterable

from .result import LevelResult, ServerLevel
from .server_series import ServerSeries
from .snapshot import CurvePoint, SegmentRow

CLIENT_CPU_LIMIT = 90.0  # % of one core: past this the client, not the server, may set the pace
CLIENT_LAG_LIMIT_MS = 20.0


def segment_rows(levels: Iterable[LevelResult]) -> tuple[SegmentRow, ...]:
    rows = []
    for lv in levels:
        srv = lv.server or ServerLevel()
        rows.append(SegmentRow(
            segment=lv.segment or 0, concurrency=lv.max_concurrency or 0, seconds=lv.duration_s,
            completed=lv.completed, failed=lv.failed, req_s=lv.request_throughput or 0.0,
            tok_s=lv.output_throughput or 0.0, avg_latency=lv.avg_latency_s, ttft_p50=lv.ttft.p50_s,
            ttft_p99=lv.ttft.p99_s, itl_p50=lv.itl.p50_s, prefix_hit_rate=srv.prefix_cache_hit_rate,
            server_gen_tok_s=srv.rate("generation_tokens"),  # over the scrapes' own span in the window
            max_kv_usage=srv.max_kv_cache_usage, preemptions=srv.preemptions, waiting_max=srv.max_waiting,
            server_config=lv.server_config, request_rate=lv.request_rate,
            lag_p99=lv.schedule_lag.p99 if lv.schedule_lag is not None else None,
            behind_schedule=lv.behind_schedule,
        ))
    return tuple(rows)


def curve_points(levels: Iterable[LevelResult], ladder: set[int]) -> tuple[CurvePoint, ...]:
    """One point per measured level (one server config's), by concurrency; `ladder`: the segments the auto
    ladder measured."""
    return tuple(sorted((CurvePoint(
        concurrency=lv.max_concurrency or 0, tok_s=lv.output_throughput or 0.0, req_s=lv.request_throughput or 0.0,
        e2el_p50=lv.e2el.p50_s, e2el_p99=lv.e2el.p99_s, ttft_p99=lv.ttft.p99_s,
        steady=lv.steady, auto=lv.segment in ladder,
        server_config=lv.server_config) for lv in levels), key=lambda p: (p.concurrency, p.auto)))


def client_limit_why(cpu_pct: float, lag_ms: float) -> str:
    """Which of the client thresholds the latest second crossed, with its number ("" when none): the badge must
    say why, since loop lag alone can raise it while the CPU idles."""
    why = []
    if cpu_pct >= CLIENT_CPU_LIMIT:
        why.append(f"client CPU {cpu_pct:.0f}% of a core ≥ {CLIENT_CPU_LIMIT:.0f}%")
    if lag_ms >= CLIENT_LAG_LIMIT_MS:
        why.append(f"loop lag {lag_ms:.0f} ms ≥ {CLIENT_LAG_LIMIT_MS:.0f} ms")
    return " and ".join(why)


class GenRates:
    """Server generation tokens/s between consecutive scrapes, newest last; recomputed only when a scrape arrived
    (1 Hz), not at every 4 Hz snapshot."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._key: tuple[float, int] | None = None  # (time, count) of the scrapes the rates were computed from
        self._rates: tuple[float, ...] = ()

    def __call__(self, series: ServerSeries) -> tuple[float, ...]:
        last = series.latest()
        key = None if last is None else (last.t, len(series))
        if key != self._key:
            tail = list(series)[-(self.keep + 1):]
            rates = []
            for a, b in zip(tail, tail[1:]):
                # the series' own reset rule: a counter that went down (or a new start time) is a restart
                d = ServerSeries._delta((a, b), "generation_tokens")
                rates.append(max(0.0, d) / (b.t - a.t) if d is not None and b.t > a.t else 0.0)
            self._key, self._rates = key, tuple(rates)
        return self._rates
