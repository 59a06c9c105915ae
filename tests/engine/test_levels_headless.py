"""Headless steady levels on the simulator: what they measure agrees with Little's law and with the server over
the same window, equal-length answers do not make an artefact of the window, and every saved level can be
recomputed from `.requests.jsonl` and its saved window."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_qbench
from tests.levels_files import check_recomputed, little, read_records


def test_steady_level_obeys_littles_law_at_c128(sim_proc, tmp_path):
    # the seed-shaped profile at C=128 (answers ~5.8 s long, longer than any warm-up people give), qbench's
    # default steady settings; the simulator runs its model 3x faster so the level takes seconds, not a minute
    sim = sim_proc("qwen2.5-14b-awq-32gb", "--speed", "3")
    r = run_qbench("run", "--url", sim.url, "-c", "128", "--duration", "6", "--json", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lv = json.loads(r.stdout)
    assert lv["window"]["steady"] and lv["window"]["duration"] == pytest.approx(lv["duration"])
    # before: 2,373 tok/s against 2,878 by Little's law (-17.5%) without a warm-up, -4% with 3 s of it
    assert lv["output_throughput"] == pytest.approx(little(lv), rel=0.03)
    # the server over the same window produced what the client received
    srv = lv["server"]
    assert srv["generation_tokens"] / srv["span_s"] == pytest.approx(lv["output_throughput"], rel=0.05)


def test_equal_length_answers_and_every_level_recomputed_from_the_files(sim_proc, tmp_path):
    # tiny-cpu answers always run to max_tokens: a closed loop stays in lock-step waves, which the old window
    # cut into whole waves (C=64 and C=128 both read 3,413.33 tok/s)
    sim = sim_proc("tiny-cpu")
    r = run_qbench("sweep", "--url", sim.url, "--mode", "steady", "--levels", "64,128", "--duration", "6",
                   "--max-tokens", "32", "--ignore-eos", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    data = json.loads(next(tmp_path.glob("benchmark_*.json")).read_text())
    records = read_records(next(tmp_path.glob("benchmark_*.requests.jsonl")))
    levels = data["levels"]
    assert [lv["max_concurrency"] for lv in levels] == [64, 128]
    for lv in levels:
        mine = [x for x in records if x["level"] == lv["max_concurrency"]]
        check_recomputed(lv, mine)
        # a few percent: Little's law over a window of ~8 waves is itself an estimate (3 s windows read -3.4% once)
        assert lv["output_throughput"] == pytest.approx(little(lv), rel=0.04)
        srv = lv["server"]
        assert srv["generation_tokens"] / srv["span_s"] == pytest.approx(lv["output_throughput"], rel=0.06)
    assert levels[0]["output_throughput"] != levels[1]["output_throughput"]
    assert all(lv["window"]["steady"] and lv["window"]["rule"] for lv in levels)
