"""The endpoint policy (engine/targets.py): shares, least-busy, death after answerless failures, probes, revival."""
from __future__ import annotations

from collections import Counter

import pytest

from qbench_tui.engine.targets import PROBE_S, Targets


def test_round_robin_gives_equal_shares():
    t = Targets(["http://a", "http://b", "http://c"])
    got = Counter(t.pick(0.0) for _ in range(300))
    assert got == {0: 100, 1: 100, 2: 100}


def test_least_busy_avoids_the_endpoint_with_most_in_flight():
    t = Targets(["http://a", "http://b"], policy="least-busy")
    for _ in range(5):
        t.started(0)  # a slow replica holding five
    picks = []
    for _ in range(5):
        k = t.pick(0.0)
        t.started(k)
        picks.append(k)
    assert picks == [1, 1, 1, 1, 1]
    k = t.pick(0.0)  # now 5 and 5: ties go in turn, either is fine, but both must still be reachable
    assert k in (0, 1)


def test_dead_after_answerless_failures_is_skipped_then_probed_then_revived():
    t = Targets(["http://a", "http://b"])
    for i in range(3):
        t.started(1)
        t.finished(1, ok=False, answered=False, why="connection refused", now=1.0 + i)
    assert t.status()[1] == ("http://b", False, 0, "connection refused")
    picks = [t.pick(3.5) for _ in range(10)]
    assert picks == [0] * 10  # skipped, not hammered
    assert t.pick(3.0 + PROBE_S) == 1  # one probe when due ...
    assert [t.pick(3.0 + PROBE_S) for _ in range(4)] == [0] * 4  # ... and only one
    t.started(1)
    t.finished(1, ok=True, answered=True, why="", now=9.0)
    assert t.status()[1][1] is True
    assert Counter(t.pick(9.0) for _ in range(10)) == {0: 5, 1: 5}


def test_an_http_error_is_an_answer_not_a_death():
    t = Targets(["http://a", "http://b"])
    for i in range(10):
        t.finished(0, ok=False, answered=True, why="HTTP 500: boom", now=float(i))
    assert t.status()[0][1] is True


def test_all_dead_still_sends_to_the_one_due_soonest():
    t = Targets(["http://a", "http://b"])
    for k, at in ((0, 1.0), (1, 2.0)):
        for _ in range(3):
            t.finished(k, ok=False, answered=False, why="refused", now=at)
    assert not any(alive for _, alive, _, _ in t.status())
    assert t.pick(2.5) == 0  # a's probe is due first (1 + PROBE_S < 2 + PROBE_S)


@pytest.mark.parametrize("urls,policy,msg", [
    ([], "round-robin", "no endpoint"),
    (["http://a", "http://a"], "round-robin", "given twice"),
    (["http://a"], "random", "--balance must be one of"),
])
def test_bad_input_is_one_clear_error(urls, policy, msg):
    with pytest.raises(ValueError, match=msg):
        Targets(urls, policy)
