"""Test doubles for the dashboard: the engine process (FakeEngine, an EngineLink) and a launched server
(FakeServer, a ServerHandle), used by tests/tui, the SVG snapshots and bench/ui_cpu.py.

Both speak the real types only (EngineStatus, GpuSample, ServerState, the Command dataclasses): a double that
invents its own field names lets a real producer and its consumer drift apart while every test passes.

`FakeEngine` records every Command in `sent` and answers with Snapshots that acknowledge the commands it applied
(`ack`); `hold()` keeps commands unapplied until `release()`, as a busy engine would:

* fixed mode (default): one scripted Snapshot (``sample_snapshot()`` unless given), re-emitted only when a
  command changed what it shows (target, paused, saved paths). Numbers never move, so SVG snapshots are stable.
* evolving mode (``evolve=True``): a new Snapshot every ``period`` seconds of its clock; in_flight follows the
  target unless paused, throughput and latency wobble deterministically, histories grow, each SetConcurrency
  opens a new segment. Good for pilot tests and for measuring the UI's CPU cost.

Nothing here imports textual: the fakes are plain data.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from qbench_tui.engine.knee import Knee
from qbench_tui.engine.snapshot import (
    AutoLadder,
    Command,
    CurvePoint,
    EngineStatus,
    LatencyView,
    Pause,
    ResetWindow,
    Resume,
    RunLevel,
    Save,
    SegmentRow,
    ServerView,
    SetConcurrency,
    Snapshot,
    Stop,
    StopAuto,
)
from qbench_tui.server.gpu import GpuSample
from qbench_tui.server.handle import Phase, ServerState

_EDGES = tuple(round(0.005 * (1.35**i), 6) for i in range(25))  # 5 ms .. ~7 s, log-spaced


def _bell(center_bin: float, width: float, total: int, n: int = len(_EDGES) - 1) -> tuple[int, ...]:
    w = [math.exp(-((i - center_bin) ** 2) / (2 * width * width)) for i in range(n)]
    s = sum(w) or 1.0
    return tuple(int(round(total * x / s)) for x in w)


def _view(center_bin: float, width: float, total: int) -> LatencyView:
    counts = _bell(center_bin, width, total)
    mids = [(_EDGES[i] * _EDGES[i + 1]) ** 0.5 for i in range(len(counts))]

    def q(p: float) -> float:
        acc, target = 0, p * sum(counts)
        for m, c in zip(mids, counts):
            acc += c
            if acc >= target:
                return round(m, 6)
        return round(mids[-1], 6)

    last = max((i for i, c in enumerate(counts) if c), default=0)
    mean = sum(m * c for m, c in zip(mids, counts)) / max(1, sum(counts))
    return LatencyView(
        edges=_EDGES,
        counts=counts,
        count=sum(counts),
        mean=round(mean, 6),
        p50=q(0.5),
        p90=q(0.9),
        p99=q(0.99),
        max=round(_EDGES[last + 1], 6),
    )


# engine/knee.find_knee's words for sample_snapshot's levels 8 -> 32 -> 64
KNEE_CAUSE = ("the KV cache is full (max usage 78%, 12 preemptions): requests wait for blocks or are recomputed; "
              "more GPU memory, a shorter max_model_len or a smaller max_num_seqs help")
KNEE = ("saturated past concurrency 32: going to 64 changed output tok/s by +14% for +100% concurrency while mean "
        f"latency rose +8%. Peak 3288 tok/s at 64. Why: {KNEE_CAUSE}")


def sample_curve() -> tuple[CurvePoint, ...]:
    """sample_snapshot's three levels as the curve: one by hand, two by the ladder, the open one not yet steady."""
    return (
        CurvePoint(8, 1010.2, 8.0, 0.95, 1.62, 0.090),
        CurvePoint(32, 2890.7, 24.0, 1.25, 2.41, 0.180, auto=True),
        CurvePoint(64, 3288.1, 44.7, 1.38, 3.94, 0.420, steady=False, auto=True),
    )


def sample_verdict() -> Knee:
    return Knee(saturated=True, knee_concurrency=32, peak_concurrency=64, peak_output_throughput=3288.1,
                cause=KNEE_CAUSE, summary=KNEE, cause_kind="kv_cache", interactive_concurrency=32,
                interactive_why="C=32: 2891 tok/s, 24.00 req/s, latency p50 1.25 s / p99 2.41 s, TTFT p99 180 ms",
                batch_concurrency=64, batch_why="C=64: the peak, 3288 tok/s, 44.70 req/s, latency p50 1.38 s")


def sample_snapshot(*, simulated: bool = False, schema: str = "v1", gpu: bool = True,
                    verdict: bool = True) -> Snapshot:
    """A busy, fixed Snapshot (C=64, three segments visited) with every panel populated, the saturation verdict
    (Snapshot.knee and .verdict) included as the engine gives it for two levels or more (verdict=False: not yet)."""
    tok_hist = tuple(float(900 + 40 * i + (35 if i % 3 == 0 else 0)) for i in range(60))
    kv_hist = tuple(round(0.2 + 0.01 * i, 3) for i in range(60))
    run_hist = tuple(float(min(61, 8 + i)) for i in range(60))
    wait_hist = tuple(float(max(0, i - 50)) for i in range(60))
    gen_hist = tuple(t * 1.01 for t in tok_hist)
    if schema == "none":
        server = ServerView(reachable=True, schema="none", model="my-model")
    else:
        server = ServerView(
            reachable=True,
            schema=schema,
            model="Qwen/Qwen2.5-14B-Instruct-AWQ",
            vllm_version="0.11.0",
            engines=1,
            kv_cache_usage=0.78,
            prefix_hit_rate=0.4215,
            num_running=61.0,
            num_waiting=3.0,
            preemptions_total=12.0,
            preemptions_per_s=0.25,
            gen_tok_s=3301.4,
            prompt_tok_s=8200.0,
            kv_history=kv_hist,
            running_history=run_hist,
            waiting_history=wait_hist,
            gen_tok_s_history=gen_hist,
            num_gpu_blocks=9000,
            block_size=16,
            gpu=(GpuSample(index=0, name="NVIDIA H200", util_pct=97.0, mem_used_mib=120_000.0,
                           mem_total_mib=143_771.0, power_w=612.0),) if gpu else (),
        )
    segs = (
        SegmentRow(1, 8, 30.0, 240, 0, 8.0, 1010.2, 0.98, 0.041, 0.090, 0.0121, 0.40, 1015.0, 0.11, 0.0, 0.0),
        SegmentRow(2, 32, 30.0, 720, 1, 24.0, 2890.7, 1.31, 0.065, 0.180, 0.0150, 0.41, 2900.0, 0.45, 0.0, 1.0),
        SegmentRow(3, 64, 21.5, 960, 4, 44.7, 3288.1, 1.42, 0.110, 0.420, 0.0190, 0.42, 3301.4, 0.78, 12.0, 5.0),
    )
    return Snapshot(
        t=81.5,
        status=EngineStatus.RUNNING,
        target_concurrency=64,
        in_flight=63,
        segment=3,
        window_s=30.0,
        out_tok_s=3288.1,
        req_s=44.7,
        completed_total=1920,
        failed_total=5,
        tok_s_history=tok_hist,
        ttft=_view(8.0, 2.0, 960),
        itl=_view(2.5, 1.2, 90_000),
        e2el=_view(17.0, 1.5, 960),
        failures=(("timeout", 3), ("http 503", 2)),
        last_error="http 503: Service Unavailable (queue full)",
        client_cpu_pct=23.5,
        loop_lag_ms=1.8,
        client_limited=False,
        server=server,
        segments=segs,
        records_path="results/requests.jsonl",
        simulated=simulated,
        curve=sample_curve(),
        knee=KNEE if verdict else "",
        verdict=sample_verdict() if verdict else None,
    )


class FakeEngine:
    """EngineLink for tests: records commands, returns scripted or evolving Snapshots."""

    def __init__(
        self,
        base: Snapshot | None = None,
        *,
        evolve: bool = False,
        period: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        history: int = 300,
    ) -> None:
        self.base = base if base is not None else sample_snapshot()
        self.evolve = evolve
        self.period = period
        self.clock = clock
        self.sent: list[Command] = []
        self.closed = False
        self.polls = 0
        self.ack = 0  # seq of the last command applied, echoed in every Snapshot
        self.applied = 0  # commands applied (a test may send unnumbered ones)
        self._held: list[Command] | None = None  # while held: received, not yet applied
        self._levels = 0  # SetConcurrency/RunLevel applied: each opens a segment
        self._stopped = False
        # fixed mode starts from the scripted numbers; evolving mode from an idle engine, like the real one
        self.target = 0 if evolve else self.base.target_concurrency
        self.paused = self.base.status == EngineStatus.PAUSED
        self.saved: tuple[str, ...] = ()
        self._dirty = True
        self._t0 = clock()
        self._last_emit = -math.inf
        self._step = 0
        self._in_flight = 0.0 if evolve else float(self.base.in_flight)
        self._tok_hist: deque[float] = deque(maxlen=history)
        self._kv_hist: deque[float] = deque(maxlen=history)
        self._segments: list[SegmentRow] = [] if evolve else list(self.base.segments)
        self._seg_start = 0.0
        self._completed = 0
        self._failed = 0
        self._window_reset_at = 0.0
        self.auto = self.base.auto  # Snapshot.auto: the ladder's progress, "" when none runs
        self._ladder: AutoLadder | None = None
        self._ladder_segments: set[int] = set()

    # ------------------------------------------------------------------ EngineLink
    def send(self, cmd: Command) -> None:
        if self.closed:
            raise RuntimeError("FakeEngine: send after close")
        self.sent.append(cmd)
        if self._held is not None:
            self._held.append(cmd)
            self._dirty = True  # snapshots go on, showing the state from before these commands
            return
        self._apply(cmd)

    def hold(self) -> None:
        """From now on commands are received but not applied (nor acknowledged) until release()."""
        self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for cmd in held:
            self._apply(cmd)

    def _apply(self, cmd: Command) -> None:
        self.ack = max(self.ack, cmd.seq)
        self.applied += 1
        if isinstance(cmd, SetConcurrency):
            self.target = cmd.n
            self._new_segment()
        elif isinstance(cmd, RunLevel):
            self.target = cmd.concurrency
            self._new_segment()
        elif isinstance(cmd, Pause):
            self.paused = True
        elif isinstance(cmd, Resume):
            self.paused = False
        elif isinstance(cmd, ResetWindow):
            self._window_reset_at = self.clock() - self._t0
        elif isinstance(cmd, Save):
            out = cmd.out_dir
            self.saved = (os.path.join(out, "qbench_fake.txt"), os.path.join(out, "qbench_fake.json"))
        elif isinstance(cmd, Stop):
            self.paused = self._stopped = True
        elif isinstance(cmd, AutoLadder):
            # as the real ladder: it moves the level itself, starting at `start`
            self._ladder = cmd
            self.target = cmd.start
            self._new_segment()
            self._ladder_segments.add(self._levels)
            self.auto = f"grow: C={cmd.start} until steady"
        elif isinstance(cmd, StopAuto):
            self._ladder = None
            self.auto = ""
        self._dirty = True

    def _ladder_step(self, k: int) -> None:
        """Evolving mode: the ladder doubles the level every 16 snapshots, up to its maximum."""
        lad = self._ladder
        if lad is None or self.paused or k % 16:
            return
        if self.target * 2 > lad.max_concurrency:
            self._ladder, self.auto = None, ""
            return
        self.target *= 2
        self._new_segment()
        self._ladder_segments.add(self._levels)
        self.auto = f"grow: C={self.target} until steady"

    def poll(self) -> Snapshot | None:
        if self.closed:
            return None
        self.polls += 1
        if self.evolve:
            now = self.clock() - self._t0
            if now - self._last_emit < self.period:
                return None
            self._last_emit = now
            return self._evolved(now)
        if not self._dirty:
            return None
        self._dirty = False
        return self._fixed()

    def close(self) -> None:
        self.closed = True

    # ------------------------------------------------------------------ helpers
    def push(self, snapshot: Snapshot) -> None:
        """Fixed mode: make `snapshot` the scripted one; the next poll returns it (with command effects). Its
        target and status become the engine's, as if something other than this face had moved them."""
        self.base = snapshot
        self.target = snapshot.target_concurrency
        self.paused = snapshot.status == EngineStatus.PAUSED
        self._dirty = True

    def commands(self, kind: type) -> list[Command]:
        return [c for c in self.sent if isinstance(c, kind)]

    def _status(self) -> EngineStatus:
        if self._stopped:
            return EngineStatus.STOPPED
        return EngineStatus.PAUSED if self.paused else EngineStatus.RUNNING

    def _fixed(self) -> Snapshot:
        b = self.base
        return replace(
            b,
            status=self._status() if self.applied else b.status,
            target_concurrency=self.target,
            in_flight=0 if self.paused else min(self.target, b.in_flight),
            segment=b.segment + self._levels,
            saved=self.saved,
            ack=self.ack,
            auto=self.auto,
        )

    def _new_segment(self) -> None:
        self._levels += 1
        self._seg_start = self.clock() - self._t0

    def _curve(self) -> tuple[CurvePoint, ...]:
        """One point per concurrency (the latest segment at it), by concurrency, as the engine's curve."""
        latest = {r.concurrency: r for r in self._segments if r.concurrency > 0}
        return tuple(CurvePoint(r.concurrency, r.tok_s, r.req_s, r.avg_latency, (r.avg_latency or 0) * 1.8,
                                r.ttft_p99, steady=r.seconds >= 3.0, auto=r.segment in self._ladder_segments)
                     for _, r in sorted(latest.items()))

    def _evolved(self, now: float) -> Snapshot:
        self._step += 1
        k = self._step
        self._ladder_step(k)
        target = 0 if self.paused else self.target
        # in_flight approaches the target over ~1 s, as a pool of workers ramps or drains
        self._in_flight += (target - self._in_flight) * 0.5
        inflight = int(round(self._in_flight))
        wobble = 1.0 + 0.05 * math.sin(k / 3.0)
        tok_s = 55.0 * inflight * wobble / (1.0 + inflight / 96.0)
        req_s = tok_s / 110.0
        if k % 4 == 0:  # one history point per second
            self._tok_hist.append(round(tok_s, 1))
            self._kv_hist.append(round(min(1.0, inflight / 90.0) * (0.95 + 0.05 * math.sin(k / 7.0)), 3))
        self._completed += int(round(req_s * self.period))
        if k % 40 == 0:
            self._failed += 1
        level_scale = 1.0 + inflight / 32.0
        seg_no = self._levels
        row = SegmentRow(
            segment=seg_no,
            concurrency=self.target,
            seconds=round(now - self._seg_start, 1),
            completed=self._completed,
            failed=self._failed,
            req_s=round(req_s, 2),
            tok_s=round(tok_s, 1),
            avg_latency=0.9 * level_scale,
            ttft_p50=0.03 * level_scale,
            ttft_p99=0.09 * level_scale,
            itl_p50=0.011 * (1 + inflight / 128.0),
            prefix_hit_rate=0.4,
            server_gen_tok_s=round(tok_s * 1.01, 1),
            max_kv_usage=self._kv_hist[-1] if self._kv_hist else 0.0,
        )
        if seg_no:
            if self._segments and self._segments[-1].segment == seg_no:
                self._segments[-1] = row
            else:
                self._segments.append(row)
        shift = math.log(level_scale, 1.35)
        kv = self._kv_hist[-1] if self._kv_hist else 0.0
        return Snapshot(
            t=round(now, 3),
            status=self._status(),
            target_concurrency=self.target,
            in_flight=inflight,
            segment=seg_no,
            window_s=30.0,
            out_tok_s=round(tok_s, 1),
            req_s=round(req_s, 2),
            completed_total=self._completed,
            failed_total=self._failed,
            tok_s_history=tuple(self._tok_hist),
            ttft=_view(6.0 + shift + 0.3 * math.sin(k / 5.0), 1.8, max(1, int(req_s * 30))),
            itl=_view(2.0 + shift / 3 + 0.2 * math.sin(k / 4.0), 1.0, max(1, int(tok_s * 30))),
            e2el=_view(15.0 + shift + 0.3 * math.sin(k / 6.0), 1.4, max(1, int(req_s * 30))),
            failures=(("timeout", self._failed),) if self._failed else (),
            last_error="timeout after 600 s" if self._failed else "",
            client_cpu_pct=round(5 + inflight * 0.4, 1),
            loop_lag_ms=round(0.5 + inflight / 40.0, 2),
            client_limited=False,
            server=replace(
                self.base.server,
                kv_cache_usage=kv,
                num_running=float(inflight),
                num_waiting=float(max(0, inflight - 60)),
                gen_tok_s=round(tok_s * 1.01, 1),
                kv_history=tuple(self._kv_hist),
            ),
            segments=tuple(self._segments),
            records_path="results/requests.jsonl",
            simulated=self.base.simulated,
            saved=self.saved,
            ack=self.ack,
            curve=self._curve(),
            auto=self.auto,
        )


class FakeServer:
    """ServerHandle whose state tests move by hand (`advance`, `fail`). Satisfies the whole protocol
    (tests/server/test_handle_protocol.py): `restart()` refuses unless `restartable`, as the simulator's does, and
    `wait_ready()` blocks until a test moves the state, as a real launch does."""

    def __init__(self, *, state: str = "starting", restartable: bool = False, config_label: str = "",
                 url: str = "http://127.0.0.1:8000",
                 command_line: str = "vllm serve Qwen/Qwen2.5-14B-Instruct-AWQ --port 8000") -> None:
        self.url = url
        self.command_line = command_line
        self._restartable = restartable
        self._config_label = config_label
        self._state = ServerState(state)
        self._changed = threading.Condition()  # wait_ready runs in a worker thread; tests move state on the loop
        self._returncode: int | None = None
        self._error = ""
        self._phases: list[Phase] = [Phase("process started", 0.0)]
        self._log: list[str] = ["INFO starting vLLM API server"]
        self._kv_tokens: int | None = None
        self._max_conc: float | None = None
        self.stopped = 0
        self.restarts: list[dict] = []

    def _set_state(self, state: ServerState) -> None:
        with self._changed:
            self._state = state
            self._changed.notify_all()

    # ------------------------------------------------------------------ ServerHandle
    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def error(self) -> str:
        return self._error

    @property
    def config_label(self) -> str:
        return self._config_label

    @property
    def restartable(self) -> bool:
        return self._restartable

    def phases(self) -> list[Phase]:
        return list(self._phases)

    def log_tail(self, n: int = 40) -> list[str]:
        return self._log[-n:] if n > 0 else []

    def kv_cache_tokens(self) -> int | None:
        return self._kv_tokens

    def max_concurrency(self) -> float | None:
        return self._max_conc

    def alive(self) -> bool:
        return self._state in (ServerState.STARTING, ServerState.READY)

    def wait_ready(self, timeout: float | None = None, on_phase: Callable[[Phase], None] | None = None) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._state is not ServerState.STARTING,
                                          30.0 if timeout is None else timeout):
                raise TimeoutError("FakeServer: still starting")
        if self._state is not ServerState.READY:
            raise RuntimeError(f"FakeServer: {self._state} {self._error}".strip())
        if on_phase is not None:
            for ph in self._phases:
                on_phase(ph)

    def restart(self, overrides: Mapping[str, Any]) -> None:
        """Like LaunchedServer.restart: stop, take the flags, start again (tests call advance() for ready)."""
        if not self._restartable:
            raise RuntimeError("FakeServer: not restartable")
        self.restarts.append(dict(overrides))
        self.stop()
        self._config_label = " ".join(f"{k}={v}" for k, v in overrides.items())
        self._phases = [Phase("process started", 0.0)]
        self._log.append(f"INFO restarting with {self._config_label}")
        self._returncode = None
        self._set_state(ServerState.STARTING)

    def stop(self) -> None:
        self.stopped += 1
        if self._state in (ServerState.STARTING, ServerState.READY):
            self._returncode = 0  # as a process that exits cleanly on SIGINT
            self._set_state(ServerState.STOPPED)

    # ------------------------------------------------------------------ test controls
    def add_phase(self, name: str, at: float, detail: str = "", log: str = "") -> None:
        self._phases.append(Phase(name, at, detail))
        if log:
            self._log.append(log)

    def advance(self, kv_tokens: int = 123_456, max_conc: float = 30.1) -> None:
        """Walk through the usual phases and become ready."""
        self.add_phase("loading weights", 1.0, log="INFO Loading weights")
        self.add_phase("weights loaded", 9.5, "5.2 GiB", log="INFO Loading weights took 8.50 s")
        self._kv_tokens, self._max_conc = kv_tokens, max_conc
        self.add_phase("KV cache", 20.0, f"KV cache {kv_tokens:,} tokens, max concurrency {max_conc}x",
                       log=f"INFO GPU KV cache size: {kv_tokens:,} tokens")
        self.add_phase("ready", 31.0, log="INFO Application startup complete.")
        self._set_state(ServerState.READY)

    def fail(self, returncode: int = 1, error: str = "CUDA out of memory") -> None:
        self._log.append(f"ERROR torch.OutOfMemoryError: {error}")
        self._returncode = returncode
        self._error = error
        self._set_state(ServerState.FAILED)
