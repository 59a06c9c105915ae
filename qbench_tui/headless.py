"""Headless levels: `qbench run` (one level) and `qbench sweep` (the classic table).

The engine runs in this process here: a headless face draws nothing, so it cannot disturb the timestamps
(the dashboard is what needs the engine in its own process). Server metrics are scraped in the background
and, to make level deltas exact, once more at each level boundary; the load engine's own CPU and event-loop lag
are watched too, so a level can tell when the client, not the server, set the pace.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from .engine.load import LoadEngine
from .engine.metrics_parse import ServerSample, parse_metrics
from .engine.records import RequestRecord, RequestSpec
from .engine.result import ClientLevel, LevelResult, ServerLevel, server_level
from .engine.server_poll import fetch_info
from .engine.server_series import ServerSeries
from .engine.stats import ClientTally, Finished, LevelTally, level_result


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
    """Background /metrics scraper keeping every sample (a sweep is minutes long: a few hundred samples; a day of
    them is the bound, so even a day-long level keeps its start)."""

    url: str
    headers: dict
    period: float = 1.0
    series: ServerSeries = field(default_factory=lambda: ServerSeries(maxlen=86_400))
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
            self.series.add(s)
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

    def between(self, a: ServerSample | None, b: ServerSample | None) -> ServerLevel | None:
        """Server stats over one level: deltas from the boundary samples and every sample between them, maxima
        over all of them (the same function as a live segment's)."""
        if a is None or b is None or a.schema == "none":
            return None
        return server_level(self.series, a.t, b.t)


class ClientWatch:
    """The load engine's own CPU and event-loop lag over a level, measured as the live session does: how late a
    PERIOD sleep wakes up, the worst of each second. The loop that runs the workers runs this too, so a loop too
    busy to read the streams on time shows here."""

    PERIOD = 0.05

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None
        self.begin()

    def begin(self) -> None:
        """A level starts now."""
        self._tally = ClientTally()
        self._sec_t0 = self._wall0 = time.perf_counter()
        self._sec_max = 0.0
        self._ticks = 0
        self._cpu0 = time.process_time()

    def end(self) -> ClientLevel | None:
        """The level since begin(); the unfinished second counts as one."""
        if self._ticks:
            self._tally.add(None, self._sec_max)
            self._ticks = 0
        wall = time.perf_counter() - self._wall0
        cpu = 100.0 * (time.process_time() - self._cpu0) / wall if wall > 0 else None
        return self._tally.result(cpu)

    async def _loop(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.PERIOD)
            now = time.perf_counter()
            self._sec_max = max(self._sec_max, (now - t - self.PERIOD) * 1000.0, 0.0)
            self._ticks += 1
            if now - self._sec_t0 >= 1.0:
                self._tally.add(None, self._sec_max)
                self._sec_t0, self._sec_max, self._ticks = now, 0.0, 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass


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
                    window: tuple[float, float] | None, **context) -> LevelResult:
    """Wave: the classic total time (first start to last end). Timed steady: rates over the measurement window
    only, from every request that ENDED inside it (warm-up starts included), so the drain at the end of the
    level, running below the target concurrency, does not dilute the steady-state throughput."""
    tally = LevelTally().add_all(records)
    if window is None:
        return level_result(tally, tally.span_s, plan.concurrency, mode=plan.mode, **context)
    t0, t1 = window
    inside = [r for r in records if r.ok and t0 <= r.end <= t1]
    done = Finished(len(inside), sum(r.in_tokens for r in inside), sum(r.out_tokens for r in inside))
    return level_result(tally, t1 - t0, plan.concurrency, done, mode=plan.mode, window_requests=len(inside),
                        **context)


async def run_plan(spec: RequestSpec, prompts: Callable[[int], object], plans: list[LevelPlan],
                   on_level: Callable[[LevelResult, list[RequestRecord]], None] | None = None,
                   should_stop: Callable[[], str | None] | None = None) -> tuple[list[LevelResult], str | None]:
    """Runs the levels in order. Returns (level results, reason it stopped early or None).

    `should_stop` is asked between levels and while a level runs (e.g. "server died"); `on_level` gets each
    finished level at once so files on disk always hold every finished level.
    """
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    watch = ServerWatch(spec.url, headers)
    watch.start()
    client = ClientWatch()
    client.start()
    engine = LoadEngine(spec, prompts)
    results: list[LevelResult] = []
    stopped: str | None = None
    try:
        for plan in plans:
            if should_stop and (why := should_stop()):
                stopped = why
                break
            before = await watch.boundary()
            client.begin()
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
            cpu_lag = client.end()
            after = await watch.boundary()
            lv = summarize_level(records, plan, window, server=watch.between(before, after), client=cpu_lag,
                                 server_metrics=watch.schema if watch.schema != "none"
                                 else (watch.error or "no server metrics"))
            watch.series.clear()  # this level's samples are summed up; the next level starts at its own boundary
            results.append(lv)
            if on_level:
                on_level(lv, records)
            if lv.completed == 0 and lv.failed and all(
                    r.status is None for r in records if not r.ok):
                # nothing answered at all: the server is gone; more levels would only repeat the failure
                first = next(iter(lv.failures), "")
                stopped = f"server gone: every request of level {plan.concurrency} failed ({first})"
                break
    finally:
        await engine.stop()
        await watch.stop()
        await client.stop()
    return results, stopped
