"""The summary block of `qbench run`, laid out like vllm bench serve's so the two read side by side."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.result import LevelResult


def _row(label: str, value) -> str:
    if value is None:
        return f"{label:<40}{'-':<10}"
    if isinstance(value, float):
        return f"{label:<40}{value:<10.2f}"
    return f"{label:<40}{value:<10}"


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000.0


def bench_block(lv: LevelResult, *, model: str = "", url: str = "", version: str | None = None) -> str:
    out = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]
    if url:
        out.append(_row("Server:", url))
    if model:
        out.append(_row("Model:", model))
    if version:
        out.append(_row("vLLM version:", version))
    if lv.request_rate is not None:
        out.append(_row("Request rate configured (RPS):", lv.request_rate))
        out.append(_row("Burstiness (1 = Poisson):", lv.burstiness))
    out += [
        _row("Successful requests:", lv.completed),
        _row("Failed requests:", lv.failed),
        _row("Maximum request concurrency:", lv.max_concurrency),
        _row("Benchmark duration (s):", lv.duration_s),
        _row("Total input tokens:", lv.total_input_tokens),
        _row("Total generated tokens:", lv.total_output_tokens),
        _row("Request throughput (req/s):", lv.request_throughput),
        _row("Output token throughput (tok/s):", lv.output_throughput),
        _row("Total token throughput (tok/s):", lv.total_token_throughput),
        _row("Average latency (s):", lv.avg_latency_s),
    ]
    for d, key, title in ((lv.ttft, "ttft", "Time to First Token"),
                          (lv.tpot, "tpot", "Time per Output Token (excl. 1st token)"),
                          (lv.itl, "itl", "Inter-token Latency"), (lv.e2el, "e2el", "End-to-end Latency")):
        out.append("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        name = key.upper()
        out.append(_row(f"Mean {name} (ms):", _ms(d.mean_s)))
        out.append(_row(f"Median {name} (ms):", _ms(d.p50_s)))
        out.append(_row(f"P90 {name} (ms):", _ms(d.p90_s)))
        out.append(_row(f"P99 {name} (ms):", _ms(d.p99_s)))
    if lv.input_lens is not None or lv.output_lens is not None:
        out.append("{s:{c}^{n}}".format(s="Lengths (server's usage)", n=50, c="-"))
        for name, d in (("input", lv.input_lens), ("output", lv.output_lens)):
            if d is not None:
                out.append(_row(f"Mean / P99 / max {name} tokens:", f"{d.mean:.1f} / {d.p99:.0f} / {d.max:.0f}"))
    if (lag := lv.schedule_lag) is not None:
        out.append("{s:{c}^{n}}".format(s="Schedule lag (sent - due)", n=50, c="-"))
        out.append(_row("Median lag (ms):", _ms(lag.p50)))
        out.append(_row("P99 lag (ms):", _ms(lag.p99)))
        out.append(_row("Max lag (ms):", _ms(lag.max)))
        if lv.behind_schedule:
            out.append("BEHIND SCHEDULE: requests went out late (the --max-concurrency cap was full, or the "
                       "client could not keep the rate): latencies are of the load that was sent")
    srv = lv.server
    if srv:
        out.append("{s:{c}^{n}}".format(s="Server (from /metrics)", n=50, c="-"))
        out.append(_row("Generation tokens (server delta):", srv.generation_tokens))
        hit = srv.prefix_cache_hit_rate
        out.append(_row("Prefix cache hit rate:", None if hit is None else f"{hit:.1%}"))
        kv = srv.max_kv_cache_usage
        out.append(_row("Max KV cache usage:", None if kv is None else f"{kv:.1%}"))
        out.append(_row("Preemptions:", srv.preemptions))
    elif lv.server_metrics:
        out.append(_row("Server metrics:", lv.server_metrics))
    out.append("=" * 50)
    return "\n".join(out)
