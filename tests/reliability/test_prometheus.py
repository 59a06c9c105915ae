"""A real Prometheus server (Debian's `prometheus` package, 2.42) scraping two simulators (one with vLLM V1 metric
names, one with V0 ones) and a scripted DCGM-exporter page, every second; qbench's PromQL source read through its
HTTP API is compared with scraping the simulators directly.

What it shows: once Prometheus has scraped after the load stopped, the PromQL source's ServerSample equals the sum
of the direct scrapes field for field (counters exactly; sums of seconds to 1e-9 relative, float addition order);
a level's window read with the Grafana dashboard's semantics: increase() of the output tokens lies between the
true total and the total times the window over the window less 2.2 scrape intervals (Prometheus's extrapolation
bound); for one target, whose series share their scrape times so the extrapolation factor cancels, the TTFT and
queue means (rate(_sum) / rate(_count)) equal the page's and histogram_quantile's TTFT p50/p99, E2E p99 and ITL
p50 equal Prometheus's bucket rule applied to the page's own buckets (to 1e-6); for the fleet, where each target
has its own factor, the mean lies between the targets' means. DCGM series come back as GpuSamples and level
numbers. A selector matching nothing,
a selector that does not parse, a URL that is no Prometheus, and a stopped replica each give their one line.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.metrics_parse import parse_metrics
from qbench_tui.engine.metrics_sources import MultiScrape
from qbench_tui.engine.prom_level import prom_level
from qbench_tui.engine.promql import NoVllmSeries, PrometheusError, PromSource
from qbench_tui.engine.records import RequestSpec
from qbench_tui.server import proctree
from qbench_tui.server.net import free_port
from tests.reliability.leftovers import assert_nothing_left, stop_group

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")

SCRAPE_S = 1.0
CONF = """\
global:
  scrape_interval: {interval}s
  evaluation_interval: {interval}s
scrape_configs:
  - job_name: vllm
    static_configs:
      - targets: [{targets}]
  - job_name: dcgm
    static_configs:
      - targets: ['{dcgm}']
"""


class Prometheus:
    """prometheus on 127.0.0.1 with its config and TSDB in a test folder, in its own process group."""

    def __init__(self, folder: Path, targets: list[str], dcgm: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.dir = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "p.yml").write_text(CONF.format(interval=int(SCRAPE_S), dcgm=dcgm,
                                                  targets=", ".join(f"'{t}'" for t in targets)))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Prometheus:
        log = open(self.dir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.dir / 'p.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=proctree.pdeathsig_preexec())
        log.close()
        self.wait(lambda: httpx.get(self.url + "/-/ready", timeout=2).status_code == 200, timeout)
        return self

    def wait(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                if predicate():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus: condition not met in {timeout} s: {self.log()}")

    def up(self) -> dict[str, str]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": "up"}, timeout=5).json()
        return {x["metric"]["instance"]: x["value"][1] for x in r["data"]["result"]}

    def log(self) -> str:
        p = self.dir / "prometheus.log"
        return " | ".join(p.read_text().splitlines()[-5:]) if p.exists() else ""

    def stop(self) -> None:
        stop_group(self.proc, wait=15)


def _no_prometheus_left() -> None:
    left = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "prometheus" in " ".join(p.cmdline()):
                left.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    assert not left, f"prometheus still running: {left}"


def _dcgm_page() -> tuple[object, int]:
    """A DCGM exporter's page for two GPUs (the series names and labels dcgm-exporter uses), scripted."""
    reg = CollectorRegistry()
    labels = ("gpu", "UUID", "modelName", "Hostname")
    values = {"DCGM_FI_DEV_GPU_UTIL": (87.0, 91.0), "DCGM_FI_DEV_FB_USED": (120_000.0, 121_000.0),
              "DCGM_FI_DEV_FB_FREE": (20_000.0, 19_000.0), "DCGM_FI_DEV_POWER_USAGE": (610.0, 630.0)}
    for name, (a, b) in values.items():
        g = Gauge(name, name, labels, registry=reg)
        g.labels("0", "GPU-a", "NVIDIA H200", "node1").set(a)
        g.labels("1", "GPU-b", "NVIDIA H200", "node1").set(b)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=reg)
    return server, server.server_address[1]


def _buckets(texts: list[str], family: str) -> list[tuple[float, float]]:
    """(le, cumulative count) summed over pages, le ascending (+Inf last)."""
    acc: dict[float, float] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == family + "_bucket":
                    le = float(s.labels["le"])
                    acc[le] = acc.get(le, 0.0) + s.value
    return sorted(acc.items())


def _histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's bucketQuantile: linear inside the bucket holding the rank, the first bucket from 0."""
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    raise AssertionError("rank past the last bucket")


def per_target(texts: list[str]):
    return [parse_metrics(t, 0.0) for t in texts]


def _close(a, b, rel=1e-9) -> bool:
    if a is None or b is None or isinstance(a, str):
        return a == b
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


async def _load(url: str, n: int) -> list:
    records: list = []
    eng = LoadEngine(RequestSpec(url=url, model="m", max_tokens=24, ignore_eos=True), lambda i: f"prompt {i}",
                     on_record=records.append)
    try:
        await eng.run_wave(n)
    finally:
        await eng.stop()
    return records


async def test_promql_source_equals_direct_scrapes(sim_proc, tmp_path):
    sims = [sim_proc("h200-fast", "--model", "m", "--metrics-schema", "v1"),
            sim_proc("h200-fast", "--model", "m", "--metrics-schema", "v0")]
    dcgm, dcgm_port = _dcgm_page()
    prom = Prometheus(tmp_path / "prom", [s.url.split("//")[1] for s in sims], f"127.0.0.1:{dcgm_port}")
    src = PromSource("http://127.0.0.1:1")  # replaced below; keeps the finally simple
    try:
        prom.start()
        prom.wait(lambda: sorted(prom.up().values()) == ["1", "1", "1"], 60)
        src = PromSource(prom.url)
        assert await src.check() > 0
        t0 = time.time()
        await asyncio.sleep(3 * SCRAPE_S)  # the window's first scrapes see the counters at 0
        recs = [await _load(sims[0].url, 12), await _load(sims[1].url, 7)]
        assert all(r.ok for rs in recs for r in rs) and [len(rs) for rs in recs] == [12, 7]
        out_tokens = sum(r.out_tokens for rs in recs for r in rs)

        direct = MultiScrape([s.url for s in sims])
        want = (await direct.poll()).sample
        texts = [httpx.get(s.url + "/metrics").text for s in sims]
        await direct.aclose()
        assert want.generation_tokens == out_tokens and want.request_success == 19  # the simulators' own count

        # Prometheus has the final counters once it has scraped after the load: poll until it has (bounded)
        got = None
        for _ in range(100):
            got = (await src.poll()).sample
            if got.generation_tokens == out_tokens and got.ttft_count == 19:
                break
            await asyncio.sleep(0.1)
        assert got is not None and got.generation_tokens == out_tokens
        for f in want.__dataclass_fields__:
            if f != "t":
                assert _close(getattr(got, f), getattr(want, f)), (f, getattr(got, f), getattr(want, f))
        assert got.schema == "v1" and got.engines == 2 and src.last is not None
        per_replica = {r.url: r.sample.generation_tokens for r in src.last.replicas if r.sample}
        assert per_replica == {f"vllm/{s.url.split('//')[1]}": sum(r.out_tokens for r in rs)
                               for s, rs in zip(sims, recs)}

        await asyncio.sleep(3 * SCRAPE_S)  # flat counters at the window's end as at its start
        t1 = time.time()
        lv = await prom_level(src, t0, t1)
        w = lv.window_s
        assert out_tokens <= lv.output_tokens <= out_tokens * w / (w - 2.2 * SCRAPE_S), (lv.output_tokens, w)
        # the fleet: each target's series carry their own extrapolation factor (their own scrape times), so the
        # fleet's mean is a mediant of the targets' means, between them
        means = [ps.ttft_sum / ps.ttft_count for ps in per_target(texts)]
        assert min(means) <= lv.ttft_mean_s <= max(means), (lv.ttft_mean_s, means)
        # one target: all its series share their scrape times, the factor cancels, the numbers are the page's
        one = PromSource(prom.url, f'job="vllm",instance="{sims[0].url.split("//")[1]}"')
        lv1 = await prom_level(one, t0, t1)
        await one.aclose()
        page = per_target(texts)[0]
        assert _close(lv1.ttft_mean_s, page.ttft_sum / page.ttft_count, 1e-6)
        assert _close(lv1.queue_mean_s, page.queue_time_sum / page.queue_time_count, 1e-6)
        ttft = _buckets(texts[:1], "vllm:time_to_first_token_seconds")
        assert _close(lv1.ttft_p50_s, _histogram_quantile(0.5, ttft), 1e-6)
        assert _close(lv1.ttft_p99_s, _histogram_quantile(0.99, ttft), 1e-6)
        e2e = _buckets(texts[:1], "vllm:e2e_request_latency_seconds")
        assert _close(lv1.e2e_p99_s, _histogram_quantile(0.99, e2e), 1e-6)
        itl = _buckets(texts[:1], "vllm:inter_token_latency_seconds")
        assert _close(lv1.itl_p50_s, _histogram_quantile(0.5, itl), 1e-6)
        assert lv1.gpus is None  # the DCGM page has no such instance: no GPUs under that selector
        assert lv.gpus == 2 and lv.gpu_util_pct == 89.0 and lv.gpu_mem_used_mib == 121_000.0
        assert lv.gpu_power_w == 1240.0
        assert lv.server_level().generation_tokens == lv.output_tokens

        gpus = await src.gpus()
        assert [(g.util_pct, g.mem_used_mib, g.mem_total_mib, g.power_w) for g in gpus] == [
            (87.0, 120_000.0, 140_000.0, 610.0), (91.0, 121_000.0, 140_000.0, 630.0)]

        # bad input, each one line from the real server
        with pytest.raises(NoVllmSeries, match=r'^no vllm series match \{model_name="nope"\} at http'):
            await PromSource(prom.url, 'model_name="nope"').check()
        assert await PromSource(prom.url, '{model_name="m"}').check() > 0
        with pytest.raises(PrometheusError, match="refused the query \\(bad_data\\): .*parse error"):
            await PromSource(prom.url, "model_name=").check()
        with pytest.raises(PrometheusError, match="^not a Prometheus API at http://127.0.0.1:\\d+: HTTP 404"):
            await PromSource(sims[0].url).check()

        # a replica that stops: named, its counters held, the fleet's sum does not go down
        sims[1].stop()
        prom.wait(lambda: prom.up().get(sims[1].url.split("//")[1]) == "0", 30)
        fleet = None
        for _ in range(100):
            fleet = await src.poll()
            if fleet.up == 1:
                break
            await asyncio.sleep(0.1)
        assert fleet is not None and fleet.up == 1
        assert len(fleet.errors) == 1 and "no vllm series now" in fleet.errors[0]
        assert fleet.errors[0].startswith(f"vllm/{sims[1].url.split('//')[1]}")
        assert fleet.sample.generation_tokens == out_tokens
    finally:
        await src.aclose()
        prom.stop()
        dcgm.shutdown()
        dcgm.server_close()
    _no_prometheus_left()
    for s in sims:
        s.stop()
    assert_nothing_left()


def test_qbench_run_reads_the_server_through_prometheus(sim_proc, tmp_path):
    """`qbench run --prometheus URL`: the server's view per level comes from PromQL (instant sums for the deltas,
    the window with Grafana's semantics in `server_promql`), equal to what the simulators counted."""
    from tests.conftest import run_qbench

    sims = [sim_proc("h200-fast", "--model", "m"), sim_proc("h200-fast", "--model", "m")]
    dcgm, dcgm_port = _dcgm_page()
    prom = Prometheus(tmp_path / "prom", [s.url.split("//")[1] for s in sims], f"127.0.0.1:{dcgm_port}")
    try:
        prom.start()
        prom.wait(lambda: sorted(prom.up().values()) == ["1", "1", "1"], 60)
        out = tmp_path / "out"
        r = run_qbench("run", "--url", sims[0].url, "--url", sims[1].url, "-c", "4", "--duration", "6",
                       "--max-tokens", "16", "--ignore-eos", "--prometheus", prom.url, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert f"server metrics: Prometheus {prom.url}" in r.stderr
        d = json.load(open(next(out.glob("*.json"))))
        lv = d["levels"][0]
        pq = lv["server_promql"]
        assert "error" not in pq, pq
        # the window's tokens by Prometheus (increase(): extrapolated to the edges) against the client's rate
        # over the same window: within a scrape interval's worth at each edge
        client_tokens = lv["output_throughput"] * (lv["window"]["end_wall"] - lv["window"]["start_wall"])
        slack = 2 * SCRAPE_S * lv["output_throughput"] + 16
        assert abs(pq["output_tokens"] - client_tokens) <= slack, (pq["output_tokens"], client_tokens)
        assert pq["ttft_p50_ms"] is not None and pq["ttft_p99_ms"] >= pq["ttft_p50_ms"]
        assert pq["gpus"] == 2  # the scripted DCGM page's two GPUs
        # the instant-sum path (deltas over the level) saw both simulators: their tokens are the load's
        assert lv["server"]["generation_tokens"] > 0
    finally:
        prom.stop()
        dcgm.shutdown()
        dcgm.server_close()
    _no_prometheus_left()
