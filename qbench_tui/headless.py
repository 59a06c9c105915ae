"""Headless levels: `qbench run` (one level) and `qbench sweep` (the classic table).

The engine runs in this process here: a headless face draws nothing, so it cannot disturb the timestamps
(the dashboard is what needs the engine in its own process). Server metrics are scraped in the background
and, to make level deltas exact, once more at each level boundary.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from .engine.load import LoadEngine
from .engine.metrics import ServerSample, ServerSeries, fetch_info, parse_metrics
from .engine.records import RequestRecord, RequestSpec
from .engine.stats import summarize, to_ms


class Unreachable(RuntimeError):
    pass


@dataclass
class LevelPlan:
    concurrency: int
    mode: str = "wave"
    duration: float | None = None
    requests: int | None = None
    warmup: float = 0.0


@dataclass
class ServerWatch:
    """Background /metrics scraper keeping every sample (a sweep is minutes long: a few hundred samples)."""

    url: str
    headers: dict
    period: float = 1.0
    samples: list[ServerSample] = field(default_factory=list)
    schema: str = "none"
    error: str = ""
    _task: asyncio.Task | None = None

    async def scrape(self, client: httpx.AsyncClient) -> ServerSample | None:
        try:
            r = await client.get("/metrics")
        except httpx.HTTPError as e:
            self.error = f"server unreachable: {type(e).__name__}"
            return None
        if r.status_code != 200:
            self.error = "no server metrics"
            return None
        try:
            s = parse_metrics(r.text, time.monotonic())
        except Exception as e:  # a broken page must never stop a benchmark
            self.error = f"bad /metrics: {e}"
            return None
        self.schema = s.schema
        if s.schema != "none":
            self.samples.append(s)
        return s

    async def _loop(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=5.0) as client:
            self._client = client
            while True:
                t0 = time.monotonic()
                await self.scrape(client)
                await asyncio.sleep(max(0.0, self.period - (time.monotonic() - t0)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def boundary(self) -> ServerSample | None:
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=5.0) as client:
            return await self.scrape(client)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def between(self, a: ServerSample | None, b: ServerSample | None) -> dict | None:
        """Server stats over one level: deltas between the boundary samples, maxima over all samples between."""
        if a is None or b is None or a.schema == "none":
            return None
        level = ServerSeries()  # the same reset-aware arithmetic as the live session, over this level only
        for s in [x for x in self.samples if a.t <= x.t <= b.t] or [a, b]:
            level.add(s)
        delta, peak = level.delta, level.max
        dq, dh = delta("prefix_cache_queries"), delta("prefix_cache_hits")
        hit = level.hit_rate()
        return {
            "generation_tokens": delta("generation_tokens"),
            "prompt_tokens": delta("prompt_tokens"),
            "prefix_cache_queries": dq,
            "prefix_cache_hits": dh,
            "prefix_cache_hit_rate": hit,
            "max_kv_cache_usage": peak("kv_cache_usage"),
            "preemptions": delta("num_preemptions"),
            "max_running": peak("num_running"),
            "max_waiting": peak("num_waiting"),
            "num_gpu_blocks": b.num_gpu_blocks,
            "mean_ttft_ms": to_ms(level.mean("ttft")),  # the server's own TTFT: arrival in its handler -> first token
            "mean_queue_ms": to_ms(level.mean("queue_time")),
        }


async def discover(url: str, headers: dict) -> tuple[str | None, list[str]]:
    """(vLLM version, model ids). Raises Unreachable when nothing answers."""
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10.0) as client:
        try:
            r = await client.get("/v1/models")
        except httpx.HTTPError as e:
            raise Unreachable(f"cannot reach {url}: {e or type(e).__name__}") from None
        if r.status_code in (401, 403):
            raise Unreachable(f"{url} refused the API key (HTTP {r.status_code}): give --api-key or set "
                              "QBENCH_API_KEY") from None
        return await fetch_info(client)


def level_duration(records: list[RequestRecord]) -> float:
    """First measured start to last end (the classic 'total time')."""
    measured = [r for r in records if not r.warmup]
    if not measured:
        return 0.0
    return max(r.end for r in measured) - min(r.start for r in measured)


async def run_level(engine: LoadEngine, plan: LevelPlan) -> tuple[list[RequestRecord], tuple[float, float] | None]:
    """The level's records and, for a timed steady level, its measurement window (perf_counter)."""
    if plan.mode == "wave":
        return await engine.run_wave(plan.concurrency), None
    t_call = time.perf_counter()
    records = await engine.run_steady(plan.concurrency, duration=plan.duration, requests=plan.requests,
                                      warmup=plan.warmup)
    if plan.duration:
        t0 = t_call + plan.warmup
        return records, (t0, t0 + plan.duration)
    return records, None


def summarize_level(records: list[RequestRecord], plan: LevelPlan,
                    window: tuple[float, float] | None) -> dict:
    """Wave: the classic total time (first start to last end). Timed steady: rates over the measurement window
    only, from every request that ENDED inside it (warm-up starts included), so the drain at the end of the
    level, running below the target concurrency, does not dilute the steady-state throughput."""
    if window is None:
        return summarize(records, level_duration(records), plan.concurrency)
    t0, t1 = window
    span = t1 - t0
    lv = summarize(records, span, plan.concurrency)
    inside = [r for r in records if r.ok and t0 <= r.end <= t1]
    out_tok = sum(r.out_tokens for r in inside)
    in_tok = sum(r.in_tokens for r in inside)
    lv["request_throughput"] = len(inside) / span
    lv["output_throughput"] = out_tok / span
    lv["total_token_throughput"] = (in_tok + out_tok) / span
    lv["window_requests"] = len(inside)
    return lv


async def run_plan(spec: RequestSpec, prompts: Callable[[int], object], plans: list[LevelPlan],
                   on_level: Callable[[dict, list[RequestRecord]], None] | None = None,
                   should_stop: Callable[[], str | None] | None = None) -> tuple[list[dict], str | None]:
    """Runs the levels in order. Returns (level results in run format, reason it stopped early or None).

    `should_stop` is asked between levels and while a level runs (e.g. "server died"); `on_level` gets each
    finished level at once so files on disk always hold every finished level.
    """
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    watch = ServerWatch(spec.url, headers)
    watch.start()
    engine = LoadEngine(spec, prompts)
    results: list[dict] = []
    stopped: str | None = None
    try:
        for plan in plans:
            if should_stop and (why := should_stop()):
                stopped = why
                break
            before = await watch.boundary()
            level_task = asyncio.create_task(run_level(engine, plan))
            while not level_task.done():
                await asyncio.wait({level_task}, timeout=0.5)
                if should_stop and not level_task.done() and (why := should_stop()):
                    stopped = why
                    level_task.cancel()
                    break
            if stopped:
                try:
                    await level_task
                except (asyncio.CancelledError, Exception):
                    pass
                break
            records, window = level_task.result()
            after = await watch.boundary()
            lv = summarize_level(records, plan, window)
            lv["mode"] = plan.mode
            lv["server"] = watch.between(before, after)
            lv["server_metrics"] = watch.schema if watch.schema != "none" else (watch.error or "no server metrics")
            results.append(lv)
            if on_level:
                on_level(lv, records)
            if lv["completed"] == 0 and lv["failed"] and all(
                    r.status is None for r in records if not r.ok):
                # nothing answered at all: the server is gone; more levels would only repeat the failure
                first = next(iter(lv["failures"]), "")
                stopped = f"server gone: every request of level {plan.concurrency} failed ({first})"
                break
    finally:
        await engine.stop()
        await watch.stop()
    return results, stopped
