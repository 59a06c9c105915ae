"""Messages between the engine process and its face (dashboard or headless printer).

Everything here is small, immutable and picklable: Snapshots go out at >= 4 Hz, Commands come in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------- commands (face -> engine)


@dataclass(frozen=True, slots=True)
class SetConcurrency:
    n: int


@dataclass(frozen=True, slots=True)
class Pause:
    pass


@dataclass(frozen=True, slots=True)
class Resume:
    pass


@dataclass(frozen=True, slots=True)
class ResetWindow:
    pass


@dataclass(frozen=True, slots=True)
class RunLevel:
    concurrency: int
    mode: str = "steady"  # "wave" | "steady"
    duration: float | None = None
    requests: int | None = None
    warmup: float = 0.0


@dataclass(frozen=True, slots=True)
class Save:
    """Write the classic .txt, the .json and the request records now (engine replies via Snapshot.saved)."""

    out_dir: str = "results"


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class ServerConfigChanged:
    """The server now runs with these flags (a launched server, or one restarted with new flags): segments opened
    from now on carry the label, and the knee is looked for among the segments of one config only."""

    label: str


Command = SetConcurrency | Pause | Resume | ResetWindow | RunLevel | Save | Stop | ServerConfigChanged

# ---------------------------------------------------------------- snapshot pieces (engine -> face)


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
    running_history: tuple[float, ...] = ()
    waiting_history: tuple[float, ...] = ()
    num_gpu_blocks: int | None = None  # from cache_config_info when present
    block_size: int | None = None
    # the server's own mean TTFT (its handler's arrival -> first token out) and queue time over the rolling
    # window, from its histograms' _sum/_count; every client's requests, not only ours
    ttft_mean: float | None = None
    queue_mean: float | None = None
    gpu: tuple[dict, ...] = ()  # NVML samples per GPU (util %, mem used/total MiB, power W); empty = no panel


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


@dataclass(frozen=True, slots=True)
class Snapshot:
    t: float  # seconds since the engine started
    status: str  # "starting" | "running" | "paused" | "stopped" | "error"
    target_concurrency: int
    in_flight: int
    segment: int
    window_s: float
    out_tok_s: float  # client-measured output tokens/s over the window
    req_s: float
    completed_total: int
    failed_total: int
    tok_s_history: tuple[float, ...] = ()  # one value per second, newest last (bounded)
    req_s_history: tuple[float, ...] = ()
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
