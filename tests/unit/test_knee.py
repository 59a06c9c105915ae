from __future__ import annotations

from qbench_tui.sweep import find_knee


def lv(c, tput, lat, **server):
    return {"max_concurrency": c, "completed": 10, "output_throughput": tput, "avg_latency_s": lat,
            "median_itl_ms": 20.0 + c / 10, "server": server or None}


def test_rising_throughput_is_not_saturated():
    k = find_knee([lv(10, 1000, 1.0), lv(20, 1900, 1.05), lv(40, 3600, 1.1)])
    assert not k["saturated"]
    assert "no saturation" in k["summary"] and k["peak_concurrency"] == 40


def test_knee_found_where_throughput_flattens_and_latency_rises():
    k = find_knee([lv(20, 1500, 1.0), lv(40, 2400, 1.3), lv(60, 2500, 1.9), lv(80, 2510, 2.5)])
    assert k["saturated"] and k["knee_concurrency"] == 40
    assert k["peak_concurrency"] == 80
    assert "compute" in k["cause"]


def test_cause_kv_cache():
    k = find_knee([lv(20, 1500, 1.0), lv(40, 1550, 2.0, max_kv_cache_usage=0.99, preemptions=12)])
    assert "KV cache is full" in k["cause"] and "12 preemptions" in k["cause"]


def test_cause_max_num_seqs():
    k = find_knee([lv(20, 1500, 1.0, max_running=20, max_waiting=0),
                   lv(40, 1520, 2.0, max_running=32, max_waiting=8, max_kv_cache_usage=0.3, preemptions=0)])
    assert "max_num_seqs" in k["cause"] and "32" in k["cause"]


def test_cause_client():
    a, b = lv(20, 1500, 1.0), lv(40, 1510, 1.5)
    b["client"] = {"cpu_pct": 99.0, "loop_lag_ms": 80.0}
    assert "CLIENT" in find_knee([a, b])["cause"]


def test_one_level_and_empty():
    assert "one level" in find_knee([lv(10, 100, 1.0)])["summary"]
    assert find_knee([])["summary"] == "no completed levels"
