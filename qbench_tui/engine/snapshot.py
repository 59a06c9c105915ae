"""Messages between the engine process and its face (dashboard or headless printer).

Everything here is small, immutable and picklable: Snapshots go out at >= 4 Hz, Commands come in.

One owner for live control state: the engine. Each command carries a sequence number (`seq`, stamped by the face)
and each Snapshot names the last one the engine applied (`ack`), so a face can show what it asked for until the
engine has applied it, then the engine's word, with no clock involved.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from qbench_tui.engine.knee import Knee
from qbench_tui.server.gpu import GpuSample

MAX_CONCURRENCY = 4096


def clamp_concurrency(n: int) -> int:
    """The one bounds rule for a target concurrency, applied by the face before sending and the engine on receipt."""
    return max(0, min(MAX_CONCURRENCY, int(n)))


MIN_RATE = 0.01  # requests/s: one request every 100 s, below which a live level never gathers enough requests
MAX_RATE = 10_000.0  # requests/s: past what one client process sends (PERFORMANCE.md), a typo rather than a load


def clamp_rate(r: float) -> float:
    """The one bounds rule for an open loop's request rate (face before sending, engine on receipt); a rate that
    is not a number falls to the minimum."""
    r = float(r)
    if r != r:  # NaN
        return MIN_RATE
    return max(MIN_RATE, min(MAX_RATE, r))


# ---------------------------------------------------------------- commands (face -> engine)
# `seq` is left out of equality: a command means the same whichever number it travelled under.


@dataclass(frozen=True, slots=True)
class SetConcurrency:
    n: int
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Pause:
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Resume:
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class ResetWindow:
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class RunLevel:
    concurrency: int
    mode: str = "steady"  # "wave" | "steady"
    duration: float | None = None
    requests: int | None = None
    warmup: float = 0.0
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Save:
    """Write the classic .txt, the .json and the request records now (engine replies via Snapshot.saved)."""

    out_dir: str = "results"
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Stop:
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class ServerConfigChanged:
    """The server now runs with these flags (a launched server, or one restarted with new flags): segments opened
    from now on carry the label, and the knee is looked for among the segments of one config only."""

    label: str
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class AutoLadder:
    """Find the knee by itself: a geometric ladder from `start`, then refinement between the last good level and the
    first saturated one, each level held until steady, up to `max_concurrency` or `budget_s` seconds in all. `slo`
    pairs use the results' names, in seconds: (("ttft_p99", 2.0), ("itl_p99", 0.1)). `hold`: stay at the knee after."""

    start: int = 1
    max_concurrency: int = 1024
    budget_s: float = 900.0
    slo: tuple[tuple[str, float], ...] = ()
    hold: bool = False
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class StopAuto:
    """Stop a running ladder, keeping every level it measured (the load stays at the current level)."""

    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class SetMode:
    """Closed loop (a concurrency held) or open loop (requests sent at `rate` requests/s on gamma arrivals of shape
    `burstiness`, at most `max_concurrency` in flight, 0: no cap). Open: `rate` 0 lets the engine start from the
    request throughput it measures now. `concurrency`: the closed loop's target to keep (0: the engine's own)."""

    mode: str  # "closed" | "open"
    rate: float = 0.0
    burstiness: float = 1.0
    max_concurrency: int = 0
    concurrency: int = 0
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class SetRate:
    """The open loop's request rate (requests/s): the schedule starts afresh from now, a new segment."""

    rate: float
    seq: int = field(default=0, compare=False)


Command = (SetConcurrency | Pause | Resume | ResetWindow | RunLevel | Save | Stop | ServerConfigChanged | AutoLadder
           | StopAuto | SetMode | SetRate)

# ---------------------------------------------------------------- snapshot pieces (engine -> face)


class EngineStatus(str, Enum):
    """A str mixin so `status == "running"` keeps working for callers that compare text."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    ERROR = "error"  # the session loop raised: the Snapshot's message says what

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class LatencyView:
    """One latency distribution over the rolling window. Seconds throughout."""

    edges: tuple[float, ...] = ()  # len(counts) + 1 bin edges, log-spaced
    counts: tuple[int, ...] = ()
    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class ServerView:
    """The server's side, from /metrics (+ /version, /v1/models)."""

    reachable: bool = False
    schema: str = "none"  # "v1" | "v0" | "none" (no /metrics: any OpenAI-compatible server)
    error: str = ""  # last scrape problem, human readable ("" when fine)
    model: str = ""
    vllm_version: str | None = None
    engines: int = 0
    kv_cache_usage: float | None = None  # 0..1, max over engines
    prefix_hit_rate: float | None = None  # Δhits/Δqueries over the rolling window, None when no queries
    num_running: float | None = None
    num_waiting: float | None = None
    preemptions_total: float | None = None
    preemptions_per_s: float | None = None
    gen_tok_s: float | None = None  # server generation tokens/s over the window
    prompt_tok_s: float | None = None
    kv_history: tuple[float, ...] = ()  # one value per scrape, newest last (bounded)
    running_history: tuple[float, ...] = ()  # same clock as kv_history
    waiting_history: tuple[float, ...] = ()
    gen_tok_s_history: tuple[float, ...] = ()  # server generation tokens/s between scrapes
    num_gpu_blocks: int | None = None  # from cache_config_info when present
    block_size: int | None = None
    # the server's own mean TTFT (its handler's arrival -> first token out) over the rolling window, from its
    # histogram's _sum/_count; every client's requests, not only ours
    ttft_mean: float | None = None
    gpu: tuple[GpuSample, ...] = ()  # NVML, one per GPU of this host; empty = no panel


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One concurrency level visited: the live version of the classic results table."""

    segment: int
    concurrency: int
    seconds: float
    completed: int
    failed: int
    req_s: float
    tok_s: float
    avg_latency: float | None
    ttft_p50: float | None
    ttft_p99: float | None
    itl_p50: float | None
    prefix_hit_rate: float | None
    server_gen_tok_s: float | None = None
    max_kv_usage: float | None = None
    preemptions: float | None = None
    waiting_max: float | None = None
    server_config: str = ""  # the launched server's flags while it ran ("" when not known)
    request_rate: float | None = None  # an open-loop segment: the rate held (`concurrency` is then its cap, 0: none)
    lag_p99: float | None = None  # ... and its schedule lag's p99, seconds
    behind_schedule: bool = False  # ... and whether it fell behind (LevelResult.behind_schedule)


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One measured level on the throughput/latency-versus-concurrency curve (ladder and hand-made levels alike)."""

    concurrency: int
    tok_s: float
    req_s: float
    e2el_p50: float | None  # seconds
    e2el_p99: float | None
    ttft_p99: float | None
    steady: bool = True  # False: the settle cap was hit before throughput was steady
    auto: bool = False  # measured by the ladder
    server_config: str = ""


@dataclass(frozen=True, slots=True)
class EndpointRow:
    """One endpoint's line under several endpoints (engine/targets.py): alive or dead and why, its requests in
    flight, and its share of the rolling window (tokens, requests, TTFT p50 of its own requests)."""

    url: str
    alive: bool = True
    in_flight: int = 0
    why: str = ""  # dead: the failure that made it so
    share: float = 0.0  # of the window's output tokens, 0..1
    out_tok_s: float = 0.0  # share x the window's rate
    completed: int = 0  # in the window
    failed: int = 0
    ttft_p50: float | None = None  # seconds, its own requests in the window
    sent: int = 0  # requests sent to it this session (a dead one's probes included)


@dataclass(frozen=True, slots=True)
class Snapshot:
    t: float  # seconds since the engine started
    status: EngineStatus
    target_concurrency: int
    in_flight: int
    segment: int
    window_s: float
    out_tok_s: float  # client-measured output tokens/s over the window
    req_s: float
    completed_total: int
    failed_total: int
    tok_s_history: tuple[float, ...] = ()  # one value per second, newest last (bounded)
    ttft: LatencyView = field(default_factory=LatencyView)
    itl: LatencyView = field(default_factory=LatencyView)
    e2el: LatencyView = field(default_factory=LatencyView)
    failures: tuple[tuple[str, int], ...] = ()  # (reason, count), most frequent first
    last_error: str = ""
    client_cpu_pct: float = 0.0  # engine process CPU, % of one core
    loop_lag_ms: float = 0.0  # event-loop lag (max over the last second)
    client_limited: bool = False  # True when the client, not the server, is likely the limit
    server: ServerView = field(default_factory=ServerView)
    segments: tuple[SegmentRow, ...] = ()
    records_path: str = ""
    simulated: bool = False
    message: str = ""  # one-line notice for the face (e.g. "server died: load paused")
    saved: tuple[str, ...] = ()  # paths written by the latest Save (or on stop)
    knee: str = ""  # saturation verdict over the segments visited so far ("" until two levels exist)
    ack: int = 0  # seq of the last command the engine applied (0: none yet)
    curve: tuple[CurvePoint, ...] = ()  # the current server config's measured levels, by concurrency
    verdict: Knee | None = None  # the full verdict behind `knee`: cause, recommendations (None until two levels)
    auto: str = ""  # the ladder's progress in words ("" when no ladder runs)
    client_limited_why: str = ""  # why client_limited is set ("CPU 97% of a core", "event-loop lag 31 ms")
    # why the engine paused the load by itself ("" when it did not): the error budget tripped ("error budget: 40
    # failures in a row and no success: HTTP 404: ...") or the records file cannot be written ("results disk full:
    # ..."). Resume clears a tripped budget; a full disk stays until the session ends.
    paused_why: str = ""
    save_error: str = ""  # the latest save's failure ("save failed: ..."), "" once a save worked
    # the load's mode: "closed" (target_concurrency held) or "open" (request_rate sent whatever the server's pace;
    # target_concurrency is then the closed loop's target, the one `o` returns to)
    mode: str = "closed"
    request_rate: float | None = None  # open loop: the rate asked for (requests/s)
    burstiness: float | None = None
    rate_cap: int = 0  # open loop: at most this many in flight (0: no cap)
    schedule_lag: LatencyView = field(default_factory=LatencyView)  # open loop: send - due, over the rolling window
    behind_schedule: bool = False  # the window's lag breaks LevelResult.behind_schedule's rule
    endpoints: tuple[EndpointRow, ...] = ()  # several endpoints: one row each, in the order given; () for one
    # the session could not start (a fleet flag that cannot be, Prometheus or Ray not answering): the status the
    # command exits with (2: usage, 1: unreachable), the line in `message`; 0 otherwise
    exit_code: int = 0
