"""/metrics: vLLM V1 names, types, labels and buckets (and the V0 schema), consistent with what was served."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from qbench_tui.server.sim.metrics import ITL_BUCKETS, REQ_BUCKETS, TTFT_BUCKETS
from qbench_tui.server.sim.testing import REPO

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
