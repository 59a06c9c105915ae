"""engine/budget.py on synthetic records: when it trips, what it says, and when it must not."""
from __future__ import annotations

import random

import pytest

from qbench_tui.engine.budget import (
    AUTO_FLOOR,
    RATE_MIN_REQUESTS,
    REASONS_KEPT,
    ErrorBudget,
    auto_consecutive,
    wilson_lower,
)
from qbench_tui.engine.records import RequestRecord

WRONG_MODEL = "HTTP 404: The model `x` does not exist."


def ok() -> RequestRecord:
    return RequestRecord(ok=True, segment=0, concurrency=1, worker=0, start=0.0, end=1.0, ttft=0.1, status=200)


def bad(error: str = WRONG_MODEL, status: int | None = 404) -> RequestRecord:
    return RequestRecord(ok=False, segment=0, concurrency=1, worker=0, start=0.0, end=0.001, status=status,
                         error=error)


def feed(b: ErrorBudget, records) -> int | None:
    """Index of the record that tripped it, None if none did."""
    for i, r in enumerate(records):
        if b.add(r) is not None:
            return i
    return None


@pytest.mark.parametrize("c,rounds,limit", [
    (1, 2, AUTO_FLOOR),  # a low concurrency keeps the floor
    (10, 2, AUTO_FLOOR),
    (20, 2, 40),  # two rounds of every worker failing
    (300, 2, 600),
    (40, 1, 40),  # a wave is one round
    (5, 1, AUTO_FLOOR),
])
def test_automatic_consecutive_limit(c, rounds, limit):
    assert auto_consecutive(c, rounds) == limit
    b = ErrorBudget()
    b.set_load(c, rounds)
    assert b.consecutive_limit == limit
    assert feed(b, [bad()] * (limit + 5)) == limit - 1


def test_message_names_the_servers_error_with_its_count():
    b = ErrorBudget()
    b.set_load(20)
    feed(b, [bad()] * 40)
    assert b.rule == "consecutive"
    assert b.tripped == ("error budget: 40 failures in a row and no success — "
                         f"{WRONG_MODEL} (40 of the last 40 failures)")


def test_the_most_common_recent_reason_is_named():
    b = ErrorBudget(max_consecutive=30)
    rs = [bad("connect error: [Errno 111] Connection refused", None)] * 5 + [bad("HTTP 502: Bad Gateway", 502)] * 25
    feed(b, rs)
    assert "HTTP 502: Bad Gateway (25 of the last 30 failures)" in b.tripped
    b2 = ErrorBudget(max_consecutive=200)
    feed(b2, [bad("old reason")] * 100 + [bad("new reason")] * 100)  # only the last REASONS_KEPT count
    assert f"new reason ({REASONS_KEPT} of the last {REASONS_KEPT} failures)" in b2.tripped


def test_a_success_restarts_the_run():
    b = ErrorBudget(max_consecutive=5)
    assert feed(b, ([bad()] * 4 + [ok()]) * 50) is None
    assert b.tripped is None
    assert feed(b, [bad()] * 5) == 4


def test_trips_once_until_reset():
    b = ErrorBudget(max_consecutive=3)
    assert feed(b, [bad()] * 3) == 2
    first = b.tripped
    assert feed(b, [bad()] * 10) is None and b.tripped == first
    b.reset()
    assert b.tripped is None and b.rule is None and b.failing == 0
    assert feed(b, [bad()] * 3) == 2


def test_a_new_level_keeps_the_run_of_failures():
    b = ErrorBudget(max_consecutive=10)
    feed(b, [bad()] * 6)
    b.set_load(8)
    assert feed(b, [bad()] * 4) == 3  # a dead server stays dead across levels


def test_rate_rule_off_at_one():
    b = ErrorBudget(max_error_rate=1.0, max_consecutive=10**9)
    assert feed(b, [bad(), bad(), ok()] * 2000) is None  # two thirds failing: only the consecutive rule could stop it


def test_rate_rule_waits_for_enough_requests_then_trips():
    b = ErrorBudget(max_error_rate=0.1, max_consecutive=10**9)
    i = feed(b, [ok(), bad()] * 500)  # half of them fail; judged on a failure, the 50th
    assert i == RATE_MIN_REQUESTS - 1
    assert b.rule == "rate"
    assert b.tripped.startswith("error budget: 25 of the last 50 requests failed (50%, limit 10%) — ")
    assert b.tripped.endswith(f"{WRONG_MODEL} (25 of the last 25 failures)")


def test_rate_rule_ignores_noise_just_under_the_limit():
    # 3 % failing against a 5 % limit over 20,000 requests: a plain share over a window would trip on chance
    rng = random.Random(11)
    b = ErrorBudget(max_error_rate=0.05, max_consecutive=10**9)
    assert feed(b, [bad() if rng.random() < 0.03 else ok() for _ in range(20_000)]) is None


def test_rate_rule_catches_a_level_clearly_over():
    rng = random.Random(12)
    b = ErrorBudget(max_error_rate=0.05, max_consecutive=10**9)
    assert feed(b, [bad() if rng.random() < 0.25 else ok() for _ in range(2_000)]) is not None


def test_rate_window_restarts_with_a_level():
    b = ErrorBudget(max_error_rate=0.1, max_consecutive=10**9)
    feed(b, [ok()] * 10 + [bad(), ok()] * 19)  # 48 requests: not yet judged
    b.set_load(4)
    assert feed(b, [bad(), ok(), ok(), ok(), ok(), ok()] * 8) is None  # 48 more in the new window: not judged
    assert b.tripped is None


def test_wilson_lower_bound():
    assert wilson_lower(0, 0) == 0.0
    assert wilson_lower(0, 100) == 0.0
    assert wilson_lower(50, 50) > 0.8
    assert 0.0 < wilson_lower(25, 100) < 0.25


def test_bad_settings_refused():
    with pytest.raises(ValueError):
        ErrorBudget(max_error_rate=1.5)
    with pytest.raises(ValueError):
        ErrorBudget(max_consecutive=-1)


def test_settings_travel_from_flags_to_the_engine():
    import argparse

    from qbench_tui.commands.common import add_load, config_from, request_spec
    from qbench_tui.engine.load import LoadEngine

    p = argparse.ArgumentParser()
    add_load(p)
    args = p.parse_args(["--max-consecutive-failures", "7", "--max-error-rate", "0.2"])
    cfg = config_from(args)
    assert cfg.source("load.max_consecutive_failures") == "cli"
    spec = request_spec(cfg, "http://127.0.0.1:9", "m", None)
    assert (spec.max_consecutive_failures, spec.max_error_rate) == (7, 0.2)
    eng = LoadEngine(spec, lambda i: "p")
    assert eng.budget.consecutive_limit == 7 and eng.budget.max_error_rate == 0.2 and eng.tripped is None


@pytest.mark.parametrize("value,words", [(-1, "must be >= 0"), (2.5, "must be an integer")])
def test_bad_consecutive_setting_is_one_clear_line(value, words):
    from qbench_tui.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=words):
        load_config(None, {"load.max_consecutive_failures": value})
