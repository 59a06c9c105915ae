"""Shaped datasets through the real simulator over HTTP: /tokenize sizes the prompts, the completions' usage then
reports exactly those lengths, a unique first token defeats the prefix cache on chat, and prefix groups get the
hit rate they imply."""
from __future__ import annotations

import httpx

from qbench_tui.engine.datasets import Shape, build_dataset
from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.metrics_parse import parse_metrics
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.tokenizer import ServerTokenizer


async def _dataset(sim, shape):
    async with ServerTokenizer(sim.url, "m", {}) as tok:
        ds = await build_dataset(shape, tok.count)
    return ds, tok


def _hits(sim) -> tuple[float, float]:
    s = parse_metrics(httpx.get(f"{sim.url}/metrics").text, 0.0)
    return s.prefix_cache_hits or 0.0, s.prefix_cache_queries or 0.0


async def _send(sim, ds, n):
    records: list = []
    eng = LoadEngine(RequestSpec(url=sim.url, model="m", max_tokens=4), ds, on_record=records.append)
    try:
        for _ in range(n // 10):
            await eng.run_wave(10)
    finally:
        await eng.stop()
    return records


async def test_the_server_counts_the_lengths_asked_for(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m")
    ds, tok = await _dataset(sim, Shape(input_len=48, output_len=12, num_prompts=40))
    assert tok.available and ds.sizing.exact
    records = await _send(sim, ds, 40)
    assert len(records) == 40 and all(r.ok for r in records)
    got = [r.in_tokens for r in records]
    assert sum(g == 48 for g in got) >= 38 and all(abs(g - 48) <= 1 for g in got)
    assert {r.out_tokens for r in records} <= {12, 4}  # max_tokens from the dataset unless the answer ended first


async def test_a_server_without_tokenize_falls_back_and_says_so(sim_proc):
    """A scripted server answering 404 on /tokenize stands for an OpenAI-compatible proxy without it."""
    import asyncio

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 22\r\nconnection: close\r\n\r\n"
                     b'{"detail":"Not Found"}')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ServerTokenizer(f"http://127.0.0.1:{port}", "m", {}) as tok:
            ds = await build_dataset(Shape(input_len=30, num_prompts=3), tok.count)
    finally:
        server.close()
    assert not tok.available and "no /tokenize" in tok.error
    assert not ds.sizing.exact and "approximation" in ds.describe()


async def test_unique_first_defeats_the_prefix_cache_on_chat(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m")
    ds, _ = await _dataset(sim, Shape(input_len=256, unique_first=True, num_prompts=60))
    await _send(sim, ds, 60)
    hits, queries = _hits(sim)
    assert queries > 60 * 200
    assert hits / queries < 0.02  # the old tag-in-the-user-message gave ~58% on the default chat prompt


async def test_prefix_groups_hit_what_they_imply(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m")
    shape = Shape(input_len=512, shared_prefix_len=384, prefix_groups=2, num_prompts=60)
    ds, _ = await _dataset(sim, shape)
    await _send(sim, ds, 60)
    hits, queries = _hits(sim)
    # all but each group's first request could reuse the whole blocks of its 384-token prefix; block rounding and
    # the group's first arrivals (10 at once in a wave) take a little off
    implied = (60 - 2) / 60 * 384 / 512
    assert implied - 0.2 < hits / queries <= implied + 0.02, (hits / queries, implied)


async def test_prefix_groups_hit_exactly_the_whole_blocks_they_share(sim_proc):
    """Each group's first request alone fills the cache; every later one then hits the whole blocks of what its
    group shares (the template's start and the prefix) and nothing of its own: the hit rate is the dataset's
    share, (N - G)/N x (shared tokens rounded down to whole blocks) / input length."""
    import os

    from qbench_tui.server.sim.profile import load_profile
    from qbench_tui.server.sim.requests import render_chat

    profile = load_profile("h200-fast")
    bs, cpt = profile.block_size, profile.chars_per_token
    sim = sim_proc("h200-fast", "--model", "m")
    n, groups, length = 40, 4, 400
    ds, _ = await _dataset(sim, Shape(input_len=length, shared_prefix_len=256, prefix_groups=groups, num_prompts=n))
    texts = [render_chat(p, profile.default_system_prompt) for p in ds.pool]  # as the simulator counts them
    shared_chars = min(len(os.path.commonprefix([texts[i % groups], texts[i]])) for i in range(groups, n))
    shared_tokens = shared_chars // cpt
    assert 256 <= shared_tokens < 256 + 20  # the prefix and the template's start (its system message's head)
    before = _hits(sim)
    records: list = []
    eng = LoadEngine(RequestSpec(url=sim.url, model="m", max_tokens=2), ds, on_record=records.append)
    try:
        await eng.run_wave(groups)  # the groups' firsts: different from their first block on
        for _ in range((n - groups) // 12):
            await eng.run_wave(12)
    finally:
        await eng.stop()
    assert len(records) == n and all(r.ok for r in records)
    assert all(abs(r.in_tokens - length) <= 1 for r in records)  # 4 characters a token: a few land one short
    hits, queries = (a - b for a, b in zip(_hits(sim), before))
    assert queries == sum(r.in_tokens for r in records)
    assert hits == (n - groups) * (shared_chars // (bs * cpt)) * bs  # whole blocks of the shared text, no more
    implied = (n - groups) / n * (shared_tokens // bs * bs) / length
    assert abs(hits / queries - implied) < 0.01, (hits / queries, implied)
