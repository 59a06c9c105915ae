"""Prompts the server's context cannot hold are refused before sending, counted and named — `qbench run` against
the real simulator (a small max_model_len): the dataset's over-context prompts are said once on stderr, show as
`refused` in the JSON (not `failed`), never reach the server; every prompt over: one line, exit 2. A --prompts
file's long entries: the same check (commands/workload.check_file_prompts)."""
from __future__ import annotations

import json

import httpx
import pytest

from qbench_tui.commands import workload
from qbench_tui.config import load_config
from qbench_tui.engine.datasets import Shape, build_dataset, refuse_over_context, sample_lengths
from qbench_tui.engine.metrics_parse import parse_metrics
from qbench_tui.engine.prompts import Refused, Sized, make_prompt_source
from qbench_tui.engine.tokenizer import ServerTokenizer
from tests.conftest import run_qbench

CONTEXT = 256


def _served(sim) -> float:
    return parse_metrics(httpx.get(f"{sim.url}/metrics").text, 0.0).request_success or 0.0


async def test_a_dataset_refuses_exactly_its_prompts_over_the_context(sim_proc):
    sim = sim_proc("h200-fast", "--model", "m", "--set", f"max_model_len={CONTEXT}")
    shape = Shape(input_len=200, output_len=40, range_ratio=0.5, num_prompts=40, seed=5)
    async with ServerTokenizer(sim.url, "m", {}) as tok:
        ds = await build_dataset(shape, tok.count)
    ins, outs = sample_lengths(shape, 40)
    n = refuse_over_context(ds, tok.max_model_len, max_tokens=200)
    over = [i for i, got in enumerate(ds.counted) if got + outs[i] > CONTEXT]
    assert 0 < n == len(over) < 40
    for i, p in enumerate(ds.pool):
        if i in over:
            assert p == Refused(f"refused before sending: {ds.counted[i]:,} prompt + {outs[i]:,} output tokens "
                                f"> max_model_len {CONTEXT}")
        else:
            assert isinstance(p, Sized) and p.max_tokens == outs[i]


def test_run_counts_refused_prompts_apart_and_never_sends_them(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--model", "m", "--set", f"max_model_len={CONTEXT}")
    shape = Shape(input_len=200, range_ratio=0.5, num_prompts=12, seed=0)
    ins, _ = sample_lengths(shape, 12)
    over = sum(n + 30 > CONTEXT for n in ins)  # sized to within a token of these lengths
    assert 0 < over < 12
    before = _served(sim)
    r = run_qbench("run", "--url", sim.url, "--mode", "wave", "-c", "12", "--random-input-len", "200",
                   "--random-range-ratio", "0.5", "--num-prompts", "12", "--max-tokens", "30", "--json",
                   "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert abs(d["refused"] - over) <= 1 and d["completed"] == 12 - d["refused"] and d["failed"] == 0
    assert f"  dataset: {d['refused']} of 12 prompts exceed the context and will be refused" in r.stderr
    assert r.stderr.count("exceed the context") == 1
    assert sum(d["refused_reasons"].values()) == d["refused"]
    assert all(f"output tokens > max_model_len {CONTEXT}" in k for k in d["refused_reasons"])
    assert _served(sim) - before == d["completed"]
    lines = [json.loads(x) for x in next(tmp_path.glob("*.requests.jsonl")).read_text().splitlines()]
    assert sum(x["refused"] for x in lines) == d["refused"]


def test_every_prompt_over_the_context_is_one_line_and_exit_2(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--model", "m", "--set", f"max_model_len={CONTEXT}")
    r = run_qbench("run", "--url", sim.url, "--mode", "wave", "-c", "4", "--random-input-len", "300",
                   "--num-prompts", "4", "--max-tokens", "10", "--out", str(tmp_path))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert "dataset: all 4 prompts exceed the server's context" in last and f"> max_model_len {CONTEXT}" in last
    assert _served(sim) == 0


def test_a_prompts_files_long_entries_are_refused(sim_proc, tmp_path, capsys):
    sim = sim_proc("h200-fast", "--model", "m", "--set", f"max_model_len={CONTEXT}")
    long = "word " * 300  # 1,500 characters: ~375 tokens at the simulator's 4 characters a token
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "short"}, {"prompt": long}, {"prompt": "also short", "output_tokens": 250},
        {"messages": [{"role": "user", "content": "fine"}]}]) + "\n")
    cfg = load_config(None, {"load.prompts_file": str(path), "load.max_tokens": 20})
    source = make_prompt_source("", str(path))
    checked = workload.check_file_prompts(cfg, source, sim.url, "m", None)
    assert sorted(checked.refusals) == [1, 2]  # too long itself; short but its own 250 output tokens do not fit
    assert "prompts file: 2 of 4 prompts exceed the context and will be refused" in capsys.readouterr().err
    assert isinstance(checked(5), Refused) and checked(4) == "short" and checked(7) == source(7)
    assert "+ 250 output tokens > max_model_len 256" in checked(2).reason
    # a file of nothing but long entries: nothing to measure
    path.write_text(json.dumps({"prompt": long}) + "\n")
    with pytest.raises(workload.Usage, match="prompts file: all 1 prompts exceed"):
        workload.check_file_prompts(cfg, make_prompt_source("", str(path)), sim.url, "m", None)
    # other sources are not checked (no /tokenize call is made for them)
    plain = make_prompt_source("hello")
    assert workload.check_file_prompts(load_config(None, {}), plain, sim.url, "m", None) is plain
