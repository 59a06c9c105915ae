"""The results JSON keys users' scripts read, frozen as the code wrote them before LevelResult (captured by running
`qbench run --json`, `qbench sweep` and a live Save against the simulator), with every key added since listed.

Keys may be added (listed below, on purpose); none may go or be renamed.
"""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from qbench_tui.engine.knee import Knee
from qbench_tui.engine.process import EngineProcess
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.result import LevelResult
from qbench_tui.engine.session import SessionConfig
from qbench_tui.engine.snapshot import RunLevel, Save
from tests.conftest import run_qbench

LATENCY_KEYS = {f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "median", "p90", "p99")}
# --- as written before the renovation
LEVEL_COMMON = {"completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
                "output_throughput", "total_token_throughput", "max_concurrency", "total_time_s", "avg_latency_s",
                "failures", "tokens_estimated", "mode", "server"} | LATENCY_KEYS
HEADLESS_LEVEL = LEVEL_COMMON | {"server_metrics"}  # + "window_requests" in a timed steady level
LIVE_LEVEL = LEVEL_COMMON | {"segment"}  # + "server_config" when the server's flags are known
SERVER = {"generation_tokens", "prompt_tokens", "prefix_cache_queries", "prefix_cache_hits", "prefix_cache_hit_rate",
          "max_kv_cache_usage", "preemptions", "max_running", "max_waiting", "num_gpu_blocks", "mean_ttft_ms",
          "mean_queue_ms"}
LIVE_SERVER = {"generation_tokens", "prefix_cache_hit_rate", "max_kv_cache_usage", "preemptions", "max_running",
               "max_waiting", "mean_ttft_ms", "mean_queue_ms"}
TOP = {"schema_version", "tool", "simulated", "url", "model", "vllm_version", "server_config", "started",
       "methodology", "levels", "saturation", "notes"}
METHODOLOGY = {"prompt", "prompt_source", "max_tokens", "levels", "mode", "endpoint", "ignore_eos", "unique_prefix",
               "temperature"}
SATURATION = {"saturated", "knee_concurrency", "peak_concurrency", "peak_output_throughput", "cause", "summary"}
# --- added since (add-only)
ADDED_LEVEL = {"client",  # the load engine's CPU % and event-loop lag over the level (the "client" cause)
               "window",  # where the level was measured: clocks, settle, steady, the rule (WINDOW below)
               "interrupted",  # stopped before it ended (a signal, a full disk): summarised from what finished
               "input_lens", "output_lens"}  # prompt / output tokens of the ok requests (mean, p50, p90, p99, max)
# open-loop levels (--request-rate) add these three: the rate asked for, its burstiness, how late requests went out
OPEN_LOOP = {"request_rate", "burstiness", "schedule_lag_ms"}
WINDOW = {"start_perf", "end_perf", "started_until_perf", "ended_by_perf", "start_monotonic", "end_monotonic",
          "start_wall", "end_wall", "duration", "settle_s", "steady", "cv", "rule", "notes"}
ADDED_SERVER = {"span_s"}  # first to last scrape inside the window: what a server rate divides by
ADDED_TOP = {"config_sources",  # where each non-default setting came from (never a value)
             "environment"}  # client host, versions, GPUs/driver where known (report/environment.py)
ADDED_LIVE_SERVER = (SERVER - LIVE_SERVER) | {"span_s"}  # one server summary for live and headless levels alike
CLIENT = {"cpu_pct", "loop_lag_ms", "max_loop_lag_ms"}
# the knee rule's share, the cause as a word, the two recommendations and goodput under an SLO
ADDED_SATURATION = {"knee_share", "cause_kind", "interactive_concurrency", "interactive_why", "batch_concurrency",
                    "batch_why", "slo", "goodput_concurrency", "goodput_output_throughput",
                    # the axis the knee was judged along, and its levels as offered request rates (open loop)
                    "axis", "knee_request_rate", "peak_request_rate", "interactive_request_rate",
                    "batch_request_rate", "goodput_request_rate", "sustained_request_rate"}
SECRET = "sk-qbench-test-SECRET-456"


def _same(a, b) -> bool:
    """Equal, floats up to rounding (a file's ms read back as seconds and written as ms again)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12)
    return a == b


def _check_level(lv: dict, today: set[str]) -> None:
    assert today <= set(lv), today - set(lv)
    assert set(lv) - today == ADDED_LEVEL
    assert set(lv["client"]) == CLIENT
    assert set(lv["window"]) == WINDOW
    assert _same(LevelResult.from_json(lv).to_json(), lv)  # and it reads back, in the same key order


@pytest.fixture
def sim(sim_proc):
    return sim_proc()


def test_run_json_level_keys(sim, tmp_path):
    r = run_qbench("run", "--url", sim.url, "-c", "2", "--requests", "4", "--max-tokens", "8", "--json",
                   "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    # a steady level counted by requests has a window too now, so "window_requests" as well (added)
    _check_level(d, HEADLESS_LEVEL | {"window_requests"})
    assert set(d["server"]) == SERVER | ADDED_SERVER
    r = run_qbench("run", "--url", sim.url, "-c", "2", "--mode", "steady", "--duration", "1", "--max-tokens", "8",
                   "--json", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    _check_level(json.loads(r.stdout), HEADLESS_LEVEL | {"window_requests"})


def test_sweep_file_keys(sim, tmp_path):
    r = run_qbench("sweep", "--url", sim.url, "--levels", "1,2", "--max-tokens", "8", "--out", str(tmp_path),
                   "--api-key", SECRET)
    assert r.returncode == 0, r.stderr
    text = next(tmp_path.glob("benchmark_*.json")).read_text()
    d = json.loads(text)
    assert TOP <= set(d) and set(d) - TOP == ADDED_TOP
    assert set(d["methodology"]) == METHODOLOGY and set(d["saturation"]) == SATURATION | ADDED_SATURATION
    for lv in d["levels"]:
        _check_level(lv, HEADLESS_LEVEL)
        assert set(lv["server"]) == SERVER | ADDED_SERVER
    assert Knee.from_json(d["saturation"]).to_json() == d["saturation"]
    # provenance of the settings: the flags given, the key's origin, never the key
    assert d["config_sources"]["sweep.levels"] == "cli" and d["config_sources"]["api_key"] == "cli"
    assert SECRET not in text


def test_live_saved_keys(sim, tmp_path):
    model = httpx.get(f"{sim.url}/v1/models", timeout=10).json()["data"][0]["id"]
    spec = RequestSpec(url=sim.url, model=model, max_tokens=8)
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path),
                                      config_sources=(("load.max_tokens", "cli"), ("api_key", "none"))))
    try:
        assert eng.wait_for(lambda s: s.status == "running", 30)
        eng.send(RunLevel(2, mode="wave"))  # asked for: a level however short
        assert eng.wait_for(lambda s: "done" in s.message, 30)
        eng.send(Save(str(tmp_path / "saved")))
        s = eng.wait_for(lambda s: bool(s.saved), 30)
        assert s is not None
    finally:
        eng.close()
    d = json.loads(Path(s.saved[1]).read_text())
    # a dashboard session also keeps its control timeline (qbench replay)
    assert TOP <= set(d) and set(d) - TOP == ADDED_TOP | {"timeline"}
    assert d["config_sources"] == {"load.max_tokens": "cli", "api_key": "none"}
    assert set(d["saturation"]) == SATURATION | ADDED_SATURATION
    assert len(d["levels"]) == 1
    for lv in d["levels"]:
        _check_level(lv, LIVE_LEVEL)
        assert LIVE_SERVER <= set(lv["server"]) and set(lv["server"]) - LIVE_SERVER == ADDED_LIVE_SERVER
