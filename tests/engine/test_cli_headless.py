"""The headless contract scripts rely on: probe/run/sweep against the simulator over real HTTP."""
from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import run_qbench

RUN_KEYS = {"completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
            "output_throughput", "total_token_throughput", "max_concurrency", "total_time_s", "avg_latency_s",
            "server"} | {f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el")
                         for s in ("mean", "median", "p90", "p99")}
PROBE_KEYS = {"kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits", "prefix_cache_hit_rate",
              "num_requests_running", "num_requests_waiting", "num_preemptions", "prompt_tokens",
              "generation_tokens", "engines", "metrics_schema", "vllm_version", "models"}
SECRET = "sk-qbench-test-SECRET-123"


def test_probe_json(sim_proc):
    sim = sim_proc()
    r = run_qbench("probe", "--url", sim.url, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert PROBE_KEYS <= set(d)
    assert d["metrics_schema"] == "v1" and d["models"] and d["engines"] >= 1


def test_probe_unreachable_exits_1():
    r = run_qbench("probe", "--url", "http://127.0.0.1:9", "--json")
    assert r.returncode == 1 and "127.0.0.1:9" in r.stderr


def test_run_json_keys_and_server_delta(sim_proc, tmp_path):
    sim = sim_proc()
    r = run_qbench("run", "--url", sim.url, "-c", "4", "--requests", "12", "--max-tokens", "20", "--ignore-eos",
                   "--json", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert RUN_KEYS <= set(d)
    assert d["completed"] == 12 and d["failed"] == 0 and d["max_concurrency"] == 4
    assert d["total_output_tokens"] == 12 * 20
    w = d["window"]
    assert w["steady"] and w["start_perf"] < w["started_until_perf"] <= w["end_perf"] == w["ended_by_perf"]
    assert d["duration"] == pytest.approx(w["end_perf"] - w["start_perf"])
    # server stats cover the scrapes inside the window, never more than it
    assert d["server"]["span_s"] is None or d["server"]["span_s"] <= w["duration"] + 0.1
    # the server's own TTFT (arrival in its handler -> first token) is inside what the client measured; the two
    # means cover nearly the same requests (the server's: first tokens between its scrapes inside the window)
    srv_ttft = d["server"]["mean_ttft_ms"]
    assert srv_ttft is not None and 0 < srv_ttft <= 1.25 * d["mean_ttft_ms"]
    assert d["server"]["mean_queue_ms"] is not None and d["server"]["mean_queue_ms"] >= 0


def test_run_prompts_file_with_per_line_output_tokens(sim_proc, tmp_path):
    # vllm bench serve's custom-dataset format: each line's output_tokens is that request's max_tokens
    lines = [{"prompt": "short one", "output_tokens": 5}, {"prompt": "longer one", "output_tokens": 17},
             {"messages": [{"role": "user", "content": "chat"}], "max_tokens": 9}, {"prompt": "default"}]
    f = tmp_path / "custom.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    sim = sim_proc()
    r = run_qbench("run", "--url", sim.url, "-c", "2", "--requests", "8", "--prompts", str(f), "--max-tokens", "3",
                   "--ignore-eos", "--json", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["completed"] == 8  # 8 consecutive requests: each line twice
    assert d["total_output_tokens"] == 2 * (5 + 17 + 9 + 3)


def test_run_prints_bench_block(sim_proc, tmp_path):
    sim = sim_proc()
    r = run_qbench("run", "--url", sim.url, "-c", "2", "--requests", "4", "--max-tokens", "8", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Serving Benchmark Result" in r.stdout and "Successful requests:" in r.stdout
    assert "Median TTFT (ms):" in r.stdout
    (js,) = tmp_path.glob("benchmark_*.json")  # and saved, as sweep saves
    assert f"saved: {js.with_suffix('.txt')}" in r.stdout


def test_sweep_table_files_and_no_secret(sim_proc, tmp_path):
    sim = sim_proc()
    out = tmp_path / "results"
    r = run_qbench("sweep", "--url", sim.url, "--levels", "2,4", "--max-tokens", "16", "--out", str(out),
                   "--api-key", SECRET)
    assert r.returncode == 0, r.stderr
    assert "Concurrency | Total Time (s) | Avg Latency (s) | Requests/sec | Tokens/sec" in r.stdout
    txt = list(out.glob("benchmark_*.txt"))
    js = list(out.glob("benchmark_*.json"))
    jl = list(out.glob("benchmark_*.requests.jsonl"))
    assert len(txt) == len(js) == len(jl) == 1
    d = json.loads(js[0].read_text())
    assert [lv["max_concurrency"] for lv in d["levels"]] == [2, 4]
    assert all(RUN_KEYS <= set(lv) for lv in d["levels"])
    assert d["levels"][0]["completed"] == 2 and d["levels"][1]["completed"] == 4  # wave: exactly C requests
    lines = jl[0].read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(x)["ok"] for x in lines)
    assert "SIMULATED" in txt[0].read_text()
    assert txt[0].read_text().count("Server   own TTFT mean") == 2  # per level, beside the client's
    for f in out.iterdir():
        assert SECRET not in f.read_text()
    assert SECRET not in r.stdout + r.stderr


def test_sweep_json_stdout(sim_proc, tmp_path):
    sim = sim_proc()
    r = run_qbench("sweep", "--url", sim.url, "--levels", "1,3", "--max-tokens", "8", "--out", str(tmp_path),
                   "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [lv["max_concurrency"] for lv in d["levels"]] == [1, 3]
    assert "saturation" in d


def test_sweep_unreachable_exits_1(tmp_path):
    r = run_qbench("sweep", "--url", "http://127.0.0.1:9", "--levels", "1", "--out", str(tmp_path))
    assert r.returncode == 1 and "cannot reach" in r.stderr


def test_usage_errors_exit_2(tmp_path):
    assert run_qbench("sweep", "--levels", "1").returncode == 2  # no server given
    assert run_qbench("sweep", "--url", "http://x", "--levels", "a,b").returncode == 2
    assert run_qbench("run", "--url", "http://x").returncode == 2  # no concurrency


def test_interrupted_sweep_keeps_finished_levels(sim_proc, tmp_path):
    from tests.engine.test_signals_headless import start_qbench

    sim = sim_proc()
    proc = start_qbench("sweep", "--url", sim.url, "--levels", "1,2,64", "--max-tokens", "2000", "--ignore-eos",
                        "--out", str(tmp_path))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            js = list(tmp_path.glob("benchmark_*.json"))
            if js and len(json.loads(js[0].read_text())["levels"]) >= 1:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("first level never finished")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    d = json.loads(js[0].read_text())
    finished = [lv for lv in d["levels"] if not lv["interrupted"]]
    assert 1 <= len(finished) < 3 and d["levels"][0]["max_concurrency"] == 1
    assert any(n.startswith("interrupted by SIGINT") for n in d["notes"])
    assert proc.returncode == 130


def test_every_request_failed_exits_1(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--error-rate", "1.0")
    r = run_qbench("sweep", "--url", sim.url, "--levels", "2", "--max-tokens", "8", "--out", str(tmp_path))
    assert r.returncode == 1
    assert "every request failed" in r.stderr and "HTTP 500" in r.stderr  # the reason is shown, not swallowed
    d = json.loads(next(tmp_path.glob("benchmark_*.json")).read_text())
    assert d["levels"][0]["failed"] == 2 and d["levels"][0]["mean_ttft_ms"] is None


def test_max_error_rate_exits_3(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--error-rate", "0.5", "--seed", "3")
    r = run_qbench("run", "--url", sim.url, "-c", "4", "--requests", "40", "--max-tokens", "4",
                   "--max-error-rate", "0.05", "--json", "--out", str(tmp_path))
    assert r.returncode == 3, r.stderr
    d = json.loads(r.stdout)
    assert d["failed"] > 0 and d["completed"] > 0
    assert "exceeds --max-error-rate" in r.stderr


def test_server_gone_mid_sweep_keeps_finished_levels(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--crash-after", "4")
    r = run_qbench("sweep", "--url", sim.url, "--levels", "1,2,4,8", "--mode", "steady", "--duration", "2.5",
                   "--max-tokens", "32", "--out", str(tmp_path))
    assert r.returncode == 1
    d = json.loads(next(tmp_path.glob("benchmark_*.json")).read_text())
    finished = [lv["max_concurrency"] for lv in d["levels"] if lv["completed"]]
    assert finished and finished[0] == 1
    assert len(d["levels"]) < 4
    assert any("server gone" in n or "stopped early" in n for n in d["notes"])
