"""The error budget (pure): when failures say the server cannot be measured, stop loading it, naming its error.

Fed every measured record (warm-up excluded) in the order they end. It trips, once until reset(), on either rule:

- **Consecutive:** `max_consecutive` failures in a row with no success in between. 0 means automatic:
  max(AUTO_FLOOR, rounds x concurrency). With C workers, one server hiccup (a restart, a dropped proxy) fails
  every request in flight at once, C failures; the workers' retries failing as well, a second round with still no
  success, means it is not a hiccup. A wave is one round (each of its C requests runs once). The floor keeps a
  low concurrency from stopping on a handful of timeouts: at C=1, 20 failures in a row span ~33 s of backoff on
  average (engine/backoff.py), so a server restarting for half a minute does not end a sweep.
- **Rate:** only when `max_error_rate` < 1. Over the level's last RATE_WINDOW requests, once RATE_MIN_REQUESTS
  are in, it trips when the failed share is above the limit by more than chance: the Wilson lower bound at
  RATE_Z standard errors is above it. The rule is asked after every request, thousands of times a level, so a
  plain "share > limit" over a window would eventually trip on noise (true 3 % against a 5 % limit: a window of
  200 shows > 5 % once in 25); the whole run's share is still checked exactly at the end (exit 3).

The message names the server's own words: the most common reason among the last REASONS_KEPT failures, with its
count, e.g. "error budget: 40 failures in a row and no success — HTTP 404: The model `x` does not exist. (40 of
the last 40 failures)".
"""
from __future__ import annotations

import math
from collections import Counter, deque

from qbench_tui.engine.records import RequestRecord

AUTO_FLOOR = 20
RATE_WINDOW = 200
RATE_MIN_REQUESTS = 50
RATE_Z = 3.0
REASONS_KEPT = 50


def auto_consecutive(concurrency: int, rounds: int = 2) -> int:
    return max(AUTO_FLOOR, rounds * max(0, concurrency))


def wilson_lower(failed: int, n: int, z: float = RATE_Z) -> float:
    """Lower end of the Wilson score interval for a share failed/n (0 when n is 0)."""
    if n <= 0:
        return 0.0
    p = failed / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z2 / n))


def _pct(x: float) -> str:
    return f"{x * 100:.3g}%"


class ErrorBudget:
    def __init__(self, max_error_rate: float = 1.0, max_consecutive: int = 0) -> None:
        if not 0.0 <= max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be within 0..1, got {max_error_rate}")
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {max_consecutive}")
        self.max_error_rate = max_error_rate
        self.max_consecutive = max_consecutive
        self.concurrency = 1
        self.rounds = 2
        self.tripped: str | None = None
        self.rule: str | None = None  # which rule tripped: "consecutive" or "rate" (the rate one is --max-error-rate)
        self.failing = 0  # failures in a row since the last success
        self._window: deque[bool] = deque(maxlen=RATE_WINDOW)  # True = failed, the level's last requests
        self._failed_in_window = 0
        self._reasons: deque[str] = deque(maxlen=REASONS_KEPT)

    @property
    def consecutive_limit(self) -> int:
        return self.max_consecutive or auto_consecutive(self.concurrency, self.rounds)

    def set_load(self, concurrency: int, rounds: int = 2) -> None:
        """A new level or target: the automatic limit follows it and the rate window starts again (the run of
        failures in a row goes on: a dead server stays dead across levels)."""
        self.concurrency = concurrency
        self.rounds = rounds
        self._window.clear()
        self._failed_in_window = 0

    def reset(self) -> None:
        """Forget everything (the user resumed): a new chance, judged from scratch."""
        self.tripped = self.rule = None
        self.failing = 0
        self._window.clear()
        self._failed_in_window = 0
        self._reasons.clear()

    def add(self, rec: RequestRecord) -> str | None:
        """Take one record; the message when this one trips the budget, else None."""
        failed = not rec.ok
        self.failing = self.failing + 1 if failed else 0
        if failed:
            self._reasons.append(rec.error or "failed (no reason given)")
        if self.max_error_rate < 1.0:
            w = self._window
            if len(w) == w.maxlen and w[0]:
                self._failed_in_window -= 1
            w.append(failed)
            self._failed_in_window += failed
        if self.tripped is not None or not failed:
            return None
        limit = self.consecutive_limit
        if self.failing >= limit:
            self.rule = "consecutive"
            self.tripped = f"error budget: {self.failing} failures in a row and no success — {self.top_reason()}"
            return self.tripped
        n, k = len(self._window), self._failed_in_window
        if self.max_error_rate < 1.0 and n >= RATE_MIN_REQUESTS and wilson_lower(k, n) > self.max_error_rate:
            self.rule = "rate"
            self.tripped = (f"error budget: {k} of the last {n} requests failed ({_pct(k / n)}, limit "
                            f"{_pct(self.max_error_rate)}) — {self.top_reason()}")
            return self.tripped
        return None

    def top_reason(self) -> str:
        """The most common reason among the last failures, with its count."""
        if not self._reasons:
            return "no failure reason recorded"
        reason, count = Counter(self._reasons).most_common(1)[0]
        return f"{reason} ({count} of the last {len(self._reasons)} failures)"
