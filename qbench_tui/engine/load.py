"""Closed-loop load: a worker pool whose size changes live, plus wave and steady level runners.

Everything runs on one asyncio loop (no threads). Worker i keeps sending requests while i < target; shrinking
the target lets a busy worker finish its current request and then exit, so no request is ever cancelled except
by stop(). Each worker owns one RawClient (one kept-alive connection); all clients share one SSLContext.

A worker whose request failed without a token waits before its next one (engine/backoff.py: jittered, exponential,
Retry-After honoured); the wait ends at once when the worker has to stop sending (stop, pause, a lower target, the
level's end). Every measured record feeds the error budget (engine/budget.py); when it trips, `tripped` names the
server's error and the engine pauses itself: no new request, a running steady level ends, until resume().

Every finished request goes into `timeline` (its tokens by arrival time); `horizon()` says up to when that
timeline is complete. A steady level is measured only once settled (engine/settle.py) and held at C until every
request it measures has ended (engine/window.py: which requests count, and why). Given a WindowTally, a steady
level folds each record into it as it finishes and keeps none (a long headless level stays flat in memory).

Given a Conversations source (engine/conversations.py) instead of a plain prompts(i) callable, worker i runs
conversations: each request is its conversation's next turn, the answer's text is collected for the turn after
it, and the worker thinks `think_time` between turns (a `_nap`: idle, ended by stop / pause / a lower target /
the level's end). A wave then runs C whole conversations at once. The plain path costs one `is None` per request.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from time import perf_counter

from qbench_tui.engine.backoff import Backoff
from qbench_tui.engine.budget import ErrorBudget
from qbench_tui.engine.conversations import Conversations
from qbench_tui.engine.http1 import RawClient, make_ssl_context
from qbench_tui.engine.level_state import LevelState as _Level
from qbench_tui.engine.prompts import Refused
from qbench_tui.engine.records import RequestRecord, RequestSpec
from qbench_tui.engine.request import make_client, stream_request
from qbench_tui.engine.settle import Settler, SettleRule
from qbench_tui.engine.targets import Targets
from qbench_tui.engine.timeline import Timeline
from qbench_tui.engine.window import Bounds, WindowTally

log = logging.getLogger(__name__)

Prompt = str | list[dict]
# (worker, prompt, *, segment, concurrency, text, url) -> the record: a shard pool doing the HTTP elsewhere
Sender = Callable[..., Awaitable[RequestRecord]]

_TICK_S = 0.1  # how often a steady level looks at its data (settled? window over? measured requests ended?)
# A request in flight longer than this many typical latencies (and STRAGGLER_MIN_S) is not waited for by
# horizon(): one stuck stream must not freeze every live rate until its read timeout.
STRAGGLER_FACTOR = 4.0
STRAGGLER_MIN_S = 10.0


class LoadEngine:
    def __init__(
        self,
        spec: RequestSpec,
        prompts: Callable[[int], Prompt] | Conversations,
        on_record: Callable[[RequestRecord], None] | None = None,
        sender: Sender | None = None,
        targets: Targets | None = None,
    ) -> None:
        """`sender`: who does the HTTP (engine/shards.ShardPool.send, ray_shards.RayShardPool.send); None: this
        process. `targets`: several endpoints (engine/targets.py), each request to the one it picks."""
        self.spec = spec
        self._sender = sender
        self._targets = targets
        # one spec per endpoint (its URL), made once: a request only picks one
        self._specs = [replace(spec, url=e.url) for e in targets.endpoints] if targets is not None else [spec]
        self._prompts = prompts
        self._conv = prompts if isinstance(prompts, Conversations) else None
        self._on_record = on_record
        self._ssl = make_ssl_context()
        self._clients: dict[tuple[int, int], RawClient] = {}  # (worker, endpoint) -> its kept-alive client
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
        self.last_bounds: Bounds | None = None  # the window of the last steady level
        self.timeline = Timeline(perf_counter())
        self._starts: dict[int, float] = {}  # request index -> send time, while in flight
        self._typical_e2el = 0.0  # moving mean of ok requests' latency (the straggler rule)
        self._backoffs: dict[int, Backoff] = {}  # per worker index: survives a worker's exit and return
        self.budget = ErrorBudget(spec.max_error_rate, spec.max_consecutive_failures)
        self.tripped: str | None = None  # the budget's message once it tripped; cleared by resume()

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

    def oldest_start(self, now: float | None = None) -> float:
        """Send time of the oldest request in flight (now when none is)."""
        now = perf_counter() if now is None else now
        return min(self._starts.values(), default=now)

    def horizon(self, now: float | None = None) -> float:
        """Up to when `timeline` is complete: every request with a token before it has finished, since the
        oldest one in flight started then. Stragglers (see STRAGGLER_FACTOR) are not waited for."""
        now = perf_counter() if now is None else now
        if not self._typical_e2el:  # no request has finished yet: none is known to be late
            return self.oldest_start(now)
        limit = now - max(STRAGGLER_MIN_S, STRAGGLER_FACTOR * self._typical_e2el)
        return min((t for t in self._starts.values() if t >= limit), default=now)

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
            self.budget.set_load(n)
        self._set_target(n)

    def pause(self) -> None:
        self._paused = True
        self._poke()  # a worker waiting out a backoff stops waiting for a send that will not happen

    def resume(self) -> None:
        """Unpause; after a trip also clear `tripped` and give the server a fresh budget and fresh backoffs (the
        user asked to try again: the first requests go out at once)."""
        self._paused = False
        if self.tripped is not None:
            self.tripped = None
            self.budget.reset()
            for b in self._backoffs.values():
                b.reset()
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
        self.last_bounds = None  # a wave has no steady window
        if self.tripped is not None:  # the budget stopped the load: nothing is sent (nor drained) until resume()
            self.last_level_duration = 0.0
            return []
        self._stopped = False
        await self._drain()
        self.budget.set_load(c, rounds=1)
        seg = self._segment
        records: list[RequestRecord] = []
        slot = self._one if self._conv is None else self._conversation
        tasks = [asyncio.create_task(slot(i, seg, c, False, None, records.append)) for i in range(c)]
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
        settle: SettleRule | None = SettleRule(),  # noqa: B008 (frozen: one shared default is safe)
        at_window_end: Callable[[], Awaitable[object]] | None = None,
        summary: WindowTally | None = None,
    ) -> list[RequestRecord]:
        """Closed loop at `c`, measured over a window (engine/window.py) that starts once the level is settled
        (`settle`, by default the standard rule; None: right after `warmup`) and in which `duration` seconds'
        or `requests` requests' starts are measured. The load stays at C until every measured request has
        ended, so none is cut or run at a lower load; `at_window_end` is awaited then, still under load (the
        headless driver scrapes the server); then no new request starts and the rest drain. Requests sent
        during `warmup` come back warmup=True.

        Returns every record of the level, or, given a `summary`, none ([]): each record is folded into it as it
        finishes (and closed with the window) instead. `last_bounds` is the window (None when the level was
        stopped) and `last_level_duration` its length. Live workers are drained first; records carry the
        current segment (call new_segment() first).

        When the error budget trips (`tripped`), the level ends early: nothing more is sent, in-flight requests
        finish, and the window runs from the end of the warm-up to then, marked not steady (as for a level that
        fails before it could settle). While `tripped` is set, nothing runs: [] and `last_bounds` None.
        """
        if c < 1:
            raise ValueError("concurrency must be >= 1")
        if duration is None and requests is None:
            raise ValueError("run_steady needs duration or requests")
        if self._level is not None:
            raise RuntimeError("a level is already running")
        self.last_bounds = None
        if self.tripped is not None:
            self.last_level_duration = 0.0
            return []
        self._stopped = False
        await self._drain()
        self.budget.set_load(c)
        t_start = perf_counter()
        warmup = max(0.0, warmup)
        records: list[RequestRecord] = []
        lvl = _Level(warmup_end=t_start + warmup, sink=records.append if summary is None else summary.add,
                     summary=summary, requests=requests if duration is None else None)
        settler = None if settle is None else Settler(self.timeline, t_start,
                                                      replace(settle, min_s=max(settle.min_s, warmup)))
        settled = self.timeline.ceil(t_start + warmup) if settler is None else None
        steady = True
        until: float | None = None
        bounds: Bounds | None = None
        tripped_at: float | None = None
        self._level = lvl
        try:
            self._set_target(c)
            while self._tasks and not lvl.closed:
                await asyncio.sleep(_TICK_S)
                now = perf_counter()
                if self.tripped is not None:
                    # measured records only trip it, so the warm-up is over; the window is closed after the drain.
                    # Nothing is sent after the trip (a request's start is read as it is sent), so every record
                    # started before tripped_at: it is the window's started_until
                    tripped_at = now
                    if lvl.t0 is None:
                        lvl.t0 = min(t_start + warmup, now) if settled is None else settled
                    if summary is not None:
                        summary.open(lvl.t0, tripped_at)
                    break
                if settled is None and settler is not None:
                    if lvl.failing >= c and now >= lvl.warmup_end:
                        # a round of failures and no success since (the server refuses, or died): there is no
                        # throughput to settle, and waiting for the cap would only hammer it; measure what
                        # happened from the start, marked not steady
                        settled, steady = t_start + warmup, False
                    else:
                        settled = settler.update(self.horizon(now), t_start, now)
                        steady = bool(settler.steady)
                    if settled is None:
                        continue
                if lvl.t0 is None and not lvl.open(settled, duration):
                    continue
                t0 = lvl.t0
                assert t0 is not None
                if until is None:
                    if duration is not None:
                        if now < t0 + duration:
                            continue
                        until = t0 + duration
                    else:
                        if lvl.until is None and self._conv is not None and lvl.sent >= (requests or 0):
                            # users thinking may not send again for long: no send after the N-th so far,
                            # so none before now can join the window's starts
                            lvl.until = now
                        if lvl.until is None:
                            continue
                        until = lvl.until
                if self.oldest_start(now) < until:
                    continue  # a measured request is still running: hold the load at C
                end = perf_counter()
                bounds = Bounds(t_start, t0, end, until, end, steady)
                if summary is not None:
                    summary.close(bounds)  # before any later record: those are summed up to this end
                if at_window_end is not None:
                    await at_window_end()
                break
            lvl.closed = True
            self._set_target(0)
            while self._tasks:
                await asyncio.wait(list(self._tasks.values()))
            if tripped_at is not None and lvl.t0 is not None:
                end = perf_counter()
                bounds = Bounds(t_start, lvl.t0, end, tripped_at, end, False)
                if summary is not None:
                    summary.close(bounds)
        finally:
            # also on cancellation of this runner: stop starting requests, let in-flight ones finish
            lvl.closed = True
            if self._target:
                self._set_target(0)
            self._level = None
        self.last_bounds = bounds
        self.last_level_duration = 0.0 if bounds is None else bounds.end - bounds.start
        return records

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

    def _client(self, i: int, k: int = 0) -> RawClient:
        c = self._clients.get((i, k))
        if c is None:
            c = self._clients[(i, k)] = make_client(self._specs[k], self._ssl)
        return c

    async def _send(self, i: int, prompt, segment: int, concurrency: int, text: list | None) -> RequestRecord:
        """One request on the wire: to the endpoint the targets pick, by this process or by the sender."""
        targets = self._targets
        k = 0
        if targets is not None:
            k = targets.pick(perf_counter())
            targets.started(k)
        spec = self._specs[k]
        try:
            if self._sender is not None:
                rec = await self._sender(i, prompt, segment=segment, concurrency=concurrency, text=text,
                                         url=spec.url if targets is not None else None)
            else:
                rec = await stream_request(self._client(i, k), spec, prompt, segment=segment,
                                           concurrency=concurrency, worker=i, text=text)
        except BaseException:
            if targets is not None:  # cancelled: in flight no more, and no verdict on the endpoint
                targets.endpoints[k].in_flight -= 1
            raise
        if targets is not None:
            targets.finished(k, rec.ok, rec.status is not None, rec.error, perf_counter())
            rec.endpoint = spec.url
        return rec

    def _sending(self, i: int, lvl: _Level | None) -> bool:
        """Whether worker i may send (now or after its backoff), `lvl` being the level it works for."""
        return (i < self._target and not self._stopped and not self._paused and self._level is lvl
                and not (lvl is not None and lvl.closed))

    async def _worker(self, i: int) -> None:
        me = asyncio.current_task()
        backoff = self._backoffs.get(i)
        if backoff is None:
            backoff = self._backoffs[i] = Backoff()
        try:
            while i < self._target and not self._stopped:
                lvl = self._level
                if lvl is not None and lvl.closed:
                    break
                if self._paused:
                    await self._wake.wait()
                    continue
                warm = lvl is not None and perf_counter() < lvl.warmup_end
                rec = await self._one(i, self._segment, self._target, warm, lvl, lvl.sink if lvl else None)
                wait = backoff.after(rec)
                if wait > 0:
                    await self._nap(i, lvl, wait)
                elif self._conv is not None and self._conv.think_time and self._conv.active(i):
                    await self._nap(i, lvl, self._conv.think_time)
        finally:
            if self._tasks.get(i) is me:
                del self._tasks[i]

    async def _nap(self, i: int, lvl: _Level | None, seconds: float) -> None:
        """Wait `seconds`, or less when worker i has to stop sending first (every such change pokes _wake; a
        poke that changes nothing for this worker, e.g. a higher target, lets the wait go on)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self._sending(i, lvl):
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    async def _conversation(self, i: int, segment: int, concurrency: int, warm: bool, lvl: _Level | None,
                            sink: Callable[[RequestRecord], None] | None) -> None:
        """A wave's slot i: one whole conversation, thinking between turns (a stop cancels the sleep)."""
        conv = self._conv
        assert conv is not None
        conv.end(i)
        await self._one(i, segment, concurrency, warm, lvl, sink)
        while conv.active(i) and not self._stopped:
            if conv.think_time:
                await asyncio.sleep(conv.think_time)
            await self._one(i, segment, concurrency, warm, lvl, sink)

    async def _one(self, i: int, segment: int, concurrency: int, warm: bool, lvl: _Level | None,
                   sink: Callable[[RequestRecord], None] | None, scheduled: float | None = None) -> RequestRecord:
        """One request of worker (or slot) i. `lvl`: the steady level it was sent for (its send stamp, its run of
        failures) while that level is the one running; `sink` gets the record before on_record does."""
        idx = self._n
        self._n += 1
        self._in_flight += 1
        sent = self._starts[idx] = perf_counter()
        if lvl is not None and lvl is self._level:
            lvl.stamp(sent)
        conv, text, turn = self._conv, None, (0, -1)
        try:
            try:
                if conv is None:
                    prompt = self._prompts(idx)  # type: ignore[operator]
                else:
                    prompt, *turn = conv.next(i)
                    text = []
            except Exception as e:  # a broken prompt source fails this request, not the worker
                now = perf_counter()
                rec = RequestRecord(ok=False, segment=segment, concurrency=concurrency, worker=i, start=now,
                                    end=now, error=f"prompt error: {type(e).__name__}: {e}")
            else:
                if isinstance(prompt, Refused):  # counted, named, never sent
                    now = perf_counter()
                    rec = RequestRecord(ok=False, segment=segment, concurrency=concurrency, worker=i, start=now,
                                        end=now, error=prompt.reason, refused=True)
                    await asyncio.sleep(0)  # a closed loop of refusals must still let the loop run
                else:
                    rec = await self._send(i, prompt, segment, concurrency, text)
        finally:
            self._in_flight -= 1
            del self._starts[idx]
        if conv is not None:
            rec.turn, rec.conversation = turn
            if text is None or rec.refused:  # the source failed or refused: that conversation is over
                conv.end(i)
            else:
                conv.answered(i, rec, "".join(text))
        rec.warmup = warm
        rec.scheduled = scheduled  # before on_record: the .requests.jsonl line carries the schedule lag
        if rec.ok:
            self.timeline.add(rec)
            self._typical_e2el += (0.05 if self._typical_e2el else 1.0) * (rec.e2el - self._typical_e2el)
        if lvl is not None and lvl is self._level:
            lvl.failing = 0 if rec.ok else lvl.failing + (not rec.refused)
        if sink is not None:
            sink(rec)
        if not warm and not rec.refused and (why := self.budget.add(rec)) is not None:
            self._trip(why)
        if self._on_record is not None:
            try:
                self._on_record(rec)
            except Exception:
                log.exception("on_record callback failed")
        return rec

    def _trip(self, why: str) -> None:
        # said to the user through `tripped` (the headless summary, the dashboard); a log line on stderr could
        # land in the middle of the dashboard's screen
        log.info("%s: load paused", why)
        self.tripped = why
        self._paused = True
        self._poke()


def level_duration(records: list[RequestRecord]) -> float:
    """First start to last end of the non-warm-up records (0.0 when none): the wave-mode level time."""
    rs = [r for r in records if not r.warmup]
    if not rs:
        return 0.0
    return max(r.end for r in rs) - min(r.start for r in rs)
