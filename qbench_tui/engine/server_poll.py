"""Talking to a server's side channels over HTTP: the /metrics poller, /version + /v1/models discovery, and the
one-shot probe behind `qbench probe`. Parsing is metrics_parse's; this module only fetches and reports."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from qbench_tui.engine.metrics_parse import MetricsParseError, ServerSample, parse_metrics, per_engine
from qbench_tui.engine.tls import make_ssl_context


class ServerUnreachable(RuntimeError):
    """Nothing answered at the URL (every endpoint refused or timed out)."""


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _short_timeout(total: float = 5.0) -> httpx.Timeout:
    # A scrape must never hold up the loop for long: /metrics is small and local.
    return httpx.Timeout(total, connect=min(2.0, total))


def side_client(url: str, headers: dict[str, str] | None = None, *, timeout: float | httpx.Timeout = 5.0,
                ca_cert: str = "", insecure: bool = False) -> httpx.AsyncClient:
    """An httpx client for the server under test's side channels (/metrics, /version, /v1/models).

    trust_env=False: no http_proxy / https_proxy / ALL_PROXY from the environment, as for the completions (the
    raw client never asks): a proxy would see the Bearer key, and would be what gets measured. The TLS trust is
    the load's own (engine/tls.py), so --ca-cert / --insecure mean the same for every request."""
    return httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers or {}, timeout=timeout, trust_env=False,
                             verify=make_ssl_context(ca_cert, insecure))


def _describe(e: BaseException) -> str:
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class MetricsPoller:
    """GET /metrics every `period` seconds (polls never overlap) and hand each ServerSample to on_sample.

    Problems go to on_error as one human-readable line; the poller itself never raises out of run()."""

    NO_METRICS_PERIOD = 5.0  # /metrics 404: not vLLM (yet?) — keep looking, slowly

    def __init__(self, base_url: str, api_key: str | None = None, period: float = 1.0,
                 on_sample: Callable[[ServerSample], None] | None = None,
                 on_error: Callable[[str], None] | None = None, timeout: float = 5.0, *, ca_cert: str = "",
                 insecure: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        self._tls = (ca_cert, insecure)
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
        async with side_client(self.base_url, _headers(self._api_key), timeout=_short_timeout(self.timeout),
                               ca_cert=self._tls[0], insecure=self._tls[1]) as client:
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
              "generation_tokens", "engines", "metrics_schema", "vllm_version", "models", "per_engine")


async def probe(url: str, api_key: str | None = None, timeout: float = 5.0, *, ca_cert: str = "",
                insecure: bool = False) -> dict:
    """One look at a server, as `qbench probe --json` prints it (keys: PROBE_KEYS, in that order)."""
    async with side_client(url, _headers(api_key), timeout=_short_timeout(timeout), ca_cert=ca_cert,
                           insecure=insecure) as client:
        rm = await _try_get(client, "/metrics")
        rv = await _try_get(client, "/version")
        rmod = await _try_get(client, "/v1/models")
    if all(isinstance(r, httpx.TransportError) for r in (rm, rv, rmod)):
        raise ServerUnreachable(f"server unreachable at {url}: {_describe(rm)}")  # type: ignore[arg-type]
    s = ServerSample(t=time.monotonic(), schema="none", engines=0)
    engines: dict[str, ServerSample] = {}
    if isinstance(rm, httpx.Response) and rm.status_code == 200:
        try:
            s = parse_metrics(rm.text, s.t)
            engines = per_engine(rm.text, s.t) if s.engines > 1 else {}
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
        # data parallelism: each engine's own numbers beside the sums above
        "per_engine": {e: {"kv_cache_usage": x.kv_cache_usage, "num_requests_running": x.num_running,
                           "num_requests_waiting": x.num_waiting, "num_preemptions": x.num_preemptions,
                           "prompt_tokens": x.prompt_tokens, "generation_tokens": x.generation_tokens}
                       for e, x in engines.items()} or None,
    }
