from __future__ import annotations

import json
import re

from qbench_tui.engine.knee import Knee
from qbench_tui.engine.result import Latency, LevelResult, ServerLevel
from qbench_tui.report.bench_block import bench_block
from qbench_tui.report.files import RunMeta, classic_table, render_txt, result_basename, write_results


def level(c, tput):
    lat = Latency(0.0125, 0.0125, 0.0125, 0.0125)
    return LevelResult(
        max_concurrency=c, completed=c, failed=1, duration_s=2.5, request_throughput=c / 2.5, output_throughput=tput,
        ttft=lat, tpot=lat, itl=lat, e2el=Latency(2.0, 2.0, 2.0, 2.0), failures={"HTTP 500: boom": 1},
        server=ServerLevel(prefix_cache_hit_rate=0.5, max_kv_cache_usage=0.25, preemptions=0.0,
                           generation_tokens=1000.0, mean_ttft_s=0.01, mean_queue_s=0.002))


def test_basename_format():
    name = result_basename("Qwen/Qwen2.5-14B-Instruct-AWQ", 0)
    assert re.fullmatch(r"benchmark_Qwen_Qwen2\.5-14B-Instruct-AWQ_\d{8}_\d{6}", name)


def test_classic_table_columns_and_rows():
    t = classic_table([level(40, 2000.0), level(60, 2500.0)])
    lines = t.splitlines()
    assert [c.strip() for c in lines[0].split("|")] == ["Concurrency", "Total Time (s)", "Avg Latency (s)",
                                                        "Requests/sec", "Tokens/sec"]
    assert [c.strip() for c in lines[2].split("|")] == ["40", "2.50", "2.00", "16.00", "2000.00"]
    assert len(lines) == 4


def test_files_written_atomically_with_every_section(tmp_path):
    meta = RunMeta(url="http://x", model="m/n", vllm_version="0.13.0", prompt="P", max_tokens=200,
                   levels=(40, 60), simulated=True)
    meta.config_sources = {"load.max_tokens": "cli", "api_key": "env:QBENCH_API_KEY"}
    txt, js = write_results(tmp_path, "benchmark_m_n_x", meta, [level(40, 2000.0)], Knee(summary="knee here"))
    text = txt.read_text()
    for needle in ("Environment", "URL:", "http://x", "vLLM version:   0.13.0", "Methodology", "'P'",
                   "Max tokens:     200", "Levels:         40, 60", "Mode:           wave", "Tokens/sec",
                   "TTFT ms  mean 12.50  p50 12.50", "ITL ms   mean 12.50", "prefix-cache hit rate 50.0%",
                   "own TTFT mean 10.00 ms (client 12.50 ms;", "queue mean 2.00 ms", "SIMULATED", "knee here",
                   "failed 1x: HTTP 500: boom"):
        assert needle in text, needle
    d = json.loads(js.read_text())
    assert d["simulated"] is True and d["levels"][0]["max_concurrency"] == 40
    assert d["levels"][0]["mean_ttft_ms"] == 12.5 and d["levels"][0]["server"]["mean_ttft_ms"] == 10.0
    assert LevelResult.from_json(d["levels"][0]) == level(40, 2000.0)  # a saved level reads back as written
    assert d["methodology"]["max_tokens"] == 200
    assert d["saturation"]["summary"] == "knee here"
    # where settings came from, add-only beside the old keys; origins, never values
    assert d["config_sources"] == {"load.max_tokens": "cli", "api_key": "env:QBENCH_API_KEY"}
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_txt_has_no_api_key_field():
    meta = RunMeta(url="http://x", model="m")
    assert "key" not in render_txt(meta, []).lower()


def test_bench_block_shows_ms_from_seconds():
    text = bench_block(level(4, 100.0), model="m", url="http://x")
    assert "Median TTFT (ms):".ljust(40) + "12.50" in text
    assert "Average latency (s):".ljust(40) + "2.00" in text
    assert "Prefix cache hit rate:".ljust(40) + "50.0%" in text
