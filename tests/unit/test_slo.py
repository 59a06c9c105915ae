"""--slo parsing (the results' names and units) and goodput over levels."""
from __future__ import annotations

import pytest

from qbench_tui.engine.result import Latency, LevelResult
from qbench_tui.engine.slo import SloError, describe, goodput_level, meets, misses, parse_slo


def test_names_and_units_as_the_results_write_them():
    assert parse_slo("ttft_p99=2s,itl_p99=100ms,e2el_p90=30s") == (
        ("ttft_p99", 2.0), ("itl_p99", pytest.approx(0.1)), ("e2el_p90", 30.0))
    # the results' own spelling, median for p50, microseconds, spaces
    assert parse_slo(" p99_ttft = 1500ms , tpot_median=50000us, itl_mean=0.02s") == (
        ("ttft_p99", 1.5), ("tpot_p50", pytest.approx(0.05)), ("itl_mean", 0.02))
    assert describe(parse_slo("ttft_p99=2s,itl_p99=100ms")) == "ttft_p99 <= 2 s, itl_p99 <= 100 ms"


@pytest.mark.parametrize(("text", "words"), [
    ("ttfb_p99=2s", "unknown metric 'ttfb_p99'"),
    ("ttft_p95=2s", "unknown metric 'ttft_p95'"),
    ("ttft_p99=2h", "unknown unit 'h'"),
    ("ttft_p99=2", "has no unit"),
    ("ttft_p99", "cannot read 'ttft_p99'"),
    ("ttft_p99=0s", "must be > 0"),
    ("", "empty"),
])
def test_bad_input_is_one_line_naming_the_term(text, words):
    with pytest.raises(SloError) as e:
        parse_slo(text)
    assert words in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("--slo")


def lv(c, ttft_p99, itl_p99=0.02, completed=10):
    return LevelResult(max_concurrency=c, completed=completed, output_throughput=100.0 * c,
                       ttft=Latency(p99_s=ttft_p99), itl=Latency(p99_s=itl_p99))


def test_goodput_is_the_largest_level_meeting_every_term():
    slo = parse_slo("ttft_p99=1s,itl_p99=50ms")
    levels = [lv(8, 0.2), lv(16, 0.6), lv(32, 1.4), lv(24, 0.9, itl_p99=0.06)]
    assert [meets(x, slo) for x in levels] == [True, True, False, False]
    assert misses(levels[3], slo) == ["itl_p99 60 ms > 50 ms"]
    assert goodput_level(levels, slo).max_concurrency == 16
    assert goodput_level([lv(8, 2.0)], slo) is None
    # a level with nothing completed measured nothing: it meets no objective
    assert not meets(lv(4, 0.1, completed=0), slo)
    assert misses(LevelResult(max_concurrency=2, completed=3), slo) == ["ttft_p99 not measured", "itl_p99 not measured"]
