"""Conversations through the real simulator and the real CLI: the server's prefix hit rate is what the histories
imply (vLLM caches the full blocks of a turn's prompt AND its answer; the next turn resends both), a turn over
max_model_len is refused before sending, counted and named, and bad input exits 2 with one line."""
from __future__ import annotations

import glob
import json
import os

import httpx

from qbench_tui.engine.conversations import Conversations
from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.metrics_parse import parse_metrics
from qbench_tui.engine.records import RequestSpec
from tests.conftest import run_qbench

BS = 16  # the profiles' block_size


def _hits(sim) -> tuple[float, float]:
    s = parse_metrics(httpx.get(f"{sim.url}/metrics").text, 0.0)
    return s.prefix_cache_hits or 0.0, s.prefix_cache_queries or 0.0


async def test_four_turns_hit_the_cached_history_and_answers(sim_proc):
    # no default system prompt: conversations then share nothing (each opens with its own tag), so every hit
    # comes from a conversation's own history
    sim = sim_proc("h200-fast", "--model", "m", "--set", "default_system_prompt=")
    records: list = []
    source = Conversations(lambda j: f"Tell me fact number {j} about how GPUs schedule work.", 4, max_tokens=96)
    eng = LoadEngine(RequestSpec(url=sim.url, model="m", max_tokens=96, ignore_eos=True), source,
                     on_record=records.append)
    try:
        for _ in range(3):
            await eng.run_wave(4)
    finally:
        await eng.stop()
    assert len(records) == 48 and all(r.ok for r in records)
    convs: dict[int, dict[int, object]] = {}
    for r in records:
        convs.setdefault(r.conversation, {})[r.turn] = r
    assert len(convs) == 12 and all(sorted(c) == [1, 2, 3, 4] for c in convs.values())
    # implied: turn k reuses the full blocks of turn k-1's prompt + answer whose KV was computed (all but the
    # last sampled token); turn 1 reuses nothing
    implied = sum(BS * ((c[k - 1].in_tokens + c[k - 1].out_tokens - 1) // BS)
                  for c in convs.values() for k in (2, 3, 4))
    prompt_only = sum(BS * (c[k - 1].in_tokens // BS) for c in convs.values() for k in (2, 3, 4))
    hits, queries = _hits(sim)
    assert queries == sum(r.in_tokens for r in records)
    # the simulator's model is deterministic here (no eviction: the KV pool holds every block) and measured the
    # implied count exactly (10176 of 13382 tokens); a few blocks of slack cover a boundary where its characters-
    # per-token count and the block size do not line up. prompt_only (the old simulator, which never reused an
    # answer's blocks) is more than 50 such slacks away, so the answers' blocks are what is measured
    assert abs(hits - implied) <= 4 * BS
    assert implied - prompt_only > 50 * 4 * BS
    assert 0.5 < hits / queries < 0.9


def test_a_turn_over_max_model_len_is_refused_counted_and_named(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--model", "m", "--set", "max_model_len=700")
    p = run_qbench("run", "--url", sim.url, "-c", "2", "--requests", "30", "--turns", "8", "--max-tokens", "48",
                   "--ignore-eos", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "max_model_len 700" in p.stderr
    assert "Refused before sending:" in p.stdout and "would exceed max_model_len 700" in p.stdout
    assert "Per turn (conversations)" in p.stdout
    [js] = glob.glob(os.path.join(tmp_path, "*.json"))
    lv = json.load(open(js))["levels"][0]
    assert lv["refused"] > 0 and all("max_model_len 700" in k for k in lv["refused_reasons"])
    turns = lv["turns"]
    assert [t["turn"] for t in turns] == list(range(1, len(turns) + 1)) and 2 <= len(turns) < 8
    tokens = [t["mean_input_tokens"] for t in turns]
    assert all(a < b for a, b in zip(tokens, tokens[1:]))
    [jl] = glob.glob(os.path.join(tmp_path, "*.requests.jsonl"))
    lines = [json.loads(x) for x in open(jl)]
    assert all(x["turn"] >= 1 and x["conversation"] >= 0 for x in lines)
    assert not any(x["ok"] is False and not x["refused"] for x in lines if not x["warmup"])  # none sent to fail
    [txt] = glob.glob(os.path.join(tmp_path, "*.txt"))
    assert "Refused before sending" in open(txt).read()
    r = run_qbench("report", js)  # the write-up says the same
    assert r.returncode == 0, r.stderr
    assert "Conversations" in r.stdout and "refused before sending" in r.stdout


def test_bad_conversation_input_exits_2_with_one_line():
    for args, words in ((["--turns", "0"], "'turns' must be > 0"),
                        (["--turns", "2", "--think-time", "-1"], "'think_time' must be >= 0"),
                        (["--turns", "2", "--think-time", "inf"], "finite"),
                        (["--think-time", "1"], "give --turns K")):
        p = run_qbench("run", "--url", "http://127.0.0.1:9", "-c", "2", "--requests", "4", *args)
        assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = run_qbench("run", "--url", "http://127.0.0.1:9", "--request-rate", "5", "--requests", "4", "--turns", "2")
    assert p.returncode == 2 and "closed loop" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run_qbench("demo", "--turns", "3")
    assert p.returncode == 2 and "qbench run` and `qbench sweep` only" in p.stderr


def test_a_shaped_last_turn_over_the_context_exits_2(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--model", "m", "--set", "max_model_len=1000")
    p = run_qbench("run", "--url", sim.url, "-c", "1", "--requests", "2", "--turns", "4", "--random-input-len", "200",
                   "--random-output-len", "60", "--num-prompts", "8", "--out", str(tmp_path))
    assert p.returncode == 2
    assert "4 x 200 input + 3 x 60 answer + 60 output = 1040 tokens" in p.stderr.strip().splitlines()[-1]
