"""Closed-loop load: a worker pool whose size changes live, plus wave and steady level runners.

Everything runs on one asyncio loop (no threads). Worker i keeps sending requests while i < target; shrinking
the target lets a busy worker finish its current request and then exit, so no request is ever cancelled except
by stop(). Each worker owns one RawClient (one kept-alive connection); all clients share one SSLContext.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

from qbench_tui.engine.http1 import RawClient, make_ssl_context
from qbench_tui.engine.records import RequestRecord, RequestSpec
from qbench_tui.engine.request import make_client, stream_request

log = logging.getLogger(__name__)

Prompt = str | list[dict]

_FAST_FAIL_S = 0.05
_FAST_FAIL_BACKOFF_S = 0.1


@dataclass
class _Level:
    """State of the level being run by run_steady: when to stop starting requests, and what to collect."""

    warmup_end: float
    stop_at: float | None
    budget: int | None  # measured requests still allowed to start
    records: list[RequestRecord]
    closed: bool = False


class LoadEngine:
    def __init__(
        self,
        spec: RequestSpec,
        prompts: Callable[[int], Prompt],
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.spec = spec
        self._prompts = prompts
        self._on_record = on_record
        self._ssl = make_ssl_context()
        self._clients: dict[int, RawClient] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        self._wave_tasks: set[asyncio.Task] = set()
        self._target = 0
        self._in_flight = 0
        self._paused = False
        self._segment = 0
        self._n = 0  # prompt index of the next request
        self._wake = asyncio.Event()
        self._level: _Level | None = None
        self._stopped = False
        self.last_level_duration: float | None = None

    # ------------------------------------------------------------ live control

    @property
    def target(self) -> int:
        return self._target

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def segment(self) -> int:
        return self._segment

    @property
    def workers(self) -> int:
        """Worker tasks alive (draining ones included)."""
        return len(self._tasks)

    def new_segment(self) -> int:
        self._segment += 1
        return self._segment

    def set_concurrency(self, n: int) -> None:
        if n < 0:
            raise ValueError("concurrency must be >= 0")
        if n != self._target:
            self._segment += 1
        self._set_target(n)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._poke()

    async def start(self, concurrency: int) -> None:
        """Closed-loop steady load at `concurrency` until stop() (or set_concurrency(0))."""
        self._stopped = False
        self.set_concurrency(concurrency)

    async def stop(self) -> None:
        """Cancel everything (in-flight requests included) and close the clients."""
        self._stopped = True
        self._target = 0
        if self._level is not None:
            self._level.closed = True
        tasks = list(self._tasks.values()) + list(self._wave_tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._wave_tasks.clear()
        clients = list(self._clients.values())
        self._clients.clear()
        for c in clients:
            try:
                await c.aclose()
            except Exception:  # closing a broken connection must not hide the others
                log.debug("client close failed", exc_info=True)

    # ------------------------------------------------------------ level runners

    async def run_wave(self, c: int) -> list[RequestRecord]:
        """Fire exactly `c` requests at once; return when all have finished.

        Live workers are drained first (their requests finish, none is cancelled) so the wave owns the server.
        Records carry the current segment: call new_segment() first to give the level its own.
        """
        if c < 1:
            raise ValueError("wave size must be >= 1")
        self._stopped = False
        await self._drain()
        seg = self._segment
        records: list[RequestRecord] = []
        tasks = [asyncio.create_task(self._one(i, seg, c, False, records)) for i in range(c)]
        self._wave_tasks.update(tasks)
        try:
            await asyncio.gather(*tasks)
        finally:
            self._wave_tasks.difference_update(tasks)
        self.last_level_duration = level_duration(records)
        return records

    async def run_steady(
        self,
        c: int,
        duration: float | None = None,
        requests: int | None = None,
        warmup: float = 0.0,
    ) -> list[RequestRecord]:
        """Closed loop at `c` until `duration` seconds after warm-up, or until `requests` measured requests.

        Requests that start during warm-up come back flagged warmup=True (summarize() drops them). At the end
        no new request starts, in-flight ones are awaited and included (as guidellm and vllm bench do).
        Returns this level's records, warm-up ones included; `last_level_duration` is end of warm-up -> last end.
        Live workers are drained first; records carry the current segment (call new_segment() first).
        """
        if c < 1:
            raise ValueError("concurrency must be >= 1")
        if duration is None and requests is None:
            raise ValueError("run_steady needs duration or requests")
        if self._level is not None:
            raise RuntimeError("a level is already running")
        self._stopped = False
        await self._drain()
        t0 = perf_counter()
        warmup_end = t0 + max(0.0, warmup)
        lvl = _Level(
            warmup_end=warmup_end,
            stop_at=None if duration is None else warmup_end + duration,
            budget=requests,
            records=[],
        )
        self._level = lvl
        try:
            self._set_target(c)
            while self._tasks and not lvl.closed:
                timeout = None if lvl.stop_at is None else max(0.0, lvl.stop_at - perf_counter())
                await asyncio.wait(list(self._tasks.values()), timeout=timeout)
                if lvl.stop_at is not None and perf_counter() >= lvl.stop_at:
                    lvl.closed = True
            lvl.closed = True
            self._set_target(0)
            while self._tasks:
                await asyncio.wait(list(self._tasks.values()))
        finally:
            # also on cancellation of this runner: stop starting requests, let in-flight ones finish
            lvl.closed = True
            if self._target:
                self._set_target(0)
            self._level = None
        measured = [r for r in lvl.records if not r.warmup]
        if measured:
            begin = warmup_end if warmup > 0 else min(r.start for r in measured)
            self.last_level_duration = max(r.end for r in measured) - begin
        else:
            self.last_level_duration = 0.0
        return lvl.records

    # ------------------------------------------------------------ internals

    async def _drain(self) -> None:
        """Let every live worker finish its request and exit (target 0, segment unchanged)."""
        if self._target:
            self._set_target(0)
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    def _poke(self) -> None:
        # broadcast: everyone waiting on the old event wakes; later waiters get a fresh one
        self._wake.set()
        self._wake = asyncio.Event()

    def _set_target(self, n: int) -> None:
        self._target = n
        for i in range(n):
            if i not in self._tasks:
                self._tasks[i] = asyncio.create_task(self._worker(i), name=f"qbench-worker-{i}")
        self._poke()

    def _client(self, i: int) -> RawClient:
        c = self._clients.get(i)
        if c is None:
            c = self._clients[i] = make_client(self.spec, self._ssl)
        return c

    async def _worker(self, i: int) -> None:
        me = asyncio.current_task()
        try:
            while i < self._target and not self._stopped:
                lvl = self._level
                if lvl is not None and lvl.closed:
                    break
                if self._paused:
                    await self._wake.wait()
                    continue
                warm = False
                if lvl is not None:
                    now = perf_counter()
                    if lvl.stop_at is not None and now >= lvl.stop_at:
                        break
                    warm = now < lvl.warmup_end
                    if not warm and lvl.budget is not None:
                        if lvl.budget <= 0:
                            break
                        lvl.budget -= 1
                rec = await self._one(i, self._segment, self._target, warm, lvl.records if lvl else None)
                if not rec.ok and rec.status is None and rec.e2el < _FAST_FAIL_S:
                    # refused connections fail in microseconds: without a pause a dead server turns every
                    # worker into a busy loop that floods the record log and starves the event loop
                    await asyncio.sleep(_FAST_FAIL_BACKOFF_S)
        finally:
            if self._tasks.get(i) is me:
                del self._tasks[i]

    async def _one(self, i: int, segment: int, concurrency: int, warm: bool,
                   sink: list[RequestRecord] | None) -> RequestRecord:
        idx = self._n
        self._n += 1
        self._in_flight += 1
        try:
            try:
                prompt = self._prompts(idx)
            except Exception as e:  # a broken prompt source fails this request, not the worker
                now = perf_counter()
                rec = RequestRecord(ok=False, segment=segment, concurrency=concurrency, worker=i, start=now,
                                    end=now, error=f"prompt error: {type(e).__name__}: {e}")
            else:
                rec = await stream_request(self._client(i), self.spec, prompt, segment=segment,
                                           concurrency=concurrency, worker=i)
        finally:
            self._in_flight -= 1
        rec.warmup = warm
        if sink is not None:
            sink.append(rec)
        if self._on_record is not None:
            try:
                self._on_record(rec)
            except Exception:
                log.exception("on_record callback failed")
        return rec


def level_duration(records: list[RequestRecord]) -> float:
    """First start to last end of the non-warm-up records (0.0 when none): the wave-mode level time."""
    rs = [r for r in records if not r.warmup]
    if not rs:
        return 0.0
    return max(r.end for r in rs) - min(r.start for r in rs)
