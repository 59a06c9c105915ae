"""Server metrics from several replicas (MultiScrape over real simulators), the fleet arithmetic across restarts
and silences, the PromQL source's bad-input lines (a scripted Prometheus API on 127.0.0.1 where the real one is
tests/reliability/test_prometheus.py), and qbench's own exporter scraped after a real engine run."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qbench_tui.engine.exporter import ClientMetrics
from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.metrics_parse import ServerSample, parse_metrics
from qbench_tui.engine.metrics_sources import FleetCombiner, MetricsSourceError, MultiScrape, check_metrics_urls
from qbench_tui.engine.promql import (
    NoVllmSeries,
    PrometheusError,
    PrometheusUnreachable,
    PromSource,
    open_metrics_source,
)
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.server_series import ServerSeries
from qbench_tui.server.net import free_port


async def _wave(url: str, n: int, records: list, on_record=None) -> None:
    def rec(r):
        records.append(r)
        if on_record is not None:
            on_record(r)

    eng = LoadEngine(RequestSpec(url=url, model="m", max_tokens=16, ignore_eos=True), lambda i: f"prompt {i}",
                     on_record=rec)
    try:
        await eng.run_wave(n)
    finally:
        await eng.stop()


# ------------------------------------------------------------------ several --metrics-url pages


async def test_scrape_many_sums_replicas_and_names_the_dead_one(sim_proc):
    a = sim_proc("h200-fast", "--model", "m")
    b = sim_proc("h200-fast", "--model", "m", "--metrics-schema", "v0")
    dead = f"http://127.0.0.1:{free_port()}"
    records: list = []
    await _wave(a.url, 6, records)
    await _wave(b.url, 4, records)
    src = MultiScrape([a.url, dead, b.url + "/"])
    try:
        fleet = await src.poll()
        pages = [parse_metrics(httpx.get(u + "/metrics").text, 0.0) for u in (a.url, b.url)]
    finally:
        await src.aclose()
    assert fleet.up == 2
    assert fleet.errors == (f"{dead}: unreachable (ConnectError: All connection attempts failed)",)
    s = fleet.sample
    assert s.generation_tokens == sum(r.out_tokens for r in records) == sum(p.generation_tokens for p in pages)
    assert s.request_success == 10 and s.ttft_count == 10
    assert s.prompt_tokens == sum(p.prompt_tokens for p in pages)
    assert s.ttft_sum == pytest.approx(sum(p.ttft_sum for p in pages), rel=1e-12)
    assert s.num_gpu_blocks == sum(p.num_gpu_blocks for p in pages) and s.engines == 2
    assert s.kv_cache_usage == max(p.kv_cache_usage for p in pages)
    assert s.schema == "v1"
    by_url = {r.url: r for r in fleet.replicas}
    assert by_url[a.url].sample.generation_tokens == sum(r.out_tokens for r in records[:6])
    assert by_url[dead].sample is None and not by_url[dead].up


async def test_read_is_the_source_seam(sim_proc):
    a = sim_proc("h200-fast", "--model", "m")
    src = MultiScrape([a.url])
    try:
        sample, err = await src.read()
    finally:
        await src.aclose()
    assert sample is not None and sample.schema == "v1" and err == ""
    dead = MultiScrape([f"http://127.0.0.1:{free_port()}"])
    try:
        sample, err = await dead.read()
    finally:
        await dead.aclose()
    assert sample is None and err.startswith("http://127.0.0.1:") and "unreachable (ConnectError" in err


def _s(t: float, gen: float | None, start: float | None = 1.0, kv: float = 0.5) -> ServerSample:
    return ServerSample(t=t, schema="v1", engines=1, generation_tokens=gen, kv_cache_usage=kv, num_running=2.0,
                        start_time=start)


def test_fleet_counters_survive_a_replica_restart_silence_and_late_join():
    c = FleetCombiner()
    series = ServerSeries()
    polls = [
        [("a", _s(0, 100)), ("b", _s(0, 50, kv=0.9))],  # lifetimes at the first poll: 150
        [("a", _s(1, 130)), ("b", _s(1, 70))],  # +30 +20
        [("a", _s(2, 10, start=2.0)), ("b", _s(2, 75))],  # a restarted: +10 (all since), b +5
        [("a", _s(3, 25, start=2.0)), ("b", None)],  # b silent: held at its last, a +15
        [("a", _s(4, 30, start=2.0)), ("b", _s(4, 80)), ("c", _s(4, 1000))],  # a +5, b back +5; c joins: from now on
        [("a", _s(5, 30, start=2.0)), ("b", _s(5, 80)), ("c", _s(5, 1004))],  # c +4
    ]
    sums = []
    for i, readings in enumerate(polls):
        f = c.combine(readings, t=float(i))
        series.add(f.sample)
        sums.append(f.sample.generation_tokens)
    assert sums == [150, 200, 215, 230, 240, 244]
    assert series.delta("generation_tokens") == 94  # what the fleet generated while watched, restart and all
    # gauges: running summed over the replicas that answered; kv usage the max, with the mean beside it
    f = c.combine([("a", _s(6, 30, start=2.0, kv=0.2)), ("b", _s(6, 80, kv=0.8)), ("c", None)], t=6.0)
    assert f.sample.num_running == 4.0 and f.sample.kv_cache_usage == 0.8
    assert f.kv_cache_usage_mean == pytest.approx(0.5)
    assert f.sample.start_time is None  # restarts are accounted per replica, never as the fleet's


def test_metrics_urls_checked():
    assert check_metrics_urls(["http://A:8000/", "https://b:1/metrics"]) == ("http://a:8000", "https://b:1")
    with pytest.raises(MetricsSourceError, match=r"^--metrics-url 'http://a:8000/' given twice \(same as "
                                                 r"'http://A:8000'\)$"):
        check_metrics_urls(["http://A:8000", "http://a:8000/"])
    with pytest.raises(MetricsSourceError, match="not an http"):
        check_metrics_urls(["a:8000"])


# ------------------------------------------------------------------ the PromQL source's bad input


class _API(BaseHTTPRequestHandler):
    """Answers /api/v1/query with what the test put in `body` (Prometheus's JSON shapes)."""

    body: dict = {}
    status = 200

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        data = json.dumps(type(self).body).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def prom_api():
    handler = type("H", (_API,), {})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield handler, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


async def test_promql_bad_input_lines(prom_api):
    handler, url = prom_api
    handler.body = {"status": "success", "data": {"resultType": "vector", "result": []}}
    src = PromSource(url, 'namespace="llm",model_name="x"')
    with pytest.raises(NoVllmSeries, match=r'^no vllm series match \{namespace="llm",model_name="x"\} at http'):
        await src.check()
    handler.status = 400
    handler.body = {"status": "error", "errorType": "bad_data", "error": 'invalid parameter "query": 1:34: parse '
                    "error: unexpected \"}\" in label matching, expected string"}
    with pytest.raises(PrometheusError, match=r'refused the query \(bad_data\): invalid parameter "query": 1:34'):
        await src.check()
    # poll() never raises: the error is the replica line, and there is no sample
    sample, err = await src.read()
    assert sample is None and "refused the query (bad_data)" in err
    await src.aclose()
    gone = PromSource(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PrometheusUnreachable, match=r"^Prometheus unreachable at http://127.0.0.1:\d+: Connect"):
        await gone.check()
    await gone.aclose()


# ------------------------------------------------------------------ qbench's own metrics


def _scrape(port: int) -> dict[str, dict]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("" if not s.labels else "{" + ",".join(f"{k}={v}" for k, v in s.labels.items()) + "}")
            out.setdefault(fam.name, {})[key] = s.value
    return out


async def test_exporter_after_a_real_run(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m")
    target = [0]
    m = ClientMetrics(target=lambda: target[0], loop_lag_s=lambda: 0.004)
    port = m.serve(0)
    records: list = []
    try:
        target[0] = 9
        await _wave(sim.url, 9, records, on_record=m.observe)
        page = _scrape(port)
    finally:
        m.close()
    n = len(records)
    assert n == 9 and all(r.ok for r in records)
    assert page["qbench_requests"]['qbench_requests_total{outcome=ok}'] == n
    assert page["qbench_requests"]['qbench_requests_total{outcome=failed}'] == 0
    assert page["qbench_output_tokens"]["qbench_output_tokens_total"] == sum(r.out_tokens for r in records)
    assert page["qbench_prompt_tokens"]["qbench_prompt_tokens_total"] == sum(r.in_tokens for r in records)
    ttft = page["qbench_time_to_first_token_seconds"]
    assert ttft["qbench_time_to_first_token_seconds_count"] == n
    assert ttft['qbench_time_to_first_token_seconds_bucket{le=+Inf}'] == n
    assert ttft["qbench_time_to_first_token_seconds_sum"] == pytest.approx(sum(r.ttft for r in records))
    itl = page["qbench_inter_token_latency_seconds"]
    assert itl["qbench_inter_token_latency_seconds_count"] == sum(len(r.itl) for r in records) > 0
    le_20ms = sum(v <= 0.025 for r in records for v in r.itl)  # exact bucket membership, le inclusive
    assert itl['qbench_inter_token_latency_seconds_bucket{le=0.025}'] == le_20ms
    assert page["qbench_e2e_request_latency_seconds"]["qbench_e2e_request_latency_seconds_count"] == n
    assert page["qbench_target_concurrency"]["qbench_target_concurrency"] == 9
    assert page["qbench_event_loop_lag_seconds"]["qbench_event_loop_lag_seconds"] == 0.004
    assert "qbench_requests_in_flight" not in page  # no reader given: left out, not a made-up zero
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics")  # closed: the port is free again


def test_exporter_registry_is_its_own():
    from prometheus_client import REGISTRY, generate_latest

    a, b = ClientMetrics(), ClientMetrics()  # two in one process: no duplicate-registration error
    a.requests["ok"] += 1
    assert b"qbench_" not in generate_latest(REGISTRY)
    assert b'qbench_requests_total{outcome="ok"} 1.0' in generate_latest(a.registry)
    assert b'qbench_requests_total{outcome="ok"} 0.0' in generate_latest(b.registry)


async def test_open_metrics_source_bad_input(prom_api):
    with pytest.raises(MetricsSourceError, match="give one"):
        await open_metrics_source(["http://a:1"], "http://p:9090")
    with pytest.raises(MetricsSourceError, match="^--prometheus-selector needs --prometheus URL$"):
        await open_metrics_source(selector='model_name="m"')
    with pytest.raises(MetricsSourceError, match="given twice"):
        await open_metrics_source(["http://a:1", "http://a:1/"])
    with pytest.raises(PrometheusUnreachable):
        await open_metrics_source(prometheus=f"http://127.0.0.1:{free_port()}")
    handler, url = prom_api
    handler.body = {"status": "success", "data": {"resultType": "vector", "result": []}}
    with pytest.raises(NoVllmSeries, match=r"^no vllm series match \{\} at "):
        await open_metrics_source(prometheus=url)
    assert await open_metrics_source() is None
    many = await open_metrics_source(["http://a:1", "http://b:1"])
    assert isinstance(many, MultiScrape) and many.urls == ("http://a:1", "http://b:1")
    await many.aclose()
