"""/metrics parsing (real vLLM pages of several versions, plus hand-made edge cases) and ServerSeries deltas."""
from __future__ import annotations

from pathlib import Path

import pytest

from qbench_tui.engine.metrics_parse import ALIASES, MetricsParseError, ServerSample, parse_metrics
from qbench_tui.engine.server_series import ServerSeries

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "metrics"
SYNTHETIC = FIX / "SYNTHETIC_v0.13.0_rendered-from-loggers.py-definitions.prom"
V0100 = FIX / "vllm-0.10.0_production-stack-issue-617_fragments.prom"
V011_PID = FIX / "vllm-0.11.x_vllm-pr-28792_api-server-count-gt1_per-pid-gauge.prom"
V05_HELP = FIX / "vllm-0.5.x-0.6.x-V0_functionary-pr-263_help-type-fragment.prom"
V06 = FIX / "vllm-0.6.x-V0_vllm-issue-8819_fragment.prom"
V08 = FIX / "vllm-0.8.x-V1_production-stack-issue-318_fragment.prom"
DOCS_USAGE = FIX / "vllm-latest_docs-usage-metrics.md_example.prom"
DOCS_DESIGN = FIX / "vllm-v1_docs-design-metrics.md_example.prom"
DOCS_HTTP = FIX / "vllm-v1_docs-design-metrics.md_http-metrics.txt"


def page(path: Path) -> ServerSample:
    return parse_metrics(path.read_text(encoding="utf-8"), 1.0)


# ---------------------------------------------------------------- the real (and the one synthetic) samples


def test_every_fixture_file_parses() -> None:
    files = sorted(FIX.iterdir())
    assert len(files) == 9
    for f in files:
        s = page(f)
        assert s.schema in ("v1", "v0", "none"), f.name
        assert s.t == 1.0


def test_synthetic_013_page() -> None:
    s = page(SYNTHETIC)
    assert s.schema == "v1"
    assert s.engines == 1
    assert s.kv_cache_usage == pytest.approx(0.0371)
    assert (s.num_running, s.num_waiting) == (2.0, 1.0)
    assert (s.prefix_cache_queries, s.prefix_cache_hits) == (4096.0, 1536.0)
    assert s.prefix_cache_hit_rate_gauge is None
    assert s.num_preemptions == 0.0
    assert (s.prompt_tokens, s.generation_tokens) == (4096.0, 512.0)
    # summed over finished_reason: stop 0 + length 4 + abort 0 + error 0; `_created` twins ignored
    assert s.request_success == 4.0
    assert (s.num_gpu_blocks, s.block_size) == (20000.0, 16.0)
    assert s.start_time is None  # process_* families were left out of that page
    # histogram _sum/_count of TTFT and queue time (4 requests, 0.48 s of TTFT in all)
    assert (s.ttft_sum, s.ttft_count) == (pytest.approx(0.48), 4.0)
    assert s.queue_time_count == 4.0 and s.queue_time_sum == pytest.approx(0.008)


def test_v0100_real_page_prefers_v1_names() -> None:
    s = page(V0100)
    assert s.schema == "v1"
    assert s.engines == 1
    assert s.kv_cache_usage == pytest.approx(9.75010481363281e-06)
    assert s.prefix_cache_queries == 32.0
    # the fragment lost the V1 hits counter; the deprecated gpu_ twin is the fallback
    assert s.prefix_cache_hits == 0.0
    assert s.generation_tokens is None


def test_v011_multiprocess_per_pid_kv_gauge_takes_the_real_value() -> None:
    s = page(V011_PID)
    assert s.schema == "v1"
    assert s.engines == 1
    # eight pid series, one real: max, not sum or mean
    assert s.kv_cache_usage == pytest.approx(0.6530455880475035)


def test_v05_help_only_page_is_v0_without_values() -> None:
    s = page(V05_HELP)
    assert s.schema == "v0"
    assert s.engines == 1
    assert s.kv_cache_usage is None and s.num_running is None and s.prefix_cache_hit_rate_gauge is None


def test_v06_histogram_fragment_is_v0() -> None:
    s = page(V06)
    assert s.schema == "v0"
    assert s.generation_tokens is None and s.kv_cache_usage is None


def test_v08_old_names_and_process_start_time() -> None:
    s = page(V08)
    # V1 engine of the 0.8 era, but only old names and no engine label: the naming is what we call v0
    assert s.schema == "v0"
    assert s.engines == 1
    assert s.kv_cache_usage == 0.0  # from vllm:gpu_cache_usage_perc
    assert (s.num_running, s.num_waiting) == (0.0, 0.0)
    assert s.start_time == pytest.approx(1.74262400557e9)
    assert s.prefix_cache_queries is None  # TYPE line only, no sample


def test_docs_design_page_with_curl_and_ellipsis_lines() -> None:
    s = page(DOCS_DESIGN)
    assert s.schema == "v0"
    assert s.num_running == 8.0
    assert s.generation_tokens == 27453.0
    assert s.request_success == 132.0  # 1 + 131 + 0
    assert s.block_size == 16.0  # cache_config_info whose labels end in "..."
    assert s.num_gpu_blocks is None


def test_docs_usage_page_histogram_only() -> None:
    s = page(DOCS_USAGE)
    assert s.schema == "v0"  # vllm: metrics present, none of the V1 markers
    assert s.generation_tokens is None  # iteration_tokens_total is a histogram, not a token counter


def test_http_only_page_has_no_vllm_metrics() -> None:
    s = page(DOCS_HTTP)
    assert s.schema == "none"
    assert s.engines == 0


# ---------------------------------------------------------------- hand-made pages

V0_ONLY = """\
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
# TYPE vllm:gpu_prefix_cache_hit_rate gauge
vllm:gpu_prefix_cache_hit_rate{model_name="m"} 0.4
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 1.0
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{model_name="m"} 2.0
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="m"} 100.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="m"} 50.0
"""

TWO_ENGINES = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="m"} 100.0
vllm:generation_tokens_created{engine="0",model_name="m"} 1.7e9
vllm:generation_tokens_total{engine="1",model_name="m"} 200.0
vllm:generation_tokens_created{engine="1",model_name="m"} 1.7e9
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 3000.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 100.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 900.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1000"} 1.0
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="1000"} 1.0
"""

PER_PID = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m",pid="11"} 0.0
vllm:num_requests_running{engine="0",model_name="m",pid="12"} 5.0
vllm:num_requests_running{engine="0",model_name="m",pid="13"} 0.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m",pid="11"} 1.0
vllm:num_requests_waiting{engine="0",model_name="m",pid="12"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m",pid="11"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="m",pid="12"} 0.7
"""


def test_v0_only_page() -> None:
    s = parse_metrics(V0_ONLY, 2.0)
    assert s.schema == "v0"
    assert s.engines == 1
    assert s.kv_cache_usage == 0.25  # from gpu_cache_usage_perc
    assert s.prefix_cache_hit_rate_gauge == 0.4
    assert s.prefix_cache_queries is None and s.prefix_cache_hits is None
    assert (s.num_running, s.num_waiting, s.num_preemptions) == (3.0, 1.0, 2.0)
    assert (s.prompt_tokens, s.generation_tokens) == (100.0, 50.0)


def test_two_engines_summed_kv_max() -> None:
    s = parse_metrics(TWO_ENGINES, 0.0)
    assert s.schema == "v1"
    assert s.engines == 2
    assert (s.num_running, s.num_waiting) == (7.0, 2.0)
    assert s.kv_cache_usage == 0.5
    assert s.generation_tokens == 300.0  # the _created twins are not added in
    assert (s.prefix_cache_queries, s.prefix_cache_hits) == (4000.0, 1000.0)
    assert (s.num_gpu_blocks, s.block_size) == (1000.0, 16.0)


def test_per_pid_gauges_summed_kv_max() -> None:
    s = parse_metrics(PER_PID, 0.0)
    assert s.engines == 1
    assert (s.num_running, s.num_waiting) == (5.0, 3.0)
    assert s.kv_cache_usage == 0.7


def test_v1_name_wins_over_deprecated_twin() -> None:
    text = """\
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0"} 0.3
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0"} 0.3
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0"} 10.0
# TYPE vllm:gpu_prefix_cache_queries counter
vllm:gpu_prefix_cache_queries_total{engine="0"} 10.0
"""
    s = parse_metrics(text, 0.0)
    assert s.kv_cache_usage == 0.3  # not 0.6: twins are never added together
    assert s.prefix_cache_queries == 10.0


def test_vllm_underscore_prefix_variant() -> None:
    text = TWO_ENGINES.replace("vllm:", "vllm_")
    s = parse_metrics(text, 0.0)
    assert s.schema == "v1"
    assert s.engines == 2
    assert s.generation_tokens == 300.0
    assert s.kv_cache_usage == 0.5
    assert s.block_size == 16.0


def test_untyped_counters_still_match() -> None:
    # no TYPE lines: the parser keeps `_total` in the family name; matching on sample names copes
    s = parse_metrics('vllm:generation_tokens_total{engine="0"} 7\nvllm:num_requests_running{engine="0"} 1\n', 0.0)
    assert s.generation_tokens == 7.0
    assert s.num_running == 1.0
    assert s.schema == "v1"


def test_created_only_counter_is_not_a_value() -> None:
    text = "# TYPE vllm:generation_tokens_created gauge\nvllm:generation_tokens_created{engine=\"0\"} 1.7e9\n"
    s = parse_metrics(text, 0.0)
    assert s.generation_tokens is None


def test_nan_values_are_ignored() -> None:
    s = parse_metrics('vllm:kv_cache_usage_perc{engine="0"} NaN\nvllm:kv_cache_usage_perc{engine="1"} 0.1\n', 0.0)
    assert s.kv_cache_usage == 0.1
    assert s.engines == 2


def test_empty_text_is_schema_none() -> None:
    for text in ("", "   \n\n"):
        s = parse_metrics(text, 5.0)
        assert s.schema == "none"
        assert s.engines == 0
        assert s.t == 5.0
        assert all(getattr(s, f) is None for f in ("kv_cache_usage", "num_running", "generation_tokens"))


def test_page_without_vllm_metrics_is_none_but_keeps_start_time() -> None:
    text = "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1.5e9\n"
    s = parse_metrics(text, 0.0)
    assert s.schema == "none"
    assert s.start_time == 1.5e9


@pytest.mark.parametrize("text", [
    "<html><body><h1>502 Bad Gateway</h1></body></html>",
    '{"detail":"Not Found"}',
    "\x00\x01\x02 garbage \xff",
    "vllm:kv_cache_usage_perc{engine=\"0\" 0.5\n",  # broken label set, the only line
])
def test_garbage_raises_metrics_parse_error(text: str) -> None:
    with pytest.raises(MetricsParseError) as ei:
        parse_metrics(text, 0.0)
    assert "not Prometheus text" in str(ei.value)


def test_truncated_page_keeps_the_good_lines() -> None:
    text = SYNTHETIC.read_text(encoding="utf-8")
    cut = text[: text.index("vllm:kv_cache_usage_perc{") + 30]  # a proxy cut the body mid-line
    s = parse_metrics(cut, 0.0)
    assert s.schema == "v1"
    assert (s.num_running, s.num_waiting) == (2.0, 1.0)
    assert s.kv_cache_usage is None


def test_alias_table_lists_v1_before_v0() -> None:
    assert ALIASES["kv_cache_usage"] == ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    assert ALIASES["prefix_cache_queries"][0] == "vllm:prefix_cache_queries"
    assert ALIASES["prefix_cache_hits"][-1] == "vllm:gpu_prefix_cache_hits"


def test_sample_is_frozen() -> None:
    s = parse_metrics(V0_ONLY, 0.0)
    with pytest.raises(AttributeError):
        s.kv_cache_usage = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------- series


def S(t: float, **kw) -> ServerSample:
    return ServerSample(t=t, schema="v1", engines=1, **kw)


def test_counter_reset_counts_value_since_restart() -> None:
    ser = ServerSeries()
    for t, g in ((0.0, 100.0), (1.0, 200.0), (2.0, 50.0)):
        ser.add(S(t, generation_tokens=g))
    # 100 -> 200 is +100; 200 -> 50 is a restart, so the 50 since the restart count: 150, never negative
    assert ser.delta("generation_tokens") == 150.0
    assert ser.delta("generation_tokens", since_t=1.0) == 50.0


def test_changed_start_time_is_a_restart_even_if_counter_grew() -> None:
    ser = ServerSeries()
    ser.add(S(0.0, prompt_tokens=100.0, start_time=10.0))
    ser.add(S(1.0, prompt_tokens=200.0, start_time=10.0))
    ser.add(S(2.0, prompt_tokens=300.0, start_time=20.0))
    assert ser.delta("prompt_tokens") == 100.0 + 300.0


def test_server_mean_from_histogram_sum_and_count() -> None:
    ser = ServerSeries()
    assert ser.mean("ttft") is None
    ser.add(S(0.0, ttft_sum=10.0, ttft_count=100.0))
    ser.add(S(1.0, ttft_sum=10.5, ttft_count=110.0))   # 10 requests, 0.5 s of TTFT: 50 ms each
    ser.add(S(2.0, ttft_sum=12.5, ttft_count=130.0))   # 20 more at 100 ms
    assert ser.mean("ttft") == pytest.approx(2.5 / 30)
    assert ser.mean("ttft", since_t=1.0) == pytest.approx(0.1)
    ser.add(S(3.0, ttft_sum=0.2, ttft_count=2.0))      # restarted: its 2 requests count from zero
    assert ser.mean("ttft", since_t=2.0) == pytest.approx(0.1)
    ser.add(S(4.0, ttft_sum=0.2, ttft_count=2.0))
    assert ser.mean("ttft", since_t=4.0) is None  # nothing observed in the range: no mean, not 0/0
    assert ser.mean("queue_time") is None


def test_delta_none_without_values_zero_with_one() -> None:
    ser = ServerSeries()
    assert ser.delta("generation_tokens") is None
    ser.add(ServerSample(t=0.0, schema="none", engines=0))
    assert ser.delta("generation_tokens") is None
    ser.add(S(1.0, generation_tokens=5.0))
    assert ser.delta("generation_tokens") == 0.0
    ser.add(ServerSample(t=2.0, schema="none", engines=0))  # a scrape without the value is skipped, not a reset
    ser.add(S(3.0, generation_tokens=9.0))
    assert ser.delta("generation_tokens") == 4.0


def test_rate_over_window_uses_span_covered() -> None:
    ser = ServerSeries()
    for i in range(11):
        ser.add(S(float(i), generation_tokens=10.0 * i))
    assert ser.rate("generation_tokens", 5.0, now=10.0) == pytest.approx(10.0)
    # a window wider than the history divides by the 10 s actually covered, not by 100
    assert ser.rate("generation_tokens", 100.0, now=10.0) == pytest.approx(10.0)
    assert ser.rate("generation_tokens", 0.5, now=10.0) is None  # one sample: no span
    assert ser.rate("prompt_tokens", 5.0, now=10.0) is None


def test_rate_across_a_reset() -> None:
    ser = ServerSeries()
    for t, g in ((0.0, 100.0), (1.0, 200.0), (2.0, 50.0)):
        ser.add(S(t, generation_tokens=g))
    assert ser.rate("generation_tokens", 10.0, now=2.0) == pytest.approx(75.0)


def test_hit_rate_from_deltas() -> None:
    ser = ServerSeries()
    for t, q, h in ((0.0, 1000.0, 900.0), (1.0, 1100.0, 920.0), (2.0, 1300.0, 1070.0)):
        ser.add(S(t, prefix_cache_queries=q, prefix_cache_hits=h))
    # lifetime ratio would be 1070/1300; over the scrapes it is (20+150)/(100+200)
    assert ser.hit_rate() == pytest.approx(170 / 300)
    assert ser.hit_rate(since_t=1.0) == pytest.approx(150 / 200)


def test_hit_rate_none_without_new_queries() -> None:
    ser = ServerSeries()
    ser.add(S(0.0, prefix_cache_queries=10.0, prefix_cache_hits=5.0))
    ser.add(S(1.0, prefix_cache_queries=10.0, prefix_cache_hits=5.0))
    assert ser.hit_rate() is None
    assert ServerSeries().hit_rate() is None


def test_hit_rate_v0_gauge_fallback() -> None:
    ser = ServerSeries()
    ser.add(ServerSample(t=0.0, schema="v0", engines=1, prefix_cache_hit_rate_gauge=0.3))
    ser.add(ServerSample(t=1.0, schema="v0", engines=1, prefix_cache_hit_rate_gauge=0.45))
    assert ser.hit_rate() == 0.45
    assert ser.hit_rate(since_t=5.0) is None


def test_max_latest_history_and_bound() -> None:
    ser = ServerSeries(maxlen=5)
    assert ser.latest() is None
    assert ser.max("kv_cache_usage") is None
    for i in range(8):
        ser.add(S(float(i), kv_cache_usage=(i % 4) / 10, num_running=float(i)))
    assert len(ser) == 5  # t = 3..7
    assert ser.latest().t == 7.0  # type: ignore[union-attr]
    assert ser.max("kv_cache_usage") == pytest.approx(0.3)
    assert ser.max("num_running", since_t=6.0) == 7.0
    assert ser.history("num_running", 3) == [5.0, 6.0, 7.0]
    assert ser.history("num_running", 50) == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert ser.history("num_running", 0) == []


def test_series_from_parsed_pages_across_restart() -> None:
    ser = ServerSeries()
    base = SYNTHETIC.read_text(encoding="utf-8")
    ser.add(parse_metrics(base, 0.0))
    ser.add(parse_metrics(base.replace("generation_tokens_total{engine=\"0\",model_name=\"Qwen/Qwen2.5-14B-Instruct-AWQ\"} 512.0",
                                       "generation_tokens_total{engine=\"0\",model_name=\"Qwen/Qwen2.5-14B-Instruct-AWQ\"} 612.0"), 1.0))
    ser.add(parse_metrics(base.replace("generation_tokens_total{engine=\"0\",model_name=\"Qwen/Qwen2.5-14B-Instruct-AWQ\"} 512.0",
                                       "generation_tokens_total{engine=\"0\",model_name=\"Qwen/Qwen2.5-14B-Instruct-AWQ\"} 12.0"), 2.0))
    assert ser.delta("generation_tokens") == 100.0 + 12.0
    assert ser.rate("generation_tokens", 10.0, now=2.0) == pytest.approx(112.0 / 2.0)
    assert ser.latest().start_time is None  # type: ignore[union-attr]
