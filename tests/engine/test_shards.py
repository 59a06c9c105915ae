"""Client shards (engine/shards.py) under the real load engine against the real simulator: every request comes
back whole and is counted once, a dead shard's requests are failures that say so and its workers move on, a stop
cancels on the shards too, and nothing is left running."""
from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest

from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.shards import ShardPool, default_procs
from qbench_tui.engine.stats import LevelTally


def _spec(sim, **kw) -> RequestSpec:
    return RequestSpec(url=sim.url, model="m", max_tokens=kw.pop("max_tokens", 16), **kw)


def _connected_pids(port: int) -> set[int]:
    pids = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if any(c.raddr and c.raddr.port == port for c in p.net_connections("tcp")):
                pids.add(p.pid)
        except (psutil.Error, OSError):
            continue
    return pids


async def test_sharded_level_counts_exactly_what_one_process_counts(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m")
    spec = _spec(sim)
    single = LoadEngine(spec, lambda i: f"question {i}")
    try:
        one = await single.run_steady(8, requests=60, settle=None)
        bounds_one = single.last_bounds
    finally:
        await single.stop()
    async with ShardPool(spec, 2) as pool:
        sharded = LoadEngine(spec, lambda i: f"question {i}", sender=pool.send)
        try:
            task = asyncio.create_task(sharded.run_steady(8, requests=60, settle=None))
            while not task.done() and len(_connected_pids(int(sim.url.rsplit(":", 1)[1])) & set(pool.pids)) < 2:
                await asyncio.sleep(0.02)
            both = set(pool.pids) <= _connected_pids(int(sim.url.rsplit(":", 1)[1])) or task.done()
            two = await task
            bounds_two = sharded.last_bounds
        finally:
            await sharded.stop()
        pids = pool.pids
    assert both, "each shard holds its own connections to the server"
    # the window counts exactly --requests sends in both (the hand-over time is each record's start)
    a = LevelTally().add_all(r for r in one if bounds_one.counts(r))
    b = LevelTally().add_all(r for r in two if bounds_two.counts(r))
    assert (a.completed, a.failed) == (b.completed, b.failed) == (60, 0)
    assert a.out_tokens == b.out_tokens == 60 * 16
    assert len(b.itl) == len(a.itl) == 60 * 16  # every gap (role chunk, then 16 tokens) came back
    assert len(two) == len({id(r) for r in two}) and all(r.ok for r in two)
    assert all(r.ttft is not None and r.start <= r.start + r.ttft <= r.end for r in two)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


async def test_a_shard_that_dies_fails_its_requests_by_name_and_the_load_goes_on(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m", "--speed", "0.5")
    spec = _spec(sim, max_tokens=40)
    async with ShardPool(spec, 2) as pool:
        records = []
        eng = LoadEngine(spec, lambda i: "hello", on_record=records.append, sender=pool.send)
        try:
            await eng.start(6)
            while sum(r.ok for r in records) < 6:
                await asyncio.sleep(0.02)
            victim = pool.pids[1]
            os.kill(victim, signal.SIGKILL)
            while not pool.dead:
                await asyncio.sleep(0.02)
            after = len(records)
            while sum(r.ok for r in records[after:]) < 12:
                await asyncio.sleep(0.02)
        finally:
            await eng.stop()
    died = [r for r in records if "client shard 1 died" in r.error]
    assert died and all(not r.ok for r in died)
    assert pool.dead == ["client shard 1 died (exit -9)"]
    # the dead shard's workers (odd ones) went on through shard 0
    assert {r.worker for r in records[after:] if r.ok} >= {1, 3, 5}
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE


async def test_stop_cancels_the_streams_on_the_shards(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m", "--speed", "0.2")
    spec = _spec(sim, max_tokens=2000)
    port = int(sim.url.rsplit(":", 1)[1])
    pool = ShardPool(spec, 2)
    await pool.start()
    try:
        eng = LoadEngine(spec, lambda i: "long", sender=pool.send)
        await eng.start(4)
        while len(_connected_pids(port) & set(pool.pids)) < 2:
            await asyncio.sleep(0.02)
        await eng.stop()
        assert eng.in_flight == 0
        # the shards closed their connections once their streams were cancelled
        for _ in range(250):
            if not (_connected_pids(port) & set(pool.pids)):
                break
            await asyncio.sleep(0.02)
        assert not (_connected_pids(port) & set(pool.pids))
    finally:
        pids = pool.pids
        await pool.close()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_default_procs_and_bad_counts():
    assert default_procs(64, cores=16) == 1
    assert default_procs(1000, cores=16) == 4
    assert default_procs(5000, cores=4) == 3  # a core kept for the engine itself
    assert default_procs(1000, cores=2) == 1
    with pytest.raises(ValueError, match="--client-procs must be >= 1"):
        ShardPool(RequestSpec(url="http://127.0.0.1:1", model="m"), 0)
