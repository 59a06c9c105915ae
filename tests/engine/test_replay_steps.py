"""A session timeline as replay steps: levels with their durations in order, pauses as waits, restarts noted."""
from __future__ import annotations

import pytest

from qbench_tui.engine.replay import ReplayError, Step, read_timeline, steps

TL = [
    {"t_s": 0.0, "event": "concurrency", "value": 4},
    {"t_s": 10.0, "event": "concurrency", "value": 8},
    {"t_s": 25.0, "event": "pause"},
    {"t_s": 30.0, "event": "resume"},
    {"t_s": 31.0, "event": "restart", "flags": "--max-num-seqs 64"},
    {"t_s": 40.0, "event": "concurrency", "value": 2},
    {"t_s": 40.2, "event": "concurrency", "value": 6},
    {"t_s": 50.0, "event": "end"},
]


def test_levels_waits_and_notes_in_order():
    got = steps(read_timeline({"timeline": TL}))
    assert [s.kind for s in got] == ["level", "level", "wait", "note", "level", "level"]
    assert [(s.concurrency, round(s.duration_s, 3)) for s in got if s.kind == "level"] == \
        [(4, 10.0), (8, 15.0), (8, 10.0), (6, 9.8)]  # the 0.2 s at 2 is a key passing by
    assert got[2] == Step("wait", 0, 5.0)
    assert "--max-num-seqs 64" in got[3].note


def test_speed_compresses_durations():
    got = steps(read_timeline({"timeline": TL}), speed=5)
    assert [round(s.duration_s, 3) for s in got if s.kind == "level"] == [2.0, 3.0, 2.0, 1.96]


@pytest.mark.parametrize("data, words", [
    ({}, "no timeline"),
    ({"timeline": []}, "no timeline"),
    ({"timeline": [{"t_s": 1, "event": "jump"}]}, "not an event"),
    ({"timeline": [{"t_s": 5, "event": "pause"}, {"t_s": 1, "event": "resume"}]}, "bad time"),
    ({"timeline": [{"t_s": 0, "event": "concurrency"}]}, "sets no concurrency"),
])
def test_bad_timelines_are_named(data, words):
    with pytest.raises(ReplayError, match=words):
        read_timeline(data)


def test_bad_speed():
    with pytest.raises(ReplayError, match="speed"):
        steps(TL, speed=0)


def test_open_loop_stretches_replay_as_rate_levels():
    """A dashboard session's open loop (event "rate": rate, burstiness, cap) comes back as rate levels, the cap as
    their concurrency; a concurrency after it is a closed level again."""
    tl = [
        {"t_s": 0.0, "event": "concurrency", "value": 4},
        {"t_s": 5.0, "event": "rate", "value": 12.0, "burstiness": 0.5, "max_concurrency": 16},
        {"t_s": 15.0, "event": "rate", "value": 6.0, "burstiness": 0.5, "max_concurrency": 16},
        {"t_s": 18.0, "event": "pause"},
        {"t_s": 20.0, "event": "resume"},
        {"t_s": 20.0, "event": "rate", "value": 6.0, "burstiness": 0.5, "max_concurrency": 16},
        {"t_s": 24.0, "event": "concurrency", "value": 4},
        {"t_s": 30.0, "event": "end"},
    ]
    got = steps(read_timeline({"timeline": tl}))
    assert got == [Step("level", 4, 5.0), Step("level", 16, 10.0, mode="rate", rate=12.0, burstiness=0.5),
                   Step("level", 16, 3.0, mode="rate", rate=6.0, burstiness=0.5), Step("wait", 0, 2.0),
                   Step("level", 16, 4.0, mode="rate", rate=6.0, burstiness=0.5), Step("level", 4, 6.0)]


@pytest.mark.parametrize("ev", [
    {"t_s": 0, "event": "rate"},
    {"t_s": 0, "event": "rate", "value": 0},
    {"t_s": 0, "event": "rate", "value": 2.0, "burstiness": -1},
    {"t_s": 0, "event": "rate", "value": 2.0, "max_concurrency": 1.5},
])
def test_a_bad_rate_event_is_named(ev):
    with pytest.raises(ReplayError, match="sets no request rate"):
        read_timeline({"timeline": [ev]})
