"""The state of the steady level engine/load.py is running: where its records go, and (--requests) its send stamps,
from which the measurement window's start and end of starts are fixed."""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

from qbench_tui.engine.records import RequestRecord
from qbench_tui.engine.window import WindowTally


@dataclass
class LevelState:
    """State of the level being run by run_steady: where its records go, and (--requests) its send stamps.

    With `requests`, the window starts ON the first send at or after the settled time and its started_until is
    the send `requests` sends later: nothing awaits between a request's stamp and its record's start, so no other
    request's stamp falls between them and the count is exact (an edge between the two let the window take 101 of
    --requests 100 now and then). Stamps are kept only until the start is known; after it, sends are counted and
    the last one seen is the summary's lower bound for started_until, set as it is sent, before that request can
    finish."""

    warmup_end: float
    sink: Callable[[RequestRecord], None]
    summary: WindowTally | None = None
    requests: int | None = None
    stamps: list[float] = field(default_factory=list)  # --requests: send times until the start is known
    t0: float | None = None  # the window's start, once known
    sent: int = 0  # --requests: sends at or after t0
    until: float | None = None  # --requests: the send that ends the window's starts
    closed: bool = False
    failing: int = 0  # failures in a row since the last success

    def stamp(self, t: float) -> None:
        if self.requests is None or self.until is not None:
            return
        if self.t0 is None:
            self.stamps.append(t)
            return
        if self.sent == self.requests:
            self.until = t
        self.sent += 1
        if self.summary is not None:
            self.summary.until_at_least(t)

    def open(self, settled: float, duration: float | None) -> bool:
        """Fix the window's start from the settled time; False while --requests has no send after it yet."""
        if self.requests is None:
            self.t0 = settled
            if self.summary is not None:
                self.summary.open(settled, settled + (duration or 0.0))
            return True
        i = bisect_left(self.stamps, settled)
        if i == len(self.stamps):
            return False
        self.t0, self.sent = self.stamps[i], len(self.stamps) - i
        if self.sent > self.requests:
            self.until = self.stamps[i + self.requests]
        last = self.until if self.until is not None else self.stamps[-1]
        self.stamps = []
        if self.summary is not None:
            self.summary.open(self.t0, last)
        return True
