"""A live load session: the load engine, the /metrics poller, rolling windows and segments, published as
Snapshots. It runs on one asyncio loop inside the engine process (engine/process.py) and never renders."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..report.files import RunMeta, result_basename, write_results
from ..server.gpu import GpuSample, sample_gpus
from .auto_live import LiveLadder
from .knee import Knee, find_knee
from .load import LoadEngine
from .metrics_parse import ServerSample
from .prompts import describe_source, make_prompt_source
from .recordlog import RecordLog
from .records import RequestRecord, RequestSpec
from .result import LevelResult, server_level
from .rolling import RollingWindow
from .segments import SegmentStats
from .server_poll import MetricsPoller, fetch_info, side_client
from .server_series import ServerSeries
from .snapshot import (
    AutoLadder,
    Command,
    CurvePoint,
    EngineStatus,
    Pause,
    ResetWindow,
    Resume,
    RunLevel,
    Save,
    SegmentRow,
    ServerConfigChanged,
    ServerView,
    SetConcurrency,
    Snapshot,
    Stop,
    StopAuto,
    clamp_concurrency,
)
from .stats import latency_view
from .views import GenRates, client_limit_why, curve_points, segment_rows
from .window import Clocks

HISTORY = 240  # points kept for sparklines/charts: wider than any chart we draw
LAG_PERIOD = 0.05
MIN_SEGMENT_S = 2.0  # shorter segments are transitions, not levels (SessionConfig.min_segment_s)


def _log_edges(lo: float = 1e-3, hi: float = 120.0, n: int = 40) -> tuple[float, ...]:
    import math

    step = (math.log10(hi) - math.log10(lo)) / n
    return tuple(10 ** (math.log10(lo) + i * step) for i in range(n + 1))


TTFT_EDGES = _log_edges(1e-3, 120.0, 40)
ITL_EDGES = _log_edges(1e-4, 10.0, 40)
E2EL_EDGES = _log_edges(1e-2, 600.0, 40)


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


class EngineSession:
    def __init__(self, cfg: SessionConfig, emit: Callable[[Snapshot], None]) -> None:
        self.cfg = cfg
        self.emit = emit
        self.spec = cfg.spec
        prompts = make_prompt_source(cfg.prompt, cfg.prompts_file, cfg.prompt_len, cfg.unique_prefix)
        self.engine = LoadEngine(cfg.spec, prompts, on_record=self._on_record)
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
        self.base = result_basename(cfg.spec.model, self.meta.started)
        self.log = RecordLog(Path(cfg.out_dir) / f"{self.base}.requests.jsonl")
        self.segments: dict[int, SegmentStats] = {}
        self.current: SegmentStats | None = None
        self.server_config = cfg.server_config
        self.failures: dict[str, int] = {}
        self.last_error = ""
        self.completed_total = 0
        self.failed_total = 0
        self.tok_hist: list[float] = []
        self.saved: tuple[str, ...] = ()
        self.message = ""
        self.status = EngineStatus.STARTING  # RUNNING once the server was asked who it is; PAUSED is derived
        self.ack = 0  # seq of the last command handled: the face shows its own intent until this reaches it
        self._t0 = time.perf_counter()
        self._lag_ms = 0.0
        self._lag_max = 0.0
        self._cpu_pct = 0.0
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

    # ------------------------------------------------------------ records and segments

    def _on_record(self, r: RequestRecord) -> None:
        self.window.add(r)
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

    def _open_segment(self) -> None:
        now = time.perf_counter()
        self._close_segment(now)
        seg = SegmentStats(self.engine.segment, self.engine.target, now, mono_start=time.monotonic(),
                           server_config=self.server_config, timeline=self.engine.timeline)
        self.segments[seg.segment] = seg
        self.current = seg

    def _close_segment(self, now: float) -> None:
        seg = self.current
        if seg is not None and seg.t_end is None:
            # an explicit level (RunLevel) takes the window the load engine measured it over, when it has one
            seg.close(now, self.engine.horizon(now), self.engine.last_bounds if seg.explicit else None)
            if not len(seg.client):  # shorter than a client sample: the latest second stands for it
                seg.client.add(self._cpu_pct, self._lag_max)
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
        # commands arrive in order on one pipe; a command that changes nothing is still acknowledged
        self.ack = max(self.ack, cmd.seq)
        if isinstance(cmd, SetConcurrency):
            n = clamp_concurrency(cmd.n)
            if n == self.engine.target and self.current is not None:
                return
            self.engine.set_concurrency(n)
            if not self.engine.paused:
                self._open_segment()
            self.message = f"concurrency {n}"
        elif isinstance(cmd, Pause):
            if not self.engine.paused:
                self.engine.pause()
                self._close_segment(time.perf_counter())
                self.message = "paused: in-flight requests finish, no new ones start"
        elif isinstance(cmd, Resume):
            if self.engine.paused:
                self.engine.resume()
                self.engine.new_segment()
                self._open_segment()
                self.message = "resumed"
        elif isinstance(cmd, ResetWindow):
            self.window.reset(time.perf_counter())
            self.tok_hist.clear()
            self.message = "rolling window reset"
        elif isinstance(cmd, RunLevel):
            self._run_level(cmd)
        elif isinstance(cmd, Save):
            self.save(cmd.out_dir)
        elif isinstance(cmd, Stop):
            self._stop.set()
        elif isinstance(cmd, AutoLadder):
            if self.auto is not None and self.auto.running:  # `a` again, or the palette twice: one ladder at a time
                self.auto.stop("stopped by hand")
            else:
                self.auto = LiveLadder(self, cmd)
                self.auto_state = f"auto: starting at {self.auto.spec.start}"
        elif isinstance(cmd, StopAuto):
            if self.auto is not None:
                self.auto.stop("stopped by hand")
        elif isinstance(cmd, ServerConfigChanged):
            if cmd.label != self.server_config:
                self.server_config = cmd.label
                self.meta.server_config = cmd.label  # the header names the latest; each level names its own
                if self.current is not None:  # what runs from now on runs against the new config
                    self.engine.new_segment()
                    self._open_segment()
                self.message = f"server config: {cmd.label}"

    def _run_level(self, cmd: RunLevel) -> None:
        if self._level_task and not self._level_task.done():
            self.message = "a level is already running"
            return

        async def level() -> None:
            self.engine.new_segment()
            self._open_segment()
            self.current.concurrency = cmd.concurrency  # type: ignore[union-attr]
            self.current.explicit = True  # type: ignore[union-attr]
            if cmd.mode == "wave":
                await self.engine.run_wave(cmd.concurrency)
            else:
                await self.engine.run_steady(cmd.concurrency, cmd.duration, cmd.requests, cmd.warmup)
            self._close_segment(time.perf_counter())
            self.message = f"level {cmd.concurrency} ({cmd.mode}) done"

        self._level_task = asyncio.create_task(level())

    # ------------------------------------------------------------ saving

    def segment_levels(self) -> list[LevelResult]:
        """The levels visited: segments with a window (settled), not shorter than min_segment_s unless asked
        for. A level passed through on the way to another (key repeat) never settles: not a measurement."""
        now = time.perf_counter()
        h = self.engine.horizon(now)
        out = []
        for seg in self.segments.values():
            if seg.concurrency <= 0 or seg.seen == 0:
                continue
            lv = self.segment_result(seg, h, now)
            if lv is None or (lv.duration_s < self.cfg.min_segment_s and not seg.explicit):
                continue
            out.append(lv)
        return out

    def _sample_client(self) -> None:
        """One sample a second of the load engine's CPU and worst loop lag (kept by _per_second/_lag_monitor)
        into the open segment, so a level can say when the client set the pace."""
        now = time.perf_counter()
        if self.current is not None and now - self._client_sampled >= 0.95:
            self._client_sampled = now
            self.current.client.add(self._cpu_pct, self._lag_max)

    def save(self, out_dir: str | None = None) -> tuple[str, ...]:
        out = Path(out_dir or self.cfg.out_dir)
        self.log.flush()
        levels = self.segment_levels()
        self.meta.vllm_version = self.version
        self.meta.levels = tuple(lv.max_concurrency or 0 for lv in levels)
        self.meta.config_sources = dict(self.cfg.config_sources)
        same = [lv for lv in levels if lv.server_config == self.server_config]
        try:
            txt, js = write_results(out, self.base, self.meta, levels, find_knee(same))
        except OSError as e:
            self.message = f"save failed: {e}"
            return ()
        self.saved = (str(txt), str(js), str(self.log.path))
        self.message = f"saved {txt}"
        return self.saved

    # ------------------------------------------------------------ snapshot

    def _server_view(self) -> ServerView:
        s = self.series
        last: ServerSample | None = s.latest()
        now = time.monotonic()
        w = self.cfg.window_s
        if last is None:
            return ServerView(reachable=False, schema="none", error=self.server_error, model=self.spec.model,
                              vllm_version=self.version, gpu=self._gpu)
        since = now - w
        return ServerView(
            reachable=True, schema=last.schema, error=self.server_error, model=self.spec.model,
            vllm_version=self.version, engines=last.engines, kv_cache_usage=last.kv_cache_usage,
            prefix_hit_rate=s.hit_rate(since), num_running=last.num_running, num_waiting=last.num_waiting,
            preemptions_total=last.num_preemptions, preemptions_per_s=s.rate("num_preemptions", w, now),
            gen_tok_s=s.rate("generation_tokens", w, now), prompt_tok_s=s.rate("prompt_tokens", w, now),
            kv_history=tuple(v or 0.0 for v in s.history("kv_cache_usage", HISTORY)),
            running_history=tuple(v or 0.0 for v in s.history("num_running", HISTORY)),
            waiting_history=tuple(v or 0.0 for v in s.history("num_waiting", HISTORY)),
            gen_tok_s_history=self._gen_rates(s),
            num_gpu_blocks=int(last.num_gpu_blocks) if last.num_gpu_blocks else None,
            block_size=int(last.block_size) if last.block_size else None, gpu=self._gpu,
            ttft_mean=self._server_ttft(),
        )

    def _server_ttft(self) -> float | None:
        """The server's mean TTFT over the rolling window's own span (requests whose first token came in it,
        as the client's TTFT view), so the two compare."""
        a, b = self.window.bounds(time.perf_counter())
        if b <= a:
            return None
        srv = server_level(self.series, self._clocks.to_mono(a), self._clocks.to_mono(b))
        return None if srv is None else srv.mean_ttft_s

    def refresh_rows(self) -> None:
        """The segment table and the knee change slowly: recomputed at 1 Hz and on demand."""
        self._sample_client()
        levels = self.segment_levels()
        self.rows = segment_rows(levels)
        # a knee across two server configs would compare different servers: only the current config's segments
        same = [lv for lv in levels if lv.server_config == self.server_config]
        slo = self.auto.slo if self.auto is not None else ()
        self.knee_result = find_knee(same, slo=slo) if len(same) >= 2 else None
        self.knee = self.knee_result.summary if self.knee_result else ""
        ladder = self.auto.segment_ids if self.auto is not None else set()
        self.curve = curve_points(same, ladder)

    def snapshot(self) -> Snapshot:
        rows, knee = self.rows, self.knee
        now = time.perf_counter()
        self.window.evict(now)
        w = self.window
        status = self.status
        if status is EngineStatus.RUNNING and self.engine.paused:
            status = EngineStatus.PAUSED
        return Snapshot(
            t=now - self._t0, status=status, target_concurrency=self.engine.target,
            in_flight=self.engine.in_flight, segment=self.engine.segment, window_s=self.cfg.window_s,
            out_tok_s=w.out_tok_s(now), req_s=w.req_s(now), completed_total=self.completed_total,
            failed_total=self.failed_total, tok_s_history=tuple(self.tok_hist[-HISTORY:]),
            ttft=latency_view(w.ttft_values(), TTFT_EDGES), itl=w.itl_view(ITL_EDGES),
            e2el=latency_view(w.e2el_values(), E2EL_EDGES),
            failures=tuple(sorted(self.failures.items(), key=lambda kv: -kv[1])),
            last_error=self.last_error, client_cpu_pct=self._cpu_pct, loop_lag_ms=self._lag_max,
            client_limited=bool(why := client_limit_why(self._cpu_pct, self._lag_max)), client_limited_why=why,
            server=self._server_view(), segments=rows, records_path=str(self.log.path),
            simulated=self.cfg.simulated, message=self.message, saved=self.saved, knee=knee, ack=self.ack,
            curve=self.curve, verdict=self.knee_result,
            auto=self.auto_state if self.auto is not None and self.auto.running else "",  # "" = no ladder runs
        )

    # ------------------------------------------------------------ background tasks

    async def _lag_monitor(self) -> None:
        """Event-loop lag: how late a 50 ms sleep wakes up. Past a few ms, client-side ITL is suspect."""
        window: list[float] = []
        while True:
            t = time.perf_counter()
            await asyncio.sleep(LAG_PERIOD)
            lag = max(0.0, time.perf_counter() - t - LAG_PERIOD) * 1000
            window.append(lag)
            if len(window) > int(1 / LAG_PERIOD):
                window.pop(0)
            self._lag_ms = lag
            self._lag_max = max(window)

    async def _per_second(self) -> None:
        last_wall, last_cpu = time.perf_counter(), time.process_time()
        while True:
            await asyncio.sleep(1.0)
            wall, cpu = time.perf_counter(), time.process_time()
            self._cpu_pct = 100.0 * (cpu - last_cpu) / max(1e-9, wall - last_wall)
            last_wall, last_cpu = wall, cpu
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
        loop_tasks = [asyncio.create_task(self._lag_monitor()), asyncio.create_task(self._per_second())]
        tls = {"ca_cert": self.spec.ca_cert, "insecure": self.spec.insecure}
        poller = MetricsPoller(self.spec.url, self.spec.api_key, 1.0, self._on_sample, self._on_error, **tls)
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
        if self.cfg.start_concurrency:
            self.handle(SetConcurrency(self.cfg.start_concurrency))
        period = 1.0 / self.cfg.hz
        tick = 0
        try:
            while not self._stop.is_set():
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
            self._close_segment(time.perf_counter())
            await self.engine.stop()
            for t in loop_tasks:
                t.cancel()
            await asyncio.gather(*loop_tasks, return_exceptions=True)
            self.log.close()
            try:
                self.refresh_rows()
            finally:
                self.emit(self.snapshot())  # the last word (STOPPED, or ERROR and why), even when the rows fail
