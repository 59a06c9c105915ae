"""MetricsPoller, fetch_info and probe against a real tiny HTTP server on 127.0.0.1 (no HTTP mocks)."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from qbench_tui.engine.metrics_parse import ServerSample
from qbench_tui.engine.server_poll import PROBE_KEYS, MetricsPoller, ServerUnreachable, fetch_info, probe

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "metrics"
SYNTHETIC = (FIX / "SYNTHETIC_v0.13.0_rendered-from-loggers.py-definitions.prom").read_text(encoding="utf-8")
V0_PAGE = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
# TYPE vllm:gpu_prefix_cache_hit_rate gauge
vllm:gpu_prefix_cache_hit_rate{model_name="m"} 0.4
"""
MODELS = {"object": "list", "data": [{"id": "Qwen/Qwen2.5-14B-Instruct-AWQ", "object": "model",
                                      "owned_by": "vllm", "max_model_len": 4096}]}
SECRET = "sk-sekret-123"
LITELLM_401 = (b'{"error":{"message":"Authentication Error, No api key passed in.","type":"auth_error",'
               b'"param":"None","code":"401"}}')


class FakeServer:
    """routes: path -> (status, body bytes, content type). Mutable while running; counts requests per path and
    the most /metrics requests ever in flight at once."""

    def __init__(self, metrics: str | None = SYNTHETIC, version: bool = True, models: bool = True,
                 metrics_delay: float = 0.0, want_key: str | None = None) -> None:
        """want_key: every path answers 401 (LiteLLM's body) unless the request brings `Bearer want_key`."""
        self.routes: dict[str, tuple[int, bytes, str]] = {}
        self.set_metrics(metrics)
        if version:
            self.routes["/version"] = (200, b'{"version":"0.13.0"}', "application/json")
        if models:
            self.routes["/v1/models"] = (200, json.dumps(MODELS).encode(), "application/json")
        self.metrics_delay = metrics_delay
        self.hits: dict[str, int] = {}
        self.auth: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                with outer._lock:
                    outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                    outer.auth.append(self.headers.get("Authorization"))
                    if self.path == "/metrics":
                        outer.in_flight += 1
                        outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    if self.path == "/metrics" and outer.metrics_delay:
                        time.sleep(outer.metrics_delay)
                    status, body, ctype = outer.routes.get(self.path, (404, b'{"detail":"Not Found"}',
                                                                       "application/json"))
                    if want_key is not None and self.headers.get("Authorization") != f"Bearer {want_key}":
                        status, body, ctype = 401, LITELLM_401, "application/json"
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    if self.path == "/metrics":
                        with outer._lock:
                            outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def set_metrics(self, text: str | None, status: int = 200) -> None:
        if text is None:
            self.routes.pop("/metrics", None)
        else:
            self.routes["/metrics"] = (status, text.encode(), "text/plain; version=1.0.0; charset=utf-8")

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)


def free_port_url() -> str:
    """A loopback port nobody listens on: bound, closed, so the connection is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


async def wait_until(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Collect:
    def __init__(self) -> None:
        self.samples: list[ServerSample] = []
        self.errors: list[str] = []

    def poller(self, url: str, **kw) -> MetricsPoller:
        return MetricsPoller(url, kw.pop("api_key", None), kw.pop("period", 0.02), self.samples.append,
                             self.errors.append, **kw)


async def run_until(p: MetricsPoller, cond, timeout: float = 20.0) -> None:
    task = asyncio.create_task(p.run())
    try:
        await wait_until(cond, timeout)
    finally:
        p.stop()
        await asyncio.wait_for(task, 20.0)  # stop() must end run() by itself, no cancel needed


# ---------------------------------------------------------------- probe


async def test_probe_contract_keys_and_values() -> None:
    with FakeServer() as srv:
        d = await probe(srv.url, api_key=SECRET)
    assert tuple(d) == PROBE_KEYS
    assert list(d) == ["kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits", "prefix_cache_hit_rate",
                       "num_requests_running", "num_requests_waiting", "num_preemptions", "prompt_tokens",
                       "generation_tokens", "engines", "metrics_schema", "vllm_version", "models", "per_engine"]
    assert d["kv_cache_usage"] == pytest.approx(0.0371)
    assert (d["prefix_cache_queries"], d["prefix_cache_hits"]) == (4096.0, 1536.0)
    assert d["prefix_cache_hit_rate"] == pytest.approx(1536 / 4096)
    assert (d["num_requests_running"], d["num_requests_waiting"], d["num_preemptions"]) == (2.0, 1.0, 0.0)
    assert (d["prompt_tokens"], d["generation_tokens"]) == (4096.0, 512.0)
    assert (d["engines"], d["metrics_schema"]) == (1, "v1")
    assert d["vllm_version"] == "0.13.0"
    assert d["models"] == ["Qwen/Qwen2.5-14B-Instruct-AWQ"]
    assert srv.auth and all(a == f"Bearer {SECRET}" for a in srv.auth)
    assert SECRET not in json.dumps(d)
    json.dumps(d)  # the CLI prints it as JSON


async def test_probe_without_api_key_sends_no_auth() -> None:
    with FakeServer() as srv:
        await probe(srv.url)
    assert srv.auth and all(a is None for a in srv.auth)


async def test_probe_metrics_404_is_schema_none() -> None:
    with FakeServer(metrics=None) as srv:
        d = await probe(srv.url)
    assert tuple(d) == PROBE_KEYS
    assert d["metrics_schema"] == "none"
    assert d["engines"] == 0
    assert all(d[k] is None for k in PROBE_KEYS[:9])
    assert d["vllm_version"] == "0.13.0"
    assert d["models"] == ["Qwen/Qwen2.5-14B-Instruct-AWQ"]


async def test_probe_tolerates_missing_version_and_models() -> None:
    with FakeServer(version=False, models=False) as srv:
        d = await probe(srv.url)
    assert d["vllm_version"] is None
    assert d["models"] == []
    assert d["metrics_schema"] == "v1"


async def test_probe_v0_uses_hit_rate_gauge() -> None:
    with FakeServer(metrics=V0_PAGE) as srv:
        d = await probe(srv.url)
    assert d["metrics_schema"] == "v0"
    assert d["kv_cache_usage"] == 0.25
    assert d["prefix_cache_queries"] is None
    assert d["prefix_cache_hit_rate"] == 0.4


async def test_probe_garbage_metrics_is_schema_none() -> None:
    with FakeServer(metrics="<html>oops</html>") as srv:
        d = await probe(srv.url)
    assert d["metrics_schema"] == "none"
    assert d["models"] == ["Qwen/Qwen2.5-14B-Instruct-AWQ"]


async def test_probe_unreachable_raises() -> None:
    url = free_port_url()
    with pytest.raises(ServerUnreachable) as ei:
        await probe(url, api_key=SECRET, timeout=5.0)
    assert "unreachable" in str(ei.value)
    assert url in str(ei.value)
    assert SECRET not in str(ei.value)


def test_probe_cli_names_a_401_and_where_the_key_goes():
    from tests.conftest import run_qbench

    with FakeServer(want_key=SECRET) as srv:
        for extra in ((), ("--json",)):
            r = run_qbench("probe", "--url", srv.url, *extra)
            assert r.returncode == 1 and r.stdout == ""
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1, r.stderr
            assert "/v1/models answered HTTP 401" in lines[0] and "Authentication Error" in lines[0]
            assert "--api-key KEY" in lines[0] and "QBENCH_API_KEY" in lines[0]
        r = run_qbench("probe", "--url", srv.url, "--api-key", "sk-wrong")
        assert r.returncode == 1 and "the API key was refused" in r.stderr and "sk-wrong" not in r.stderr
        r = run_qbench("probe", "--url", srv.url, "--api-key", SECRET)
        assert r.returncode == 0, r.stderr
        assert "models        Qwen/Qwen2.5-14B-Instruct-AWQ" in r.stdout and "schema v1" in r.stdout
        r = run_qbench("probe", "--url", srv.url, "--json", env={"QBENCH_API_KEY": SECRET})
        assert r.returncode == 0 and tuple(json.loads(r.stdout)) == PROBE_KEYS
        assert SECRET not in r.stdout + r.stderr


def test_probe_cli_without_models_but_no_key_wanted_is_a_normal_probe():
    from tests.conftest import run_qbench

    with FakeServer(models=False) as srv:  # /v1/models 404: not every server lists models
        r = run_qbench("probe", "--url", srv.url)
    assert r.returncode == 0, r.stderr
    assert "models        -" in r.stdout


# ---------------------------------------------------------------- fetch_info


async def test_fetch_info_reads_version_and_models() -> None:
    with FakeServer() as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=5.0) as c:
            assert await fetch_info(c) == ("0.13.0", ["Qwen/Qwen2.5-14B-Instruct-AWQ"])


async def test_fetch_info_tolerates_missing_and_broken() -> None:
    with FakeServer(version=False) as srv:
        srv.routes["/v1/models"] = (200, b"not json", "application/json")
        async with httpx.AsyncClient(base_url=srv.url, timeout=5.0) as c:
            assert await fetch_info(c) == (None, [])
    async with httpx.AsyncClient(base_url=free_port_url(), timeout=5.0) as c:
        assert await fetch_info(c) == (None, [])


# ---------------------------------------------------------------- poller


async def test_poller_delivers_samples_with_auth() -> None:
    col = Collect()
    with FakeServer() as srv:
        p = col.poller(srv.url, api_key=SECRET)
        await run_until(p, lambda: len(col.samples) >= 3)
    assert col.errors == []
    s = col.samples[0]
    assert s.schema == "v1"
    assert s.kv_cache_usage == pytest.approx(0.0371)
    assert s.generation_tokens == 512.0
    assert [x.t for x in col.samples] == sorted(x.t for x in col.samples)
    assert all(a == f"Bearer {SECRET}" for a in srv.auth)


async def test_poller_polls_never_overlap() -> None:
    col = Collect()
    # each scrape takes longer than the period: a timer-driven poller would stack requests up
    with FakeServer(metrics_delay=0.1) as srv:
        p = col.poller(srv.url, period=0.01)
        await run_until(p, lambda: len(col.samples) >= 4)
        assert srv.max_in_flight == 1
    assert len(col.samples) >= 4


async def test_poller_metrics_404_reports_once_then_recovers() -> None:
    col = Collect()
    with FakeServer(metrics=None) as srv:
        p = col.poller(srv.url)
        p.NO_METRICS_PERIOD = 0.02  # the 5 s default would make this test slow
        task = asyncio.create_task(p.run())
        try:
            await wait_until(lambda: srv.hits.get("/metrics", 0) >= 4)
            assert col.errors == ["no server metrics"]  # once, not once per poll
            assert len(col.samples) == 1 and col.samples[0].schema == "none"
            srv.set_metrics(SYNTHETIC)  # the server came up later
            await wait_until(lambda: any(s.schema == "v1" for s in col.samples))
        finally:
            p.stop()
            await asyncio.wait_for(task, 20.0)
    assert col.errors == ["no server metrics"]


async def test_poller_404_waits_the_slow_period() -> None:
    with FakeServer(metrics=None) as srv:
        p = MetricsPoller(srv.url, None, 0.01, lambda s: None, lambda m: None)
        async with httpx.AsyncClient(base_url=srv.url, timeout=5.0) as c:
            assert await p.poll_once(c) == MetricsPoller.NO_METRICS_PERIOD
            srv.set_metrics(SYNTHETIC)
            assert await p.poll_once(c) == 0.01


async def test_poller_unreachable() -> None:
    col = Collect()
    p = col.poller(free_port_url())
    await run_until(p, lambda: len(col.errors) >= 2)
    assert col.samples == []
    assert all(e.startswith("server unreachable: ") for e in col.errors)


async def test_poller_garbage_body() -> None:
    col = Collect()
    with FakeServer(metrics="<html><body>proxy error</body></html>") as srv:
        p = col.poller(srv.url)
        await run_until(p, lambda: len(col.errors) >= 1)
    assert col.samples == []
    assert col.errors[0].startswith("bad /metrics: ")
    assert "not Prometheus text" in col.errors[0]


async def test_poller_http_500() -> None:
    col = Collect()
    with FakeServer() as srv:
        srv.set_metrics("boom", status=500)
        p = col.poller(srv.url)
        await run_until(p, lambda: len(col.errors) >= 1)
    assert col.errors[0] == "bad /metrics: HTTP 500"


async def test_poller_survives_a_raising_callback() -> None:
    seen: list[ServerSample] = []
    errors: list[str] = []

    def on_sample(s: ServerSample) -> None:
        seen.append(s)
        if len(seen) == 1:
            raise RuntimeError("consumer bug")

    with FakeServer() as srv:
        p = MetricsPoller(srv.url, None, 0.02, on_sample, errors.append)
        await run_until(p, lambda: len(seen) >= 3)
    assert any("consumer bug" in e for e in errors)


async def test_poller_stop_before_run_returns_at_once() -> None:
    with FakeServer() as srv:
        p = MetricsPoller(srv.url, None, 1.0, lambda s: None, lambda m: None)
        p.stop()
        await asyncio.wait_for(p.run(), 10.0)
        assert srv.hits.get("/metrics", 0) == 0


async def test_poller_stop_interrupts_the_sleep() -> None:
    col = Collect()
    with FakeServer() as srv:
        p = col.poller(srv.url, period=3600.0)  # would sleep an hour between polls
        task = asyncio.create_task(p.run())
        try:
            await wait_until(lambda: len(col.samples) == 1)
        finally:
            p.stop()
            await asyncio.wait_for(task, 20.0)
    assert srv.hits["/metrics"] == 1
