from __future__ import annotations

import json
import re

from qbench_tui.report.files import RunMeta, classic_table, render_txt, result_basename, write_results

KEYS = ["completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
        "output_throughput", "total_token_throughput", "max_concurrency"]


def level(c, tput):
    d = {k: 0 for k in KEYS}
    d.update(max_concurrency=c, completed=c, total_time_s=2.5, avg_latency_s=2.0, request_throughput=c / 2.5,
             output_throughput=tput, duration=2.5, failures={"HTTP 500: boom": 1}, failed=1)
    for m in ("ttft", "tpot", "itl", "e2el"):
        for s in ("mean", "median", "p90", "p99"):
            d[f"{s}_{m}_ms"] = 12.5
    d["server"] = {"prefix_cache_hit_rate": 0.5, "max_kv_cache_usage": 0.25, "preemptions": 0.0,
                   "generation_tokens": 1000.0}
    return d


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
    txt, js = write_results(tmp_path, "benchmark_m_n_x", meta, [level(40, 2000.0)], {"summary": "knee here"})
    text = txt.read_text()
    for needle in ("Environment", "URL:", "http://x", "vLLM version:   0.13.0", "Methodology", "'P'",
                   "Max tokens:     200", "Levels:         40, 60", "Mode:           wave", "Tokens/sec",
                   "TTFT ms", "ITL ms", "prefix-cache hit rate 50.0%", "SIMULATED", "knee here",
                   "failed 1x: HTTP 500: boom"):
        assert needle in text, needle
    d = json.loads(js.read_text())
    assert d["simulated"] is True and d["levels"][0]["max_concurrency"] == 40
    assert d["methodology"]["max_tokens"] == 200
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_txt_has_no_api_key_field():
    meta = RunMeta(url="http://x", model="m")
    assert "key" not in render_txt(meta, []).lower()
