"""A live load session: the load engine, the /metrics poller, rolling windows and segments, published as
Snapshots. It runs on one asyncio loop inside the engine process (engine/process.py) and never renders."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..report.files import RunMeta
from ..server.gpu import GpuSample, sample_gpus
from .auto_live import LiveLadder
from .client_health import ClientHealth
from .knee import Knee, find_knee
from .live_commands import apply_command
from .live_fleet import LiveFleet, endpoint_rows, server_poller, start_fleet, wants_parts
from .live_open import OPEN_SETTLE, LagWindow, LiveOpenLoop, behind_schedule
from .live_save import final_save, not_started, save_session
from .live_view import E2EL_EDGES, HISTORY, ITL_EDGES, LAG_EDGES, TTFT_EDGES, server_ttft, server_view
from .load import LoadEngine
from .metrics_parse import ServerSample
from .prompts import describe_source, make_prompt_source
from .recordlog import open_run_log
from .records import RequestRecord, RequestSpec
from .result import LevelResult
from .rolling import RollingWindow
from .segments import SegmentStats
from .server_poll import fetch_info, side_client
from .server_series import ServerSeries
from .snapshot import (
    Command,
    CurvePoint,
    EngineStatus,
    SegmentRow,
    ServerView,
    SetConcurrency,
    SetMode,
    Snapshot,
    Stop,
)
from .stats import latency_view
from .targets import with_endpoints
from .views import GenRates, client_limit_why, curve_points, segment_rows
from .window import Clocks

MIN_SEGMENT_S = 2.0  # shorter segments are transitions, not levels (SessionConfig.min_segment_s)


@dataclass(frozen=True)
class SessionConfig:
    spec: RequestSpec
    prompt: str = ""
    prompts_file: str = ""
    prompt_len: int = 0
    unique_prefix: bool = False
    window_s: float = 5.0  # the live rates' window: short, so a change shows within seconds
    out_dir: str = "results"
    hz: float = 4.0
    simulated: bool = False
    server_config: str = ""
    start_concurrency: int = 0
    start_paused: bool = False
    extra_meta: dict = field(default_factory=dict)
    min_segment_s: float = MIN_SEGMENT_S  # a segment shorter than this is a key-repeat transition, not a level
    config_sources: tuple[tuple[str, str], ...] = ()  # Config.sources (+ the API key's origin) for the results
    # open loop from the start (`--request-rate`): requests/s, gamma shape, at most rate_cap in flight (0: no cap)
    start_rate: float = 0.0
    burstiness: float = 1.0
    rate_cap: int = 0
    # [fleet] (config.FleetConfig): several endpoints, metrics from elsewhere, the exporter, client shards
    # (engine/live_fleet.py); None or asking nothing: one endpoint, its /metrics, this process
    fleet: object | None = None
    planned_concurrency: int = 0  # what the shard count defaults from (engine/fleet.procs_for)


class EngineSession:
    def __init__(self, cfg: SessionConfig, emit: Callable[[Snapshot], None]) -> None:
        self.cfg = cfg
        self.emit = emit
        self.spec = cfg.spec
        self.prompts = make_prompt_source(cfg.prompt, cfg.prompts_file, cfg.prompt_len, cfg.unique_prefix)
        self.engine = LoadEngine(cfg.spec, self.prompts, on_record=self._on_record)
        # the fleet's parts open on the session's loop (run): until then commands wait, so none reaches an engine
        # without its shards or endpoints; engine/live_fleet.start_fleet puts them in place
        headers = {"Authorization": f"Bearer {cfg.spec.api_key}"} if cfg.spec.api_key else {}
        want = wants_parts(cfg.fleet, cfg.planned_concurrency or cfg.start_concurrency)
        self.fleet = LiveFleet(cfg.fleet, cfg.spec, cfg.planned_concurrency or cfg.start_concurrency,
                               headers) if want else None
        self.queued: list[Command] | None = [] if want else None
        self.targets = self.exporter = self.metrics_source = None
        self.exit_code = 0  # Snapshot.exit_code
        # the live rates and latency views: the last window_s seconds of complete data (engine/rolling.py)
        self.window = RollingWindow(cfg.window_s, timeline=self.engine.timeline, horizon=self.engine.horizon)
        self._clocks = Clocks.now()  # perf_counter -> monotonic (the server's scrapes) and wall clock
        self.series = ServerSeries()
        self.server_error = ""
        self.version: str | None = None
        self.meta = RunMeta(url=cfg.spec.url, model=cfg.spec.model, prompt=cfg.prompt,
                            prompt_source=describe_source(cfg.prompts_file, cfg.prompt_len),
                            max_tokens=cfg.spec.max_tokens, mode="live", endpoint=cfg.spec.endpoint,
                            ignore_eos=cfg.spec.ignore_eos, unique_prefix=cfg.unique_prefix,
                            temperature=cfg.spec.temperature, simulated=cfg.simulated,
                            server_config=cfg.server_config)
        from ..report.environment import collect_environment, server_is_local

        # a launched server's URL is loopback: its GPUs are this machine's
        self.meta.environment = collect_environment(server_is_local(cfg.spec.url, False), cfg.simulated)
        # a name no other run holds (a sub-second stamp, a suffix when taken), its records file created exclusively
        self.base, self.log = open_run_log(cfg.out_dir, cfg.spec.model, self.meta.started)
        self.segments: dict[int, SegmentStats] = {}
        self.current: SegmentStats | None = None
        self.server_config = cfg.server_config
        self.failures: dict[str, int] = {}
        self.last_error = ""
        self.completed_total = 0
        self.failed_total = 0
        self.tok_hist: list[float] = []
        self.saved: tuple[str, ...] = ()
        self.save_error = ""  # the latest save's failure, "" once one worked
        self._saved_records = -1  # RecordLog.count at the latest save: the stop saves again only after new ones
        self.message = ""
        self.paused_why = ""  # why the session paused the load itself (error budget, results disk): Snapshot
        self.status = EngineStatus.STARTING  # RUNNING once the server was asked who it is; PAUSED is derived
        self.ack = 0  # seq of the last command handled: the face shows its own intent until this reaches it
        self._t0 = time.perf_counter()
        self.health = ClientHealth()
        self._stop = asyncio.Event()
        self._level_task: asyncio.Task | None = None
        self._gpu: tuple[GpuSample, ...] = ()
        self.rows: tuple[SegmentRow, ...] = ()
        self.knee = ""  # the verdict's summary, for Snapshot.knee
        self.knee_result: Knee | None = None
        self.curve: tuple[CurvePoint, ...] = ()  # set with rows at 1 Hz; Snapshot.curve
        self.auto_state = ""  # the live ladder's progress in words; Snapshot.auto
        self._gen_rates = GenRates(HISTORY)
        self.auto: LiveLadder | None = None  # the latest ladder (kept after it ends: its levels, slo, verdict)
        self._client_sampled = 0.0  # perf_counter of the last client sample into the open segment
        # closed loop: the load engine's workers hold a concurrency; open loop: `open` sends at a rate
        self.mode = "closed"
        self.open: LiveOpenLoop | None = None  # the latest open loop (kept while closed: its rate is the next start)
        self.closed_target = 0  # the closed loop's concurrency, restored when the open loop ends
        self.lag = LagWindow(cfg.window_s)  # open-loop requests' schedule lag over the rolling window

    # ------------------------------------------------------------ records and segments

    def _on_record(self, r: RequestRecord) -> None:
        self.window.add(r)
        if self.exporter is not None:
            self.exporter.observe(r)
        self.lag.add(r)
        seg = self.segments.get(r.segment)
        if seg is not None:
            seg.add(r)
        cur = self.current
        if cur is not None and r.segment < cur.segment:
            cur.note_older(r.end)  # the current level is not clean before this one ended
        # every record goes to the file, warm-up ones too: their tokens after a window's start count in it
        self.log.add(r)
        if r.warmup:
            return
        if r.ok:
            self.completed_total += 1
        else:
            self.failed_total += 1
            self.failures[r.error] = self.failures.get(r.error, 0) + 1
            self.last_error = r.error

    def mark(self, event: str, **detail: object) -> None:
        """One control event into the saved timeline (engine/replay.py reads it back for `qbench replay`)."""
        self.meta.timeline.append({"t_s": round(time.perf_counter() - self._t0, 3), "event": event, **detail})

    @property
    def open_loop(self) -> bool:
        return self.mode == "open" and self.open is not None

    def open_segment(self) -> None:
        """A segment for what is held from now: the concurrency (closed loop) or the rate (open loop, its cap as
        the segment's concurrency, 0: none)."""
        now = time.perf_counter()
        self.close_segment(now)
        op = self.open if self.open_loop else None
        if op is None:
            self.mark("concurrency", value=self.engine.target)
            seg = SegmentStats(self.engine.segment, self.engine.target, now, mono_start=time.monotonic(),
                               server_config=self.server_config, timeline=self.engine.timeline)
        else:
            self.mark("rate", value=op.rate, burstiness=op.burstiness, max_concurrency=op.cap)
            seg = SegmentStats(self.engine.segment, op.cap, now, mono_start=time.monotonic(),
                               server_config=self.server_config, timeline=self.engine.timeline, rule=OPEN_SETTLE,
                               rate=op.rate, burstiness=op.burstiness)
        self.segments[seg.segment] = seg
        self.current = seg

    def close_segment(self, now: float) -> None:
        seg = self.current
        if seg is not None and seg.t_end is None:
            # an explicit level (RunLevel) takes the window the load engine measured it over, when it has one
            seg.close(now, self.engine.horizon(now), self.engine.last_bounds if seg.explicit else None)
            if not len(seg.client):  # shorter than a client sample: the latest second stands for it
                seg.client.add(self.health.cpu_pct, self.health.lag_max)
        self.current = None

    def segment_result(self, seg: SegmentStats, horizon: float | None = None,
                       now: float | None = None) -> LevelResult | None:
        """The segment as a level now, its server stats over the same window (None before it has a window)."""
        now = time.perf_counter() if now is None else now
        return seg.level(self.series, self.engine.horizon(now) if horizon is None else horizon, now, self._clocks)

    def level_settled(self, segment: int) -> bool:
        """Whether live segment `segment` has its window start (settled, or the settle cap hit: see
        SegmentStats.steady); the ladder waits on this before it measures a level."""
        seg = self.segments.get(segment)
        if seg is None:
            return False
        now = time.perf_counter()
        seg.advance(self.engine.horizon(now), now)
        return seg.settled

    # ------------------------------------------------------------ commands

    def handle(self, cmd: Command) -> None:
        if self.queued is not None and not isinstance(cmd, Stop):
            self.queued.append(cmd)
            return
        apply_command(self, cmd)

    # ------------------------------------------------------------ saving

    def segment_levels(self) -> list[LevelResult]:
        """The levels visited: segments with a window (settled), not shorter than min_segment_s unless asked
        for. A level passed through on the way to another (key repeat) never settles: not a measurement."""
        now = time.perf_counter()
        h = self.engine.horizon(now)
        out = []
        for seg in self.segments.values():
            if (seg.concurrency <= 0 and seg.rate is None) or seg.seen == 0:
                continue
            lv = self.segment_result(seg, h, now)
            if lv is None or (lv.duration_s < self.cfg.min_segment_s and not seg.explicit):
                continue
            out.append(with_endpoints(lv, self.targets) if self.targets is not None else lv)
        return out

    def _sample_client(self) -> None:
        """One sample a second of the load engine's CPU and worst loop lag (engine/client_health.py)
        into the open segment, so a level can say when the client set the pace."""
        now = time.perf_counter()
        if self.current is not None and now - self._client_sampled >= 0.95:
            self._client_sampled = now
            self.current.client.add(self.health.cpu_pct, self.health.lag_max)

    def save(self, out_dir: str | None = None) -> tuple[str, ...]:
        return save_session(self, out_dir)

    def _final_save(self) -> None:
        final_save(self)

    def check_self_pause(self) -> None:
        """The session's own reasons to stop loading, looked at every tick: the error budget tripped (the load
        engine already paused itself) or the records file cannot be written (paused here: what the server does
        next would be measured and lost). The open segment ends there; a running ladder stops, naming why."""
        why = self.log.error or self.engine.tripped or ""
        if not why or why == self.paused_why:
            return
        self.paused_why = why
        if not self.engine.paused:
            self.engine.pause()
        self.close_segment(time.perf_counter())
        self.mark("pause", why=why)
        if self.auto is not None and self.auto.running:
            self.auto.stop(why)
        self.message = f"load paused: {why}"

    # ------------------------------------------------------------ snapshot

    def _server_view(self, now: float) -> ServerView:
        return server_view(self.series, window_s=self.cfg.window_s, now_mono=time.monotonic(), model=self.spec.model,
                           version=self.version, error=self.server_error, gpu=self._gpu, gen_rates=self._gen_rates,
                           ttft_mean=server_ttft(self.series, self.window, self._clocks, now))

    def refresh_rows(self) -> None:
        """The segment table and the knee change slowly: recomputed at 1 Hz and on demand."""
        self._sample_client()
        levels = self.segment_levels()
        self.rows = segment_rows(levels)
        same = self.knee_levels(levels)
        slo = self.auto.slo if self.auto is not None else ()
        self.knee_result = find_knee(same, slo=slo) if len(same) >= 2 else None
        self.knee = self.knee_result.summary if self.knee_result else ""
        ladder = self.auto.segment_ids if self.auto is not None else set()
        # the curve's axis is concurrency: the closed loop's levels (an open level's cap is not its load)
        self.curve = curve_points(self.knee_levels(levels, mode="closed"), ladder)

    def knee_levels(self, levels: list[LevelResult], mode: str | None = None) -> list[LevelResult]:
        """The levels a knee is looked for among: the current server config's (two configs are different
        servers) and one loop's, the current one's unless `mode` says (concurrency and rate are different axes)."""
        rate = (mode or self.mode) == "open"
        return [lv for lv in levels if lv.server_config == self.server_config and (lv.request_rate is not None) == rate]

    def snapshot(self) -> Snapshot:
        rows, knee = self.rows, self.knee
        now = time.perf_counter()
        self.window.evict(now)
        w = self.window
        status = self.status
        if status is EngineStatus.RUNNING and (self.engine.paused or self.paused_why):
            status = EngineStatus.PAUSED
        h = self.health
        op = self.open if self.open_loop else None
        lag = latency_view(self.lag.values(now), LAG_EDGES)
        tok_s = w.out_tok_s(now)
        return Snapshot(
            t=now - self._t0, status=status,
            target_concurrency=self.engine.target if op is None else self.closed_target,
            in_flight=self.engine.in_flight, segment=self.engine.segment, window_s=self.cfg.window_s,
            out_tok_s=tok_s, req_s=w.req_s(now), completed_total=self.completed_total,
            failed_total=self.failed_total, tok_s_history=tuple(self.tok_hist[-HISTORY:]),
            ttft=latency_view(w.ttft_values(), TTFT_EDGES), itl=w.itl_view(ITL_EDGES),
            e2el=latency_view(w.e2el_values(), E2EL_EDGES),
            failures=tuple(sorted(self.failures.items(), key=lambda kv: -kv[1])),
            last_error=self.last_error, client_cpu_pct=h.cpu_pct, loop_lag_ms=h.lag_max,
            client_limited=bool(why := client_limit_why(h.cpu_pct, h.lag_max)), client_limited_why=why,
            server=self._server_view(now), segments=rows, records_path=str(self.log.path),
            simulated=self.cfg.simulated, message=self.message, saved=self.saved, knee=knee, ack=self.ack,
            curve=self.curve, verdict=self.knee_result,
            auto=self.auto_state if self.auto is not None and self.auto.running else "",  # "" = no ladder runs
            paused_why=self.paused_why, save_error=self.save_error, mode=self.mode,
            request_rate=None if op is None else op.rate, burstiness=None if op is None else op.burstiness,
            rate_cap=0 if op is None else op.cap, schedule_lag=lag,
            behind_schedule=op is not None and behind_schedule(op.rate, lag.p99),
            endpoints=endpoint_rows(self.targets, w, tok_s) if self.targets is not None else (),
            exit_code=self.exit_code,
        )

    # ------------------------------------------------------------ background tasks

    async def _per_second(self) -> None:
        self.health.mark()
        while True:
            await asyncio.sleep(1.0)
            self.health.sample_cpu()
            wall = time.perf_counter()
            self.window.evict(wall)
            self.tok_hist.append(self.window.out_tok_s(wall))
            del self.tok_hist[:-HISTORY]
            self.log.flush()
            self._gpu = sample_gpus()  # () without NVML: the face then hides its GPU panel

    def _on_sample(self, s: ServerSample) -> None:
        self.series.add(s)
        self.server_error = ""

    def _on_error(self, msg: str) -> None:
        self.server_error = msg

    async def run(self) -> None:
        loop_tasks = [asyncio.create_task(self.health.lag_monitor()), asyncio.create_task(self._per_second())]
        if self.fleet is not None and not await start_fleet(self):
            await not_started(self, loop_tasks)
            return
        tls = {"ca_cert": self.spec.ca_cert, "insecure": self.spec.insecure}
        poller = server_poller(self)
        loop_tasks.append(asyncio.create_task(poller.run()))
        try:
            headers = {"Authorization": f"Bearer {self.spec.api_key}"} if self.spec.api_key else {}
            async with side_client(self.spec.url, headers, timeout=5.0, **tls) as c:
                self.version, _ = await fetch_info(c)
        except Exception:  # the version is a label, never a reason to stop
            pass
        self.status = EngineStatus.RUNNING
        if self.cfg.start_paused:
            self.engine.pause()
        if self.cfg.start_rate:
            self.handle(SetMode("open", self.cfg.start_rate, self.cfg.burstiness, self.cfg.rate_cap,
                                self.cfg.start_concurrency))
        elif self.cfg.start_concurrency:
            self.handle(SetConcurrency(self.cfg.start_concurrency))
        period = 1.0 / self.cfg.hz
        tick = 0
        try:
            while not self._stop.is_set():
                self.check_self_pause()
                if tick % max(1, int(self.cfg.hz)) == 0:
                    self.refresh_rows()
                self.emit(self.snapshot())
                tick += 1
                try:
                    await asyncio.wait_for(self._stop.wait(), period)
                except asyncio.TimeoutError:
                    pass
        except Exception as e:
            # the last Snapshot says so: a face would otherwise keep showing the final numbers as if live
            self.status, self.message = EngineStatus.ERROR, f"engine error: {type(e).__name__}: {e}"
            raise
        finally:
            if self.status is not EngineStatus.ERROR:
                self.status = EngineStatus.STOPPED
            poller.stop()
            if self.open is not None:
                self.open.stop()
            self.close_segment(time.perf_counter())
            await self.engine.stop()
            for t in loop_tasks:
                t.cancel()
            await asyncio.gather(*loop_tasks, return_exceptions=True)
            if self.fleet is not None:  # shards, exporter, metrics source: nothing outlives the session
                try:
                    await self.fleet.close()
                except Exception as e:  # what was measured is still saved below
                    self.message = f"closing the fleet: {type(e).__name__}: {e}"
            self._final_save()
            self.log.close()
            try:
                self.refresh_rows()
            finally:
                self.emit(self.snapshot())  # the last word (STOPPED, or ERROR and why), even when the rows fail
