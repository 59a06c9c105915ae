"""The performance model seen from a client: saturation, prefix caching, KV usage, preemptions, batch limits.

Assertions compare ratios between load levels of the same run, never absolute times.
"""
from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from qbench_tui.server.sim.profile import load_profile


def metrics(url: str) -> dict[str, float]:
    """Flat {sample name: value}, summed over label sets except finished_reason kept apart."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name
            if "finished_reason" in s.labels:
                key += f"[{s.labels['finished_reason']}]"
            if "le" in s.labels:
                continue
            out[key] = out.get(key, 0.0) + s.value
    return out


async def closed_loop(url: str, concurrency: int, per_worker: int, make_body) -> dict[str, float]:
    lat: list[float] = []
    tokens = 0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)

    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120, connect=10), limits=limits) as client:
        async def worker(w: int) -> None:
            nonlocal tokens
            for i in range(per_worker):
                t0 = time.perf_counter()
                async with client.stream("POST", "/v1/chat/completions", json=make_body(w, i)) as r:
                    assert r.status_code == 200
                    last = ""
                    async for line in r.aiter_lines():
                        if line.startswith('data: {"id"') and '"usage":{' in line:
                            last = line
                tokens += json.loads(last[6:])["usage"]["completion_tokens"]
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"throughput": tokens / wall, "latency": sum(lat) / len(lat), "tokens": tokens, "requests": len(lat)}


def body(max_tokens: int = 16, content: str = "Write a short paragraph explaining why GPUs are good for AI.",
         **extra):
    return {"messages": [{"role": "user", "content": content}], "stream": True, "max_tokens": max_tokens,
            "ignore_eos": True, "stream_options": {"include_usage": True}, **extra}


async def test_throughput_rises_then_flattens_while_latency_rises(sim_server):
    # A deliberately slow GPU (20 ms memory floor, 1.25 ms per decoding sequence): knee near 16 sequences, and few
    # enough tokens per second that a loaded CI machine's client is never the bottleneck.
    prof = load_profile("h200-fast").replace(step_overhead_s=0.002, min_forward_s=0.02, decode_per_seq_s=0.00125,
                                             decode_per_ctx_token_s=0.0, prefill_per_token_s=0.00001,
                                             frontend_latency_s=0.0)
    sim = sim_server(prof)
    res = {}
    for c in (1, 8, 32, 64):
        res[c] = await closed_loop(sim.url, c, 3, lambda w, i: body(16))
        assert res[c]["tokens"] == c * 3 * 16
    assert res[8]["throughput"] > 3.0 * res[1]["throughput"]
    assert res[32]["throughput"] > 1.3 * res[8]["throughput"]
    assert res[64]["throughput"] < 1.3 * res[32]["throughput"]  # flat past the knee ...
    assert res[64]["latency"] > 1.5 * res[32]["latency"]  # ... while latency keeps rising
    m = metrics(sim.url)
    assert m["vllm:generation_tokens_total"] == sum(r["tokens"] for r in res.values())
    assert m["vllm:request_success_total[length]"] == sum(r["requests"] for r in res.values())


async def test_prefix_hit_rate_shared_vs_unique(sim_server):
    sim = sim_server("h200-fast", speed=5)
    shared = "You are a careful assistant. " * 70  # ~500 tokens, ~31 blocks
    # one request first: two workers starting together would both miss, depending on who prefills first
    await closed_loop(sim.url, 1, 1, lambda w, i: body(4, shared + "Warm-up: why?"))
    m0 = metrics(sim.url)
    await closed_loop(sim.url, 2, 4, lambda w, i: body(4, shared + f"Question {w}-{i}: why?"))
    m1 = metrics(sim.url)
    q = m1["vllm:prefix_cache_queries_total"] - m0["vllm:prefix_cache_queries_total"]
    h = m1["vllm:prefix_cache_hits_total"] - m0["vllm:prefix_cache_hits_total"]
    assert q > 0 and h / q > 0.75
    rng = random.Random(5)
    await closed_loop(sim.url, 2, 4, lambda w, i: body(4, "".join(rng.choice("abcdefgh ") for _ in range(2000))))
    m2 = metrics(sim.url)
    q2 = m2["vllm:prefix_cache_queries_total"] - m1["vllm:prefix_cache_queries_total"]
    h2 = m2["vllm:prefix_cache_hits_total"] - m1["vllm:prefix_cache_hits_total"]
    assert q2 > 0 and h2 / q2 < 0.1  # only the template's system-prompt block can hit
    assert m2["vllm:prompt_tokens_total"] - m0["vllm:prompt_tokens_total"] == q + q2  # cached tokens included


async def _kv_usage_with_inflight(url: str, n: int, prompt_chars: int, seed: int) -> float:
    """Hold n long streams open, read kv_cache_usage_perc once all run, then disconnect them."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60, connect=10), limits=limits) as client:
        started = asyncio.Event()
        count = 0

        async def one() -> None:
            nonlocal count
            text = "".join(rng.choice("abcdefgh ") for _ in range(prompt_chars))
            async with client.stream("POST", "/v1/chat/completions", json=body(4000, text)) as r:
                async for _ in r.aiter_raw():
                    count += 1
                    started.set()
                    if count < 0:
                        break
                    await asyncio.sleep(0)

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        try:
            deadline = time.monotonic() + 30
            usage = 0.0
            while time.monotonic() < deadline:
                m = await asyncio.to_thread(metrics, url)
                if m["vllm:num_requests_running"] == n:
                    usage = m["vllm:kv_cache_usage_perc"]
                    break
                await asyncio.sleep(0.05)
            return usage
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_kv_usage_rises_with_concurrency_and_prompt_length_and_frees_on_disconnect(sim_server):
    prof = load_profile("h200-fast").replace(num_gpu_blocks=2000, max_model_len=8192)
    sim = sim_server(prof, speed=1)
    u4 = await _kv_usage_with_inflight(sim.url, 4, 4000, 1)  # ~1,000-token prompts
    u16 = await _kv_usage_with_inflight(sim.url, 16, 4000, 2)
    u4_long = await _kv_usage_with_inflight(sim.url, 4, 12000, 3)  # ~3,000-token prompts
    assert 0 < u4 < u16
    assert u4 < u4_long
    from tests.sim_process import wait_until

    wait_until(lambda: metrics(sim.url)["vllm:kv_cache_usage_perc"] == 0.0, timeout=15)
    m = metrics(sim.url)
    assert m["vllm:num_requests_running"] == 0
    assert sum(m[k] for k in m if k.startswith("vllm:request_success_total[")) == 0  # aborts are not successes


async def test_kv_limited_profile_preempts(sim_server):
    sim = sim_server("kv-limited", speed=4)
    res = await closed_loop(sim.url, 32, 1, lambda w, i: body(200, f"Request {w}: explain GPUs."))
    assert res["tokens"] == 32 * 200  # every request still completes after recompute
    m = metrics(sim.url)
    assert m["vllm:num_preemptions_total"] > 0
    assert m["vllm:generation_tokens_total"] == 32 * 200


async def test_seqs_limited_running_flattens_waiting_grows(sim_server):
    sim = sim_server("seqs-limited", speed=4)
    peaks = {"running": 0.0, "waiting": 0.0, "preempt": 0.0}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            m = await asyncio.to_thread(metrics, sim.url)
            peaks["running"] = max(peaks["running"], m["vllm:num_requests_running"])
            peaks["waiting"] = max(peaks["waiting"], m["vllm:num_requests_waiting"])
            peaks["preempt"] = m["vllm:num_preemptions_total"]
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        await closed_loop(sim.url, 40, 1, lambda w, i: body(120))
    finally:
        done.set()
        await sampler
    assert peaks["running"] == 16
    assert peaks["waiting"] >= 10
    assert peaks["preempt"] == 0
