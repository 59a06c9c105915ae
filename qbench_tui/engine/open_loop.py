"""Open-loop levels: requests sent at scheduled times (engine/arrivals.py), whatever the server's pace, optionally
capped at a concurrency (vllm bench serve's `--request-rate` with `--max-concurrency`), or at a trace's own times.

Each request records when it was due (`scheduled`) beside when it went out (`start`); the difference is the
schedule lag. A closed loop hides a slow server behind fewer requests (coordinated omission); here a request that
could not go out on time — the cap was full, or the client's loop was late — shows as lag, and the results say so.

The measured requests are those due in the window; arrivals go on at the same rate until each of them has ended,
so none is measured while the load thins out (as a steady closed-loop level holds C). Connections are reused
through slots: a request takes the lowest free slot, whose kept-alive client the engine owns.
"""
from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable, Iterable, Iterator
from time import perf_counter

from .load import LoadEngine
from .records import RequestRecord
from .window import Bounds, WindowTally


async def run_open(engine: LoadEngine, due: Iterable[float], *, duration: float | None = None,
                   requests: int | None = None, warmup: float = 0.0, max_concurrency: int | None = None,
                   at_window_end: Callable[[], Awaitable[object]] | None = None,
                   summary: WindowTally | None = None) -> tuple[list[RequestRecord], Bounds | None]:
    """Send at the times of `due` (seconds from now, non-decreasing) until the window is measured: `duration`
    seconds of due times after `warmup`, or `requests` requests (a trace: its own length). Returns every record
    and the window (None when stopped or tripped before anything was measured); given a `summary`, no record:
    each is folded into it as it finishes, and it is closed with the window. Records carry the cap (0: none) as
    their `concurrency`: an open loop has no concurrency of its own. `at_window_end` is awaited once the
    measured requests have ended, while arrivals still go on (the headless driver scrapes the server then)."""
    if duration is None and requests is None:
        raise ValueError("run_open needs duration or requests")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError("max_concurrency must be >= 1")
    if engine.tripped is not None:
        return [], None
    await engine._drain()
    engine._stopped = False
    seg = engine._segment
    records: list[RequestRecord] = []
    free: list[int] = []  # slots whose client is idle (a heap: the lowest first, so connections are reused)
    n_slots = 0
    cap = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    measured: set[asyncio.Task] = set()
    tasks: set[asyncio.Task] = set()
    t_start = perf_counter()
    t0 = t_start + max(0.0, warmup)
    until = None if duration is None else t0 + duration
    n_measured = 0
    times: Iterator[float] = iter(due)

    latest = [t0]  # the latest actual send of a measured request: the window's started_until
    if summary is not None:
        # started_until = max(until or t0, latest + 1e-9), latest growing: each value so far is a lower bound
        summary.open(t0, max(until or t0, t0 + 1e-9))

    async def one(slot: int, when: float, warm: bool, counted: bool) -> None:
        try:
            rec = await engine._one(slot, seg, max_concurrency or 0, warm, None, None, scheduled=when)
            if counted:
                latest[0] = max(latest[0], rec.start)
            if summary is None:
                records.append(rec)
            else:
                if counted:
                    summary.until_at_least(latest[0] + 1e-9)
                summary.add(rec)
        finally:
            heapq.heappush(free, slot)
            if cap is not None:
                cap.release()

    stopped = False
    try:
        for rel in times:
            when = t_start + rel
            window_over = (until is not None and when >= until) or (requests is not None and n_measured >= requests)
            if window_over and not any(not t.done() for t in measured):
                break
            delay = when - perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if cap is not None:
                await cap.acquire()
            if engine._stopped or engine.tripped is not None:
                if cap is not None:
                    cap.release()
                stopped = True
                break
            if free:
                slot = heapq.heappop(free)
            else:
                slot, n_slots = n_slots, n_slots + 1
            warm = when < t0
            t = asyncio.create_task(one(slot, when, warm, not warm and not window_over))
            tasks.add(t)
            engine._wave_tasks.add(t)  # stop() cancels it with the rest
            t.add_done_callback(tasks.discard)
            t.add_done_callback(engine._wave_tasks.discard)
            if not warm and not window_over:
                measured.add(t)
                t.add_done_callback(measured.discard)
                n_measured += 1
        else:
            pass  # the schedule ran out (a trace): what was due is measured
        # measured requests still running when the schedule ended or the load stopped
        while measured:
            await asyncio.wait(set(measured))
        end = perf_counter()
        # by actual send (the records' clock): a measured request that went out late is still in the window
        bounds = Bounds(t_start, t0, end, max(until or t0, latest[0] + 1e-9), end, not stopped)
        if summary is not None:
            summary.close(bounds)  # before any later record: those are summed up to this end
        if at_window_end is not None and not stopped:
            await at_window_end()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for t in list(tasks):
            t.cancel()
    if stopped and n_measured == 0:
        return records, None
    return records, bounds


def schedule_lag(records: Iterable[RequestRecord]) -> list[float]:
    """Seconds each request went out after it was due (never negative)."""
    return [max(0.0, r.start - r.scheduled) for r in records if r.scheduled is not None and not r.warmup]
