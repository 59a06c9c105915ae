"""Client shards on a Ray cluster (`--ray ADDRESS`): engine/shards.ShardPool's job across machines.

The engine (driver) keeps deciding everything as with local shards; each shard is a Ray actor with its own event
loop that sends a request and times its stream (engine/request.stream_request), placed one per node while nodes
last (SPREAD), and returns the whole RequestRecord. Ray is the engine vLLM itself uses for multi-node serving, so
a user running vLLM across nodes has a cluster to put the load on already. Optional: `pip install
'qbench-tui[ray]'`; nothing else imports this module, and it imports Ray only when a pool starts.

Clocks: a record's times come from the node that measured it. Within one machine perf_counter is one clock; across
machines it is not, so the actor returns the record's times relative to its own start (TTFT, ITL, E2E latency are
durations: exact on any node) and the driver places them on its own clock at the moment it handed the request over
(the hand-over itself, a Ray call, then counts inside TTFT as the client's overhead it is, as with local shards).
"""
from __future__ import annotations

import asyncio
import time
from time import perf_counter

from .records import RequestRecord, RequestSpec


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster does not answer: one line for the user."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'qbench-tui[ray]'") from None
    return ray


def _actor_class(ray):
    @ray.remote(num_cpus=1, max_concurrency=100_000)
    class LoadShard:
        """One shard: a client per worker it serves, kept alive between requests."""

        def __init__(self, spec: RequestSpec) -> None:
            from .request import make_client

            self.spec = spec
            self.clients: dict = {}
            self._make = make_client

        def node(self) -> str:
            import socket

            return socket.gethostname()

        async def send(self, worker: int, prompt, want_text: bool, url: str | None):
            from dataclasses import replace

            from .request import stream_request

            spec = self.spec if url is None else replace(self.spec, url=url)
            client = self.clients.get((worker, url))
            if client is None:
                client = self.clients[(worker, url)] = self._make(spec)
            text: list[str] | None = [] if want_text else None
            rec = await stream_request(client, spec, prompt, segment=0, concurrency=0, worker=worker, text=text)
            base = rec.start  # durations survive the trip; absolute times are this node's clock only
            rec.start, rec.end = 0.0, rec.end - base
            return rec, None if text is None else "".join(text)

        async def close(self) -> None:
            for c in self.clients.values():
                try:
                    await c.aclose()
                except Exception:
                    pass
            self.clients.clear()

    return LoadShard


async def _answers(address: str, timeout: float = 5.0) -> None:
    """A cluster address that nothing listens on makes ray.init retry for minutes (3.5 measured here): a TCP
    connect to its head first says so in seconds. "auto" and ray:// addresses are left to Ray."""
    if address in ("", "auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--ray {address}: give the head's HOST:PORT (as `ray start --head` printed it)")
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        raise RayUnavailable(f"--ray {address}: no Ray cluster answered ({type(e).__name__}"
                             f"{': ' + e.strerror if isinstance(e, OSError) and e.strerror else ''})") from None
    w.close()


class RayShardPool:
    """`await pool.start()`, `pool.send` as LoadEngine's sender, `await pool.close()`; as ShardPool."""

    def __init__(self, spec: RequestSpec, procs: int, address: str) -> None:
        if procs < 1:
            raise ValueError(f"--client-procs must be >= 1, got {procs}")
        self.spec = spec
        self.procs = procs
        self.address = address
        self._actors: list = []
        self.nodes: list[str] = []
        self.dead: list[str] = []
        self._ray = None
        self._ours = False

    async def start(self) -> None:
        ray = self._ray = _import_ray()
        if not ray.is_initialized():
            await _answers(self.address)
            try:
                # the driver's own logs stay out of the user's terminal; the cluster keeps its own
                ray.init(address=self.address, log_to_driver=False, logging_level="ERROR",
                         include_dashboard=False)
            except Exception as e:  # ConnectionError, or Ray's own when nothing answers at ADDRESS
                raise RayUnavailable(f"--ray {self.address}: no Ray cluster answered ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0] if str(e) else ''})") from None
            self._ours = True
        cls = _actor_class(ray)
        self._actors = [cls.options(scheduling_strategy="SPREAD").remote(self.spec) for _ in range(self.procs)]
        self.nodes = list(await asyncio.gather(*(a.node.remote() for a in self._actors)))

    async def send(self, worker: int, prompt, *, segment: int, concurrency: int, text: list | None = None,
                   url: str | None = None) -> RequestRecord:
        handed = perf_counter()
        k = worker % len(self._actors)
        ref = self._actors[k].send.remote(worker, prompt, text is not None, url)
        try:
            rec, answer = await ref
        except asyncio.CancelledError:
            self._ray.cancel(ref)
            raise
        except Exception as e:  # the actor died (its node went away): one failed record, nothing silently lost
            why = f"client shard {k} on {self.nodes[k] if k < len(self.nodes) else '?'} died: {type(e).__name__}"
            if why not in self.dead:
                self.dead.append(why)
            now = perf_counter()
            return RequestRecord(ok=False, segment=segment, concurrency=concurrency, worker=worker, start=handed,
                                 end=now, error=why, wall_start=time.time())
        if text is not None and answer:
            text.append(answer)
        lag = max(0.0, perf_counter() - handed - rec.end)  # the round trip beyond the stream itself
        rec.segment, rec.concurrency, rec.worker = segment, concurrency, worker
        # on the driver's clock, the stream ending when its record came back; the hand-over counts in TTFT
        rec.start = handed
        rec.end = handed + lag + rec.end
        if rec.ttft is not None:
            rec.ttft += lag
        return rec

    async def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        try:
            await asyncio.gather(*(a.close.remote() for a in self._actors), return_exceptions=True)
        finally:
            for a in self._actors:
                try:
                    ray.kill(a)
                except Exception:
                    pass
            self._actors = []
            if self._ours:
                ray.shutdown()

    async def __aenter__(self) -> RayShardPool:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
