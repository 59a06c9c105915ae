"""Server metrics from several replicas at once: N `--metrics-url` pages (replicas behind a router) read each poll
and summed into ONE ServerSample, with each replica's own sample kept for a per-endpoint view.

How each field is combined across replicas (per field, by what it means):
- lifetime counters (tokens, requests, preemptions, prefix-cache queries/hits, histogram _sum/_count): summed, and
  kept monotonic: each replica contributes its own growth since it was first seen (its whole value if it was
  there at the first poll, as a single scrape would), a counter that went down is that replica's restart (its new
  value is what accrued since), and a replica that stops answering is held at its last value. ServerSeries' deltas
  over the sum are then right even when one replica restarts or drops out, where a raw sum would go down and be
  read as a restart of the whole fleet.
- running / waiting requests, engines, KV blocks: summed (counts of things that exist side by side).
- KV cache usage, a per-replica fraction: `kv_cache_usage` is the MAX (one full replica preempts however empty the
  others are, and metrics_parse maxes DP engines the same way), `kv_cache_usage_mean` the fleet's mean.
- the V0 prefix-cache hit-rate gauge, a per-replica ratio with no weights: the mean.
A replica that does not answer is named in `errors`; the others still count.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import httpx

from qbench_tui.engine.metrics_parse import COUNTERS, ServerSample, parse_metrics
from qbench_tui.engine.server_poll import side_client

# ServerSample fields that are lifetime counters (the alias table's counters plus the histogram parts)
COUNTER_FIELDS = (*sorted(COUNTERS), "ttft_sum", "ttft_count", "queue_time_sum", "queue_time_count")
SUMMED_GAUGES = ("num_running", "num_waiting", "num_gpu_blocks")


class MetricsSourceError(ValueError):
    """Bad metrics-source input (a duplicate URL, a malformed one): a usage error, exit 2."""


def check_metrics_urls(urls: Iterable[str]) -> tuple[str, ...]:
    """The --metrics-url list, normalised (no trailing slash, scheme and host lower case) and checked: each
    http(s) with a host, none given twice (the same replica summed twice would double the fleet)."""
    out: list[str] = []
    seen: dict[str, str] = {}
    for raw in urls:
        u = raw.strip().rstrip("/")
        if u.endswith("/metrics"):
            u = u[: -len("/metrics")]  # the page's own address given: the base is what we scrape from
        parts = urlsplit(u)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MetricsSourceError(f"--metrics-url {raw!r}: not an http(s) URL with a host")
        key = f"{parts.scheme}://{parts.netloc.lower()}{parts.path}"
        if key in seen:
            raise MetricsSourceError(f"--metrics-url {raw!r} given twice (same as {seen[key]!r})")
        seen[key] = raw
        out.append(key)
    if not out:
        raise MetricsSourceError("--metrics-url: no URL given")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ReplicaReading:
    """One replica's page this poll: its own sample, or why there is none."""

    url: str
    sample: ServerSample | None
    error: str = ""

    @property
    def up(self) -> bool:
        return self.sample is not None and self.sample.schema != "none"


@dataclass(frozen=True, slots=True)
class FleetSample:
    """One poll of every source: the combined sample (what ServerSeries takes) and each replica's own."""

    sample: ServerSample
    replicas: tuple[ReplicaReading, ...]
    kv_cache_usage_mean: float | None = None

    @property
    def errors(self) -> tuple[str, ...]:
        """One line per replica that did not give vLLM metrics, naming it."""
        return tuple(f"{r.url}: {r.error}" for r in self.replicas if not r.up)

    @property
    def up(self) -> int:
        return sum(r.up for r in self.replicas)


def _mean(vals: Sequence[float]) -> float | None:
    return math.fsum(vals) / len(vals) if vals else None


@dataclass
class _Counters:
    """One replica's counters as this fleet has accounted them: its last raw values and its contribution."""

    last: dict[str, float] = field(default_factory=dict)
    acc: dict[str, float] = field(default_factory=dict)
    start_time: float | None = None


class FleetCombiner:
    """Folds each poll's per-replica samples into one ServerSample whose counters never go down (see above)."""

    def __init__(self) -> None:
        self._seen: dict[str, _Counters] = {}

    def _account(self, key: str, s: ServerSample, first_poll: bool) -> None:
        c = self._seen.get(key)
        if c is None:
            c = self._seen[key] = _Counters(start_time=s.start_time)
            for f in COUNTER_FIELDS:
                v = getattr(s, f)
                if v is not None:
                    # there from the start: its lifetime, as a single scrape reads it; joined later: from now on
                    c.last[f], c.acc[f] = v, (v if first_poll else 0.0)
            return
        restarted = s.start_time is not None and c.start_time is not None and s.start_time != c.start_time
        c.start_time = s.start_time if s.start_time is not None else c.start_time
        for f in COUNTER_FIELDS:
            v = getattr(s, f)
            if v is None:
                continue
            prev = c.last.get(f)
            if prev is None:
                c.acc[f] = c.acc.get(f, 0.0) + (v if first_poll else 0.0)
            else:
                c.acc[f] = c.acc.get(f, 0.0) + (v if restarted or v < prev else v - prev)
            c.last[f] = v

    def combine(self, readings: Sequence[tuple[str, ServerSample | None]], t: float | None = None) -> FleetSample:
        """readings: (replica key, its sample or None) for this poll, in a stable order."""
        t = time.monotonic() if t is None else t
        live = [(k, s) for k, s in readings if s is not None and s.schema != "none"]
        baseline = not self._seen  # the first poll any replica answered: lifetimes, as a single scrape reads
        for k, s in live:
            self._account(k, s, baseline)
        values: dict[str, float | None] = {}
        for f in COUNTER_FIELDS:
            got = [c.acc[f] for c in self._seen.values() if f in c.acc]  # the silent ones held at their last
            values[f] = math.fsum(got) if got else None
        for f in SUMMED_GAUGES:
            got = [v for _, s in live if (v := getattr(s, f)) is not None]
            values[f] = math.fsum(got) if got else None
        kv = [v for _, s in live if (v := s.kv_cache_usage) is not None]
        values["kv_cache_usage"] = max(kv) if kv else None
        values["prefix_cache_hit_rate_gauge"] = _mean(
            [v for _, s in live if (v := s.prefix_cache_hit_rate_gauge) is not None])
        sizes = [v for _, s in live if (v := s.block_size) is not None]
        schemas = [s.schema for _, s in live]
        sample = ServerSample(
            t=t, schema=("v1" if "v1" in schemas else schemas[0]) if schemas else "none",
            engines=sum(s.engines for _, s in live), block_size=min(sizes) if sizes else None,
            # start_time stays None: a replica's restart is accounted above, not a restart of the sum
            **values,
        )
        if not live:
            sample = ServerSample(t=t, schema="none", engines=0)
        return FleetSample(sample=sample, replicas=(), kv_cache_usage_mean=_mean(kv))


def _why(e: BaseException) -> str:
    msg = str(e).strip()
    return f"unreachable ({type(e).__name__}{': ' + msg if msg else ''})"


class MultiScrape:
    """GET <url>/metrics on every replica at once, each poll; a FleetSample back. Never raises for a replica."""

    def __init__(self, urls: Iterable[str], headers: dict[str, str] | None = None, *, timeout: float = 5.0,
                 ca_cert: str = "", insecure: bool = False) -> None:
        self.urls = check_metrics_urls(urls)
        self._headers = headers or {}
        self._timeout = httpx.Timeout(timeout, connect=min(2.0, timeout))
        self._tls = (ca_cert, insecure)
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._combiner = FleetCombiner()
        self.last: FleetSample | None = None

    def _client(self, url: str) -> httpx.AsyncClient:
        c = self._clients.get(url)
        if c is None:
            c = self._clients[url] = side_client(url, self._headers, timeout=self._timeout, ca_cert=self._tls[0],
                                                 insecure=self._tls[1])
        return c

    async def _one(self, url: str) -> ReplicaReading:
        try:
            r = await self._client(url).get("/metrics")
        except httpx.HTTPError as e:
            return ReplicaReading(url, None, _why(e))
        if r.status_code != 200:
            return ReplicaReading(url, None, f"HTTP {r.status_code} on /metrics")
        try:
            s = parse_metrics(r.text, time.monotonic())
        except Exception as e:  # a broken page is that replica's problem, not the fleet's
            return ReplicaReading(url, None, f"bad /metrics: {e}")
        if s.schema == "none":
            return ReplicaReading(url, s, "no vLLM metrics on /metrics")
        return ReplicaReading(url, s)

    async def poll(self) -> FleetSample:
        readings = await asyncio.gather(*(self._one(u) for u in self.urls))
        fleet = self._combiner.combine([(r.url, r.sample) for r in readings])
        self.last = replace(fleet, replicas=tuple(readings))
        return self.last

    async def read(self) -> tuple[ServerSample | None, str]:
        """The metrics-source seam (the PromQL source has the same): the combined sample (None when no replica
        gave vLLM metrics) and one line naming the replicas that did not answer ("" when all did)."""
        fleet = await self.poll()
        return (fleet.sample if fleet.up else None), "; ".join(fleet.errors)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.aclose()
