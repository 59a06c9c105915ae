"""Headless levels: `qbench run` (one level) and `qbench sweep` (the classic table).

The engine runs in this process here: a headless face draws nothing, so it cannot disturb the timestamps
(the dashboard is what needs the engine in its own process). Server metrics are scraped in the background
and once more at each level boundary (a steady level: at the end of its window, while the load is still held);
a level's server stats cover the scrapes inside its window. The load engine's own CPU and event-loop lag are
watched too, so a level can tell when the client, not the server, set the pace.

A steady level is measured once settled (engine/settle.py) over a saved window (engine/window.py); a wave
level is the classic: exactly C at once, first start to last end. A steady or open-loop level keeps no list of
its records: they stream to the .requests.jsonl and into a WindowTally (and a tally of everything, for a level
that is stopped before its end) as they finish, so a level of any length is flat in memory.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from .engine.exporter import ClientMetrics
from .engine.load import LoadEngine
from .engine.metrics_parse import ServerSample, parse_metrics
from .engine.openai_stream import error_message
from .engine.prom_level import with_promql
from .engine.promql import PromSource
from .engine.records import RequestRecord, RequestSpec
from .engine.result import ClientLevel, LevelResult, ServerLevel, server_level
from .engine.server_poll import fetch_info, side_client
from .engine.server_series import ServerSeries
from .engine.settle import CV_MAX, SETTLE_MAX_S, SettleRule
from .engine.stats import ClientTally, LevelTally, headless_tally, level_result
from .engine.targets import with_endpoints
from .engine.window import WAVE_RULE, Bounds, Clocks, WindowTally, steady_rule, summarize_window


class Unreachable(RuntimeError):
    pass


@dataclass
class LevelPlan:
    concurrency: int
    mode: str = "wave"
    duration: float | None = None  # steady: seconds of request starts measured, after settling
    requests: int | None = None  # steady: or this many measured requests
    warmup: float = 0.0  # steady: never measure before this
    settle: bool = True  # steady: wait until the level is settled (False: measure right after the warm-up)
    settle_max_s: float = SETTLE_MAX_S  # the cap: measure from here on, marked not steady
    cv_max: float = CV_MAX
    # mode "rate", the open loop (engine/open_loop.py): requests/s with gamma arrivals, `concurrency` the cap
    # (0: none); or the send times of a trace (engine/trace.py), measured whole
    rate: float | None = None
    burstiness: float = 1.0
    trace_times: Sequence[float] | None = None
    seed: int = 0

    def settle_rule(self) -> SettleRule | None:
        return SettleRule(cv_max=self.cv_max, max_s=self.settle_max_s) if self.settle else None


Plans = Sequence[LevelPlan] | Callable[[list[LevelResult]], "LevelPlan | None"]


async def _cancel(task: asyncio.Task | None) -> None:
    """Stop a background watcher: a watcher's own failure must never end the run it watches."""
    if task:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass


@dataclass
class ServerWatch:
    """Background /metrics scraper keeping every sample (a sweep is minutes long: a few hundred samples; a day of
    them is the bound, so even a day-long level keeps its start)."""

    url: str
    headers: dict
    # half a second: a steady window starts where the data say it settled, between boundaries, and the server's
    # deltas cover the scrapes inside the window, so its edges are within half a second of the client's
    period: float = 0.5
    series: ServerSeries = field(default_factory=lambda: ServerSeries(maxlen=172_800))  # a day at 2 Hz
    ca_cert: str = ""  # the load's own TLS trust (side_client: no proxy from the environment either)
    insecure: bool = False
    # --metrics-url replicas (engine/metrics_sources.MultiScrape) or --prometheus (engine/promql.PromSource):
    # `await source.read()` -> (summed ServerSample or None, error line); None: scrape `url`'s own /metrics
    source: object | None = None
    schema: str = "none"
    error: str = ""
    _task: asyncio.Task | None = None

    async def scrape(self, client: httpx.AsyncClient | None) -> ServerSample | None:
        if self.source is not None:
            s, self.error = await self.source.read()  # type: ignore[attr-defined]
            if s is None:
                return None
            self.schema = s.schema
            self.series.add(s)
            return s
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
        if self.source is not None:
            while True:
                t0 = time.monotonic()
                await self.scrape(None)
                await asyncio.sleep(max(0.0, self.period - (time.monotonic() - t0)))
        async with self._side() as client:
            self._client = client
            while True:
                t0 = time.monotonic()
                await self.scrape(client)
                await asyncio.sleep(max(0.0, self.period - (time.monotonic() - t0)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def boundary(self) -> ServerSample | None:
        if self.source is not None:
            return await self.scrape(None)
        async with self._side() as client:
            return await self.scrape(client)

    def _side(self) -> httpx.AsyncClient:
        return side_client(self.url, self.headers, timeout=5.0, ca_cert=self.ca_cert, insecure=self.insecure)

    async def stop(self) -> None:
        await _cancel(self._task)
        if self.source is not None:
            await self.source.aclose()  # type: ignore[attr-defined]

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
        self.lag_s = 0.0  # the worst wake-up delay of the last full second (the exporter's loop-lag gauge)
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
                self.lag_s = self._sec_max / 1000.0
                self._sec_t0, self._sec_max, self._ticks = now, 0.0, 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        await _cancel(self._task)


async def discover(url: str, headers: dict, *, need_model: bool = False, ca_cert: str = "",
                   insecure: bool = False) -> tuple[str | None, list[str]]:
    """(vLLM version, model ids). Raises Unreachable, naming the status and what to change, when nothing
    answers, when /v1/models wants a key (401/403: a LiteLLM-style proxy), and, when the caller needs the model
    from it, when it is missing (404: the base URL is wrong) or failing."""
    async with side_client(url, headers, timeout=10.0, ca_cert=ca_cert, insecure=insecure) as client:
        try:
            r = await client.get("/v1/models")
        except httpx.HTTPError as e:
            raise Unreachable(f"cannot reach {url}: {str(e) or type(e).__name__}") from None
        where = f"{url}/v1/models answered HTTP {r.status_code}"
        said = error_message(r.content, r.headers.get("content-type", "")) if r.status_code != 200 else ""
        # 401/403, or a 400 whose message is about the key (some LiteLLM versions answer a missing key so)
        if r.status_code in (401, 403) or (r.status_code == 400 and re.search(r"api[ _-]?key|auth", said, re.I)):
            where = f"{where} ({said})" if said else where
            if "authorization" in {k.lower() for k in headers}:
                raise Unreachable(f"{where}: the API key was refused; check --api-key or $QBENCH_API_KEY")
            raise Unreachable(f"{where}: the server wants an API key; give --api-key KEY or set QBENCH_API_KEY")
        if need_model and r.status_code == 404:
            raise Unreachable(f"{where}: is {url} the server's base URL (qbench adds /v1/... itself)? "
                              "Or give --model")
        if need_model and r.status_code != 200:
            raise Unreachable(f"{where}: {said}; give --model")
        return await fetch_info(client)


async def run_level(engine: LoadEngine, plan: LevelPlan, at_window_end: Callable[[], object] | None = None,
                    summary: WindowTally | None = None) -> tuple[list[RequestRecord], Bounds | None]:
    """The level's records and, for a steady level, its measurement window (None: a wave). Given a `summary`,
    a steady or open-loop level folds its records into it and returns none (a wave's C records come back)."""
    if plan.mode == "rate":
        from .engine.arrivals import schedule
        from .engine.open_loop import run_open

        if plan.trace_times is not None:
            return await run_open(engine, plan.trace_times, requests=len(plan.trace_times),
                                  max_concurrency=plan.concurrency or None, at_window_end=at_window_end,
                                  summary=summary)
        return await run_open(engine, schedule(plan.rate or 0.0, plan.burstiness, plan.seed), duration=plan.duration,
                              requests=plan.requests, warmup=plan.warmup, max_concurrency=plan.concurrency or None,
                              at_window_end=at_window_end, summary=summary)  # type: ignore[arg-type]
    if plan.mode == "wave":
        return await engine.run_wave(plan.concurrency), None
    records = await engine.run_steady(plan.concurrency, duration=plan.duration, requests=plan.requests,
                                      warmup=plan.warmup, settle=plan.settle_rule(),
                                      at_window_end=at_window_end, summary=summary)  # type: ignore[arg-type]
    return records, engine.last_bounds


def summarize_level(records: list[RequestRecord], plan: LevelPlan, window: Bounds | None,
                    clocks: Clocks | None = None, summary: WindowTally | None = None, **context) -> LevelResult:
    """Wave: the classic total time (first start to last end), every request. Steady: over its window only
    (engine/window.py), so neither the ramp-up nor the drain nor where the window cuts a wave moves it; from
    `summary` when the level was run with one (its records are not kept), else from `records`."""
    clocks = clocks or Clocks.now()
    if window is None:
        tally = LevelTally().add_all(records)
        lv = level_result(tally, tally.span_s, plan.concurrency, mode=plan.mode, **context)
        if tally.first_start is not None and tally.last_end is not None:
            b = Bounds(tally.first_start, tally.first_start, tally.last_end, tally.last_end, tally.last_end)
            lv.window = clocks.window(b, rule=WAVE_RULE, cv=None, mean_e2el=lv.e2el.mean_s, wave=True)
        return lv
    if plan.mode == "rate":
        c, rule = plan.concurrency or None, OPEN_RULE
        context.update(mode="rate", request_rate=plan.rate, burstiness=plan.burstiness if plan.rate else None)
    else:
        c, rule = plan.concurrency, steady_rule(plan.settle_rule(), plan.warmup)
        context.update(mode=plan.mode)
    if summary is not None:
        return summary.result(c, clocks, rule=rule, **context)
    return summarize_window(records, window, c, clocks, rule=rule, **context)


OPEN_RULE = ("open loop: requests due in [start, started_until) after the warm-up, arrivals going on until each "
             "has ended; rates over [start, end); schedule lag = actual send - due time")


INTERRUPTED_RULE = "interrupted: every request that finished before the stop; rates over first start to last end"


def summarize_interrupted(tally: LevelTally, plan: LevelPlan, clocks: Clocks | None = None,
                          **context) -> LevelResult:
    """A level stopped before it ended: what its finished requests say (`tally`: every one of them, added as
    they finished), first start to last end, marked interrupted and not steady (a steady level's ramp-up is in
    it; no window was settled)."""
    clocks = clocks or Clocks.now()
    lv = level_result(tally, tally.span_s, plan.concurrency, mode=plan.mode, **context)
    if tally.first_start is not None and tally.last_end is not None:
        b = Bounds(tally.first_start, tally.first_start, tally.last_end, tally.last_end, tally.last_end, False)
        lv.window = clocks.window(b, rule=INTERRUPTED_RULE, cv=None, mean_e2el=lv.e2el.mean_s, wave=True)
    lv.interrupted = True
    return lv


class StopFlag:
    """A stop asked from outside the levels (a signal handler on the loop): the first reason wins, and the
    driver wakes at once instead of at its next look."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._event = asyncio.Event()

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


async def run_plan(spec: RequestSpec, prompts: Callable[[int], object], plans: Plans,
                   on_level: Callable[[LevelResult, list[RequestRecord]], None] | None = None,
                   should_stop: Callable[[], str | None] | None = None,
                   on_record: Callable[[RequestRecord, int], None] | None = None,
                   stop: StopFlag | None = None, metrics_source: object | None = None,
                   exporter: ClientMetrics | None = None, sender=None,
                   targets=None) -> tuple[list[LevelResult], str | None]:
    """Runs the levels in order. Returns (level results, reason it stopped early or None).

    `plans`: the levels, or a function that is given the levels measured so far and returns the next one (None
    ends the run): the auto ladder decides from what it measured. `on_record(record, concurrency)` gets each
    request as it finishes (the .requests.jsonl streams from it); `on_level` gets each level at once so files on
    disk always hold every level. The run stops on `stop` (a signal; at once), on `should_stop()` (e.g. "server
    died", a full disk; asked between levels and twice a second while a level runs) and on the engine's error
    budget (`engine.tripped`: the engine ends a steady level itself; that level is marked interrupted). Stopped
    mid-level, the level is cancelled, then the requests in flight, and what finished is kept as an interrupted
    level (summarize_interrupted), handed to on_level like the others.

    No level's records are kept: on_level's list is a wave's C records, and [] for a steady, open-loop or
    interrupted level (summed up as they finished; every one went to on_record).
    """
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    watch = ServerWatch(spec.url, headers, ca_cert=spec.ca_cert, insecure=spec.insecure, source=metrics_source)
    watch.start()
    client = ClientWatch()
    client.start()
    # the running level's finished requests, summed up as they come (the engine feeds its window's summary):
    # all of them (an interrupted level's summary), and how many failures had an answer (the server-gone check)
    level_c = [0]
    everything = [headless_tally()]
    answered = [0]

    def finished(rec: RequestRecord) -> None:
        everything[0].add(rec)
        if exporter is not None:
            exporter.observe(rec)
        if not rec.ok and rec.status is not None:
            answered[0] += 1
        if on_record is not None:
            on_record(rec, level_c[0])

    # sender: client shards doing the HTTP (engine/shards.py); targets: several endpoints (engine/targets.py)
    engine = LoadEngine(spec, prompts, on_record=finished, sender=sender, targets=targets)
    if exporter is not None:
        exporter.set_gauges(in_flight=lambda: engine.in_flight, target=lambda: engine.target,
                            loop_lag_s=lambda: client.lag_s)
    clocks = Clocks.now()
    results: list[LevelResult] = []
    stopped: str | None = None
    listed = None if callable(plans) else iter(plans)
    stop_task = asyncio.create_task(stop.wait()) if stop is not None else None

    def why_stop(between_levels: bool = True) -> str | None:
        # the error budget is not asked mid-level: a tripped engine ends its level itself, letting the requests
        # in flight finish (engine/load.py), and the level is marked interrupted after it
        return ((stop.reason if stop is not None else None) or (should_stop() if should_stop else None)
                or (getattr(engine, "tripped", None) if between_levels else None))

    async def unless_stopped(coro):
        """A boundary scrape, given up when a stop comes (a hung /metrics must not hold a signal up 5 s)."""
        task = asyncio.ensure_future(coro)
        if stop_task is None:
            return await task
        await asyncio.wait({task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        await _cancel(task)
        return None

    def metrics_note() -> str:
        return watch.schema if watch.schema != "none" else (watch.error or "no server metrics")

    try:
        while True:
            plan = next(listed, None) if listed is not None else plans(list(results))  # type: ignore[operator]
            if plan is None:
                break
            if why := why_stop():
                stopped = why
                break
            if plan.mode == "wait":  # a replayed pause: no load and no level, only the time (a stop ends it)
                await unless_stopped(asyncio.sleep(plan.duration or 0.0))
                continue
            before = await unless_stopped(watch.boundary())
            if why := why_stop():
                stopped = why
                break
            client.begin()
            everything[0], answered[0] = headless_tally(), 0
            level_c[0] = plan.concurrency
            at_end: list[ServerSample | None] = []
            summary = None if plan.mode == "wave" else WindowTally()

            async def window_end(at_end=at_end) -> None:
                at_end.append(await watch.boundary())

            level_task = asyncio.create_task(run_level(engine, plan, window_end, summary))
            waits = {level_task} | ({stop_task} if stop_task is not None else set())
            while not level_task.done():
                await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if not level_task.done() and (why := why_stop(between_levels=False)):
                    stopped = why
                    break
            if stopped:
                await _cancel(level_task)
                await engine.stop()  # the requests in flight too: a stop takes seconds, not a stream's length
                lv = summarize_interrupted(everything[0], plan, clocks, client=client.end(),
                                           server=server_level(watch.series, before.t if before else None),
                                           server_metrics=metrics_note())
                lv = with_endpoints(lv, targets) if targets is not None else lv
                results.append(lv)
                if on_level:
                    on_level(lv, [])
                break
            records, window = level_task.result()
            cpu_lag = client.end()
            after = await unless_stopped(watch.boundary())
            if window is None and plan.mode != "wave":  # a steady level stopped before it had a window
                lv = summarize_interrupted(everything[0], plan, clocks, client=cpu_lag,
                                           server=watch.between(before, after), server_metrics=metrics_note())
            elif window is None:
                lv = summarize_level(records, plan, None, clocks, server=watch.between(before, after),
                                     client=cpu_lag, server_metrics=metrics_note())
            else:  # the scrapes inside the window, up to the one taken at its end while the load was held
                last = at_end[0] if at_end and at_end[0] is not None else None
                server = server_level(watch.series, clocks.to_mono(window.start),
                                      last.t if last is not None else clocks.to_mono(window.end))
                lv = summarize_level(records, plan, window, clocks, summary, server=server, client=cpu_lag,
                                     server_metrics=metrics_note())
            if plan.mode != "wave" and getattr(engine, "tripped", None):
                lv.interrupted = True  # the budget ended it early: measured, but not for as long as planned
            watch.series.clear()  # this level's samples are summed up; the next level starts at its own boundary
            lv = with_endpoints(lv, targets) if targets is not None else lv
            if isinstance(metrics_source, PromSource):
                lv = await unless_stopped(with_promql(metrics_source, lv)) or lv
            results.append(lv)
            if on_level:
                on_level(lv, records)
            if why := why_stop():
                stopped = why
                break
            if lv.completed == 0 and lv.failed and answered[0] == 0:
                # nothing answered at all: the server is gone; more levels would only repeat the failure
                first = next(iter(lv.failures), "")
                stopped = f"server gone: every request of level {plan.concurrency} failed ({first})"
                break
    finally:
        await _cancel(stop_task)
        await engine.stop()
        await watch.stop()
        await client.stop()
    return results, stopped
