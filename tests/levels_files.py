"""A level recomputed from the files alone (`.requests.jsonl` + the results JSON's saved window), written here
from the window's documented rule, independently of the engine's code, so the two can be compared."""
from __future__ import annotations

import json
from itertools import accumulate
from pathlib import Path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tokens_in(r: dict, t0: float, t1: float) -> float:
    """Output tokens that arrived in [t0, t1): usage tokens spread over the content events."""
    if r["ttft_s"] is None:
        times = [r["start"] + r["e2el_s"]] if r["out_tokens"] else []
    else:
        times = list(accumulate(r["itl_s"], initial=r["start"] + r["ttft_s"]))
    if not times:
        return 0.0
    return sum(1 for t in times if t0 <= t < t1) * r["out_tokens"] / len(times)


def _life_in(r: dict, t0: float, t1: float) -> float:
    start, end = r["start"], r["start"] + r["e2el_s"]
    if end <= start:
        return 1.0 if t0 <= start < t1 else 0.0
    return max(0.0, min(end, t1) - max(start, t0)) / (end - start)


def recompute(level: dict, records: list[dict]) -> dict:
    """The level's rates, counts and mean latencies from the records and its window."""
    w = level["window"]
    t0, t1 = w["start_perf"], w["end_perf"]
    ok = [r for r in records if r["ok"]]
    span = t1 - t0
    pop = [r for r in records
           if t0 <= r["start"] < w["started_until_perf"] and r["start"] + r["e2el_s"] <= w["ended_by_perf"]]
    pop_ok = [r for r in pop if r["ok"]]
    ttfts = [r["ttft_s"] for r in pop_ok if r["ttft_s"] is not None]
    return {
        "output_throughput": sum(_tokens_in(r, t0, t1) for r in ok) / span,
        "request_throughput": sum(_life_in(r, t0, t1) for r in ok) / span,
        "completed": len(pop_ok),
        "failed": len(pop) - len(pop_ok),
        "total_output_tokens": sum(r["out_tokens"] for r in pop_ok),
        "mean_e2el_ms": 1000 * sum(r["e2el_s"] for r in pop_ok) / len(pop_ok),
        "mean_ttft_ms": 1000 * sum(ttfts) / len(ttfts),
        "duration": span,
    }


def check_recomputed(level: dict, records: list[dict]) -> None:
    """Every saved number the window's rule defines equals its recomputation (the files round times to 1 us)."""
    got = recompute(level, records)
    for k in ("completed", "failed", "total_output_tokens"):
        assert got[k] == level[k], (k, got[k], level[k])
    for k in ("output_throughput", "request_throughput", "mean_e2el_ms", "mean_ttft_ms", "duration"):
        assert abs(got[k] / level[k] - 1) < 1e-3, (k, got[k], level[k])


def little(level: dict) -> float:
    """Little's law for a closed loop at C: C / mean E2EL x mean output tokens, in tok/s."""
    c = level["max_concurrency"]
    return c / (level["mean_e2el_ms"] / 1000) * level["total_output_tokens"] / level["completed"]
