"""Server metrics read through a Prometheus server (`--prometheus URL`, `--prometheus-selector`) instead of
scraping the pods, as inference-perf does: the same ServerSample per poll, a level's numbers over its window with
the vLLM Grafana dashboard's semantics (engine/prom_level.py), and DCGM exporter GPUs when Prometheus has them.

Per poll: instant queries aggregated `by (job, instance, __name__)` (sum for counters and counts, max for the
usage fractions), so each scrape target comes back as one small vector; each target's vector is read through
metrics_parse (the same alias table, V1 names before V0 ones) and the targets are summed by the same
FleetCombiner as `--metrics-url` pages: a target's restart or absence never reads as the fleet's counters going
down. The selector is applied to the vllm series; DCGM series take `gpu_selector` (by default the same one).
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace

import httpx

from qbench_tui.engine.metrics_parse import ALIASES, COUNTERS, ServerSample, parse_metrics
from qbench_tui.engine.metrics_sources import (
    FleetCombiner,
    FleetSample,
    MetricsSourceError,
    MultiScrape,
    ReplicaReading,
)
from qbench_tui.engine.server_poll import side_client
from qbench_tui.server.gpu import GpuSample

_MAXED = frozenset({"kv_cache_usage", "prefix_cache_hit_rate_gauge"})  # fractions: max per target, as one page
_TARGET = ("job", "instance")
DCGM = {"DCGM_FI_DEV_GPU_UTIL": "util_pct", "DCGM_FI_DEV_FB_USED": "mem_used_mib",
        "DCGM_FI_DEV_FB_FREE": "mem_free_mib", "DCGM_FI_DEV_POWER_USAGE": "power_w"}


class PrometheusUnreachable(RuntimeError):
    """Nothing answered at the Prometheus URL (exit 1, as for an unreachable server)."""


class PrometheusError(ValueError):
    """Prometheus answered but refused or could not serve the query (its `error` field), or the URL is not a
    Prometheus API: bad input, exit 2."""


class NoVllmSeries(PrometheusError):
    """The selector matches no vllm series at that Prometheus."""


def normalize_selector(selector: str) -> str:
    """`namespace="llm",model_name="m"` with or without braces -> the matchers without braces ("" for none)."""
    s = selector.strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1].strip()
    return s.rstrip(",").strip()


def _names(canon: tuple[str, ...]) -> list[str]:
    """Sample names (without the `vllm:` prefix) of the canonical metrics, as Prometheus stores them."""
    out = []
    for c in canon:
        for n in ALIASES[c]:
            out.append(n.removeprefix("vllm:") + ("_total" if c in COUNTERS else ""))
    return out


_SUMMED_NAMES = _names(tuple(c for c in ALIASES if c not in _MAXED))
_MAXED_NAMES = _names(tuple(c for c in ALIASES if c in _MAXED))


def matcher(names: list[str] | str, selector: str, prefix: str = "vllm[:_]") -> str:
    """`{__name__=~"vllm[:_](a|b)",<selector>}`: `vllm_` too, for pipelines that relabel the colon away."""
    alt = names if isinstance(names, str) else "(?:" + "|".join(names) + ")"
    inner = f'__name__=~"{prefix}{alt}"'
    return "{" + inner + ("," + selector if selector else "") + "}"


def _number(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _key(labels: dict) -> str:
    return "/".join(labels.get(k, "") for k in _TARGET)


def _line(name: str, labels: dict[str, str], value: float) -> str:
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items() if v.isprintable() and '"' not in v and "\\" not in v)
    return f"{name}{{{lab}}} {value!r}" if lab else f"{name} {value!r}"


class PromSource:
    """A Prometheus HTTP API (/api/v1/query) as the server-metrics source. Errors raise PrometheusUnreachable /
    PrometheusError from check() and level(); poll() and read() turn them into the error line instead."""

    def __init__(self, url: str, selector: str = "", *, gpu_selector: str | None = None, timeout: float = 5.0,
                 headers: dict[str, str] | None = None, ca_cert: str = "", insecure: bool = False) -> None:
        self.url = url.strip().rstrip("/")
        self.selector = normalize_selector(selector)
        self.gpu_selector = self.selector if gpu_selector is None else normalize_selector(gpu_selector)
        self._client = side_client(self.url, headers or {}, timeout=httpx.Timeout(timeout, connect=min(2.0, timeout)),
                                   ca_cert=ca_cert, insecure=insecure)
        self._combiner = FleetCombiner()
        self._known: list[str] = []  # targets seen so far, in first-seen order (the per-replica view's rows)
        self.last: FleetSample | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------ the HTTP API

    async def query(self, expr: str, at: float | None = None) -> list[dict]:
        """One instant query; the result vector ([{"metric": {...}, "value": [t, "v"]}, ...]); a scalar comes
        back as one element with no labels."""
        data = {"query": expr}
        if at is not None:
            data["time"] = f"{at:.3f}"
        try:
            r = await self._client.post("/api/v1/query", data=data)
        except httpx.TransportError as e:
            msg = str(e).strip()
            raise PrometheusUnreachable(f"Prometheus unreachable at {self.url}: {type(e).__name__}"
                                        + (f": {msg}" if msg else "")) from e
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            raise PrometheusError(f"not a Prometheus API at {self.url}: HTTP {r.status_code} on /api/v1/query")
        if body.get("status") != "success":
            kind = body.get("errorType") or f"HTTP {r.status_code}"
            raise PrometheusError(f"Prometheus at {self.url} refused the query ({kind}): {body.get('error', '?')}")
        res = body.get("data") or {}
        if res.get("resultType") == "scalar":
            return [{"metric": {}, "value": res.get("result")}]
        return list(res.get("result") or [])

    async def scalar(self, expr: str, at: float | None = None) -> float | None:
        """The first element's value (None for an empty result or NaN: an idle window)."""
        got = await self.query(expr, at)
        return _number(got[0]["value"][1]) if got else None

    async def check(self) -> int:
        """The number of vllm series the selector matches; NoVllmSeries when none, the API's own error when the
        selector does not parse, PrometheusUnreachable when nothing answers."""
        n = await self.scalar(f'count({matcher(".+", self.selector)})')
        if not n:
            shown = "{" + self.selector + "}"
            raise NoVllmSeries(f"no vllm series match {shown} at {self.url}")
        return int(n)

    # ------------------------------------------------------------------ one poll

    async def targets(self) -> dict[str, ServerSample]:
        """Each scrape target's ServerSample now, keyed "job/instance"."""
        by = "by (" + ", ".join(_TARGET) + ", __name__)"
        sel = self.selector
        summed, maxed, engines, info = await asyncio.gather(
            self.query(f"sum {by} ({matcher(_SUMMED_NAMES, sel)})"),
            self.query(f"max {by} ({matcher(_MAXED_NAMES, sel)})"),
            # distinct `engine` values per target (no label: one group), as metrics_parse counts them
            self.query(f"count by ({', '.join(_TARGET)}) (count by ({', '.join(_TARGET)}, engine) "
                       f"({matcher('num_requests_running', sel)}))"),
            self.query(matcher("cache_config_info", sel)),
        )
        pages: dict[str, list[str]] = {}
        for el in (*summed, *maxed):
            m = el["metric"]
            v = _number(el["value"][1])
            if v is not None:
                pages.setdefault(_key(m), []).append(_line(m["__name__"], {}, v))
        for el in info:
            m = el["metric"]
            lines = pages.get(_key(m))
            if lines is not None and not any(x.startswith(("vllm:cache_config_info", "vllm_cache_config_info"))
                                             for x in lines):
                labels = {k: v for k, v in m.items() if k not in ("__name__", *_TARGET)}
                lines.append(_line(m["__name__"], labels, 1.0))
        counts = {_key(el["metric"]): _number(el["value"][1]) for el in engines}
        t = time.monotonic()
        out: dict[str, ServerSample] = {}
        for k, lines in pages.items():
            s = parse_metrics("\n".join(lines) + "\n", t)
            out[k] = replace(s, engines=int(counts.get(k) or s.engines))
        return out

    async def poll(self) -> FleetSample:
        """The fleet now: the combined sample and one reading per target seen so far (a target that has gone
        from Prometheus is named, and its counters held)."""
        try:
            now = await self.targets()
        except (PrometheusUnreachable, PrometheusError) as e:
            readings = tuple(ReplicaReading(k, None, str(e)) for k in self._known) or (
                ReplicaReading(self.url, None, str(e)),)
            fleet = self._combiner.combine([(k, None) for k in self._known])
            self.last = replace(fleet, replicas=readings)
            return self.last
        for k in now:
            if k not in self._known:
                self._known.append(k)
        readings = tuple(ReplicaReading(k, now[k]) if k in now else
                         ReplicaReading(k, None, "no vllm series now (target down, or not scraped yet)")
                         for k in self._known)
        fleet = self._combiner.combine([(r.url, r.sample) for r in readings])
        if not readings:
            readings = (ReplicaReading(self.url, None, f"no vllm series match {{{self.selector}}} at {self.url}"),)
        self.last = replace(fleet, replicas=readings)
        return self.last

    async def read(self) -> tuple[ServerSample | None, str]:
        """The metrics-source seam (MultiScrape has the same): the combined sample, or None, and the error line."""
        fleet = await self.poll()
        return (fleet.sample if fleet.up else None), "; ".join(fleet.errors)

    async def gpus(self, at: float | None = None) -> tuple[GpuSample, ...]:
        """DCGM exporter GPUs (utilisation %, framebuffer used / total MiB, power W), one per (host, gpu); ()
        when Prometheus has no DCGM series under gpu_selector."""
        got = await self.query(matcher("(?:" + "|".join(DCGM) + ")", self.gpu_selector, prefix=""), at)
        per: dict[tuple[str, str], dict] = {}
        for el in got:
            m = el["metric"]
            host = m.get("Hostname") or m.get("instance", "")
            g = per.setdefault((host, m.get("gpu", m.get("device", ""))), {"name": m.get("modelName", "")})
            g[DCGM[m["__name__"]]] = _number(el["value"][1])
        out = []
        for i, (_, g) in enumerate(sorted(per.items())):
            used, free = g.get("mem_used_mib"), g.get("mem_free_mib")
            out.append(GpuSample(index=i, name=g["name"], util_pct=g.get("util_pct"), mem_used_mib=used,
                                 mem_total_mib=used + free if used is not None and free is not None else None,
                                 power_w=g.get("power_w")))
        return tuple(out)


async def open_metrics_source(metrics_urls: list[str] | tuple[str, ...] = (), prometheus: str = "",
                              selector: str = "", *, headers: dict[str, str] | None = None, ca_cert: str = "",
                              insecure: bool = False) -> MultiScrape | PromSource | None:
    """The server-metrics source the flags ask for (None: the default, scraping --url's own /metrics), checked
    before any load is sent: MetricsSourceError for bad --metrics-url input and PrometheusError for a selector
    that does not parse or matches nothing (both usage errors, exit 2), PrometheusUnreachable (exit 1).
    `headers` go to --metrics-url replicas only (the server's key is not Prometheus's)."""
    if metrics_urls and prometheus:
        raise MetricsSourceError("--metrics-url and --prometheus are two sources of the same numbers: give one")
    if selector and not prometheus:
        raise MetricsSourceError("--prometheus-selector needs --prometheus URL")
    if metrics_urls:
        return MultiScrape(metrics_urls, headers, ca_cert=ca_cert, insecure=insecure)
    if not prometheus:
        return None
    src = PromSource(prometheus, selector, ca_cert=ca_cert, insecure=insecure)
    try:
        await src.check()
    except BaseException:
        await src.aclose()
        raise
    return src
