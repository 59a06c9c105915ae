"""The knee over request rates (pure): the axis picked from the levels, saturation as the open loop shows it (the
achieved rate stops tracking the offered one while the backlog grows), the cause from the server's evidence, and
the recommendations in requests/s."""
from __future__ import annotations

from qbench_tui.engine.knee import Knee, axis_of, find_knee
from qbench_tui.engine.result import Latency, LevelResult
from qbench_tui.engine.slo import parse_slo
from tests.engine.test_ladder_rate import open_loop


def test_the_axis_comes_from_the_levels():
    rated = [open_loop(r, 5.0) for r in (1, 2)]
    closed = [LevelResult(max_concurrency=c, completed=5, output_throughput=100.0 * c, e2el=Latency(mean_s=1.0))
              for c in (1, 2)]
    assert axis_of(rated) == "request_rate" and axis_of(closed) == "concurrency"
    assert axis_of(rated + closed) == "concurrency"
    # mixed: the closed-loop levels are judged, the open-loop ones (no concurrency of their own) left out
    k = find_knee(rated + closed)
    assert k.axis == "concurrency" and k.peak_concurrency == 2 and k.peak_request_rate is None


def test_a_rate_the_server_did_not_keep_up_with_is_saturation_with_its_cause():
    k = find_knee([open_loop(r, capacity=5.0) for r in (1, 2, 4, 8)])
    assert k.axis == "request_rate" and k.saturated
    # none kept up within 90% of the peak (4.85 req/s at 8 offered): the knee is the highest rate kept up
    assert k.knee_request_rate == 4 and k.knee_concurrency is None and k.peak_request_rate == 8
    assert "saturated past 4 req/s: the achieved rate stopped tracking the offered one" in k.summary
    assert "8 req/s offered, 4.85 req/s achieved (61%" in k.summary
    # the server's queue grew while its running count stayed low: the sequence limit, from its own metrics
    assert k.cause_kind == "max_num_seqs" and "running requests flattened" in k.cause
    assert k.batch_request_rate == 4 and k.sustained_request_rate == 4 and "at 8 req/s it fell behind" in k.batch_why
    assert k.interactive_request_rate == 4 and k.interactive_why.startswith("4 req/s: 3.81 req/s achieved")
    assert k.at("knee") == 4 and k.at("batch") == 4


def test_keeping_up_at_every_rate_is_no_saturation():
    k = find_knee([open_loop(r, capacity=100.0) for r in (1, 2, 4)])
    assert not k.saturated and k.knee_request_rate is None and k.cause is None
    assert k.summary.startswith("no saturation up to 4 req/s: the achieved rate still tracks the offered one")
    assert k.batch_request_rate == 4 and "latency had not turned up yet" in k.interactive_why


def test_the_slo_picks_the_interactive_rate():
    levels = [open_loop(r, capacity=5.0) for r in (1, 2, 4, 4.5, 8)]
    levels[3].e2el = Latency(mean_s=0.9, p50_s=0.9, p99_s=1.8)  # 4.5 req/s: p99 over the bound
    k = find_knee(levels, slo=parse_slo("e2el_p99=1.5s"))
    assert k.goodput_request_rate == 4 and k.interactive_request_rate == 4
    assert "4.5 req/s missed it (e2el_p99" in k.interactive_why and k.goodput_concurrency is None


def test_one_rate_only():
    k = find_knee([open_loop(2, 5.0)])
    assert not k.saturated and "one rate only" in k.summary and k.peak_request_rate == 2


def test_the_saturation_object_keeps_its_keys_and_reads_back():
    k = find_knee([open_loop(r, capacity=5.0) for r in (1, 2, 4, 8, 6, 5)])
    d = k.to_json()
    assert list(d)[:6] == ["saturated", "knee_concurrency", "peak_concurrency", "peak_output_throughput",
                           "cause", "summary"]
    assert d["axis"] == "request_rate" and d["knee_request_rate"] == 5 and d["knee_concurrency"] is None
    assert Knee.from_json(d) == k
    # a file written before the axis existed reads as concurrency
    old = {key: v for key, v in find_knee([LevelResult(max_concurrency=1, completed=1, output_throughput=1.0)])
           .to_json().items() if not key.endswith("request_rate") and key != "axis"}
    assert Knee.from_json(old).axis == "concurrency"
