"""The dashboard's open loop: requests sent on gamma arrivals (engine/arrivals.py) at a rate that changes live,
through the load engine's own request path (LoadEngine._one), so records, the timeline, the error budget and the
JSONL are those of every other request; each record carries the time it was due (`scheduled`).

A rate change starts a new schedule from now, first send one gap later: the requests the old rate had not sent yet
are not owed (no burst to "catch up"), and the change is a new segment, as a concurrency change is. The cap
(`max_concurrency`) is one semaphore for the driver's life, so in-flight requests of the old rate count against the
new one's cap. A request the cap (or a late loop) held back shows as schedule lag, the open loop's point: a closed
loop would hide it behind fewer requests (coordinated omission).

Connections: a request takes the lowest free slot, each slot one kept-alive client of the engine's. Slots are
numbered from SLOT_BASE up, past every closed-loop worker's index, so a switch between the loops never has two
requests on one connection (the closed loop's draining workers keep theirs); records name the slot as `worker`.
"""
from __future__ import annotations

import asyncio
import heapq
import math
from collections import deque
from time import perf_counter

from .arrivals import intervals
from .load import LoadEngine
from .records import RequestRecord
from .result import Dist, LevelResult
from .settle import SettleRule
from .snapshot import MAX_CONCURRENCY, clamp_rate

SLOT_BASE = MAX_CONCURRENCY  # closed-loop workers are 0 .. MAX_CONCURRENCY - 1
# An open-loop segment is Poisson by design: its per-second output counts have a CV near 1/sqrt(rate), so the
# closed loop's CV test would hold a 20 r/s level at its 30 s cap. Its window starts once the old level's requests
# have all ended, on the next 1 s edge (as headless open levels have no settle test either).
OPEN_SETTLE = SettleRule(cv_max=float("inf"), lookback_s=1.0)
# ↑/↓ multiply/divide the rate by RATE_STEP, PgUp/PgDn by RATE_PAGE: rates span orders of magnitude (0.2 r/s on a
# large model, hundreds on a small one), so a fixed +1 is useless at one end and too fine at the other; 10% is the
# same relative change in load anywhere, and shown at two significant figures it always moves the number.
RATE_STEP = 1.1
RATE_PAGE = 2.0
DEFAULT_RATE = 1.0  # the open loop's start when nothing was measured yet and no --request-rate was given


def round_rate(r: float) -> float:
    """Two significant figures: what the dashboard shows and what it sends."""
    return clamp_rate(float(f"{clamp_rate(r):.2g}"))


def step_rate(rate: float, steps: int) -> float:
    """`steps` presses of ↑ (positive) or ↓ (negative); ±10 (the page keys) double or halve."""
    if abs(steps) >= 10:
        factor = RATE_PAGE ** (steps // 10 if steps > 0 else -((-steps) // 10))
    else:
        factor = RATE_STEP ** steps
    return round_rate(rate * factor)


def start_rate(asked: float, measured_req_s: float) -> float:
    """The open loop's first rate: the one asked for, else the request throughput measured now (rounded: a closed
    loop switched to open keeps its load), else DEFAULT_RATE."""
    if asked and asked > 0:
        return clamp_rate(asked)
    return round_rate(measured_req_s) if measured_req_s > 0 else DEFAULT_RATE


def behind_schedule(rate: float | None, lag_p99: float | None) -> bool:
    """LevelResult.behind_schedule's rule, applied to the live window's numbers (one rule, not a copy)."""
    if not rate or lag_p99 is None:
        return False
    return LevelResult(request_rate=rate, schedule_lag=Dist(p99=lag_p99)).behind_schedule


class LagWindow:
    """The schedule lag of the open-loop requests that ended in the last `window_s` seconds (the rolling window's
    span), for the live view."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque()  # (end, lag seconds), in arrival order

    def add(self, r: RequestRecord) -> None:
        if r.scheduled is not None and not r.warmup:
            self._items.append((r.end, max(0.0, r.start - r.scheduled)))

    def values(self, now: float) -> list[float]:
        cut = now - self.window_s
        while self._items and self._items[0][0] < cut:
            self._items.popleft()
        return [lag for _, lag in self._items]

    def clear(self) -> None:
        self._items.clear()


class LiveOpenLoop:
    """Sends at `rate` until stopped; `start` again re-bases the schedule (a new rate, or after a pause). The
    caller opens the segment: records carry the load engine's segment as it was when `start` was called."""

    def __init__(self, engine: LoadEngine, max_concurrency: int = 0, burstiness: float = 1.0) -> None:
        self.engine = engine
        self.cap = max(0, int(max_concurrency))
        self.burstiness = burstiness
        self.rate: float | None = None
        self._sem = asyncio.Semaphore(self.cap) if self.cap else None
        self._free: list[int] = []
        self._slots = 0
        self._sender: asyncio.Task | None = None

    @property
    def sending(self) -> bool:
        return self._sender is not None and not self._sender.done()

    def start(self, rate: float, seed: int = 0) -> None:
        self.stop()
        self.rate = clamp_rate(rate)
        # the error budget's automatic run of failures: two rounds of the cap, or two seconds of arrivals (an open
        # loop does not back off, so a server hiccup fails what arrives meanwhile)
        self.engine.budget.set_load(self.cap or math.ceil(self.rate))
        self._sender = asyncio.get_running_loop().create_task(
            self._send(self.rate, self.engine.segment, seed), name="qbench-open-loop")

    def stop(self) -> None:
        """No new sends; requests in flight finish (LoadEngine.stop cancels them with the rest)."""
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None

    async def _send(self, rate: float, segment: int, seed: int) -> None:
        eng = self.engine
        due = perf_counter()
        for gap in intervals(rate, self.burstiness, seed):
            due += gap
            delay = due - perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._sem is not None:
                await self._sem.acquire()
            if eng._stopped or eng.paused or eng.tripped is not None:  # a pause or a tripped budget ends the schedule
                if self._sem is not None:
                    self._sem.release()
                return
            slot = heapq.heappop(self._free) if self._free else self._new_slot()
            t = asyncio.create_task(self._one(slot, due, segment))
            eng._wave_tasks.add(t)  # stop() cancels it with the rest
            t.add_done_callback(eng._wave_tasks.discard)

    def _new_slot(self) -> int:
        self._slots += 1
        return self._slots - 1

    async def _one(self, slot: int, due: float, segment: int) -> None:
        try:
            await self.engine._one(SLOT_BASE + slot, segment, self.cap, False, None, None, scheduled=due)
        finally:
            heapq.heappush(self._free, slot)
            if self._sem is not None:
                self._sem.release()
