"""Against REAL vLLM (CPU build, tiny random Qwen2): launcher phases, wave/steady load, token accounting against
the server's own counters, KV cache and prefix cache behaviour, a clean stop.

The tests share one server (session fixture) and run in file order; the last one stops it.
Token counts come from the server's usage (random weights emit partial UTF-8, so content is no measure).
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.metrics_parse import ServerSample, parse_metrics
from qbench_tui.engine.prompts import make_prompt_source, synthetic_prompt
from qbench_tui.engine.records import RequestRecord, RequestSpec
from qbench_tui.server.net import port_in_use

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(900)]  # startup alone may take minutes when busy

MODEL = "tiny"  # served_model_name in sample_configs/tiny-cpu.toml
BLOCK = 128  # the CPU backend's KV block size: prefix caching works in whole blocks


async def scrape(url: str) -> ServerSample:
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as c:
        r = await c.get(url + "/metrics")
        r.raise_for_status()
        return parse_metrics(r.text, time.monotonic())


async def scrape_until(url: str, done, timeout: float = 20.0) -> ServerSample:
    """Counters are bumped by the API server's output loop, possibly just after the last chunk reached us."""
    deadline = time.monotonic() + timeout
    while True:
        s = await scrape(url)
        if done(s) or time.monotonic() >= deadline:
            return s
        await asyncio.sleep(0.2)


def assert_all_ok(records: list[RequestRecord], n: int, max_tokens: int) -> None:
    assert len(records) == n
    bad = [r.error for r in records if not r.ok]
    assert not bad, f"{len(bad)} of {n} requests failed: {bad[:3]}"
    for r in records:
        assert r.status == 200
        assert r.ttft is not None and r.ttft > 0
        assert not r.tokens_estimated, "the server's usage chunk was missing"
        assert r.out_tokens == max_tokens  # ignore_eos: exactly max_tokens each
        assert r.in_tokens > 0


def test_launch_phases_and_kv_cache(real_vllm) -> None:
    server = real_vllm.server
    assert server.state == "ready" and server.alive()
    phases = server.phases()
    names = [p.name for p in phases]
    for want in ("process started", "loading weights", "KV cache", "API server", "ready"):
        assert want in names, f"phase {want!r} not seen; got {names}"
    assert names.index("KV cache") < names.index("API server") < names.index("ready")
    ats = [p.at for p in phases]
    assert ats == sorted(ats)
    assert {p.name for p in real_vllm.delivered} >= {"KV cache", "ready"}

    # "CPU KV cache size: 1,048,576 tokens, Maximum concurrency for 1,024 tokens per request: 1024.00x"
    kv = server.kv_cache_tokens()
    assert kv is not None and kv > 0
    sample = asyncio.run(scrape(server.url))
    assert sample.schema == "v1"
    assert sample.block_size == BLOCK
    assert sample.num_gpu_blocks is not None and sample.num_gpu_blocks * sample.block_size == kv
    conc = server.max_concurrency()
    assert conc == pytest.approx(kv / 1024, rel=0.01)  # max_model_len 1024


async def test_wave_sweep_and_steady_count_every_token(real_vllm) -> None:
    """Client-side token totals equal the server's Δ vllm:generation_tokens_total / prompt_tokens_total exactly."""
    cfg = real_vllm.config
    spec = RequestSpec(url=real_vllm.url, model=MODEL, max_tokens=cfg.load.max_tokens,
                       ignore_eos=cfg.load.ignore_eos, read_timeout=300.0)
    engine = LoadEngine(spec, make_prompt_source(cfg.load.prompt))
    before = await scrape(real_vllm.url)
    everything: list[RequestRecord] = []
    try:
        assert cfg.sweep.mode == "wave" and cfg.sweep.levels == (1, 4, 16)
        for c in cfg.sweep.levels:
            recs = await engine.run_wave(c)
            assert_all_ok(recs, c, cfg.load.max_tokens)
            assert {r.concurrency for r in recs} == {c}
            assert engine.last_level_duration and engine.last_level_duration > 0
            everything += recs
        steady = await engine.run_steady(4, requests=12)
        # a steady level sends more than it measures: the load is held at 4 until the 12 counted requests end
        assert engine.last_bounds is not None
        counted = [r for r in steady if engine.last_bounds.counts(r)]
        assert_all_ok(counted, 12, cfg.load.max_tokens)
        assert_all_ok(steady, len(steady), cfg.load.max_tokens)
        assert not any(r.warmup for r in counted)
        everything += steady
    finally:
        await engine.stop()

    out = sum(r.out_tokens for r in everything)
    prompt = sum(r.in_tokens for r in everything)
    assert out == cfg.load.max_tokens * len(everything)
    after = await scrape_until(real_vllm.url,
                               lambda s: s.generation_tokens - before.generation_tokens >= out
                               and s.request_success - before.request_success >= len(everything))
    assert after.generation_tokens - before.generation_tokens == out
    assert after.prompt_tokens - before.prompt_tokens == prompt
    assert after.request_success - before.request_success == len(everything)


async def test_kv_cache_usage_rises_under_load(real_vllm) -> None:
    """Scrape /metrics while requests are in flight: vllm:kv_cache_usage_perc > 0 and num_requests_running >= 1."""
    spec = RequestSpec(url=real_vllm.url, model=MODEL, max_tokens=512, ignore_eos=True, read_timeout=300.0)
    done: list[RequestRecord] = []
    engine = LoadEngine(spec, make_prompt_source(synthetic_prompt(200, seed=3)), on_record=done.append)
    seen: list[tuple[float, float]] = []
    # Closed-loop load until a scrape has caught the server busy: a single wave can finish (~1 s) before the
    # busy API server answers one /metrics request. Bounded by count and time.
    await engine.start(8)
    try:
        deadline = time.monotonic() + 120
        while len(seen) < 400 and time.monotonic() < deadline:
            s = await scrape(real_vllm.url)
            seen.append((s.kv_cache_usage or 0.0, s.num_running or 0.0))
            if seen[-1][0] > 0 and seen[-1][1] >= 1:
                break
            await asyncio.sleep(0.05)
    finally:
        await engine.stop()  # cancels the streams in flight; vLLM aborts them
    usage, running = max(u for u, _ in seen), max(r for _, r in seen)
    assert running >= 1, f"no running request seen in {len(seen)} scrapes"
    assert usage > 0, f"vllm:kv_cache_usage_perc stayed 0 over {len(seen)} scrapes during load"
    assert not [r.error for r in done if not r.ok]
    # With the requests finished or aborted their blocks are free again (cached blocks count as free).
    idle = await scrape_until(real_vllm.url, lambda s: (s.kv_cache_usage or 0.0) == 0.0 and not s.num_running)
    assert idle.kv_cache_usage == 0.0 and idle.num_running == 0


async def _prefix_delta(url: str, prompts, n: int) -> tuple[float, float, list[RequestRecord]]:
    """Δ(prefix-cache queries, hits) over one request alone (fills the cache) and then a wave of n."""
    engine = LoadEngine(RequestSpec(url=url, model=MODEL, max_tokens=16, ignore_eos=True, read_timeout=300.0),
                        prompts)
    before = await scrape(url)
    try:
        recs = await engine.run_wave(1)
        recs += await engine.run_wave(n)
    finally:
        await engine.stop()
    assert_all_ok(recs, n + 1, 16)
    want = before.prompt_tokens + sum(r.in_tokens for r in recs)
    after = await scrape_until(url, lambda s: s.prompt_tokens >= want)
    return (after.prefix_cache_queries - before.prefix_cache_queries,
            after.prefix_cache_hits - before.prefix_cache_hits, recs)


async def test_prefix_cache_hits_with_shared_prefix_and_not_with_unique(real_vllm) -> None:
    # ~510 tokens of shared prefix = 3+ whole 128-token blocks, then a per-request question.
    shared = synthetic_prompt(400, seed=11)
    queries, hits, recs = await _prefix_delta(real_vllm.url, lambda i: f"{shared}\nQuestion {i}: why?", 4)
    assert min(r.in_tokens for r in recs) >= 2 * BLOCK + 256
    assert queries > 0
    # the 4 wave requests each find at least two whole blocks of the prefix the first request left behind
    assert hits >= 4 * 2 * BLOCK, f"prefix hits {hits} of {queries} queried tokens"
    assert hits / queries > 0.3

    # A random prefix FIRST makes every first block differ, and block hashes chain, so nothing can match.
    unique = make_prompt_source(synthetic_prompt(400, seed=12), unique_prefix=True, seed=99)
    queries, hits, recs = await _prefix_delta(real_vllm.url, unique, 4)
    assert queries >= sum(r.in_tokens for r in recs) * 0.9
    assert hits / queries < 0.02, f"unique prefixes still hit: {hits} of {queries} queried tokens"


def test_cli_sweep_against_real_server(real_vllm, tmp_path: Path) -> None:
    """`qbench sweep --url URL --levels 1,4,16 --json`: every level completes, tokens match the server."""
    qbench = Path(sys.executable).with_name("qbench")
    assert qbench.is_file(), f"{qbench} missing: install the package into the venv (pip install -e .)"
    before = asyncio.run(scrape(real_vllm.url))
    proc = subprocess.run(
        [str(qbench), "sweep", "--url", real_vllm.url, "--levels", "1,4,16", "--max-tokens", "64",
         "--ignore-eos", "--json", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, f"qbench sweep exit {proc.returncode}\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout)
    levels = result["levels"]
    assert [lv["max_concurrency"] for lv in levels] == [1, 4, 16]
    assert [lv["completed"] for lv in levels] == [1, 4, 16]
    assert all(lv["failed"] == 0 for lv in levels)
    # vLLM's own TTFT (its histogram's _sum/_count over the level) sits inside what the client measured
    for lv in levels:
        srv = lv["server"]["mean_ttft_ms"]
        assert srv is not None and 0 < srv <= lv["mean_ttft_ms"], lv
    out = sum(lv["total_output_tokens"] for lv in levels)
    assert out == 64 * 21
    after = asyncio.run(scrape_until(real_vllm.url,
                                     lambda s: s.generation_tokens - before.generation_tokens >= out))
    assert after.generation_tokens - before.generation_tokens == out


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_stop_leaves_no_process_and_frees_the_port(real_vllm) -> None:
    """Runs last (file order): stops the session's server."""
    server = real_vllm.server
    host, port = server.server.host, server.server.port
    assert server.pid is not None
    tree = [psutil.Process(server.pid)] + psutil.Process(server.pid).children(recursive=True)
    titles = " ".join(" ".join(p.cmdline()) or p.name() for p in tree)
    assert len(tree) >= 2 and "EngineCore" in titles, f"expected API server + EngineCore, got: {titles}"
    assert port_in_use(host, port)

    server.stop()

    assert server.state == "stopped"
    assert server.returncode is not None
    assert not server.alive()
    deadline = time.monotonic() + 30
    left = tree
    while left and time.monotonic() < deadline:  # orphans are reaped by init, not by us
        left = [p for p in left if _running(p)]
        time.sleep(0.2)
    assert not left, f"still running after stop: {[(p.pid, p.name()) for p in left]}"
    assert not port_in_use(host, port)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=5.0, trust_env=False)
