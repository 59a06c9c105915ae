"""Trace prompts sized by the real simulator's /tokenize over HTTP: each request's prompt is its input_length by
the server's own count (the completions' usage reports it), requests naming the same hash ids share those blocks in
the server's prefix cache, entries the context cannot hold are refused before sending and counted (not sent, not
failed), and without /tokenize the approximation says so."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from qbench_tui.commands import workload
from qbench_tui.config import load_config
from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.metrics_parse import parse_metrics
from qbench_tui.engine.prompts import Refused, Sized
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.tokenizer import ServerTokenizer
from qbench_tui.engine.trace import TRACE_BLOCK_TOKENS, TraceRequest, load_trace, size_trace
from qbench_tui.headless import LevelPlan, run_plan


async def _sized(sim, reqs):
    async with ServerTokenizer(sim.url, "m", {}) as tok:
        tp = await size_trace(reqs, tok.count, lambda: tok.max_model_len)
    return tp, tok


def _sample(sim):
    return parse_metrics(httpx.get(f"{sim.url}/metrics").text, 0.0)


async def _send_one_by_one(sim, prompts, n):
    """n requests in order, each alone (a wave of 1): each finds what the ones before it left in the cache."""
    records: list = []
    eng = LoadEngine(RequestSpec(url=sim.url, model="m", max_tokens=2), prompts, on_record=records.append)
    try:
        for _ in range(n):
            await eng.run_wave(1)
    finally:
        await eng.stop()
    return records


def _write(tmp_path, entries) -> str:
    p = tmp_path / "trace.jsonl"
    p.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return str(p)


async def test_each_trace_prompt_is_its_input_length_by_the_servers_count(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--model", "m")
    lengths = [60, 100, 333, 512, 700, 1024, 1500, 2049, 90, 4000]
    path = _write(tmp_path, [{"timestamp": 10 * i, "input_length": n, "output_length": 3,
                              "hash_ids": list(range(100 * i, 100 * i + -(-n // TRACE_BLOCK_TOKENS)))}
                             for i, n in enumerate(lengths)])
    reqs = load_trace(path)
    tp, tok = await _sized(sim, reqs)
    assert tp.sizing.exact and tok.available
    # bounded calls: 2 to calibrate, then a few per request (the simulator counts characters, words are coarser)
    assert tok.calls <= 2 + 6 * len(reqs)
    records = await _send_one_by_one(sim, tp, len(reqs))
    assert all(r.ok for r in records)
    seen = [r.in_tokens for r in records]  # the server's usage.prompt_tokens, in send order
    assert seen == tp.counted  # what the sizing counted is what the server then reports
    assert sum(s == n for s, n in zip(seen, lengths)) >= len(lengths) - 2
    assert all(abs(s - n) <= 1 for s, n in zip(seen, lengths))
    assert [tp(i).max_tokens for i in range(len(reqs))] == [3] * len(reqs)


async def test_requests_naming_the_same_hash_ids_share_those_blocks_in_the_servers_cache(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m")
    block = 16  # h200-fast's block_size
    reqs = [TraceRequest(0.0, 1536, 2, (1, 2, 3)),
            TraceRequest(0.1, 1536, 2, (1, 2, 4)),  # shares blocks 1 and 2 with the first
            TraceRequest(0.2, 1536, 2, (5, 6, 7))]  # shares nothing but the template's start
    tp, _ = await _sized(sim, reqs)
    a, b, c = (tp.content(i).split() for i in range(3))
    n2 = 2 * tp.block_n
    assert a[:n2] == b[:n2] and a[n2:] != b[n2:] and a[:8] != c[:8]
    hits = []
    for i in range(3):
        before = _sample(sim).prefix_cache_hits or 0.0
        (rec,) = await _send_one_by_one(sim, lambda _, i=i: tp(i), 1)
        assert rec.ok and rec.in_tokens == tp.counted[i]
        hits.append((_sample(sim).prefix_cache_hits or 0.0) - before)
    assert hits[0] < 64  # at most the template's system prompt (the first request of a fresh server: 0)
    # two blocks of 512 tokens each (by the server's tokens per word) plus the template's start, in whole blocks
    assert 2 * TRACE_BLOCK_TOKENS - 2 * block <= hits[1] <= 2 * TRACE_BLOCK_TOKENS + 64, hits
    assert hits[2] < 64, hits


async def test_entries_over_the_context_are_refused_counted_and_never_sent(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m", "--set", "max_model_len=1024")
    reqs = [TraceRequest(0.0, 300, 5), TraceRequest(0.01, 900, 200), TraceRequest(0.02, 400, 5),
            TraceRequest(0.03, 1100, 1), TraceRequest(0.04, 200, 5)]
    tp, _ = await _sized(sim, reqs)
    assert tp.max_model_len == 1024 and sorted(tp.refusals) == [1, 3]
    assert isinstance(tp(1), Refused) and isinstance(tp(0), Sized)
    assert tp(1).reason == f"refused before sending: {tp.counted[1]:,} prompt + 200 output tokens > max_model_len 1,024"
    sent_before = _sample(sim).request_success or 0.0
    spec = RequestSpec(url=sim.url, model="m", max_tokens=50)
    levels, stopped = await run_plan(spec, tp, [LevelPlan(0, "rate", trace_times=[r.at_s for r in reqs])])
    assert stopped is None and len(levels) == 1
    lv = levels[0]
    assert (lv.completed, lv.failed, lv.refused) == (3, 0, 2)
    assert sum(lv.refused_reasons.values()) == 2 and all(k.startswith("refused before sending: ")
                                                        for k in lv.refused_reasons)
    assert lv.to_json()["refused"] == 2
    await asyncio.sleep(0.3)
    assert (_sample(sim).request_success or 0.0) - sent_before == 3  # the refused two never reached the server


def test_the_command_says_what_is_refused_and_stops_when_everything_is(sim_proc, capsys):
    sim = sim_proc("h200-fast", "--model", "m", "--set", "max_model_len=1024")
    cfg = load_config(None, {})
    some = [TraceRequest(0.0, 300, 5), TraceRequest(0.1, 1000, 100)]
    tp = workload.build_trace_prompts(cfg, some, sim.url, "m", None)
    err = capsys.readouterr().err
    assert "  trace: 2 requests, sizing server /tokenize" in err
    assert "  trace: 1 of 2 requests exceed the context and will be refused" in err
    assert list(tp.refusals) == [1]
    with pytest.raises(workload.Usage, match=r"trace: all 2 requests exceed the server's context .* "
                                             r"> max_model_len 1,024"):
        workload.build_trace_prompts(cfg, [TraceRequest(0.0, 1000, 100), TraceRequest(0.1, 2000, 1)], sim.url,
                                     "m", None)


async def test_without_tokenize_the_trace_is_approximated_and_says_so(capsys):
    """A scripted server answering 404 on /tokenize stands for an OpenAI-compatible proxy without it."""

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 22\r\nconnection: close\r\n\r\n"
                     b'{"detail":"Not Found"}')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    reqs = [TraceRequest(0.0, 600, 5, (1, 2)), TraceRequest(0.1, 700, 5, (1, 3))]
    try:
        tp = await asyncio.to_thread(workload.build_trace_prompts, load_config(None, {}), reqs, url, "m", None)
    finally:
        server.close()
    assert not tp.sizing.exact and not tp.refusals and tp.max_model_len is None
    assert "approximation: 1 word ~ 1 token" in capsys.readouterr().err
    a, b = tp.content(0).split(), tp.content(1).split()
    assert (len(a), len(b)) == (600, 700)  # a word for a token, the template not counted
    assert a[:TRACE_BLOCK_TOKENS] == b[:TRACE_BLOCK_TOKENS] and a[TRACE_BLOCK_TOKENS:] != b[TRACE_BLOCK_TOKENS:600]
