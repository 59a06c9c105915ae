"""One measured level, typed: what `qbench run --json` prints, each entry of a results file's "levels", and what
the live segment table, the knee and the report read.

`to_json()` writes the `vllm bench serve --save-result` keys plus ours, exactly as users' scripts read them
(tests/engine/test_result_keys.py freezes the key sets). Inside, times are seconds (`_s`); milliseconds exist only
in the JSON, so nothing converts ms back to s. `from_json()` reads a saved level back (reports, comparisons).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .server_series import ServerSeries

LATENCIES = ("ttft", "tpot", "itl", "e2el")


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000.0


def _s(v: float | None) -> float | None:
    return None if v is None else v / 1000.0


@dataclass(frozen=True, slots=True)
class Latency:
    """One latency distribution over a level, in seconds (None where there were no values)."""

    mean_s: float | None = None
    p50_s: float | None = None
    p90_s: float | None = None
    p99_s: float | None = None

    def to_json(self, name: str) -> dict[str, float | None]:
        return {f"mean_{name}_ms": _ms(self.mean_s), f"median_{name}_ms": _ms(self.p50_s),
                f"p90_{name}_ms": _ms(self.p90_s), f"p99_{name}_ms": _ms(self.p99_s)}

    @classmethod
    def from_json(cls, d: dict, name: str) -> Latency:
        return cls(_s(d.get(f"mean_{name}_ms")), _s(d.get(f"median_{name}_ms")), _s(d.get(f"p90_{name}_ms")),
                   _s(d.get(f"p99_{name}_ms")))


@dataclass(frozen=True, slots=True)
class Dist:
    """A distribution that is not a latency: prompt / output lengths (tokens) or the open loop's schedule lag
    (seconds; its JSON in ms)."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None

    def to_json(self, scale: float = 1.0) -> dict[str, float | None]:
        return {k: None if v is None else v * scale for k, v in
                (("mean", self.mean), ("p50", self.p50), ("p90", self.p90), ("p99", self.p99), ("max", self.max))}

    @classmethod
    def from_json(cls, d: dict | None, scale: float = 1.0) -> Dist | None:
        if not d:
            return None
        return cls(*(None if d.get(k) is None else d[k] / scale for k in ("mean", "p50", "p90", "p99", "max")))


@dataclass(frozen=True, slots=True)
class TurnStat:
    """One turn of multi-turn conversations over a level (engine/conversations.py): how many ok requests were that
    turn, their TTFT, and their prompt tokens (growing with the history each turn carries)."""

    turn: int
    requests: int = 0
    ttft: Latency = field(default_factory=Latency)
    input_tokens_mean: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"turn": self.turn, "requests": self.requests, **self.ttft.to_json("ttft"),
                "mean_input_tokens": self.input_tokens_mean}

    @classmethod
    def from_json(cls, d: dict) -> TurnStat:
        return cls(int(d.get("turn") or 0), d.get("requests") or 0, Latency.from_json(d, "ttft"),
                   d.get("mean_input_tokens"))


@dataclass(frozen=True, slots=True)
class EndpointStat:
    """One endpoint's share of a level under several endpoints (engine/targets.py): its requests, tokens, rate
    over the level's duration, TTFT and latency; `failures` by reason as the level's are."""

    url: str
    completed: int = 0
    failed: int = 0
    output_tokens: int = 0
    output_throughput: float | None = None
    ttft: Latency = field(default_factory=Latency)
    e2el: Latency = field(default_factory=Latency)
    failures: dict[str, int] = field(default_factory=dict)
    down: str = ""  # dead at the level's end (engine/targets.py): the failure that made it so; "": alive

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "alive": not self.down, "down": self.down or None,
                "completed": self.completed, "failed": self.failed,
                "total_output_tokens": self.output_tokens, "output_throughput": self.output_throughput,
                **self.ttft.to_json("ttft"), **self.e2el.to_json("e2el"), "failures": dict(self.failures)}

    @classmethod
    def from_json(cls, d: dict) -> EndpointStat:
        return cls(str(d.get("url") or ""), d.get("completed") or 0, d.get("failed") or 0,
                   d.get("total_output_tokens") or 0, d.get("output_throughput"), Latency.from_json(d, "ttft"),
                   Latency.from_json(d, "e2el"), dict(d.get("failures") or {}), d.get("down") or "")


@dataclass(frozen=True, slots=True)
class ServerLevel:
    """The server's side of one level, from its /metrics: counter deltas and gauge maxima over the level."""

    generation_tokens: float | None = None
    prompt_tokens: float | None = None
    prefix_cache_queries: float | None = None  # tokens
    prefix_cache_hits: float | None = None
    prefix_cache_hit_rate: float | None = None  # 0..1, token weighted; None without queries
    max_kv_cache_usage: float | None = None  # 0..1
    preemptions: float | None = None
    max_running: float | None = None
    max_waiting: float | None = None
    num_gpu_blocks: float | None = None
    mean_ttft_s: float | None = None  # the server's own TTFT: arrival in its handler -> first token out
    mean_queue_s: float | None = None  # time spent waiting before the scheduler ran the request
    # first to last scrape the deltas above cover (inside the level's window): the span a server rate divides by
    span_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "generation_tokens": self.generation_tokens, "prompt_tokens": self.prompt_tokens,
            "prefix_cache_queries": self.prefix_cache_queries, "prefix_cache_hits": self.prefix_cache_hits,
            "prefix_cache_hit_rate": self.prefix_cache_hit_rate, "max_kv_cache_usage": self.max_kv_cache_usage,
            "preemptions": self.preemptions, "max_running": self.max_running, "max_waiting": self.max_waiting,
            "num_gpu_blocks": self.num_gpu_blocks, "mean_ttft_ms": _ms(self.mean_ttft_s),
            "mean_queue_ms": _ms(self.mean_queue_s), "span_s": self.span_s,
        }

    def rate(self, name: str) -> float | None:
        """A counter delta per second of the scrapes' own span ("generation_tokens" -> server tok/s)."""
        v = getattr(self, name)
        return v / self.span_s if v is not None and self.span_s else None

    @classmethod
    def from_json(cls, d: dict | None) -> ServerLevel | None:
        if d is None:
            return None
        names = ("generation_tokens", "prompt_tokens", "prefix_cache_queries", "prefix_cache_hits",
                 "prefix_cache_hit_rate", "max_kv_cache_usage", "preemptions", "max_running", "max_waiting",
                 "num_gpu_blocks")
        return cls(**{k: d.get(k) for k in names}, mean_ttft_s=_s(d.get("mean_ttft_ms")),
                   mean_queue_s=_s(d.get("mean_queue_ms")), span_s=d.get("span_s"))


def server_level(series: ServerSeries, since: float | None = None, until: float | None = None) -> ServerLevel | None:
    """The one way to get a level's server stats: the samples of `series` taken in [since, until] (monotonic
    clock; None = open ended), with the series' reset-aware deltas. None when the server has no vLLM metrics at
    all; a window no scrape fell into (a level shorter than the scrape period) gives None values."""
    win = ServerSeries(maxlen=max(1, len(series)))
    seen = False
    for s in series:
        if s.schema == "none":
            continue
        seen = True
        if (since is None or s.t >= since) and (until is None or s.t <= until):
            win.add(s)
    if not seen:
        return None
    last = win.latest()
    first = next(iter(win), None)
    return ServerLevel(
        generation_tokens=win.delta("generation_tokens"), prompt_tokens=win.delta("prompt_tokens"),
        prefix_cache_queries=win.delta("prefix_cache_queries"), prefix_cache_hits=win.delta("prefix_cache_hits"),
        prefix_cache_hit_rate=win.hit_rate(), max_kv_cache_usage=win.max("kv_cache_usage"),
        preemptions=win.delta("num_preemptions"), max_running=win.max("num_running"),
        max_waiting=win.max("num_waiting"), num_gpu_blocks=last.num_gpu_blocks if last else None,
        mean_ttft_s=win.mean("ttft"), mean_queue_s=win.mean("queue_time"),
        span_s=last.t - first.t if last is not None and first is not None else None,
    )


@dataclass(frozen=True, slots=True)
class LevelWindow:
    """Where a level was measured, so its numbers can be recomputed from `.requests.jsonl` (whose `start` is the
    same perf_counter clock as `start`/`end` here) and compared with anything else timed on the host.

    Rates are over [start, end): output tokens that arrived in it, each request's share of its life in it
    (engine/timeline.py). Latencies are over the ok requests that started in [start, started_until) and ended by
    `ended_by`: headless, the load is held at C until every one of them has ended (ended_by = end), so none is
    cut and the slow ones are not dropped; live, the level's load stops at the change, so requests still running
    then are left out (they finish under the next level's load). `settle_s`: level start to `start`; `steady`:
    False when the settle cap was hit (settle.py); `cv`: of the window's output tokens per second."""

    start: float
    end: float
    started_until: float
    ended_by: float
    start_monotonic: float
    end_monotonic: float
    start_wall: float
    end_wall: float
    settle_s: float | None = None
    steady: bool = True
    cv: float | None = None
    rule: str = ""
    notes: tuple[str, ...] = ()

    @property
    def span_s(self) -> float:
        return self.end - self.start

    def describe(self) -> str:
        """One line for `qbench run` / `qbench sweep`: the window, and NOT STEADY when it was not."""
        how = "steady" if self.steady else "NOT STEADY (settle cap hit)"
        cv = f", CV {self.cv:.3f}" if self.cv is not None else ""
        settle = f" from {self.settle_s:.2f} s after the level began" if self.settle_s is not None else ""
        return f"window {self.span_s:.2f} s{settle}: {how}{cv}" + "".join(f"; {n}" for n in self.notes)

    def to_json(self) -> dict[str, Any]:
        return {"start_perf": self.start, "end_perf": self.end, "started_until_perf": self.started_until,
                "ended_by_perf": self.ended_by, "start_monotonic": self.start_monotonic,
                "end_monotonic": self.end_monotonic, "start_wall": self.start_wall, "end_wall": self.end_wall,
                "duration": self.span_s, "settle_s": self.settle_s, "steady": self.steady, "cv": self.cv,
                "rule": self.rule, "notes": list(self.notes)}

    @classmethod
    def from_json(cls, d: dict | None) -> LevelWindow | None:
        if not d:
            return None
        return cls(start=d["start_perf"], end=d["end_perf"], started_until=d["started_until_perf"],
                   ended_by=d["ended_by_perf"], start_monotonic=d["start_monotonic"],
                   end_monotonic=d["end_monotonic"], start_wall=d["start_wall"], end_wall=d["end_wall"],
                   settle_s=d.get("settle_s"), steady=bool(d.get("steady", True)), cv=d.get("cv"),
                   rule=d.get("rule") or "", notes=tuple(d.get("notes") or ()))


@dataclass(frozen=True, slots=True)
class ClientLevel:
    """The load engine's own cost over one level: past ~85% of a core or tens of ms of event-loop lag, the client,
    not the server, may be what set the pace (and client-side ITL is suspect)."""

    cpu_pct: float | None = None  # process CPU, % of one core, over the level
    loop_lag_ms: float | None = None  # each second's worst event-loop lag, averaged over the level's seconds
    max_loop_lag_ms: float | None = None  # the worst second

    def to_json(self) -> dict[str, float | None]:
        return {"cpu_pct": self.cpu_pct, "loop_lag_ms": self.loop_lag_ms, "max_loop_lag_ms": self.max_loop_lag_ms}

    @classmethod
    def from_json(cls, d: dict | None) -> ClientLevel | None:
        if d is None:
            return None
        return cls(d.get("cpu_pct"), d.get("loop_lag_ms"), d.get("max_loop_lag_ms"))


@dataclass(slots=True)
class LevelResult:
    """One level. Throughputs are per second of `duration_s` (requests, output tokens, input + output tokens);
    None where the duration is zero. Failed requests count in `failed` and `failures` only."""

    completed: int = 0
    failed: int = 0
    duration_s: float = 0.0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    request_throughput: float | None = None
    output_throughput: float | None = None
    total_token_throughput: float | None = None
    max_concurrency: int | None = None
    ttft: Latency = field(default_factory=Latency)
    tpot: Latency = field(default_factory=Latency)
    itl: Latency = field(default_factory=Latency)
    e2el: Latency = field(default_factory=Latency)
    failures: dict[str, int] = field(default_factory=dict)  # reason -> count, most frequent first
    tokens_estimated: int = 0  # requests whose token counts were estimated (no usage from the server)
    # where the level came from: headless ("wave" | "steady") or a live segment ("live")
    mode: str | None = None
    window_requests: int | None = None  # timed steady level: requests that ended inside the measurement window
    segment: int | None = None  # live only
    server: ServerLevel | None = None
    server_metrics: str | None = None  # headless: the /metrics schema, or why there are no server stats
    server_config: str = ""  # live: the launched server's flags while the segment ran ("" when not known)
    client: ClientLevel | None = None
    window: LevelWindow | None = None  # where it was measured (None: files written before windows were saved)
    # stopped before it ended (a signal, a full disk, the error budget): summarised from the requests that had
    # finished, first start to last end, not from a settled window
    interrupted: bool = False
    # what the requests were: prompt and output tokens of the ok requests, by the server's usage
    input_lens: Dist | None = None
    output_lens: Dist | None = None
    # open loop (engine/open_loop.py): the rate asked for, its burstiness, and how late requests went out
    request_rate: float | None = None
    burstiness: float | None = None
    schedule_lag: Dist | None = None  # seconds
    # requests the prompt source refused before sending (RequestRecord.refused), by reason in `refused_reasons`
    refused: int = 0
    refused_reasons: dict[str, int] = field(default_factory=dict)
    turns: tuple[TurnStat, ...] = ()  # multi-turn: one per turn seen, in turn order
    endpoints: tuple[EndpointStat, ...] = ()  # several endpoints: one per endpoint, in the order given
    # --prometheus: the level's window as Prometheus saw it (engine/prom_level.PromLevel.to_json(): Grafana's
    # rate / increase / histogram_quantile), or {"error": ...}
    server_promql: dict | None = None

    @property
    def behind_schedule(self) -> bool:
        """An open-loop level whose requests did not go out when due: the p99 lag above 50 ms, or above half
        the mean gap between arrivals (a cap that was full, or a client too slow to keep the rate)."""
        lag = self.schedule_lag
        if lag is None or lag.p99 is None or not self.request_rate:
            return False
        return lag.p99 > min(0.05, 0.5 / self.request_rate)

    @property
    def avg_latency_s(self) -> float | None:
        return self.e2el.mean_s

    @property
    def steady(self) -> bool:
        """False when the level's settle cap was hit; a level without a saved window counts as steady."""
        return self.window is None or self.window.steady

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "completed": self.completed,
            "failed": self.failed,
            "duration": self.duration_s,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "max_concurrency": self.max_concurrency,
        }
        for name in LATENCIES:
            d.update(getattr(self, name).to_json(name))
        d["total_time_s"] = self.duration_s
        d["avg_latency_s"] = self.avg_latency_s
        d["failures"] = dict(self.failures)
        d["tokens_estimated"] = self.tokens_estimated
        if self.window_requests is not None:
            d["window_requests"] = self.window_requests
        if self.segment is not None:
            d["segment"] = self.segment
        d["mode"] = self.mode
        d["server"] = None if self.server is None else self.server.to_json()
        if self.server_metrics is not None:
            d["server_metrics"] = self.server_metrics
        if self.server_config:
            d["server_config"] = self.server_config
        if self.client is not None:
            d["client"] = self.client.to_json()
        if self.window is not None:
            d["window"] = self.window.to_json()
        d["interrupted"] = self.interrupted
        d["input_lens"] = None if self.input_lens is None else self.input_lens.to_json()
        d["output_lens"] = None if self.output_lens is None else self.output_lens.to_json()
        if self.request_rate is not None:
            d["request_rate"] = self.request_rate
            d["burstiness"] = self.burstiness
            d["schedule_lag_ms"] = None if self.schedule_lag is None else self.schedule_lag.to_json(1000.0)
        if self.refused:
            d["refused"] = self.refused
            d["refused_reasons"] = dict(self.refused_reasons)
        if self.turns:
            d["turns"] = [t.to_json() for t in self.turns]
        if self.endpoints:
            d["endpoints"] = [e.to_json() for e in self.endpoints]
        if self.server_promql is not None:
            d["server_promql"] = self.server_promql
        return d

    @classmethod
    def from_json(cls, d: dict) -> LevelResult:
        """A saved level back; keys a file lacks (older files, other writers) read as their defaults."""
        return cls(
            completed=d.get("completed") or 0, failed=d.get("failed") or 0,
            duration_s=d.get("duration", d.get("total_time_s")) or 0.0,
            total_input_tokens=d.get("total_input_tokens") or 0,
            total_output_tokens=d.get("total_output_tokens") or 0,
            request_throughput=d.get("request_throughput"), output_throughput=d.get("output_throughput"),
            total_token_throughput=d.get("total_token_throughput"), max_concurrency=d.get("max_concurrency"),
            **{name: Latency.from_json(d, name) for name in LATENCIES},
            failures=dict(d.get("failures") or {}), tokens_estimated=d.get("tokens_estimated") or 0,
            mode=d.get("mode"), window_requests=d.get("window_requests"), segment=d.get("segment"),
            server=ServerLevel.from_json(d.get("server")), server_metrics=d.get("server_metrics"),
            server_config=d.get("server_config") or "", client=ClientLevel.from_json(d.get("client")),
            window=LevelWindow.from_json(d.get("window")), interrupted=bool(d.get("interrupted", False)),
            input_lens=Dist.from_json(d.get("input_lens")), output_lens=Dist.from_json(d.get("output_lens")),
            request_rate=d.get("request_rate"), burstiness=d.get("burstiness"),
            schedule_lag=Dist.from_json(d.get("schedule_lag_ms"), 1000.0),
            refused=d.get("refused") or 0, refused_reasons=dict(d.get("refused_reasons") or {}),
            turns=tuple(TurnStat.from_json(t) for t in d.get("turns") or ()),
            endpoints=tuple(EndpointStat.from_json(e) for e in d.get("endpoints") or ()),
            server_promql=d.get("server_promql"),
        )
