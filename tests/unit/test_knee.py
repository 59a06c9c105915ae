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
    # a results file's "saturation" object: the same keys as ever first, and read back to the same verdict
    assert list(k.to_json())[:6] == ["saturated", "knee_concurrency", "peak_concurrency", "peak_output_throughput",
                                     "cause", "summary"]
    assert k.cause_kind == "compute" and "within 90% of the peak" in k.summary
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


def curve(*pts, **server):
    """Levels of a closed loop with 100-token answers: (C, tok/s) -> mean latency by Little's law."""
    out = []
    for c, tput in pts:
        lat = c * 100 / tput
        out.append(LevelResult(max_concurrency=c, completed=20, output_throughput=tput, request_throughput=tput / 100,
                               e2el=Latency(mean_s=lat, p50_s=lat, p99_s=1.5 * lat),
                               ttft=Latency(p50_s=0.05 * c / 16, p99_s=0.1 * c / 16),
                               itl=Latency(p50_s=0.01), server=ServerLevel(**server) if server else None))
    return out


def test_share_is_configurable_and_named():
    levels = curve((8, 800), (16, 1600), (32, 1700), (64, 1750))
    assert find_knee(levels).knee_concurrency == 16  # 1600 >= 90% of 1750
    k = find_knee(levels, share=0.95)
    assert k.knee_concurrency == 32 and k.knee_share == 0.95 and "within 95% of the peak" in k.summary


def test_recommendations_without_slo_interactive_before_latency_turns_and_batch_at_peak():
    k = find_knee(curve((8, 800), (16, 1500), (32, 1700), (64, 1750)))
    # 16 -> 32: +13% tok/s for +77% latency: latency turned up at 32, so interactive is 16
    assert k.interactive_concurrency == 16 and k.batch_concurrency == 64
    assert "C=16: 1500 tok/s" in k.interactive_why and "before latency turns up (C=32 added +13% tok/s" in \
        k.interactive_why
    assert k.batch_why.startswith("C=64: the peak, 1750 tok/s") and "+17% tok/s over C=16 at 3.4x" in k.batch_why
    assert k.advice() == [f"Interactive: {k.interactive_why}", f"Batch:       {k.batch_why}"]
    assert k.slo == "" and k.goodput_concurrency is None


def test_goodput_is_the_largest_level_meeting_the_slo():
    levels = curve((8, 800), (16, 1500), (32, 1700), (64, 1750))  # e2el p99: 1.5, 1.6, 2.8, 5.5 s
    k = find_knee(levels, slo=(("e2el_p99", 2.0),))
    assert k.goodput_concurrency == 16 and k.goodput_output_throughput == 1500 and k.interactive_concurrency == 16
    assert k.slo == "e2el_p99 <= 2 s"
    assert "largest level meeting the SLO (e2el_p99 <= 2 s)" in k.interactive_why
    assert "C=32 missed it (e2el_p99 2.82 s > 2 s)" in k.interactive_why
    none = find_knee(levels, slo=(("ttft_p99", 0.01),))
    assert none.goodput_concurrency is None and none.interactive_concurrency is None
    assert "no level met the SLO" in none.interactive_why and "ttft_p99 50 ms > 10 ms" in none.interactive_why
    again = Knee.from_json(k.to_json())
    assert again == k


def test_cause_prefill_when_ttft_climbs_much_faster_than_itl():
    a, b = curve((16, 1500), (32, 1550))
    a.ttft, b.ttft = Latency(p50_s=0.2), Latency(p50_s=1.1)
    a.itl, b.itl = Latency(p50_s=0.020), Latency(p50_s=0.024)
    k = find_knee([a, b])
    assert k.cause_kind == "prefill" and "TTFT p50 grew 5.5x (200 ms -> 1.10 s)" in k.cause
    # the same TTFT growth with ITL growing as fast is a decode (compute) limit, not prefill
    b.itl = Latency(p50_s=0.090)
    assert find_knee([a, b]).cause_kind == "compute"


def test_cause_prefix_cache_collapse():
    a, b = curve((16, 1500), (32, 1550))
    a.server, b.server = ServerLevel(prefix_cache_hit_rate=0.9), ServerLevel(prefix_cache_hit_rate=0.3)
    k = find_knee([a, b])
    assert k.cause_kind == "prefix_cache" and "from 90% to 30%" in k.cause


def test_a_queue_with_itl_rising_is_not_the_sequence_limit():
    a, b = curve((16, 1500), (32, 1550))
    b.server = ServerLevel(max_running=24, max_waiting=8)
    assert find_knee([a, b]).cause_kind == "max_num_seqs"
    b.itl = Latency(p50_s=0.02)  # the batch grew (ITL doubled): the queue is not a slot limit
    assert find_knee([a, b]).cause_kind != "max_num_seqs"


def test_a_refined_knee_close_to_the_last_level_is_judged_over_a_wider_span():
    # a ladder's levels on a compute-bound server: 12 is the knee (713 >= 90% of 776), but 12 -> 16 is only +33%
    # concurrency, where +9% of throughput is noise-sized; from 10 (+60%) the verdict is clear
    k = find_knee(curve((4, 316), (8, 634), (16, 776), (12, 713), (10, 679)))
    assert k.saturated and k.knee_concurrency == 12
    assert "saturated past concurrency 12: going from 10 to 16 changed output tok/s by +14% for +60%" in k.summary


def test_report_has_the_verdict_goodput_and_advice_with_a_ladder_table_by_concurrency():
    from qbench_tui.report.files import RunMeta, render_txt

    levels = curve((8, 800), (16, 1600), (32, 1700), (12, 1200))  # refinement measured last
    k = find_knee(levels, slo=(("e2el_p99", 2.0),))
    text = render_txt(RunMeta(url="http://x", model="m", ladder="auto ladder from 8"), levels, k)
    sat = text[text.index("Saturation"):]
    assert sat.splitlines()[1] == f"  {k.summary}"
    assert "  SLO:         e2el_p99 <= 2 s; goodput at C=16 (1600 tok/s)" in sat
    assert f"  Interactive: {k.interactive_why}" in sat and f"  Batch:       {k.batch_why}" in sat
    table = text[text.index("Results"):text.index("Saturation")]
    rows = [line.split("|")[0].strip() for line in table.splitlines()[3:] if "|" in line]
    assert rows == ["8", "12", "16", "32"]


def test_a_knee_at_the_highest_level_is_not_a_saturation_verdict():
    # 16 is just under 90% of 32: the knee is the top level, so nothing above it says saturated
    k = find_knee(curve((8, 600), (16, 1000), (32, 1120)))
    assert k.knee_concurrency is None and not k.saturated and "no saturation up to concurrency 32" in k.summary
