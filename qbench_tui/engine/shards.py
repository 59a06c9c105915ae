"""The load engine's HTTP done by N client processes (`--client-procs N`), so one event loop is never the limit.

What stays in the engine's process: everything that decides (workers and their target, levels, windows, settling,
backoff, the error budget, the open loop's schedule, prompts). What moves: the per-byte work, sending a request and
timing its stream (engine/request.stream_request), which is what grows with tokens per second. Worker i's requests
go to shard i mod N, whose client for worker i keeps its connection alive as the single-process engine's does.

Each finished request comes back WHOLE (its RequestRecord with every ITL), not pre-aggregated: the engine's tally,
windows and percentiles see exactly the records a single process would have produced, so merged numbers stay exact.
One request costs the engine two small frames (a prompt out, a record back) instead of ~100 reads and SSE events.

Clocks: perf_counter is CLOCK_MONOTONIC, one clock for every process of the machine. A record's start is set to the
moment the engine handed the request over, and its TTFT grows by the hand-over (the shard's own start minus that
moment: a pipe hop, tens of microseconds), so a level's window counts the same sends as unsharded and the client's
overhead stays inside the latency it measured, as it does for one process.

Framing: a 4-byte length and a pickle over a socketpair (mp.Pipe(duplex=True) is one on Unix) read and written by
asyncio streams on both sides: neither side ever blocks on a full pipe (a blocking Connection.send from the engine
while the shard blocks sending records back would deadlock both at high rates).

A shard that dies: its requests in flight fail with "client shard K died" (each one a record: nothing silently
lost), it is named in `dead`, and its workers' next requests go to the shards still alive.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import socket
import struct
from dataclasses import replace
from time import perf_counter

from .records import RequestRecord, RequestSpec

log = logging.getLogger(__name__)

_LEN = struct.Struct("!I")
MAX_FRAME = 64 << 20  # a frame over this is a broken peer, not a record


def default_procs(concurrency: int, cores: int | None = None) -> int:
    """One process below a few hundred streams (the hand-over would cost more than it saves); above, one shard per
    256 streams, keeping a core for the engine itself and the server when it shares the machine."""
    cores = cores or os.cpu_count() or 1
    if concurrency < 256 or cores < 3:
        return 1
    return max(1, min(cores - 1, -(-concurrency // 256)))


async def _read_frame(reader: asyncio.StreamReader):
    head = await reader.readexactly(_LEN.size)
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    return pickle.loads(await reader.readexactly(n))


def _frame(obj) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


# ----------------------------------------------------------------------------------------------- the shard side


def _shard_main(spec: RequestSpec, conn, index: int) -> None:
    from .child import child_signals_and_loop, die_with_parent

    die_with_parent()  # the engine died, even by SIGKILL: no shard outlives it
    child_signals_and_loop()  # signals are the engine's: it cancels what is in flight and tells the shards
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    asyncio.run(_serve(spec, sock, index))


async def _serve(spec: RequestSpec, sock: socket.socket, index: int) -> None:
    from .request import make_client, stream_request
    from .tls import make_ssl_context

    reader, writer = await asyncio.open_connection(sock=sock)
    ssl_ctx = make_ssl_context(spec.ca_cert, spec.insecure) if spec.url.startswith("https") else None
    clients: dict = {}
    tasks: dict[int, asyncio.Task] = {}

    specs: dict[str | None, RequestSpec] = {None: spec}

    async def one(rid: int, worker: int, prompt, want_text: bool, url: str | None) -> None:
        sp = specs.get(url)
        if sp is None:
            sp = specs[url] = replace(spec, url=url)
        client = clients.get((worker, url))
        if client is None:
            client = clients[(worker, url)] = make_client(sp, ssl_ctx)
        text: list[str] | None = [] if want_text else None
        try:
            rec = await stream_request(client, sp, prompt, segment=0, concurrency=0, worker=worker, text=text)
        except asyncio.CancelledError:
            return
        finally:
            tasks.pop(rid, None)
        writer.write(_frame(("rec", rid, rec, None if text is None else "".join(text))))

    try:
        while True:
            try:
                msg = await _read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the engine is gone
            kind = msg[0]
            if kind == "req":
                _, rid, worker, prompt, want_text, url = msg
                tasks[rid] = asyncio.create_task(one(rid, worker, prompt, want_text, url))
            elif kind == "cancel":
                t = tasks.pop(msg[1], None)
                if t is not None:
                    t.cancel()
            elif kind == "stop":
                break
    finally:
        for t in list(tasks.values()):
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for c in clients.values():
            with contextlib.suppress(Exception):
                await c.aclose()
        with contextlib.suppress(Exception):
            writer.close()


# ----------------------------------------------------------------------------------------------- the engine side


class _Shard:
    __slots__ = ("index", "proc", "reader", "writer", "pending", "task", "dead")

    def __init__(self, index: int, proc) -> None:
        self.index = index
        self.proc = proc
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, tuple[asyncio.Future, float]] = {}
        self.task: asyncio.Task | None = None
        self.dead = ""


class ShardPool:
    """N client processes doing the load engine's requests: `await pool.start()`, then `pool.send` as the
    engine's sender (LoadEngine(..., sender=pool.send)), `await pool.close()` at the end."""

    def __init__(self, spec: RequestSpec, procs: int) -> None:
        if procs < 1:
            raise ValueError(f"--client-procs must be >= 1, got {procs}")
        self.spec = spec
        self.procs = procs
        self._shards: list[_Shard] = []
        self._next = 0
        self.dead: list[str] = []  # "client shard K died (exit -9)", in the order they died

    @property
    def pids(self) -> list[int]:
        return [s.proc.pid for s in self._shards if s.proc.pid is not None]

    async def start(self) -> None:
        ctx = mp.get_context("spawn")  # a fork would copy the engine's loop, its sockets and (live) a UI's state
        for k in range(self.procs):
            ours, theirs = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=_shard_main, args=(self.spec, theirs, k), daemon=True,
                               name=f"qbench-shard-{k}")
            proc.start()
            theirs.close()
            shard = _Shard(k, proc)
            sock = socket.socket(fileno=os.dup(ours.fileno()))
            ours.close()
            shard.reader, shard.writer = await asyncio.open_connection(sock=sock)
            shard.task = asyncio.create_task(self._receive(shard))
            self._shards.append(shard)

    def _route(self, worker: int) -> _Shard | None:
        alive = [s for s in self._shards if not s.dead]
        if not alive:
            return None
        home = self._shards[worker % len(self._shards)]
        return home if not home.dead else alive[worker % len(alive)]

    async def send(self, worker: int, prompt, *, segment: int, concurrency: int, text: list | None = None,
                   url: str | None = None) -> RequestRecord:
        """One request of `worker` on its shard; the record as stream_request would give it, the answer's text
        appended to `text` when given (conversations), to `url` when given (several endpoints), else the spec's.
        Never raises but CancelledError, which cancels it on the shard too."""
        handed = perf_counter()
        shard = self._route(worker)
        if shard is None:
            return self._failed(worker, segment, concurrency, handed, "no client shard alive: "
                                + "; ".join(self.dead))
        self._next += 1
        rid = self._next
        fut = asyncio.get_running_loop().create_future()
        shard.pending[rid] = (fut, handed)
        try:
            shard.writer.write(_frame(("req", rid, worker, prompt, text is not None, url)))
        except Exception as e:  # the shard's socket is already gone
            shard.pending.pop(rid, None)
            return self._failed(worker, segment, concurrency, handed, f"client shard {shard.index}: {e}")
        try:
            rec, answer = await fut
        except asyncio.CancelledError:
            shard.pending.pop(rid, None)
            if not shard.dead:
                with contextlib.suppress(Exception):
                    shard.writer.write(_frame(("cancel", rid)))
            raise
        rec.segment, rec.concurrency, rec.worker = segment, concurrency, worker
        if text is not None and answer:
            text.append(answer)
        if rec.start > handed:  # the hand-over is the client's time: it stays inside TTFT (see the docstring)
            if rec.ttft is not None:
                rec.ttft += rec.start - handed
            rec.start = handed
        return rec

    @staticmethod
    def _failed(worker: int, segment: int, concurrency: int, t: float, why: str) -> RequestRecord:
        import time

        return RequestRecord(ok=False, segment=segment, concurrency=concurrency, worker=worker, start=t, end=t,
                             error=why, wall_start=time.time())

    async def _receive(self, shard: _Shard) -> None:
        try:
            while True:
                msg = await _read_frame(shard.reader)
                if msg[0] == "rec":
                    got = shard.pending.pop(msg[1], None)
                    if got is not None and not got[0].done():
                        got[0].set_result((msg[2], msg[3]))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, pickle.UnpicklingError) as e:
            await asyncio.sleep(0)  # let a dying process be reaped, so its exit status can be named
            shard.proc.join(0.5)
            code = shard.proc.exitcode
            if not isinstance(e, asyncio.IncompleteReadError) or code not in (0, None) or shard.pending:
                shard.dead = f"client shard {shard.index} died" + (f" (exit {code})" if code is not None else "")
                self.dead.append(shard.dead)
                log.warning("%s with %d request(s) in flight", shard.dead, len(shard.pending))
            else:
                shard.dead = f"client shard {shard.index} closed"
            now = perf_counter()
            for fut, handed in list(shard.pending.values()):
                if not fut.done():
                    rec = self._failed(-1, 0, 0, handed, shard.dead)
                    rec.end = now
                    fut.set_result((rec, None))
            shard.pending.clear()

    async def close(self) -> None:
        for s in self._shards:
            if not s.dead and s.writer is not None:
                with contextlib.suppress(Exception):
                    s.writer.write(_frame(("stop",)))
                    await s.writer.drain()
        for s in self._shards:
            if s.task is not None:
                s.task.cancel()
                with contextlib.suppress(BaseException):
                    await s.task
            if s.writer is not None:
                with contextlib.suppress(Exception):
                    s.writer.close()
        loop = asyncio.get_running_loop()
        for s in self._shards:
            await loop.run_in_executor(None, s.proc.join, 5.0)
            if s.proc.is_alive():
                s.proc.kill()
                await loop.run_in_executor(None, s.proc.join, 2.0)
        self._shards.clear()

    async def __aenter__(self) -> ShardPool:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
