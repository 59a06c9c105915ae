from __future__ import annotations

from dataclasses import replace

from qbench_tui.engine.knee import Knee, find_knee
from qbench_tui.engine.result import ClientLevel, Latency, LevelResult, ServerLevel


def lv(c, tput, lat, **server):
    return LevelResult(max_concurrency=c, completed=10, output_throughput=tput, e2el=Latency(mean_s=lat),
                       itl=Latency(p50_s=(20.0 + c / 10) / 1000), server=ServerLevel(**server) if server else None)


def test_rising_throughput_is_not_saturated():
    k = find_knee([lv(10, 1000, 1.0), lv(20, 1900, 1.05), lv(40, 3600, 1.1)])
    assert not k.saturated
    assert "no saturation" in k.summary and k.peak_concurrency == 40


def test_knee_found_where_throughput_flattens_and_latency_rises():
    k = find_knee([lv(20, 1500, 1.0), lv(40, 2400, 1.3), lv(60, 2500, 1.9), lv(80, 2510, 2.5)])
    assert k.saturated and k.knee_concurrency == 40
    assert k.peak_concurrency == 80
    assert "compute" in k.cause and "ITL p50 24.00 -> 28.00 ms" in k.cause
    # a results file's "saturation" object: the same keys as ever, and read back to the same verdict
    assert list(k.to_json()) == ["saturated", "knee_concurrency", "peak_concurrency", "peak_output_throughput",
                                 "cause", "summary"]
    assert Knee.from_json(k.to_json()) == k


def test_cause_kv_cache():
    k = find_knee([lv(20, 1500, 1.0), lv(40, 1550, 2.0, max_kv_cache_usage=0.99, preemptions=12)])
    assert "KV cache is full" in k.cause and "12 preemptions" in k.cause


def test_cause_max_num_seqs():
    k = find_knee([lv(20, 1500, 1.0, max_running=20, max_waiting=0),
                   lv(40, 1520, 2.0, max_running=32, max_waiting=8, max_kv_cache_usage=0.3, preemptions=0)])
    assert "max_num_seqs" in k.cause and "32" in k.cause


def test_cause_client():
    a, b = lv(20, 1500, 1.0), lv(40, 1510, 1.5)
    assert "CLIENT" in find_knee([a, replace(b, client=ClientLevel(cpu_pct=99.0, loop_lag_ms=80.0))]).cause
    assert "CLIENT" in find_knee([a, replace(b, client=ClientLevel(cpu_pct=10.0, loop_lag_ms=60.0))]).cause
    assert "CLIENT" not in find_knee([a, replace(b, client=ClientLevel(cpu_pct=40.0, loop_lag_ms=5.0))]).cause


def test_one_level_and_empty():
    assert "one level" in find_knee([lv(10, 100, 1.0)]).summary
    assert find_knee([]).summary == "no completed levels"
