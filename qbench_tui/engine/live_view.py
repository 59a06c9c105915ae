"""What a live session shows of the server: the ServerView over the rolling window (its /metrics series, the
server's own TTFT over the client window's span), and the bin edges of the live latency views. Built from the
session's parts on each 4 Hz snapshot; reads no clock of its own, so it is tested with given times."""
from __future__ import annotations

import math

from ..server.gpu import GpuSample
from .result import server_level
from .rolling import RollingWindow
from .server_series import ServerSeries
from .snapshot import ServerView
from .views import GenRates
from .window import Clocks

HISTORY = 240  # points kept for sparklines/charts: wider than any chart we draw


def _log_edges(lo: float, hi: float, n: int = 40) -> tuple[float, ...]:
    step = (math.log10(hi) - math.log10(lo)) / n
    return tuple(10 ** (math.log10(lo) + i * step) for i in range(n + 1))


TTFT_EDGES = _log_edges(1e-3, 120.0, 40)
ITL_EDGES = _log_edges(1e-4, 10.0, 40)
E2EL_EDGES = _log_edges(1e-2, 600.0, 40)
LAG_EDGES = _log_edges(1e-4, 60.0, 40)  # the open loop's schedule lag: 0.1 ms (on time) to a minute behind


def server_ttft(series: ServerSeries, window: RollingWindow, clocks: Clocks, now_perf: float) -> float | None:
    """The server's mean TTFT over the rolling window's own span (requests whose first token came in it, as the
    client's TTFT view), so the two compare."""
    a, b = window.bounds(now_perf)
    if b <= a:
        return None
    srv = server_level(series, clocks.to_mono(a), clocks.to_mono(b))
    return None if srv is None else srv.mean_ttft_s


def server_view(series: ServerSeries, *, window_s: float, now_mono: float, model: str, version: str | None,
                error: str, gpu: tuple[GpuSample, ...], gen_rates: GenRates,
                ttft_mean: float | None) -> ServerView:
    last = series.latest()
    if last is None:
        return ServerView(reachable=False, schema="none", error=error, model=model, vllm_version=version, gpu=gpu)
    w = window_s
    return ServerView(
        reachable=True, schema=last.schema, error=error, model=model, vllm_version=version, engines=last.engines,
        kv_cache_usage=last.kv_cache_usage, prefix_hit_rate=series.hit_rate(now_mono - w),
        num_running=last.num_running, num_waiting=last.num_waiting, preemptions_total=last.num_preemptions,
        preemptions_per_s=series.rate("num_preemptions", w, now_mono),
        gen_tok_s=series.rate("generation_tokens", w, now_mono), prompt_tok_s=series.rate("prompt_tokens", w, now_mono),
        kv_history=tuple(v or 0.0 for v in series.history("kv_cache_usage", HISTORY)),
        running_history=tuple(v or 0.0 for v in series.history("num_running", HISTORY)),
        waiting_history=tuple(v or 0.0 for v in series.history("num_waiting", HISTORY)),
        gen_tok_s_history=gen_rates(series),
        num_gpu_blocks=int(last.num_gpu_blocks) if last.num_gpu_blocks else None,
        block_size=int(last.block_size) if last.block_size else None, gpu=gpu, ttft_mean=ttft_mean,
    )
