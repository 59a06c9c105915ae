"""Against REAL vLLM (CPU build, tiny Qwen2, one server for the tier): the shaped datasets do what they say by the
server's own accounting — lengths asked for are the server's usage.prompt_tokens, random lengths stay inside their
bounds, a unique first token gets no prefix hits, and prefix groups get the hit rate their shared blocks imply,
read from vLLM's /metrics through LevelResult.server.

vLLM on CPU caches whole blocks of 128 tokens (BLOCK): a group's share is its common token prefix (by the server's
/tokenize token ids) rounded down to whole blocks. Requests are few and short: the tier shares 2 cores.
"""
from __future__ import annotations

import json
import os

import httpx
import pytest

from qbench_tui.engine.datasets import Shape, build_dataset, length_bounds, sample_lengths
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.tokenizer import ServerTokenizer
from qbench_tui.headless import LevelPlan, run_plan
from tests.conftest import run_qbench

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(900)]

MODEL = "tiny"  # served_model_name in sample_configs/tiny-cpu.toml
BLOCK = 128  # the CPU backend's KV block size


async def _dataset(url: str, shape: Shape):
    async with ServerTokenizer(url, MODEL, {}) as tok:
        ds = await build_dataset(shape, tok.count)
    assert tok.available and ds.sizing.exact, tok.error
    return ds


async def _levels(url: str, ds, waves: list[int]):
    """Wave levels in order (each waits for the one before): their LevelResults and every record."""
    records: list = []
    spec = RequestSpec(url=url, model=MODEL, max_tokens=2, ignore_eos=True, read_timeout=300.0)
    levels, stopped = await run_plan(spec, ds, [LevelPlan(c, "wave") for c in waves],
                                     on_record=lambda r, _c: records.append(r))
    assert stopped is None and len(levels) == len(waves)
    bad = [r.error for r in records if not r.ok]
    assert not bad, bad[:3]
    return levels, records


def _tokens(url: str, prompt) -> list[int]:
    r = httpx.post(f"{url}/tokenize", json={"model": MODEL, "messages": prompt, "add_generation_prompt": True},
                   timeout=30.0, trust_env=False)
    r.raise_for_status()
    return r.json()["tokens"]


def test_random_input_len_is_the_servers_prompt_tokens(real_vllm, tmp_path):
    """`qbench run --random-input-len 32`: every request's usage.prompt_tokens is 32, chat template included."""
    r = run_qbench("run", "--url", real_vllm.url, "--mode", "wave", "-c", "8", "--random-input-len", "32",
                   "--num-prompts", "8", "--max-tokens", "4", "--ignore-eos", "--json", "--out", str(tmp_path),
                   timeout=300, env={"NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sizing server /tokenize: 8/8 prompts at exactly the target length" in r.stderr
    d = json.loads(r.stdout)
    assert d["completed"] == 8 and d["failed"] == 0 and d["total_input_tokens"] == 8 * 32
    lines = [json.loads(x) for x in next(tmp_path.glob("*.requests.jsonl")).read_text().splitlines()]
    assert [x["in_tokens"] for x in lines] == [32] * 8
    assert d["server"]["prompt_tokens"] == 8 * 32  # vLLM's own counter agrees


async def test_random_range_ratio_lengths_are_the_drawn_ones_within_bounds(real_vllm):
    shape = Shape(input_len=64, range_ratio=0.5, num_prompts=12, seed=4)
    ds = await _dataset(real_vllm.url, shape)
    ins, _ = sample_lengths(shape, 12)
    lo, hi = length_bounds(64, 0.5)
    _, records = await _levels(real_vllm.url, ds, [12])
    seen = sorted(r.in_tokens for r in records)
    assert all(lo <= n <= hi for n in seen), (seen, lo, hi)
    assert seen == sorted(ins)  # each prompt at exactly its drawn length by the server's count
    assert len(set(seen)) > 4  # and they do vary


async def test_unique_prefix_gets_no_prefix_hits(real_vllm):
    """Unique from the first token: with 300-token prompts (2 whole blocks each) nothing can match, even the
    requests after the first has filled the cache."""
    ds = await _dataset(real_vllm.url, Shape(input_len=300, unique_first=True, num_prompts=9, seed=21))
    levels, records = await _levels(real_vllm.url, ds, [1, 8])
    assert all(r.in_tokens == 300 for r in records)
    srv = levels[1].server
    assert srv.prefix_cache_queries == 8 * 300, srv
    assert srv.prefix_cache_hit_rate is not None and srv.prefix_cache_hit_rate < 0.02, srv


async def test_shared_prefix_groups_hit_the_share_they_imply(real_vllm):
    """Each group's first request alone fills the cache; the 8 after them hit their group's shared tokens in whole
    blocks and nothing of their own: hit rate = (shared tokens // BLOCK * BLOCK) / input length, per request."""
    length, groups = 512, 2
    shape = Shape(input_len=length, shared_prefix_len=384, prefix_groups=groups, num_prompts=10, seed=31)
    ds = await _dataset(real_vllm.url, shape)
    toks = [_tokens(real_vllm.url, ds(i)) for i in range(10)]
    shared = min(len(os.path.commonprefix([toks[i % groups], toks[i]])) for i in range(groups, 10))
    assert 384 <= shared < 384 + 32, shared  # the prefix and the template's head
    whole = min(shared // BLOCK, (length - 1) // BLOCK) * BLOCK  # vLLM never serves the last prompt token cached
    levels, records = await _levels(real_vllm.url, ds, [1, 1, 8])
    assert sorted(r.in_tokens for r in records) == sorted(len(t) for t in toks)  # usage = /tokenize's ids
    first, rest = levels[0].server, levels[2].server
    assert first.prefix_cache_hits == 0, first  # a fresh prefix: nothing cached yet
    queries = sum(len(t) for t in toks[groups:])
    assert rest.prefix_cache_queries == queries, rest
    assert rest.prefix_cache_hits == 8 * whole, (rest, shared, whole)
    implied = whole / length
    assert abs(rest.prefix_cache_hit_rate - implied) < 0.01, (rest.prefix_cache_hit_rate, implied)
