"""Live levels on the simulator: a level after a change is measured as a separate steady run would measure it
(the previous level's requests left out), its saved numbers are recomputed from the files, and a paused session
shows no stale rate."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from qbench_tui.config import LoadConfig
from qbench_tui.engine.process import EngineProcess
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import SessionConfig
from qbench_tui.engine.snapshot import Pause, Save, SetConcurrency
from tests.conftest import run_qbench
from tests.levels_files import check_recomputed, read_records

PROMPT = LoadConfig().prompt  # the same prompt as `qbench run`'s default


def _row(c: int, seconds: float):
    """A Snapshot predicate: a level at concurrency c with a window at least `seconds` long."""
    return lambda s: any(r.concurrency == c and r.seconds >= seconds for r in s.segments)


def test_live_high_to_low_matches_a_steady_run_and_recomputes_from_the_files(sim_proc, tmp_path):
    # C=43 -> C=8 as in the bug report (after it, the C=8 segment read 1,528 tok/s against ~600 true), on the
    # seed-shaped profile with 64-token answers, its model run 3x faster
    sim = sim_proc("qwen2.5-14b-awq-32gb", "--speed", "3")
    model = httpx.get(f"{sim.url}/v1/models", timeout=10).json()["data"][0]["id"]
    spec = RequestSpec(url=sim.url, model=model, max_tokens=64)
    eng = EngineProcess(SessionConfig(spec=spec, prompt=PROMPT, out_dir=str(tmp_path)))
    try:
        assert eng.wait_for(lambda s: s.status == "running", 30)
        eng.send(SetConcurrency(43))
        assert eng.wait_for(_row(43, 2.0), 60), eng.last
        eng.send(SetConcurrency(8))
        at8 = eng.wait_for(_row(8, 6.0), 60)  # longer than the 5 s rolling window: it holds only C=8 by now
        assert at8 is not None, eng.last
        # the rolling view agrees with the level's own value, and the server's mean TTFT covers the same requests
        # as the client's (the server's interval lies inside the client's: it cannot be much larger)
        row8 = next(r for r in at8.segments if r.concurrency == 8)
        assert at8.window_s == 5.0 and at8.out_tok_s == pytest.approx(row8.tok_s, rel=0.1)
        assert at8.server.ttft_mean is not None and at8.server.ttft_mean <= 1.1 * at8.ttft.mean
        eng.send(Save(str(tmp_path / "saved")))
        saved = eng.wait_for(lambda s: bool(s.saved), 30)
        assert saved is not None
        eng.send(Pause())
        # paused, nothing in flight: the rolling rates fall to nothing within their window, no stale number
        paused = eng.wait_for(lambda s: s.status == "paused" and s.in_flight == 0 and s.out_tok_s == 0.0
                              and s.req_s == 0.0, 30)
        assert paused is not None, eng.last
    finally:
        eng.close()
    levels = json.loads(Path(saved.saved[1]).read_text())["levels"]
    live8 = next(lv for lv in levels if lv["max_concurrency"] == 8)
    # the same level measured alone, headless, on the same server
    r = run_qbench("run", "--url", sim.url, "-c", "8", "--duration", "4", "--max-tokens", "64", "--json")
    assert r.returncode == 0, r.stderr
    alone = json.loads(r.stdout)
    assert live8["output_throughput"] == pytest.approx(alone["output_throughput"], rel=0.05)
    # every saved level, the one still running at the save included, from the records file and its window
    records = read_records(Path(saved.saved[2]))
    live43 = next(lv for lv in levels if lv["max_concurrency"] == 43)
    # the C=8 window starts once the last C=43 request has finished
    assert live8["window"]["start_perf"] >= max(x["start"] + x["e2el_s"] for x in records
                                                if x["segment"] == live43["segment"]) - 1e-6
    assert {lv["max_concurrency"] for lv in levels} == {43, 8}
    for lv in levels:
        check_recomputed(lv, records)
        assert lv["window"]["steady"]
