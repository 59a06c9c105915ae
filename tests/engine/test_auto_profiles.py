"""`qbench sweep --auto`'s ladder against simulated servers whose limit is known from their own numbers: the knee
it finds lies within one ladder step (x2) of where the profile's model puts it, and the cause is named right.

The expectation is not a constant: `model_level` turns the profile's numbers (max_num_seqs, KV blocks and tokens
per request, the step-time model of server/sim/scheduler.py) into the throughput and latency a closed loop at C
would see, and the same ladder policy is run on that curve.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import httpx
import pytest

from qbench_tui.commands.sweep import AutoPlans
from qbench_tui.engine.knee import CLIENT_CPU_PCT, CLIENT_LAG_MS, find_knee
from qbench_tui.engine.ladder import LadderSpec, next_step
from qbench_tui.engine.prompts import make_prompt_source
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.result import Latency, LevelResult
from qbench_tui.headless import LevelPlan, run_plan
from qbench_tui.server.sim.profile import Profile, load_profile
from qbench_tui.server.sim.requests import render_chat

OUT = 32  # output tokens per request (ignore_eos): ~0.4 s requests, short levels
LADDER = LadderSpec(start=8, max_concurrency=64, budget_s=300)
SPEED = 2  # the simulator steps 2x as fast: every knee stays where it is (all its times halve), levels are quicker


def model_level(p: Profile, c: int, prompt: int, out: int = OUT) -> LevelResult:
    """A closed loop at C on profile p, from scheduler.py's step cost: D requests decode together (C, or
    max_num_seqs, or what the KV blocks hold, whichever is least), each decode step costs overhead + max(min_forward,
    D x per-seq) + context x per-token, and each request's prefill adds its prompt x per-token to one step that all
    D wait for. With C <= D a slot idles for the front-end latency between requests; with C > D the queue keeps
    the slots full."""
    mean_blocks = (prompt + out / 2) / p.block_size + 0.5
    limit = min(p.max_num_seqs, p.num_gpu_blocks / mean_blocks)

    def tput(d: float) -> float:
        step = (p.step_overhead_s + max(p.min_forward_s, d * p.decode_per_seq_s)
                + d * (prompt + out / 2) * p.decode_per_ctx_token_s)
        prefill = max(0.0, prompt * p.prefill_per_token_s + d * p.decode_per_seq_s - max(p.min_forward_s,
                                                                                           d * p.decode_per_seq_s))
        return (d / step) / (1 + d * prefill / (out * step))  # wall time shared by decode steps and prefills

    if c > limit:
        t = tput(limit)
    else:
        t = tput(c)
        for _ in range(50):  # the slots idle for the front end: a fixed point of latency and throughput
            lat = c * out / t
            t = tput(c * (lat - p.frontend_latency_s) / lat)
    lat = c * out / t
    return LevelResult(max_concurrency=c, completed=100, output_throughput=t, request_throughput=t / out,
                       e2el=Latency(mean_s=lat, p50_s=lat))


def expected_knee(p: Profile, prompt: int) -> int:
    levels: list[LevelResult] = []
    while (step := next_step(LADDER, levels)).concurrency is not None:
        levels.append(model_level(p, step.concurrency, prompt))
    return find_knee(levels).knee_concurrency


def chat_tokens(p: Profile, prompt) -> int:
    """The simulator's own count for a chat (its template and system prompt included); a plain prompt is one user
    message, a unique prefix comes as its own system message first."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return -(-len(render_chat(msgs, p.default_system_prompt)) // p.chars_per_token)


async def ladder(url: str, prompts) -> list[LevelResult]:
    model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    spec = RequestSpec(url=url, model=model, max_tokens=OUT, ignore_eos=True)
    # the settle rule (3 s of steady throughput) is the level helper's, tested there; a short fixed warm-up keeps
    # these ladders of six or seven levels quick, and each level still starts from a drained server
    auto = AutoPlans(LADDER, lambda c, hold: LevelPlan(c, "steady", duration=0.8, warmup=0.3, settle=False))
    levels, stopped = await run_plan(spec, prompts, auto)
    assert stopped is None and auto.done is not None, stopped
    return levels


def assert_cause(levels: list[LevelResult], knee, cause: str) -> None:
    """The server's limit is named from the server's evidence; the client is named instead only when its own
    numbers crossed the client thresholds at a level (the test host's other work can starve the load engine's
    event loop too, and then naming the client is the right verdict): with the client's numbers left out, the
    cause must be the profile's either way."""
    server_only = find_knee([replace(lv, client=None) for lv in levels])
    assert server_only.cause_kind == cause, server_only.cause
    if knee.cause_kind != cause:
        assert knee.cause_kind == "client", knee.cause
        assert any(lv.client and ((lv.client.loop_lag_ms or 0) >= CLIENT_LAG_MS
                                  or (lv.client.cpu_pct or 0) >= CLIENT_CPU_PCT) for lv in levels), knee.cause


def _report(name: str, levels: list[LevelResult], knee, expected: int) -> str:
    rows = ", ".join(f"{lv.max_concurrency}:{lv.output_throughput or 0:.0f}"
                     f"{f' (lag {lv.client.loop_lag_ms:.0f} ms)' if lv.client and lv.client.loop_lag_ms else ''}"
                     for lv in levels)
    return f"{name}: knee {knee.knee_concurrency} (expected {expected}), cause {knee.cause_kind}; levels {rows}"


# (profile, simulator flags, prompt source, prompt as the model counts it, cause)
CASES = {
    # the seed profile where a step reads the weights for 20 ms and each sequence costs 1.25 ms of compute: up to
    # 16 the batch rides free on the weight reads, past 16 every step grows with it (ITL climbs), nothing else binds
    "compute": ("qwen2.5-14b-awq-32gb", ("--set", "min_forward_s=0.02", "--set", "decode_per_seq_s=0.00125"),
                dict(prompt="hi"), "compute"),
    # 300 blocks of 16 tokens, ~320-token prompts (template and prefix included) that share nothing: ~14 fit
    "kv": ("kv-limited", (), dict(prompt="", prompt_len=200, unique_prefix=True), "kv_cache"),
    # max_num_seqs 16
    "seqs": ("seqs-limited", (), dict(prompt="hi"), "max_num_seqs"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_auto_knee_matches_the_profile_model(sim_proc, case):
    name, flags, source, cause = CASES[case]
    sim = sim_proc(name, "--speed", str(SPEED), *flags)
    prof = load_profile(name)
    for flag in flags[1::2]:
        key, _, val = flag.partition("=")
        prof = prof.replace(**{key: val})
    prompts = make_prompt_source(**source)
    expected = expected_knee(prof, chat_tokens(prof, prompts(0)))
    levels = await ladder(sim.url, prompts)
    knee = find_knee(levels)
    print(_report(case, levels, knee, expected))
    assert knee.saturated, knee.summary
    assert expected / LADDER.growth <= knee.knee_concurrency <= expected * LADDER.growth, _report(
        case, levels, knee, expected)
    assert_cause(levels, knee, cause)
    assert max(lv.max_concurrency for lv in levels) < LADDER.max_concurrency  # it stopped early


BLOCK_S = 0.12  # as tests/engine/test_client_cause.py: each slice holds the loop this long (a 50 ms lag probe
GAP_S = 0.1  # wakes up to 120 ms late), with the loop free in between to run the load at all


async def _hog_the_loop(stop: asyncio.Event) -> None:
    """A client too slow for its load: long synchronous stretches between awaits on the loop that runs it."""
    while not stop.is_set():
        time.sleep(BLOCK_S)  # blocking on purpose: this is the overload being measured
        await asyncio.sleep(GAP_S)


async def test_auto_knee_names_a_busy_client(sim_proc):
    # the seqs-limited server (knee 16 by its model) measured by a client whose event loop is mostly busy: the
    # ladder still stops near the knee, and the cause is the client, with its loop lag, not the server
    sim = sim_proc("seqs-limited", "--speed", str(SPEED))
    prof = load_profile("seqs-limited")
    expected = expected_knee(prof, chat_tokens(prof, "hi"))
    stop = asyncio.Event()
    hog = asyncio.create_task(_hog_the_loop(stop))
    try:
        levels = await ladder(sim.url, make_prompt_source("hi"))
    finally:
        stop.set()
        await hog
    knee = find_knee(levels)
    print(_report("client", levels, knee, expected))
    assert knee.saturated, knee.summary
    assert expected / LADDER.growth <= knee.knee_concurrency <= expected * LADDER.growth
    assert knee.cause_kind == "client" and "event-loop lag" in knee.cause, knee.cause
