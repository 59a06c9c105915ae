"""server_level: the one summary of the server over a level, for headless levels and live segments alike."""
from __future__ import annotations

import pytest

from qbench_tui.engine.metrics_parse import ServerSample
from qbench_tui.engine.result import ServerLevel, server_level
from qbench_tui.engine.server_series import ServerSeries


def _s(t, gen, kv, running, q=None, h=None, ttft_sum=None, ttft_n=None, start=1.0, schema="v1"):
    return ServerSample(t=t, schema=schema, engines=1, kv_cache_usage=kv, num_running=running, num_waiting=0.0,
                        generation_tokens=gen, prefix_cache_queries=q, prefix_cache_hits=h, ttft_sum=ttft_sum,
                        ttft_count=ttft_n, num_gpu_blocks=500.0, start_time=start)


def _series(*samples) -> ServerSeries:
    s = ServerSeries()
    for x in samples:
        s.add(x)
    return s


def test_window_deltas_maxima_and_means():
    series = _series(_s(0, 100, 0.1, 1, 0, 0, 0.0, 0),  # before the level: not in it
                     _s(10, 150, 0.2, 4, 100, 50, 1.0, 10), _s(11, 250, 0.9, 8, 300, 100, 2.0, 20),
                     _s(12, 300, 0.5, 6, 400, 100, 3.5, 30),
                     _s(20, 900, 1.0, 9, 900, 900, 9.0, 90))  # after it: not in it either
    lv = server_level(series, 10, 12)
    assert lv == ServerLevel(generation_tokens=150, prefix_cache_queries=300, prefix_cache_hits=50,
                             prefix_cache_hit_rate=pytest.approx(50 / 300), max_kv_cache_usage=0.9, preemptions=None,
                             max_running=8, max_waiting=0.0, num_gpu_blocks=500.0,
                             mean_ttft_s=pytest.approx(2.5 / 20), prompt_tokens=None, span_s=2)
    assert lv.to_json()["mean_ttft_ms"] == pytest.approx(125.0)
    assert lv.rate("generation_tokens") == 150 / 2  # per second of the scrapes it comes from, not the level's


def test_a_restart_inside_the_level_counts_what_accrued_since():
    series = _series(_s(0, 1000, 0.1, 1), _s(1, 1100, 0.1, 1), _s(2, 30, 0.1, 1, start=5.0))
    assert server_level(series, 0, 2).generation_tokens == 100 + 30  # never a negative delta


def test_no_vllm_metrics_is_none_and_an_empty_window_is_unknowns():
    assert server_level(_series(_s(0, None, None, None, schema="none"))) is None
    assert server_level(ServerSeries()) is None
    # a level shorter than the scrape period: the server is there, nothing was scraped during the level
    lv = server_level(_series(_s(0, 100, 0.1, 1)), since=5.0)
    assert lv == ServerLevel() and set(lv.to_json()) == set(ServerLevel().to_json())
