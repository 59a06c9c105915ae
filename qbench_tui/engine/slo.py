"""Service-level objectives over a level's latency percentiles, and goodput: the largest level that meets them.

An SLO is written with the names the results use, `<metric>_<statistic>=<number><unit>`:
`ttft_p99=2s,itl_p99=100ms,e2el_p90=30s`. Metrics are the results' latencies (ttft, tpot, itl, e2el), statistics
the ones every level carries (mean, p50 = median, p90, p99), units s, ms or us. Inside, values are seconds (as in
LevelResult); a unit is required, because vllm bench's `--goodput` reads bare numbers as milliseconds and a
silent factor of 1000 in a pass/fail line is worse than an error.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from .result import LATENCIES, LevelResult

Slo = tuple[tuple[str, float], ...]  # (("ttft_p99", 2.0), ...): seconds, as AutoLadder carries it

_STATS = {"mean": "mean_s", "p50": "p50_s", "median": "p50_s", "p90": "p90_s", "p99": "p99_s"}
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_TERM = re.compile(r"^\s*([a-z0-9_]+)\s*(?:=|<=|:)\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-zµ]*)\s*$", re.I)


class SloError(ValueError):
    """An SLO that cannot be used; str(e) is the whole one-line message."""


def _split(name: str) -> tuple[str, str]:
    """"ttft_p99" -> ("ttft", "p99"); the results' own spelling "p99_ttft" is read too."""
    a, _, b = name.lower().partition("_")
    if a in LATENCIES:
        return a, b
    return b, a


def parse_slo(text: str) -> Slo:
    """`ttft_p99=2s,itl_p99=100ms` -> (("ttft_p99", 2.0), ("itl_p99", 0.1)). Raises SloError naming the bad term."""
    out: dict[str, float] = {}
    for term in (t for t in text.split(",") if t.strip()):
        m = _TERM.match(term)
        if not m:
            raise SloError(f"--slo: cannot read {term.strip()!r}: write NAME=VALUEUNIT, e.g. ttft_p99=2s")
        name, number, unit = m.group(1).lower(), float(m.group(2)), m.group(3).lower()
        metric, stat = _split(name)
        if metric not in LATENCIES or stat not in _STATS:
            raise SloError(f"--slo: unknown metric {name!r}: use one of {', '.join(LATENCIES)} with _mean, _p50, "
                           "_p90 or _p99 (e.g. ttft_p99, itl_p99, e2el_p90)")
        if not unit:
            raise SloError(f"--slo: {term.strip()!r} has no unit: add s, ms or us (e.g. {name}={m.group(2)}ms)")
        if unit not in _UNITS:
            raise SloError(f"--slo: unknown unit {unit!r} in {term.strip()!r}: use s, ms or us")
        if number <= 0:
            raise SloError(f"--slo: {name} must be > 0, got {term.strip()!r}")
        out[f"{metric}_{'p50' if stat == 'median' else stat}"] = number * _UNITS[unit]
    if not out:
        raise SloError("--slo: empty: write e.g. ttft_p99=2s,itl_p99=100ms")
    return tuple(out.items())


def value(level: LevelResult, name: str) -> float | None:
    """The level's value for an SLO name, in seconds (None when the level has none)."""
    metric, stat = _split(name)
    return getattr(getattr(level, metric), _STATS[stat])


def _fmt_s(v: float) -> str:
    return f"{v:.3g} s" if v >= 1 else f"{v * 1000:.3g} ms"


def describe(slo: Slo) -> str:
    """"ttft_p99 <= 2 s, itl_p99 <= 100 ms"."""
    return ", ".join(f"{name} <= {_fmt_s(limit)}" for name, limit in slo)


def misses(level: LevelResult, slo: Slo) -> list[str]:
    """The terms this level breaks, in words with its numbers ("ttft_p99 3.1 s > 2 s"); a missing value breaks."""
    out = []
    for name, limit in slo:
        v = value(level, name)
        if v is None:
            out.append(f"{name} not measured")
        elif v > limit:
            out.append(f"{name} {_fmt_s(v)} > {_fmt_s(limit)}")
    return out


def meets(level: LevelResult, slo: Slo) -> bool:
    return level.completed > 0 and not misses(level, slo)


def goodput_level(levels: Sequence[LevelResult], slo: Slo) -> LevelResult | None:
    """The largest concurrency whose level meets every term: the most load that still serves users within the
    objective."""
    ok = [lv for lv in levels if meets(lv, slo)]
    return max(ok, key=lambda lv: (lv.max_concurrency or 0, lv.output_throughput or 0.0), default=None)
