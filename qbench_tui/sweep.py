"""Where throughput stops growing while latency keeps rising, and why (pure functions).

Input is one dict per level in the run format (max_concurrency, output_throughput, avg_latency_s, ...) with an
optional `server` object (max_kv_cache_usage, preemptions, max_waiting, max_running, num_gpu_blocks) and
`client` object (cpu_pct). The test is elasticity: the share of the added concurrency that came back as added
throughput. Below ELASTICITY_FLOOR while latency rose at least LATENCY_RISE, the server is saturated.
"""
from __future__ import annotations

KNEE_SHARE = 0.90  # the knee: the first level within 90% of the peak throughput
ELASTICITY_FLOOR = 0.25  # throughput grew by < 25% of what proportional scaling would give
LATENCY_RISE = 0.10  # ... while mean end-to-end latency rose by >= 10%


def _lat(lv: dict) -> float | None:
    return lv.get("avg_latency_s") or (lv.get("mean_e2el_ms") or 0) / 1000 or None


def find_knee(levels: list[dict]) -> dict:
    """The knee is the lowest level already within KNEE_SHARE of the peak throughput; the server is saturated
    when going from the knee to the highest level returned less than ELASTICITY_FLOOR of proportional scaling
    while latency rose. Judging knee -> last level (not each neighbouring pair) keeps one noisy level from
    calling saturation early."""
    pts = sorted((lv for lv in levels if lv.get("completed")), key=lambda lv: lv["max_concurrency"])
    result: dict = {"saturated": False, "knee_concurrency": None, "peak_concurrency": None,
                    "peak_output_throughput": None, "cause": None, "summary": ""}
    if not pts:
        result["summary"] = "no completed levels"
        return result
    peak = max(pts, key=lambda lv: lv["output_throughput"] or 0)
    ptput = peak["output_throughput"] or 0.0
    result["peak_concurrency"] = peak["max_concurrency"]
    result["peak_output_throughput"] = ptput
    if len(pts) < 2:
        result["summary"] = "one level only: run at least two concurrency levels to find the knee"
        return result
    knee = next(lv for lv in pts if (lv["output_throughput"] or 0) >= KNEE_SHARE * ptput)
    last = pts[-1]
    c0, c1 = knee["max_concurrency"], last["max_concurrency"]
    t0, t1 = knee["output_throughput"] or 0.0, last["output_throughput"] or 0.0
    l0, l1 = _lat(knee), _lat(last)
    if c1 > c0 and t0 > 0 and l0 and l1:
        elasticity = ((t1 - t0) / t0) / (c1 / c0 - 1)
        if elasticity < ELASTICITY_FLOOR and (l1 - l0) / l0 >= LATENCY_RISE:
            cause = explain(knee, last)
            result.update(saturated=True, knee_concurrency=c0, cause=cause)
            result["summary"] = (
                f"saturated past concurrency {c0}: going to {c1} changed output tok/s by {(t1 / t0 - 1):+.0%} "
                f"for {(c1 / c0 - 1):+.0%} concurrency while mean latency rose {(l1 / l0 - 1):+.0%}. "
                f"Peak {ptput:.0f} tok/s at {peak['max_concurrency']}. Why: {cause}")
            return result
    result["summary"] = (f"no saturation up to concurrency {last['max_concurrency']}: throughput still grows "
                         f"with load (peak {ptput:.0f} tok/s at {peak['max_concurrency']}); try higher levels")
    return result


def explain(before: dict, after: dict) -> str:
    """Name the limit from what the server and client reported at the saturated level."""
    srv = after.get("server") or {}
    cli = after.get("client") or {}
    kv = srv.get("max_kv_cache_usage")
    pre = srv.get("preemptions") or 0
    waiting = srv.get("max_waiting") or 0
    running = srv.get("max_running")
    if (cli.get("cpu_pct") or 0) >= 85 or (cli.get("loop_lag_ms") or 0) >= 50:
        return (f"the CLIENT is the limit (load engine at {cli.get('cpu_pct', 0):.0f}% CPU, event-loop lag "
                f"{cli.get('loop_lag_ms', 0):.0f} ms): shard the client or run it on another machine")
    if pre > 0 or (kv is not None and kv >= 0.9):
        return (f"the KV cache is full (max usage {kv:.0%}, {pre:.0f} preemptions): requests wait for blocks "
                "or are recomputed; more GPU memory, a shorter max_model_len or a smaller max_num_seqs help"
                if kv is not None else f"{pre:.0f} preemptions: the KV cache ran out of blocks")
    conc = after.get("max_concurrency") or 0
    if running is not None and waiting >= max(1.0, 0.1 * conc) and running < conc:
        return (f"the scheduler's sequence limit: running requests flattened at {running:.0f} while up to "
                f"{waiting:.0f} waited (max_num_seqs); raise --max-num-seqs if the KV cache has room")
    hit0 = (before.get("server") or {}).get("prefix_cache_hit_rate")
    hit1 = srv.get("prefix_cache_hit_rate")
    if hit0 is not None and hit1 is not None and hit0 - hit1 > 0.2:
        return f"the prefix-cache hit rate fell from {hit0:.0%} to {hit1:.0%}: prefills are recomputed"
    itl0, itl1 = before.get("median_itl_ms"), after.get("median_itl_ms")
    if itl0 and itl1 and itl1 > itl0:
        return (f"compute: every sequence is already in the batch and each decode step takes longer "
                f"(ITL p50 {itl0:.2f} -> {itl1:.2f} ms)")
    return "compute: the server produces no more tokens per second at higher concurrency"
