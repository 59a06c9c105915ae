"""Trace files: the Mooncake / Azure-style fields read, bad lines named, shared hash ids giving shared text."""
from __future__ import annotations

import json

import pytest

from qbench_tui.engine.trace import TRACE_BLOCK_TOKENS, TraceError, load_trace, trace_prompt


def write(tmp_path, lines):
    p = tmp_path / "trace.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(p)


def test_a_mooncake_trace_is_read_relative_to_its_start_and_scaled(tmp_path):
    path = write(tmp_path, [
        {"timestamp": 1000, "input_length": 600, "output_length": 20, "hash_ids": [1, 2]},
        {"timestamp": 1500, "input_length": 700, "output_length": 30, "hash_ids": [1, 3]},
        {"timestamp": 3000, "input_len": 50, "output_len": 5},
    ])
    reqs = load_trace(path)
    assert [r.at_s for r in reqs] == [0.0, 0.5, 2.0]
    assert [r.input_length for r in reqs] == [600, 700, 50]
    assert reqs[1].hash_ids == (1, 3)
    assert [r.at_s for r in load_trace(path, time_scale=0.5)] == [0.0, 0.25, 1.0]


def test_requests_with_the_same_leading_hash_id_share_that_block_exactly(tmp_path):
    path = write(tmp_path, [
        {"timestamp": 0, "input_length": 600, "output_length": 20, "hash_ids": [7, 8]},
        {"timestamp": 1, "input_length": 900, "output_length": 20, "hash_ids": [7, 9]},
    ])
    a, b = (trace_prompt(r, i).split() for i, r in enumerate(load_trace(path)))
    assert a[:TRACE_BLOCK_TOKENS] == b[:TRACE_BLOCK_TOKENS]
    assert a[TRACE_BLOCK_TOKENS:2 * TRACE_BLOCK_TOKENS] != b[TRACE_BLOCK_TOKENS:2 * TRACE_BLOCK_TOKENS]
    assert (len(a), len(b)) == (600, 900)


@pytest.mark.parametrize("lines, words", [
    ([{"timestamp": 5, "input_length": 1, "output_length": 1}, {"timestamp": 4, "input_length": 1,
                                                                 "output_length": 1}], "sorted by time"),
    ([{"input_length": 1, "output_length": 1}], 'missing "timestamp"'),
    ([{"timestamp": 0, "output_length": 1}], 'missing "input_length"'),
    ([{"timestamp": 0, "input_length": 0, "output_length": 1}], ">= 1"),
    ([{"timestamp": 0, "input_length": "9", "output_length": 1}], "must be an integer"),
    (["{not json"], "not valid JSON"),
    ([], "no requests"),
])
def test_bad_traces_name_the_line(tmp_path, lines, words):
    with pytest.raises(TraceError, match=words) as e:
        load_trace(write(tmp_path, lines))
    if lines:
        assert "trace.jsonl:" in str(e.value)


def test_a_bad_time_scale_is_refused(tmp_path):
    path = write(tmp_path, [{"timestamp": 0, "input_length": 1, "output_length": 1}])
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(TraceError, match="time-scale"):
            load_trace(path, time_scale=bad)
