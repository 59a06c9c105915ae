"""/metrics: vLLM V1 names, types, labels and buckets (and the V0 schema), consistent with what was served."""
from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from qbench_tui.engine.metrics_parse import parse_metrics
from qbench_tui.server.sim.metrics import (
    ITL_BUCKETS,
    REQ_BUCKETS,
    TTFT_BUCKETS,
    V0_HISTOGRAMS,
    V1_HISTOGRAMS,
    SimMetrics,
)
from qbench_tui.server.sim.profile import load_profile
from tests.sim_process import REPO

MODEL = "Qwen/Qwen2.5-7B-Instruct"


def families(url: str) -> dict:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(fams: dict, name: str, sample: str | None = None, **labels: str) -> float:
    total = 0.0
    for s in fams[name].samples:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def run_requests(url: str, n: int, max_tokens: int) -> list[dict]:
    usages = []
    for i in range(n):
        r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "messages": [{"role": "user", "content": f"question {i}"}], "stream": True, "max_tokens": max_tokens,
            "ignore_eos": True, "stream_options": {"include_usage": True}})
        last = [e for e in r.content.split(b"\n\n") if b'"usage":{' in e][-1]
        usages.append(json.loads(last[6:])["usage"])
    return usages


def test_v1_names_types_labels_buckets(sim_server):
    sim = sim_server("h200-fast", in_thread=True, speed=5)
    usages = run_requests(sim.url, 5, 7)
    fams = families(sim.url)
    expected_types = {
        "vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge", "vllm:cache_config_info": "gauge",
        "vllm:prefix_cache_queries": "counter", "vllm:prefix_cache_hits": "counter",
        "vllm:num_preemptions": "counter", "vllm:prompt_tokens": "counter", "vllm:generation_tokens": "counter",
        "vllm:request_success": "counter", "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram", "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:request_queue_time_seconds": "histogram", "vllm:iteration_tokens_total": "histogram",
        "vllm:request_prompt_tokens": "histogram", "vllm:request_generation_tokens": "histogram",
    }
    for name, typ in expected_types.items():
        assert fams[name].type == typ, name
    for fam in fams.values():
        for s in fam.samples:
            assert s.labels.get("engine") == "0", s
            if fam.name != "vllm:cache_config_info":
                assert s.labels["model_name"] == MODEL, s

    def bounds(name: str) -> list[float]:
        return [float(s.labels["le"]) for s in fams[name].samples if s.name.endswith("_bucket")][:-1]

    assert bounds("vllm:time_to_first_token_seconds") == list(TTFT_BUCKETS)
    assert bounds("vllm:inter_token_latency_seconds") == list(ITL_BUCKETS)
    assert bounds("vllm:e2e_request_latency_seconds") == list(REQ_BUCKETS)
    assert bounds("vllm:request_prompt_tokens")[-1] == 5000.0  # 1-2-5 up to max_model_len 8192

    info = fams["vllm:cache_config_info"].samples[0].labels
    assert (info["block_size"], info["num_gpu_blocks"], info["enable_prefix_caching"]) == ("16", "116000", "True")

    prompt = sum(u["prompt_tokens"] for u in usages)
    gen = sum(u["completion_tokens"] for u in usages)
    assert value(fams, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == prompt
    assert value(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == gen == 35
    assert value(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="length") == 5
    assert value(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="stop") == 0
    assert value(fams, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") == 5
    assert value(fams, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count") == gen - 5
    assert value(fams, "vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_count") == 5
    assert value(fams, "vllm:prefix_cache_queries", "vllm:prefix_cache_queries_total") == prompt
    # the chat template's system prompt is one shared full block: later requests hit it
    assert value(fams, "vllm:prefix_cache_hits", "vllm:prefix_cache_hits_total") == 16 * 4
    assert value(fams, "vllm:num_requests_running") == 0
    assert value(fams, "vllm:kv_cache_usage_perc") == 0.0


def test_v0_schema_parses_with_old_names(sim_server):
    sim = sim_server("h200-fast", in_thread=True, speed=5, metrics_schema="v0")
    run_requests(sim.url, 2, 3)
    fams = families(sim.url)
    for name, typ in {"vllm:gpu_cache_usage_perc": "gauge", "vllm:gpu_prefix_cache_queries": "counter",
                      "vllm:gpu_prefix_cache_hits": "counter", "vllm:gpu_prefix_cache_hit_rate": "gauge",
                      "vllm:num_requests_running": "gauge", "vllm:generation_tokens": "counter",
                      "vllm:time_per_output_token_seconds": "histogram"}.items():
        assert fams[name].type == typ, name
    for gone in ("vllm:kv_cache_usage_perc", "vllm:prefix_cache_queries", "vllm:inter_token_latency_seconds"):
        assert gone not in fams
    assert all("engine" not in s.labels for f in fams.values() for s in f.samples)
    assert value(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == 6
    assert 0.0 < value(fams, "vllm:gpu_prefix_cache_hit_rate") < 1.0


def test_cli_list_profiles_and_set_override(sim_server):
    out = subprocess.run([sys.executable, "-m", "qbench_tui.server.sim", "--list-profiles"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in ("qwen2.5-14b-awq-32gb", "tiny-cpu", "h200-fast", "kv-limited", "seqs-limited"):
        assert name in out.stdout
    bad = subprocess.run([sys.executable, "-m", "qbench_tui.server.sim", "--profile", "nope", "--port", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown simulator profile" in bad.stderr
    sim = sim_server("tiny-cpu", overrides={"num_gpu_blocks": 123})
    assert any("SIMULATED vLLM) profile=tiny-cpu listening on http://127.0.0.1:" in ln for ln in sim.lines)
    info = families(sim.url)["vllm:cache_config_info"].samples[0].labels
    assert info["num_gpu_blocks"] == "123" and info["block_size"] == "128"


# ---------------------------------------------------------------- the page as prometheus_client renders it

SYNTHETIC = Path(__file__).resolve().parents[1] / "fixtures" / "metrics" / (
    "SYNTHETIC_v0.13.0_rendered-from-loggers.py-definitions.prom")
SYNTHETIC_MODEL = "Qwen/Qwen2.5-14B-Instruct-AWQ"


def shape(text: str) -> list[str]:
    """HELP/TYPE lines and sample lines with the value cut off: names, order, types, help, labels and `le` remain."""
    out = []
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            out.append(line)
        elif line and not line.startswith("#"):
            out.append(line.rsplit(" ", 1)[0])
    return out


def busy_metrics(schema: str) -> SimMetrics:
    """A SimMetrics with the cache config of the synthetic 0.13 page and state in every kind of family."""
    prof = load_profile("h200-fast").replace(max_model_len=4096, num_gpu_blocks=20000, block_size=16,
                                             gpu_memory_utilization=0.9, enable_prefix_caching=True)
    m = SimMetrics(prof, SYNTHETIC_MODEL, schema)
    m.num_running, m.num_waiting, m.kv_usage = 2, 1, 0.0371
    m.prefix_queries, m.prefix_hits, m.preemptions, m.prompt_tokens, m.generation_tokens = 4096, 1536, 3, 4096, 512
    m.success["length"] = 4
    for v in (0.0004, 0.03, 0.12, 2.5, 9000.0):  # below the first bound, on a bound, above the last
        for h in (m.ttft, m.itl, m.e2e, m.queue_time, m.tpot_req, m.req_prompt_tokens, m.iteration_tokens):
            h.observe(v)
    return m


def test_v1_page_has_the_shape_of_vllm_013_rendered_by_prometheus_client():
    page = busy_metrics("v1").render().decode()
    assert shape(page) == shape(SYNTHETIC.read_text(encoding="utf-8"))


def test_every_value_is_written_as_prometheus_client_writes_it():
    for schema in ("v1", "v0"):
        m = busy_metrics(schema)
        m.created = 1795887499.434373
        lines = [ln for ln in m.render().decode().splitlines() if ln and not ln.startswith("#")]
        for line in lines:
            text = line.rsplit(" ", 1)[1]
            assert text == floatToGoString(float(text)), line
        engine = 'engine="0",' if schema == "v1" else ""
        assert f'vllm:prompt_tokens_created{{{engine}model_name="{SYNTHETIC_MODEL}"}} 1.795887499434373e+09' in lines


def test_model_name_label_is_escaped():
    m = SimMetrics(load_profile("h200-fast"), 'a"b\\c', "v1")
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert fams["vllm:num_requests_running"].samples[0].labels["model_name"] == 'a"b\\c'


@pytest.mark.parametrize("schema", ["v1", "v0"])
def test_both_parsers_read_the_simulators_state(sim_server, schema):
    sim = sim_server("h200-fast", in_thread=True, speed=5, metrics_schema=schema)
    run_requests(sim.url, 4, 6)
    text = httpx.get(sim.url + "/metrics").text
    m = sim.metrics  # idle now: the engine has nothing left to change
    hist_table = V1_HISTOGRAMS if schema == "v1" else V0_HISTOGRAMS
    prefix = "vllm:prefix_cache" if schema == "v1" else "vllm:gpu_prefix_cache"

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    counters = {f"{prefix}_queries": m.prefix_queries, f"{prefix}_hits": m.prefix_hits,
                "vllm:num_preemptions": m.preemptions, "vllm:prompt_tokens": m.prompt_tokens,
                "vllm:generation_tokens": m.generation_tokens}
    for name, want in counters.items():
        assert value(fams, name, name + "_total") == want, name
        # prometheus_client writes `_created` as a gauge family of its own
        assert value(fams, name + "_created") == m.created, name
    for reason, n in m.success.items():
        assert value(fams, "vllm:request_success", "vllm:request_success_total", finished_reason=reason) == n
    usage = "vllm:kv_cache_usage_perc" if schema == "v1" else "vllm:gpu_cache_usage_perc"
    assert value(fams, usage) == m.kv_usage
    assert value(fams, "vllm:num_requests_running") == m.num_running
    assert value(fams, "vllm:num_requests_waiting") == m.num_waiting
    for name, _help, attr in hist_table:
        h = getattr(m, attr)
        samples = fams[name].samples
        buckets = [s for s in samples if s.name == name + "_bucket"]
        assert [s.labels["le"] for s in buckets][-1] == "+Inf"
        assert [float(s.labels["le"]) for s in buckets[:-1]] == list(h.bounds), name
        assert [s.value for s in buckets] == list(itertools.accumulate(h.counts)), name
        assert value(fams, name, name + "_count") == h.count
        assert value(fams, name, name + "_sum") == pytest.approx(h.sum)
        assert value(fams, name + "_created") == m.created
    assert m.generation_tokens == 24 and m.ttft.count == 4

    s = parse_metrics(text, 1.0)
    assert (s.schema, s.engines) == (schema, 1)
    assert (s.prompt_tokens, s.generation_tokens) == (m.prompt_tokens, m.generation_tokens)
    assert (s.prefix_cache_queries, s.prefix_cache_hits) == (m.prefix_queries, m.prefix_hits)
    assert s.num_preemptions == m.preemptions and s.request_success == sum(m.success.values()) == 4
    assert (s.kv_cache_usage, s.num_running, s.num_waiting) == (m.kv_usage, m.num_running, m.num_waiting)
    assert (s.ttft_count, s.ttft_sum) == (m.ttft.count, pytest.approx(m.ttft.sum))
    assert (s.num_gpu_blocks, s.block_size) == (sim.profile.num_gpu_blocks, sim.profile.block_size)
    if schema == "v1":
        assert (s.queue_time_count, s.queue_time_sum) == (m.queue_time.count, pytest.approx(m.queue_time.sum))
        assert s.prefix_cache_hit_rate_gauge is None
    else:
        assert s.queue_time_count is None
        assert s.prefix_cache_hit_rate_gauge == pytest.approx(m.prefix_hits / m.prefix_queries)


async def test_numbers_move_under_load(sim_server):
    sim = sim_server("h200-fast", in_thread=True, speed=1)
    streams, tokens = 8, 400

    async with httpx.AsyncClient(base_url=sim.url, timeout=60) as client:
        async def scrape():
            r = await client.get("/metrics")
            return parse_metrics(r.text, 0.0)

        async def stream(i: int) -> None:
            async with client.stream("POST", "/v1/completions", json={
                    "prompt": f"request {i}", "stream": True, "max_tokens": tokens, "ignore_eos": True}) as r:
                assert r.status_code == 200
                async for _ in r.aiter_bytes():
                    pass

        before = await scrape()
        tasks = [asyncio.create_task(stream(i)) for i in range(streams)]
        deadline = time.monotonic() + 30
        busy = await scrape()
        while not (busy.num_running == streams and busy.generation_tokens > streams):
            assert time.monotonic() < deadline and not any(t.done() for t in tasks), busy
            await asyncio.sleep(0.02)
            busy = await scrape()
        await asyncio.gather(*tasks)
        after = await scrape()

    assert before.generation_tokens == before.ttft_count == before.request_success == 0
    assert busy.kv_cache_usage > 0 and busy.ttft_count == streams and busy.request_success == 0
    assert busy.generation_tokens < after.generation_tokens == streams * tokens
    assert after.request_success == streams and after.num_running == 0 and after.kv_cache_usage == 0.0
    assert after.prompt_tokens > 0 and after.prefix_cache_queries == after.prompt_tokens
