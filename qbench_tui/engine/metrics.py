"""vLLM /metrics: Prometheus text -> ServerSample, reset-aware series, a small poller and a one-shot probe.

Names are resolved through one alias table (V1 names first, V0 fallbacks), so the same code reads vLLM 0.5 through
0.13+ pages. Matching is done on *sample* names, not family names: prometheus_client strips `_total` from counter
families but not from histograms (`vllm:iteration_tokens_total`), and an untyped fragment keeps `_total` on its
family too, so the sample name is the one thing that is stable across page shapes.
"""
from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "ALIASES", "INFO_LABELS", "COUNTERS", "MetricsParseError", "ServerUnreachable", "ServerSample",
    "ServerSeries", "MetricsPoller", "parse_metrics", "fetch_info", "probe",
]

# canonical name -> vLLM names, most preferred first. Counters are listed without `_total`.
ALIASES: dict[str, tuple[str, ...]] = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prefix_cache_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
    "prefix_cache_hit_rate_gauge": ("vllm:gpu_prefix_cache_hit_rate",),  # V0 only: a ratio, not a counter
    "num_requests_running": ("vllm:num_requests_running",),
    "num_requests_waiting": ("vllm:num_requests_waiting",),
    "num_preemptions": ("vllm:num_preemptions",),
    "prompt_tokens": ("vllm:prompt_tokens",),
    "generation_tokens": ("vllm:generation_tokens",),
    "request_success": ("vllm:request_success",),
    # histogram sums and counts (V0 and V1 alike): their deltas give the server's own mean over any window, exact
    # where a quantile from the coarse buckets (10 -> 20 -> 40 ms) would not be
    "ttft_sum": ("vllm:time_to_first_token_seconds_sum",),
    "ttft_count": ("vllm:time_to_first_token_seconds_count",),
    "queue_time_sum": ("vllm:request_queue_time_seconds_sum",),
    "queue_time_count": ("vllm:request_queue_time_seconds_count",),
}
# canonical name -> (info metric, label): CacheConfig is exposed as labels of a constant-1 gauge.
INFO_LABELS: dict[str, tuple[str, str]] = {
    "num_gpu_blocks": ("vllm:cache_config_info", "num_gpu_blocks"),
    "block_size": ("vllm:cache_config_info", "block_size"),
}
COUNTERS = frozenset({"prefix_cache_queries", "prefix_cache_hits", "num_preemptions", "prompt_tokens",
                      "generation_tokens", "request_success"})
_HIST_PARTS = frozenset({"ttft_sum", "ttft_count", "queue_time_sum", "queue_time_count"})  # counters, no _total
# Gauges where summing series would be wrong: a usage fraction or a ratio. Multiprocess mode exposes one series
# per pid with only one carrying the real value (PR #28792), and data parallelism one per engine: max fits both.
_MAX_GAUGES = frozenset({"kv_cache_usage", "prefix_cache_hit_rate_gauge"})
_V1_MARKERS = frozenset({"vllm:kv_cache_usage_perc", "vllm:prefix_cache_queries"})
# canonical alias name -> ServerSample field, where they differ
_FIELD = {"num_requests_running": "num_running", "num_requests_waiting": "num_waiting"}

# sample name as exposed -> (canonical, alias rank)
_LOOKUP: dict[str, tuple[str, int]] = {}
for _canon, _names in ALIASES.items():
    for _rank, _name in enumerate(_names):
        _LOOKUP[_name] = (_canon, _rank)
        if _canon in COUNTERS:
            _LOOKUP[_name + "_total"] = (_canon, _rank)

_SAMPLE_LINE = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*(\{.*\})?[ \t]+\S+([ \t]+\S+)?[ \t]*$")
# docs elide labels as `{a="1",...}`: dropping the elision keeps the labels that are there
_ELLIPSIS = re.compile(r",?[ \t]*(?:\.\.\.|…)[ \t]*(?=[,}])")
_META_LINE = re.compile(r"^#[ \t]+(?:HELP|TYPE)[ \t]+([A-Za-z_:][A-Za-z0-9_:]*)")


class MetricsParseError(ValueError):
    """The /metrics body is not Prometheus text we can read."""


class ServerUnreachable(RuntimeError):
    """Nothing answered at the URL (every endpoint refused or timed out)."""


@dataclass(frozen=True, slots=True)
class ServerSample:
    t: float  # time.monotonic() at scrape
    schema: str  # "v1" | "v0" | "none"
    engines: int  # distinct `engine` label values; 1 without the label; 0 when there are no vLLM metrics
    kv_cache_usage: float | None = None  # 0..1, max over engines
    num_running: float | None = None
    num_waiting: float | None = None
    prefix_cache_queries: float | None = None  # tokens, lifetime counter
    prefix_cache_hits: float | None = None
    prefix_cache_hit_rate_gauge: float | None = None  # V0 only
    num_preemptions: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    request_success: float | None = None  # all finished_reason values
    ttft_sum: float | None = None  # seconds, lifetime: the server's TTFT histogram (arrival -> first token out)
    ttft_count: float | None = None
    queue_time_sum: float | None = None  # seconds spent WAITING before the scheduler ran the request
    queue_time_count: float | None = None
    num_gpu_blocks: float | None = None
    block_size: float | None = None
    start_time: float | None = None  # process_start_time_seconds; a change means the server restarted


def _norm(name: str) -> str:
    # Some relabelling pipelines rewrite `vllm:` to `vllm_`; fold both onto the colon form.
    return "vllm:" + name[5:] if name.startswith("vllm_") else name


def _strict_samples(text: str) -> tuple[list[tuple[str, dict, float]], set[str]]:
    samples: list[tuple[str, dict, float]] = []
    families: set[str] = set()
    for fam in text_string_to_metric_families(text):
        families.add(fam.name)
        for s in fam.samples:
            samples.append((s.name, s.labels, s.value))
    return samples, families


def _lenient_samples(text: str) -> tuple[list[tuple[str, dict, float]], set[str]]:
    """Line by line, skipping what does not parse: doc excerpts carry `$ curl …` and `...` lines, and a proxy may
    truncate a page mid-line. Each sample line is parsed on its own, so its name keeps any `_total`."""
    samples: list[tuple[str, dict, float]] = []
    families: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = _META_LINE.match(line)
            if m:
                families.add(m.group(1))
            continue
        if not _SAMPLE_LINE.match(line):
            continue
        for candidate in (line, _ELLIPSIS.sub("", line)):
            try:
                got, _ = _strict_samples(candidate + "\n")
            except Exception:
                continue
            samples.extend(got)
            break
    return samples, families


def _info_number(v: str | None) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)
    except ValueError:  # "None" for an unset CacheConfig field
        return None
    return x if math.isfinite(x) else None


def parse_metrics(text: str, t: float) -> ServerSample:
    """Read one /metrics page. Empty or non-vLLM pages give schema "none"; unreadable ones raise MetricsParseError."""
    if not text.strip():
        return ServerSample(t=t, schema="none", engines=0)
    try:
        samples, families = _strict_samples(text)
    except Exception as e:  # the parser raises ValueError, IndexError, TypeError… depending on the damage
        samples, families = _lenient_samples(text)
        if not samples and not families:
            first = text.strip().splitlines()[0][:80]
            raise MetricsParseError(f"not Prometheus text ({type(e).__name__}: {e}; first line {first!r})") from e

    # canonical -> {alias rank -> [values]}
    found: dict[str, dict[int, list[float]]] = {}
    info: dict[str, float | None] = {}
    engines: set[str] = set()
    names = {_norm(f) for f in families}
    start_time: float | None = None
    for name, labels, value in samples:
        if name.endswith("_created"):
            continue  # creation timestamps, a gauge family of their own in prometheus_client
        if name == "process_start_time_seconds":
            start_time = value if start_time is None else min(start_time, value)
            continue
        name = _norm(name)
        if not name.startswith("vllm:"):
            continue
        names.add(name)
        if "engine" in labels:
            engines.add(labels["engine"])
        hit = _LOOKUP.get(name)
        if hit is not None:
            if not math.isnan(value):
                found.setdefault(hit[0], {}).setdefault(hit[1], []).append(value)
            continue
        for canon, (metric, label) in INFO_LABELS.items():
            if name == metric and canon not in info:  # first engine's config: they are identical under DP
                info[canon] = _info_number(labels.get(label))

    if not any(n.startswith("vllm:") for n in names):
        return ServerSample(t=t, schema="none", engines=0, start_time=start_time)
    v1 = bool(engines) or any(n in _V1_MARKERS or n.removesuffix("_total") in _V1_MARKERS for n in names)
    values: dict[str, float | None] = {}
    for canon in ALIASES:
        by_rank = found.get(canon)
        if not by_rank:
            values[_FIELD.get(canon, canon)] = None
            continue
        # Only the most preferred name present: 0.10 exposes both V1 names and their deprecated twins.
        vals = by_rank[min(by_rank)]
        values[_FIELD.get(canon, canon)] = max(vals) if canon in _MAX_GAUGES else math.fsum(vals)
    return ServerSample(
        t=t, schema="v1" if v1 else "v0", engines=max(1, len(engines)), start_time=start_time,
        num_gpu_blocks=info.get("num_gpu_blocks"), block_size=info.get("block_size"), **values,
    )


# ---------------------------------------------------------------- series


class ServerSeries:
    """The last `maxlen` samples (an hour at 1 Hz) with reset-aware counter deltas."""

    def __init__(self, maxlen: int = 3600) -> None:
        self._s: deque[ServerSample] = deque(maxlen=maxlen)

    def add(self, s: ServerSample) -> None:
        self._s.append(s)

    def clear(self) -> None:
        self._s.clear()

    def __len__(self) -> int:
        return len(self._s)

    def __iter__(self):
        return iter(tuple(self._s))

    def latest(self) -> ServerSample | None:
        return self._s[-1] if self._s else None

    def _since(self, since_t: float | None) -> list[ServerSample]:
        if since_t is None:
            return list(self._s)
        return [s for s in self._s if s.t >= since_t]

    @staticmethod
    def _delta(samples: Iterable[ServerSample], field: str) -> float | None:
        prev: ServerSample | None = None
        pv: float | None = None
        total = 0.0
        for s in samples:
            v = getattr(s, field)
            if v is None:
                continue
            if pv is not None and prev is not None:
                restarted = v < pv or (s.start_time is not None and prev.start_time is not None
                                       and s.start_time != prev.start_time)
                # After a restart the counter began again at 0, so its whole value accrued since then.
                total += v if restarted else v - pv
            prev, pv = s, v
        return None if pv is None else total

    def delta(self, field: str, since_t: float | None = None) -> float | None:
        """Counter increase over the samples taken at or after since_t (all when None); None without values."""
        return self._delta(self._since(since_t), field)

    def rate(self, field: str, window_s: float, now: float) -> float | None:
        """Increase per second over the last window_s, divided by the time the samples actually span."""
        got = [s for s in self._since(now - window_s) if getattr(s, field) is not None]
        if len(got) < 2:
            return None
        span = got[-1].t - got[0].t
        if span <= 0:
            return None
        d = self._delta(got, field)
        return None if d is None else d / span

    def hit_rate(self, since_t: float | None = None) -> float | None:
        """Prefix-cache hits / queries over the range (token weighted); the V0 gauge when there are no counters."""
        got = self._since(since_t)
        dq = self._delta(got, "prefix_cache_queries")
        if dq is None:
            for s in reversed(got):
                if s.prefix_cache_hit_rate_gauge is not None:
                    return s.prefix_cache_hit_rate_gauge
            return None
        if dq <= 0:
            return None
        dh = self._delta(got, "prefix_cache_hits")
        return None if dh is None else dh / dq

    def mean(self, name: str, since_t: float | None = None) -> float | None:
        """The server's mean of a histogram ("ttft", "queue_time") over the range, from its _sum/_count deltas
        (None when no request was observed in it)."""
        got = self._since(since_t)
        n = self._delta(got, f"{name}_count")
        if not n or n <= 0:
            return None
        total = self._delta(got, f"{name}_sum")
        return None if total is None else total / n

    def max(self, field: str, since_t: float | None = None) -> float | None:
        vals = [v for s in self._since(since_t) if (v := getattr(s, field)) is not None]
        return max(vals) if vals else None

    def history(self, field: str, n: int) -> list[float | None]:
        """The last n values of field, oldest first (None where a sample lacked it)."""
        if n <= 0:
            return []
        tail = list(self._s)[-n:]
        return [getattr(s, field) for s in tail]


# ---------------------------------------------------------------- HTTP


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _short_timeout(total: float = 5.0) -> httpx.Timeout:
    # A scrape must never hold up the loop for long: /metrics is small and local.
    return httpx.Timeout(total, connect=min(2.0, total))


def _describe(e: BaseException) -> str:
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class MetricsPoller:
    """GET /metrics every `period` seconds (polls never overlap) and hand each ServerSample to on_sample.

    Problems go to on_error as one human-readable line; the poller itself never raises out of run()."""

    NO_METRICS_PERIOD = 5.0  # /metrics 404: not vLLM (yet?) — keep looking, slowly

    def __init__(self, base_url: str, api_key: str | None = None, period: float = 1.0,
                 on_sample: Callable[[ServerSample], None] | None = None,
                 on_error: Callable[[str], None] | None = None, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.period = period
        self.timeout = timeout
        self._api_key = api_key
        self._on_sample = on_sample or (lambda s: None)
        self._on_error = on_error or (lambda m: None)
        self._stopped = False
        self._wake: asyncio.Event | None = None
        self._no_metrics = False
        self.polls = 0

    def stop(self) -> None:
        self._stopped = True
        if self._wake is not None:
            self._wake.set()

    async def poll_once(self, client: httpx.AsyncClient) -> float:
        """One scrape; returns the period to wait before the next."""
        self.polls += 1
        try:
            r = await client.get("/metrics")
        except httpx.TransportError as e:
            self._no_metrics = False
            self._on_error(f"server unreachable: {_describe(e)}")
            return self.period
        if r.status_code == 404:
            if not self._no_metrics:
                self._no_metrics = True
                # sample first: a consumer that clears its error on each sample must still see the message
                self._on_sample(ServerSample(t=time.monotonic(), schema="none", engines=0))
                self._on_error("no server metrics")
            return max(self.period, self.NO_METRICS_PERIOD)
        self._no_metrics = False
        if r.status_code != 200:
            self._on_error(f"bad /metrics: HTTP {r.status_code}")
            return self.period
        try:
            sample = parse_metrics(r.text, time.monotonic())
        except Exception as e:  # MetricsParseError, or anything a broken page provokes: never stop the engine
            self._on_error(f"bad /metrics: {e}")
            return self.period
        self._on_sample(sample)
        return self.period

    async def run(self) -> None:
        self._wake = asyncio.Event()
        if self._stopped:
            return
        async with httpx.AsyncClient(base_url=self.base_url, headers=_headers(self._api_key),
                                     timeout=_short_timeout(self.timeout)) as client:
            while not self._stopped:
                t0 = time.monotonic()
                try:
                    wait = await self.poll_once(client)
                except Exception as e:  # a callback that raises must not end the polling
                    self._on_error(f"metrics poller: {_describe(e)}")
                    wait = self.period
                if self._stopped:
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, wait - (time.monotonic() - t0)))
                except asyncio.TimeoutError:
                    pass


async def _try_get(client: httpx.AsyncClient, path: str) -> httpx.Response | httpx.TransportError:
    try:
        return await client.get(path)
    except httpx.TransportError as e:
        return e


def _version_of(r: httpx.Response | Exception) -> str | None:
    if not isinstance(r, httpx.Response) or r.status_code != 200:
        return None
    try:
        v = r.json().get("version")
    except Exception:
        return None
    return str(v) if v is not None else None


def _models_of(r: httpx.Response | Exception) -> list[str]:
    if not isinstance(r, httpx.Response) or r.status_code != 200:
        return []
    try:
        data = r.json().get("data") or []
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
    except Exception:
        return []


async def fetch_info(client: httpx.AsyncClient) -> tuple[str | None, list[str]]:
    """(vLLM version from /version, model ids from /v1/models); None / [] where either is missing."""
    return _version_of(await _try_get(client, "/version")), _models_of(await _try_get(client, "/v1/models"))


PROBE_KEYS = ("kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits", "prefix_cache_hit_rate",
              "num_requests_running", "num_requests_waiting", "num_preemptions", "prompt_tokens",
              "generation_tokens", "engines", "metrics_schema", "vllm_version", "models")


async def probe(url: str, api_key: str | None = None, timeout: float = 5.0) -> dict:
    """One look at a server, as `qbench probe --json` prints it (keys: PROBE_KEYS, in that order)."""
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=_headers(api_key),
                                 timeout=_short_timeout(timeout)) as client:
        rm = await _try_get(client, "/metrics")
        rv = await _try_get(client, "/version")
        rmod = await _try_get(client, "/v1/models")
    if all(isinstance(r, httpx.TransportError) for r in (rm, rv, rmod)):
        raise ServerUnreachable(f"server unreachable at {url}: {_describe(rm)}")  # type: ignore[arg-type]
    s = ServerSample(t=time.monotonic(), schema="none", engines=0)
    if isinstance(rm, httpx.Response) and rm.status_code == 200:
        try:
            s = parse_metrics(rm.text, s.t)
        except MetricsParseError:
            pass  # a page we cannot read tells us nothing: report it as no metrics
    hit = None
    if s.prefix_cache_queries:
        hit = (s.prefix_cache_hits or 0.0) / s.prefix_cache_queries
    elif s.prefix_cache_queries is None:
        hit = s.prefix_cache_hit_rate_gauge
    return {
        "kv_cache_usage": s.kv_cache_usage,
        "prefix_cache_queries": s.prefix_cache_queries,
        "prefix_cache_hits": s.prefix_cache_hits,
        "prefix_cache_hit_rate": hit,
        "num_requests_running": s.num_running,
        "num_requests_waiting": s.num_waiting,
        "num_preemptions": s.num_preemptions,
        "prompt_tokens": s.prompt_tokens,
        "generation_tokens": s.generation_tokens,
        "engines": s.engines,
        "metrics_schema": s.schema,
        "vllm_version": _version_of(rv),
        "models": _models_of(rmod),
    }
