"""The "client is the limit" cause, fed by the real producers: a load engine whose event loop is kept busy reports
it in LevelResult.client, and the knee names the client (before, only a hand-made dict ever set it)."""
from __future__ import annotations

import asyncio
import time

import httpx

from qbench_tui.engine.knee import CLIENT_LAG_MS, explain, find_knee
from qbench_tui.engine.prompts import make_prompt_source
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import EngineSession, SessionConfig
from qbench_tui.engine.snapshot import SetConcurrency, Stop
from qbench_tui.headless import LevelPlan, run_plan
from tests.fakes.scripted_sse import Scenario, ScriptedSSEServer

BLOCK_S = 0.12  # each slice holds the loop this long: a 50 ms lag probe wakes up to 120 ms late


async def _hog_the_loop(stop: asyncio.Event) -> None:
    """What a client too slow for its load looks like to the loop: long synchronous stretches between awaits."""
    while not stop.is_set():
        time.sleep(BLOCK_S)  # blocking on purpose: this is the overload being measured
        await asyncio.sleep(0.02)


async def test_busy_headless_client_is_named_as_the_limit(sim_proc):
    # max_num_seqs 16: past C=16 throughput is flat and latency grows, so the knee calls saturation and asks why
    # (three levels: the busy loop slows the first one most, which puts the knee at the second)
    sim = sim_proc("seqs-limited")
    model = httpx.get(f"{sim.url}/v1/models", timeout=10).json()["data"][0]["id"]
    spec = RequestSpec(url=sim.url, model=model, max_tokens=32, ignore_eos=True)
    stop = asyncio.Event()
    hog = asyncio.create_task(_hog_the_loop(stop))
    try:
        levels, stopped = await run_plan(spec, make_prompt_source("hi"), [LevelPlan(c) for c in (16, 48, 96)])
    finally:
        stop.set()
        await hog
    assert stopped is None and [lv.completed for lv in levels] == [16, 48, 96]
    for lv in levels:
        assert lv.client is not None and lv.client.loop_lag_ms >= CLIENT_LAG_MS, lv.client
        assert lv.client.max_loop_lag_ms >= lv.client.loop_lag_ms and lv.client.cpu_pct is not None
    knee = find_knee(levels)
    assert knee.saturated, knee.summary
    assert "CLIENT is the limit" in knee.cause and "CLIENT is the limit" in explain(levels[1], levels[2])


async def test_live_segment_carries_the_client_cost(tmp_path):
    with ScriptedSSEServer(default=Scenario(tokens=5, delay=0.01)) as srv:
        spec = RequestSpec(url=srv.url, model="m", max_tokens=5)
        session = EngineSession(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), min_segment_s=0.2),
                                emit=lambda snap: None)
        run = asyncio.create_task(session.run())
        stop = asyncio.Event()
        hog = None
        try:
            deadline = time.monotonic() + 30
            while session.status != "running":
                assert time.monotonic() < deadline, "session never started"
                await asyncio.sleep(0.05)
            hog = asyncio.create_task(_hog_the_loop(stop))
            session.handle(SetConcurrency(2))
            # the session samples its CPU / loop lag once a second into the open segment
            while True:
                levels = session.segment_levels()
                if levels and levels[0].client is not None and len(session.current.client) >= 2:
                    break
                assert time.monotonic() < deadline, "no client samples in the segment"
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            if hog is not None:
                await hog
            session.handle(Stop())
            await run
    lv = levels[0]
    assert lv.client.max_loop_lag_ms >= CLIENT_LAG_MS and lv.client.cpu_pct is not None
    assert lv.to_json()["client"]["max_loop_lag_ms"] == lv.client.max_loop_lag_ms
