"""The classic table for levels measured along an offered request rate (open loop): the rate first, then the
cap (the open loop's --max-concurrency; "-" without one), then the classic columns and the schedule lag, which
says whether the client kept the schedule (coordinated omission made visible)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.result import LevelResult

RATE_HEADER = ("Rate (req/s)", "Cap", "Total Time (s)", "Avg Latency (s)", "Requests/sec", "Tokens/sec",
               "Lag p99 (ms)")


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def rate_row(lv: LevelResult) -> tuple[str, ...]:
    lag = lv.schedule_lag.p99 if lv.schedule_lag is not None else None
    return (f"{lv.request_rate:g}" if lv.request_rate else "-", str(lv.max_concurrency) if lv.max_concurrency else "-",
            _f(lv.duration_s), _f(lv.avg_latency_s), _f(lv.request_throughput), _f(lv.output_throughput),
            "-" if lag is None else f"{lag * 1000:.1f}" + (" behind" if lv.behind_schedule else ""))


def rate_table(levels: list[LevelResult]) -> str:
    rows = [rate_row(lv) for lv in levels]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(RATE_HEADER)]
    line = lambda cells: " | ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(RATE_HEADER), "-+-".join("-" * w for w in widths), *(line(r) for r in rows)])


def is_rate_run(levels: list[LevelResult]) -> bool:
    """Every level an open-loop one: the run reads along the offered rate."""
    return bool(levels) and all(lv.request_rate for lv in levels)
