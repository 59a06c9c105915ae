"""The simulator's memory stays bounded under a long run: what used to grow with every request now has a ceiling.

`qbench sim` kept the last 100k requests' ground truth (with every chunk's send times) in memory whether anyone read
it or not: 52 -> 473 MB in two minutes at high concurrency. Now a simulator process holds none (--record-truth
streams each request to its file), the in-thread one used by tests holds the newest few, and the prefix-cache model
holds at most num_gpu_blocks cached blocks, as vLLM's block pool does. Bounds are counted, not timed.
"""
from __future__ import annotations

import asyncio
import json
import threading

import httpx

from qbench_tui.server.sim import start_in_thread
from qbench_tui.server.sim.profile import load_profile
from qbench_tui.server.sim.runner import SimServer


def _body(i: int, max_tokens: int = 8) -> dict:
    # a distinct prompt per request: every request registers fresh blocks in the prefix cache
    return {"messages": [{"role": "user", "content": f"request {i}: " + "lorem ipsum " * 20}], "stream": True,
            "max_tokens": max_tokens, "ignore_eos": True}


async def _send(url: str, n: int, concurrency: int, max_tokens: int = 8) -> list[int]:
    """n streamed completions, `concurrency` at a time; the completion tokens each one read."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        async def one(i: int) -> int:
            async with sem, c.stream("POST", "/v1/chat/completions", json=_body(i, max_tokens)) as r:
                assert r.status_code == 200
                return sum([1 async for line in r.aiter_lines()
                            if line.startswith("data: {") and '"content":"' in line and '"role"' not in line])
        return await asyncio.gather(*(one(i) for i in range(n)))


def _serve_as_cli(server: SimServer):
    """Run a SimServer built exactly as `qbench sim` builds it, on its own loop in a thread, so its state is
    readable here; returns (thread, stop)."""
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    t.start()
    assert server.listening.wait(30)

    def stop() -> None:
        loop.call_soon_threadsafe(server.request_stop)
        t.join(15)
        assert not t.is_alive()
    return t, stop


def test_sim_process_holds_no_truth_and_streams_every_record_to_its_file(tmp_path):
    path = tmp_path / "truth.jsonl"
    # the keyword arguments sim/cli.py passes (no keep_truth): what `qbench sim --record-truth FILE` runs
    server = SimServer("h200-fast", port=0, speed=4, record_truth=str(path), hard_crash=True)
    _, stop = _serve_as_cli(server)
    try:
        n = 120
        got = asyncio.run(_send(server.url, n, concurrency=30))
        assert got == [8] * n
        # nothing kept in memory however many requests went by ...
        assert server.truth is not None and len(server.truth.records) == 0
        assert server.truth.records.maxlen == 0
    finally:
        stop()
    # ... and the file holds every one, one whole JSON line each, with its chunk times
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(recs) == n
    assert len({r["id"] for r in recs}) == n
    assert all(r["completion_tokens"] == 8 and sum(c[2] for c in r["chunks"]) == 8 for r in recs)


def test_sim_process_without_a_truth_file_builds_no_truth_at_all():
    server = SimServer("h200-fast", port=0, speed=4, hard_crash=True)
    _, stop = _serve_as_cli(server)
    try:
        assert asyncio.run(_send(server.url, 40, concurrency=20)) == [8] * 40
        assert server.truth is None and server.app.truth is None
    finally:
        stop()


def test_thread_sim_keeps_only_the_newest_truth_records():
    keep = 7
    with start_in_thread("h200-fast", speed=4, keep_truth=keep) as sim:
        n = 30
        asyncio.run(_send(sim.url, n, concurrency=1))  # one at a time: finishing order = sending order
        truth = sim.truth()
        assert len(truth) == keep
        ids = [int(t["id"].rsplit("-", 1)[1][8:], 16) for t in truth]  # chatcmpl-<8 hex prefix><counter hex>
        assert ids == list(range(n - keep + 1, n + 1))


def test_prefix_cache_model_holds_at_most_num_gpu_blocks():
    # a small pool the load overflows many times: 64 blocks of 16 tokens, ~60 prompt tokens + 40 output each
    prof = load_profile("h200-fast").replace(num_gpu_blocks=64, max_num_seqs=8)
    with start_in_thread(prof, speed=4, keep_truth=0) as sim:
        n = 80
        got = asyncio.run(_send(sim.url, n, concurrency=8, max_tokens=40))
        assert got == [40] * n
        kv = sim.engine.kv
        # every request registered ~6 fresh blocks (~480 in all): the pool filled up and kept no more than it has
        assert kv.used == 0 and kv.ref == {}
        assert prof.num_gpu_blocks // 2 < len(kv.evictable) <= prof.num_gpu_blocks
        assert sim.truth() == []
