"""How long a worker waits after a failure before it sends again (pure: no clock, no I/O; the random draw is injected).

A failure in which the server generated nothing (an HTTP error status, a refused or reset connection, a 200 that
was no stream) costs the server almost nothing and the client only microseconds, so without a pause a closed-loop
worker turns into a busy loop: behind nginx with a dead upstream that was ~7,200 requests/s at C=20. Each worker
therefore waits random(0, min(CAP_S, BASE_S * 2**n)) after its n-th such failure in a row ("full jitter": the
workers' retries spread out instead of arriving together), and n starts again at the next success.

- BASE_S = 50 ms: the first retry comes back well inside one typical request's latency, so a single transient
  error barely lowers the offered load, yet a round of C instant failures already spreads over ~25 ms on average.
- CAP_S = 5 s: reached after ~7 failures in a row; from then on a worker sends one request per ~2.5 s on average
  (C=20: ~8 requests/s instead of thousands), and a server that comes back is noticed within 5 s.

A 429 or 503 that says Retry-After (seconds or an HTTP-date) is waited for at least that long, capped at
RETRY_AFTER_CAP_S so a bogus header cannot freeze a run, with the jittered wait on top so that workers told the
same instant do not all come back at it.

A failure after tokens arrived (a cut stream, an error event mid-way) means the server was working: no wait, and
n is kept as it was.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from qbench_tui.engine.records import RequestRecord

BASE_S = 0.05
CAP_S = 5.0
RETRY_AFTER_CAP_S = 60.0
RETRY_AFTER_STATUSES = (429, 503)  # the statuses RFC 9110 gives Retry-After a meaning for a retry


def parse_retry_after(value: str, now_wall: float) -> float | None:
    """Seconds to wait from a Retry-After header value: delay-seconds ("120"; a decimal is accepted too) or an
    HTTP-date, read against `now_wall` (time.time()). None when unusable; a date in the past is 0."""
    value = value.strip()
    if not value:
        return None
    try:
        s = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; an unzoned one cannot be placed
            return None
        return max(0.0, when.timestamp() - now_wall)
    if not math.isfinite(s) or s < 0:
        return None
    return s


def backs_off(rec: RequestRecord) -> bool:
    """A failure in which the server produced no token: the kind that loops instantly. A refused request was
    never sent: the server said nothing, so there is nothing to back off from."""
    return not rec.ok and rec.ttft is None and not rec.refused


def jitter_ceiling(n: int, base: float = BASE_S, cap: float = CAP_S) -> float:
    """The upper end of the wait after the n-th instant failure in a row (n from 0)."""
    return min(cap, base * 2.0 ** min(n, 64))


class Backoff:
    """One worker's backoff state. `after(rec)` takes each of its records in order and says how long to wait."""

    __slots__ = ("base", "cap", "retry_cap", "n", "_rand")

    def __init__(self, base: float = BASE_S, cap: float = CAP_S, retry_cap: float = RETRY_AFTER_CAP_S,
                 rand: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.retry_cap = retry_cap
        self.n = 0  # instant failures in a row
        self._rand = rand

    def after(self, rec: RequestRecord) -> float:
        if rec.ok:
            self.n = 0
            return 0.0
        if not backs_off(rec):
            return 0.0
        wait = self._rand() * jitter_ceiling(self.n, self.base, self.cap)
        self.n += 1
        if rec.retry_after is not None and rec.status in RETRY_AFTER_STATUSES:
            wait += min(rec.retry_after, self.retry_cap)
        return wait

    def reset(self) -> None:
        self.n = 0
