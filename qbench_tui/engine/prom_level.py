"""A level's server numbers over its window, read from Prometheus with the vLLM Grafana dashboard's semantics
(examples/online_serving/prometheus_grafana/grafana.json): token and request throughput as rate() over the
window, totals as increase(), latency quantiles as histogram_quantile over `sum by (le) (rate(..._bucket[W]))`,
means as rate(_sum) / rate(_count), all summed over every series the selector matches (a fleet of replicas).

What that means for the numbers (say it wherever they are shown): increase() extrapolates to the window's edges,
so token and request totals are not integers and can be off by a scrape interval's worth at each edge; quantiles
are interpolated inside the server's buckets (10 -> 20 -> 40 ms for TTFT), so they are coarse where the client's
are exact; a window shorter than two scrape intervals has no rate at all (None). Evaluate a window only once
Prometheus has scraped past its end (end + one scrape interval).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, replace

from qbench_tui.engine.promql import PromSource, matcher
from qbench_tui.engine.result import LevelResult, ServerLevel

QUANTILES = (0.5, 0.9, 0.99)
# canonical histogram -> bucket series, V1 name first (0.10 exposes both; `or` keeps the left one)
HISTOGRAMS = {
    "ttft": ("time_to_first_token_seconds",),
    "itl": ("inter_token_latency_seconds", "time_per_output_token_seconds"),
    "e2e": ("e2e_request_latency_seconds",),
    "queue": ("request_queue_time_seconds",),
}


@dataclass(frozen=True, slots=True)
class PromLevel:
    """A level's server side as Prometheus saw it; None where Prometheus had no data for it."""

    window_s: float
    output_tokens: float | None = None  # increase(): extrapolated, not an integer
    prompt_tokens: float | None = None
    requests: float | None = None  # vllm:request_success (every finished_reason)
    output_tok_s: float | None = None
    prompt_tok_s: float | None = None
    request_s: float | None = None
    preemptions: float | None = None
    prefix_cache_queries: float | None = None
    prefix_cache_hits: float | None = None
    max_kv_cache_usage: float | None = None  # the fullest series (one full replica preempts)
    mean_kv_cache_usage: float | None = None  # over series and time
    max_running: float | None = None  # of the fleet's sum, 1 s subquery steps
    max_waiting: float | None = None
    ttft_mean_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    ttft_p99_s: float | None = None
    itl_mean_s: float | None = None
    itl_p50_s: float | None = None
    itl_p90_s: float | None = None
    itl_p99_s: float | None = None
    e2e_mean_s: float | None = None
    e2e_p50_s: float | None = None
    e2e_p90_s: float | None = None
    e2e_p99_s: float | None = None
    queue_mean_s: float | None = None
    queue_p50_s: float | None = None
    queue_p90_s: float | None = None
    queue_p99_s: float | None = None
    gpus: int | None = None  # DCGM series seen (None: no DCGM exporter under the GPU selector)
    gpu_util_pct: float | None = None  # mean over GPUs and time
    gpu_mem_used_mib: float | None = None  # the fullest GPU's peak
    gpu_power_w: float | None = None  # all GPUs together, mean over time

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        q, h = self.prefix_cache_queries, self.prefix_cache_hits
        return h / q if q and h is not None else None

    def to_json(self) -> dict:
        """Seconds become `_ms` keys, as everywhere in qbench's JSON."""
        out: dict = {}
        for k, v in asdict(self).items():
            if k.endswith("_s") and k not in ("window_s", "output_tok_s", "prompt_tok_s", "request_s"):
                out[k[:-2] + "_ms"] = None if v is None else v * 1000.0
            else:
                out[k] = v
        out["prefix_cache_hit_rate"] = self.prefix_cache_hit_rate
        return out

    def server_level(self) -> ServerLevel:
        """The same level in the ServerLevel model the results files carry (span_s: the window, so `rate()`
        gives Prometheus's rate back)."""
        return ServerLevel(
            generation_tokens=self.output_tokens, prompt_tokens=self.prompt_tokens,
            prefix_cache_queries=self.prefix_cache_queries, prefix_cache_hits=self.prefix_cache_hits,
            prefix_cache_hit_rate=self.prefix_cache_hit_rate, max_kv_cache_usage=self.max_kv_cache_usage,
            preemptions=self.preemptions, max_running=self.max_running, max_waiting=self.max_waiting,
            mean_ttft_s=self.ttft_mean_s, mean_queue_s=self.queue_mean_s, span_s=self.window_s,
        )


def level_queries(selector: str, gpu_selector: str, window_s: float) -> dict[str, str]:
    """PromLevel field -> PromQL, for a window of window_s seconds ending at the evaluation time."""
    w = f"[{max(1, round(window_s * 1000))}ms]"

    def m(name: str) -> str:
        return matcher(name, selector)

    def either(names: tuple[str, ...], expr) -> str:
        return " or ".join(expr(n) for n in names)

    q: dict[str, str] = {}
    for field_, name in (("output_tokens", "generation_tokens_total"), ("prompt_tokens", "prompt_tokens_total"),
                         ("requests", "request_success_total"), ("preemptions", "num_preemptions_total")):
        q[field_] = f"sum(increase({m(name)}{w}))"
    for field_, name in (("output_tok_s", "generation_tokens_total"), ("prompt_tok_s", "prompt_tokens_total"),
                         ("request_s", "request_success_total")):
        q[field_] = f"sum(rate({m(name)}{w}))"
    q["prefix_cache_queries"] = either(("prefix_cache_queries_total", "gpu_prefix_cache_queries_total"),
                                       lambda n: f"sum(increase({m(n)}{w}))")
    q["prefix_cache_hits"] = either(("prefix_cache_hits_total", "gpu_prefix_cache_hits_total"),
                                    lambda n: f"sum(increase({m(n)}{w}))")
    kv = ("kv_cache_usage_perc", "gpu_cache_usage_perc")
    q["max_kv_cache_usage"] = either(kv, lambda n: f"max(max_over_time({m(n)}{w}))")
    q["mean_kv_cache_usage"] = either(kv, lambda n: f"avg(avg_over_time({m(n)}{w}))")
    q["max_running"] = f"max_over_time(sum({m('num_requests_running')}){w[:-1]}:1s])"
    q["max_waiting"] = f"max_over_time(sum({m('num_requests_waiting')}){w[:-1]}:1s])"
    for short, names in HISTOGRAMS.items():
        q[f"{short}_mean_s"] = either(
            names, lambda n: f"sum(rate({m(n + '_sum')}{w})) / sum(rate({m(n + '_count')}{w}))")
        for qt in QUANTILES:
            q[f"{short}_p{round(qt * 100)}_s"] = either(
                names, lambda n, qt=qt: f"histogram_quantile({qt}, sum by (le) (rate({m(n + '_bucket')}{w})))")

    def g(name: str) -> str:
        return matcher(name, gpu_selector, prefix="")

    q["gpus"] = f"count({g('DCGM_FI_DEV_GPU_UTIL')})"
    q["gpu_util_pct"] = f"avg(avg_over_time({g('DCGM_FI_DEV_GPU_UTIL')}{w}))"
    q["gpu_mem_used_mib"] = f"max(max_over_time({g('DCGM_FI_DEV_FB_USED')}{w}))"
    q["gpu_power_w"] = f"sum(avg_over_time({g('DCGM_FI_DEV_POWER_USAGE')}{w}))"
    return q


async def prom_level(source: PromSource, start_wall: float, end_wall: float) -> PromLevel:
    """The level [start_wall, end_wall] (time.time() seconds, LevelWindow.start_wall / end_wall) evaluated at
    its end. Raises PrometheusUnreachable / PrometheusError as PromSource.query does."""
    window = max(0.001, end_wall - start_wall)
    exprs = level_queries(source.selector, source.gpu_selector, window)
    at = min(end_wall, time.time())
    values = await asyncio.gather(*(source.scalar(e, at) for e in exprs.values()))
    got = dict(zip(exprs, values))
    if got.get("gpus") is not None:
        got["gpus"] = int(got["gpus"])
    return PromLevel(window_s=window, **got)


SCRAPED_PAST_TIMEOUT_S = 60.0  # a scrape interval longer than this is not one this wait should hide


async def scraped_past(source: PromSource, t_wall: float, timeout: float = SCRAPED_PAST_TIMEOUT_S) -> bool:
    """Wait until Prometheus holds a sample of the selected vllm series at or after `t_wall` (its newest
    timestamp), so a window ending then is whole; False after `timeout`."""
    # one gauge every vLLM version exports (timestamp() drops the name: one name keeps the labelsets distinct)
    expr = f'max(timestamp({matcher("num_requests_running", source.selector)}))'
    deadline = time.monotonic() + timeout
    while True:
        newest = await source.scalar(expr)
        if newest is not None and newest >= t_wall:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.5)


async def with_promql(source: PromSource, lv: LevelResult) -> LevelResult:
    """The level with `server_promql`: its window as Prometheus saw it (vLLM Grafana semantics), evaluated once
    Prometheus has scraped past the window's end; the level as it was when it has no window, or when Prometheus
    fails now (the level's own numbers stand; `server_promql_error` says why)."""
    w = lv.window
    if w is None:
        return lv
    from qbench_tui.engine.promql import PrometheusError, PrometheusUnreachable

    try:
        if not await scraped_past(source, w.end_wall):
            return replace(lv, server_promql={"error": "Prometheus had not scraped past the window's end within "
                                                       f"{SCRAPED_PAST_TIMEOUT_S:.0f} s"})
        pl = await prom_level(source, w.start_wall, w.end_wall)
    except (PrometheusError, PrometheusUnreachable) as e:
        return replace(lv, server_promql={"error": str(e)})
    return replace(lv, server_promql=pl.to_json())
