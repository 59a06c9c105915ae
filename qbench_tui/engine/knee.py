"""Where throughput stops growing while latency keeps rising, and why (pure functions).

Input is one LevelResult per level (max_concurrency, output_throughput, avg_latency_s, ...) with its optional
`server` (max_kv_cache_usage, preemptions, max_waiting, max_running, ...) and `client` (cpu_pct, loop_lag_ms).
The test is elasticity: the share of the added concurrency that came back as added throughput. Below
ELASTICITY_FLOOR while latency rose at least LATENCY_RISE, the server is saturated.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .result import ClientLevel, LevelResult, ServerLevel

KNEE_SHARE = 0.90  # the knee: the first level within 90% of the peak throughput
ELASTICITY_FLOOR = 0.25  # throughput grew by < 25% of what proportional scaling would give
LATENCY_RISE = 0.10  # ... while mean end-to-end latency rose by >= 10%
CLIENT_CPU_PCT = 85.0  # the load engine's mean CPU over the level, % of one core
CLIENT_LAG_MS = 50.0  # each second's worst event-loop lag, averaged over the level


@dataclass(frozen=True, slots=True)
class Knee:
    """The verdict; `to_json()` is a results file's "saturation" object."""

    saturated: bool = False
    knee_concurrency: int | None = None
    peak_concurrency: int | None = None
    peak_output_throughput: float | None = None
    cause: str | None = None
    summary: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"saturated": self.saturated, "knee_concurrency": self.knee_concurrency,
                "peak_concurrency": self.peak_concurrency, "peak_output_throughput": self.peak_output_throughput,
                "cause": self.cause, "summary": self.summary}

    @classmethod
    def from_json(cls, d: dict | None) -> Knee | None:
        if d is None:
            return None
        return cls(bool(d.get("saturated")), d.get("knee_concurrency"), d.get("peak_concurrency"),
                   d.get("peak_output_throughput"), d.get("cause"), d.get("summary") or "")


def find_knee(levels: list[LevelResult]) -> Knee:
    """The knee is the lowest level already within KNEE_SHARE of the peak throughput; the server is saturated
    when going from the knee to the highest level returned less than ELASTICITY_FLOOR of proportional scaling
    while latency rose. Judging knee -> last level (not each neighbouring pair) keeps one noisy level from
    calling saturation early."""
    pts = sorted((lv for lv in levels if lv.completed), key=lambda lv: lv.max_concurrency or 0)
    if not pts:
        return Knee(summary="no completed levels")
    peak = max(pts, key=lambda lv: lv.output_throughput or 0)
    ptput = peak.output_throughput or 0.0
    got = Knee(peak_concurrency=peak.max_concurrency, peak_output_throughput=ptput)
    if len(pts) < 2:
        return _with(got, summary="one level only: run at least two concurrency levels to find the knee")
    knee = next(lv for lv in pts if (lv.output_throughput or 0) >= KNEE_SHARE * ptput)
    last = pts[-1]
    c0, c1 = knee.max_concurrency or 0, last.max_concurrency or 0
    t0, t1 = knee.output_throughput or 0.0, last.output_throughput or 0.0
    l0, l1 = knee.avg_latency_s, last.avg_latency_s
    if c1 > c0 and t0 > 0 and l0 and l1:
        elasticity = ((t1 - t0) / t0) / (c1 / c0 - 1)
        if elasticity < ELASTICITY_FLOOR and (l1 - l0) / l0 >= LATENCY_RISE:
            cause = explain(knee, last)
            return _with(got, saturated=True, knee_concurrency=c0, cause=cause, summary=(
                f"saturated past concurrency {c0}: going to {c1} changed output tok/s by {(t1 / t0 - 1):+.0%} "
                f"for {(c1 / c0 - 1):+.0%} concurrency while mean latency rose {(l1 / l0 - 1):+.0%}. "
                f"Peak {ptput:.0f} tok/s at {peak.max_concurrency}. Why: {cause}"))
    return _with(got, summary=(f"no saturation up to concurrency {last.max_concurrency}: throughput still grows "
                               f"with load (peak {ptput:.0f} tok/s at {peak.max_concurrency}); try higher levels"))


def _with(k: Knee, **changes) -> Knee:
    return replace(k, **changes)


def explain(before: LevelResult, after: LevelResult) -> str:
    """Name the limit from what the server and client reported at the saturated level."""
    srv = after.server or ServerLevel()
    cli = after.client or ClientLevel()
    kv = srv.max_kv_cache_usage
    pre = srv.preemptions or 0
    waiting = srv.max_waiting or 0
    running = srv.max_running
    cpu, lag = cli.cpu_pct or 0.0, cli.loop_lag_ms or 0.0
    if cpu >= CLIENT_CPU_PCT or lag >= CLIENT_LAG_MS:
        return (f"the CLIENT is the limit (load engine at {cpu:.0f}% CPU, event-loop lag {lag:.0f} ms): "
                "shard the client or run it on another machine")
    if pre > 0 or (kv is not None and kv >= 0.9):
        return (f"the KV cache is full (max usage {kv:.0%}, {pre:.0f} preemptions): requests wait for blocks "
                "or are recomputed; more GPU memory, a shorter max_model_len or a smaller max_num_seqs help"
                if kv is not None else f"{pre:.0f} preemptions: the KV cache ran out of blocks")
    conc = after.max_concurrency or 0
    if running is not None and waiting >= max(1.0, 0.1 * conc) and running < conc:
        return (f"the scheduler's sequence limit: running requests flattened at {running:.0f} while up to "
                f"{waiting:.0f} waited (max_num_seqs); raise --max-num-seqs if the KV cache has room")
    hit0 = before.server.prefix_cache_hit_rate if before.server else None
    hit1 = srv.prefix_cache_hit_rate
    if hit0 is not None and hit1 is not None and hit0 - hit1 > 0.2:
        return f"the prefix-cache hit rate fell from {hit0:.0%} to {hit1:.0%}: prefills are recomputed"
    itl0, itl1 = before.itl.p50_s, after.itl.p50_s
    if itl0 and itl1 and itl1 > itl0:
        return (f"compute: every sequence is already in the batch and each decode step takes longer "
                f"(ITL p50 {itl0 * 1000:.2f} -> {itl1 * 1000:.2f} ms)")
    return "compute: the server produces no more tokens per second at higher concurrency"
