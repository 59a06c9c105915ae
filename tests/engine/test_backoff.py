"""engine/backoff.py: which failures wait, how long, and Retry-After (pure; the random draw is injected)."""
from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from qbench_tui.engine.backoff import (
    BASE_S,
    CAP_S,
    RETRY_AFTER_CAP_S,
    Backoff,
    backs_off,
    jitter_ceiling,
    parse_retry_after,
)
from qbench_tui.engine.records import RequestRecord

NOW = 1_700_000_000.0


def rec(ok=False, status=None, ttft=None, error="x", retry_after=None) -> RequestRecord:
    return RequestRecord(ok=ok, segment=0, concurrency=1, worker=0, start=0.0, end=0.001, ttft=ttft,
                         status=status, error="" if ok else error, retry_after=retry_after)


@pytest.mark.parametrize("value,expected", [
    ("120", 120.0),
    (" 3 ", 3.0),
    ("1.5", 1.5),  # not RFC (delay-seconds is an integer) but unambiguous: honoured
    ("0", 0.0),
    ("", None),
    ("-1", None),
    ("nan", None),
    ("inf", None),
    ("soon", None),
    (formatdate(NOW + 10, usegmt=True), 10.0),  # HTTP-date, 10 s ahead
    (formatdate(NOW - 100, usegmt=True), 0.0),  # a date in the past: retry now
    ("Wed, 21 Oct 2015 07:28:00 -0000", None),  # no zone: cannot be placed
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize("r,waits", [
    (rec(status=500, error="HTTP 500: EngineCore encountered an issue."), True),
    (rec(status=503), True),
    (rec(status=429), True),
    (rec(status=404, error="HTTP 404: The model `x` does not exist."), True),
    (rec(status=None, error="connect error: [Errno 111] Connection refused"), True),
    (rec(status=None, error="connection error: server disconnected without sending a response"), True),
    (rec(status=200, error="not an event stream: content-type text/html"), True),  # a 200 page, no token
    (rec(status=200, ttft=0.2, error="stream error: Internal server error"), False),  # it was generating
    (rec(status=200, ttft=0.2, error="connection error: peer closed connection"), False),  # cut mid-stream
    (rec(ok=True, status=200, ttft=0.1), False),
])
def test_which_failures_back_off(r, waits):
    assert backs_off(r) is waits


def test_ceiling_doubles_from_base_up_to_cap():
    got = [jitter_ceiling(n) for n in range(10)]
    assert got[:4] == [BASE_S, 2 * BASE_S, 4 * BASE_S, 8 * BASE_S]
    assert got[-1] == CAP_S and max(got) == CAP_S
    assert all(a <= b for a, b in zip(got, got[1:]))
    assert jitter_ceiling(10_000) == CAP_S  # no overflow on a very long outage


def test_waits_grow_with_failures_in_a_row_and_reset_on_success():
    b = Backoff(rand=lambda: 1.0)  # the top of each jitter range
    fail = rec(status=500)
    waits = [b.after(fail) for _ in range(9)]
    assert waits == [jitter_ceiling(n) for n in range(9)]
    assert b.after(rec(ok=True, status=200, ttft=0.1)) == 0.0
    assert b.after(fail) == BASE_S  # n started again


def test_a_mid_stream_failure_neither_waits_nor_resets():
    b = Backoff(rand=lambda: 1.0)
    for _ in range(3):
        b.after(rec(status=500))
    assert b.after(rec(status=200, ttft=0.3, error="stream error: boom")) == 0.0
    assert b.after(rec(status=500)) == jitter_ceiling(3)


def test_full_jitter_stays_within_its_range_and_spreads():
    b = Backoff(rand=random.Random(7).random)
    waits = []
    for n in range(200):
        w = b.after(rec(status=503))
        assert 0.0 <= w <= jitter_ceiling(n)
        waits.append(w)
    capped = waits[20:]
    assert min(capped) < CAP_S / 4 and max(capped) > 3 * CAP_S / 4  # spread over the range, not a fixed step


@pytest.mark.parametrize("status,retry_after,expected", [
    (429, 2.0, 2.0 + BASE_S),  # at least what the server asked, jitter on top
    (503, 2.0, 2.0 + BASE_S),
    (429, 3600.0, RETRY_AFTER_CAP_S + BASE_S),  # a bogus hour is capped
    (500, 2.0, BASE_S),  # Retry-After means nothing on a 500
    (429, None, BASE_S),  # no header: the plain backoff
])
def test_retry_after(status, retry_after, expected):
    b = Backoff(rand=lambda: 1.0)
    assert b.after(rec(status=status, retry_after=retry_after)) == pytest.approx(expected)


def test_retry_after_is_a_floor_even_with_no_jitter():
    b = Backoff(rand=lambda: 0.0)
    assert b.after(rec(status=429, retry_after=1.0)) == 1.0
