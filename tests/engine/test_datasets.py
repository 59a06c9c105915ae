"""Shaped datasets sized by the server's count: the simulator's /tokenize counting (same code its usage uses) as
the count function, so a length asked for is the length the simulator then reports."""
from __future__ import annotations

import json
import statistics

import pytest

from qbench_tui.engine.datasets import DatasetError, Shape, build_dataset, length_bounds, sample_lengths
from qbench_tui.engine.prompts import Sized
from qbench_tui.server.sim.profile import load_profile
from qbench_tui.server.sim.requests import parse_generate
from qbench_tui.server.sim.tokenize import tokenize

PROFILE = load_profile("qwen2.5-14b-awq-32gb")


def sim_count(chat: bool = True):
    async def count(prompt) -> int:
        body = {"messages": prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]} if chat \
            else {"prompt": prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)}
        status, raw = tokenize(body, PROFILE, PROFILE.model)
        assert status == 200
        return json.loads(raw)["count"]
    return count


def prompt_tokens_seen(prompt) -> int:
    """What the simulator's completion path counts for this prompt (its usage.prompt_tokens)."""
    p = prompt.prompt if isinstance(prompt, Sized) else prompt
    msgs = [{"role": "user", "content": p}] if isinstance(p, str) else p
    return parse_generate({"messages": msgs, "max_tokens": 8}, True, PROFILE, PROFILE.model, lambda: 4).prompt_len


def test_length_bounds_follow_vllm_random_dataset():
    assert length_bounds(100, 0.0) == (100, 100)
    assert length_bounds(100, 0.25) == (75, 125)
    assert length_bounds(3, 0.5) == (1, 5)  # floor / ceil
    assert length_bounds(1, 0.9, at_least=1) == (1, 2)  # output: at least one token


def test_sampled_lengths_cover_the_range_and_are_seeded():
    s = Shape(input_len=64, output_len=32, range_ratio=0.5, num_prompts=2000, seed=7)
    ins, outs = sample_lengths(s, 2000)
    assert min(ins) == 32 and max(ins) == 96
    assert min(outs) == 16 and max(outs) == 48
    assert abs(statistics.mean(ins) - 64) < 2
    assert sample_lengths(s, 2000) == (ins, outs)
    assert sample_lengths(Shape(input_len=64, range_ratio=0.5, seed=8), 2000)[0] != ins


@pytest.mark.parametrize("bad, words", [
    (Shape(range_ratio=1.0), "random-range-ratio"),
    (Shape(range_ratio=-0.1), "random-range-ratio"),
    (Shape(input_len=-1), "random-input-len"),
    (Shape(prefix_groups=0), "prefix-groups"),
    (Shape(input_len=32, shared_prefix_len=32), "no room"),
])
def test_bad_shapes_are_refused_with_the_flag(bad, words):
    with pytest.raises(DatasetError, match=words):
        bad.check()


async def test_a_length_asked_for_is_the_length_the_server_counts():
    ds = await build_dataset(Shape(input_len=32, num_prompts=50), sim_count())
    assert ds.sizing.exact
    seen = [prompt_tokens_seen(p) for p in ds.pool]
    # the simulator counts 4 characters a token: a word can move the count by 2, so a few land one off
    assert sum(n == 32 for n in seen) >= 40
    assert all(abs(n - 32) <= 1 for n in seen)
    assert seen == ds.counted  # what the dataset says it counted is what the server counts


async def test_random_lengths_reach_the_server_and_outputs_ride_along():
    shape = Shape(input_len=100, output_len=40, range_ratio=0.5, num_prompts=200, seed=3)
    ds = await build_dataset(shape, sim_count())
    ins, outs = sample_lengths(shape, 200)
    seen = [prompt_tokens_seen(p) for p in ds.pool]
    assert all(abs(a - b) <= 1 for a, b in zip(seen, ins))
    assert [p.max_tokens for p in ds.pool] == outs


async def test_without_tokenize_the_approximation_says_so():
    ds = await build_dataset(Shape(input_len=32, num_prompts=5), None)
    assert not ds.sizing.exact
    assert "approximation" in ds.describe()


async def test_unique_first_shares_no_block_even_on_chat():
    """The template's default system prompt is replaced by a unique one: no two prompts share a first block
    (the old --unique-prefix put its tag in the user message, after the shared system prompt: 58% hits)."""
    ds = await build_dataset(Shape(input_len=64, unique_first=True, num_prompts=40), sim_count())
    firsts = set()
    for p in ds.pool:
        msgs = p if isinstance(p, list) else [{"role": "user", "content": p}]
        g = parse_generate({"messages": msgs, "max_tokens": 4}, True, PROFILE, PROFILE.model, lambda: 4)
        assert g.block_hashes
        firsts.add(g.block_hashes[0])
    assert len(firsts) == 40


async def test_prefix_groups_share_their_prefix_blocks_and_only_them():
    shape = Shape(input_len=200, shared_prefix_len=96, prefix_groups=3, num_prompts=30)
    ds = await build_dataset(shape, sim_count())
    hashes = []
    for p in ds.pool:
        g = parse_generate({"messages": p, "max_tokens": 4}, True, PROFILE, PROFILE.model, lambda: 4)
        hashes.append(g.block_hashes)
    shared_blocks = 96 // PROFILE.block_size - 1  # whole blocks inside the prefix (its text, with the template's start)
    for i, h in enumerate(hashes):
        same_group = hashes[i % 3]
        other_group = hashes[(i + 1) % 3]
        assert h[:shared_blocks] == same_group[:shared_blocks]
        assert h[0] != other_group[0]
