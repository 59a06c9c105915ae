"""The summary block of `qbench run`, laid out like vllm bench serve's so the two read side by side."""
from __future__ import annotations


def _row(label: str, value) -> str:
    if value is None:
        return f"{label:<40}{'-':<10}"
    if isinstance(value, float):
        return f"{label:<40}{value:<10.2f}"
    return f"{label:<40}{value:<10}"


def bench_block(lv: dict, *, model: str = "", url: str = "", version: str | None = None) -> str:
    out = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]
    if url:
        out.append(_row("Server:", url))
    if model:
        out.append(_row("Model:", model))
    if version:
        out.append(_row("vLLM version:", version))
    out += [
        _row("Successful requests:", lv["completed"]),
        _row("Failed requests:", lv["failed"]),
        _row("Maximum request concurrency:", lv["max_concurrency"]),
        _row("Benchmark duration (s):", lv["duration"]),
        _row("Total input tokens:", lv["total_input_tokens"]),
        _row("Total generated tokens:", lv["total_output_tokens"]),
        _row("Request throughput (req/s):", lv["request_throughput"]),
        _row("Output token throughput (tok/s):", lv["output_throughput"]),
        _row("Total token throughput (tok/s):", lv["total_token_throughput"]),
        _row("Average latency (s):", lv["avg_latency_s"]),
    ]
    for key, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                       ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):
        out.append("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        name = key.upper()
        out.append(_row(f"Mean {name} (ms):", lv[f"mean_{key}_ms"]))
        out.append(_row(f"Median {name} (ms):", lv[f"median_{key}_ms"]))
        out.append(_row(f"P90 {name} (ms):", lv[f"p90_{key}_ms"]))
        out.append(_row(f"P99 {name} (ms):", lv[f"p99_{key}_ms"]))
    srv = lv.get("server")
    if srv:
        out.append("{s:{c}^{n}}".format(s="Server (from /metrics)", n=50, c="-"))
        out.append(_row("Generation tokens (server delta):", srv.get("generation_tokens")))
        hit = srv.get("prefix_cache_hit_rate")
        out.append(_row("Prefix cache hit rate:", None if hit is None else f"{hit:.1%}"))
        kv = srv.get("max_kv_cache_usage")
        out.append(_row("Max KV cache usage:", None if kv is None else f"{kv:.1%}"))
        out.append(_row("Preemptions:", srv.get("preemptions")))
    elif lv.get("server_metrics"):
        out.append(_row("Server metrics:", lv["server_metrics"]))
    out.append("=" * 50)
    return "\n".join(out)
