"""`qbench replay`: a scripted dashboard session (the real engine process against the real simulator) saves its
timeline; replayed headless against the same server it gives the same levels in the same order, each as long as
in the session (within a second); bad files are one line, exit 2."""
from __future__ import annotations

import json
import time
from pathlib import Path

from qbench_tui.engine.process import EngineProcess
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import SessionConfig
from qbench_tui.engine.snapshot import Pause, Resume, Save, SetConcurrency
from tests.conftest import run_qbench


def _session(sim, tmp_path) -> tuple[Path, list[tuple[int, float]]]:
    spec = RequestSpec(url=sim.url, model="m", max_tokens=16)
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path / "live"), min_segment_s=0.3))
    held: list[tuple[int, float]] = []
    try:
        assert eng.wait_for(lambda s: s.status == "running", 30)
        for c, secs in ((2, 2.5), (5, 3.0)):
            eng.send(SetConcurrency(c))
            time.sleep(secs)
            held.append((c, secs))
        eng.send(Pause())
        time.sleep(1.0)
        eng.send(Resume())  # back at 5
        time.sleep(2.0)
        held.append((5, 2.0))
        eng.send(Save(str(tmp_path / "live")))
        s = eng.wait_for(lambda s: bool(s.saved), 30)
        assert s is not None
    finally:
        eng.close()
    return Path(s.saved[1]), held


def test_a_replayed_session_gives_the_same_levels_in_order(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--model", "m")
    saved, held = _session(sim, tmp_path)
    doc = json.loads(saved.read_text())
    events = [e["event"] for e in doc["timeline"]]
    assert events[0] == "concurrency" and "pause" in events and events[-1] == "end"

    r = run_qbench("replay", str(saved), "--url", sim.url, "--out", str(tmp_path / "replayed"),
                   timeout=120)
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "replayed").glob("*.json"))
    assert len(files) == 1
    out = json.loads(files[0].read_text())
    got = [(lv["max_concurrency"], lv["duration"]) for lv in out["levels"]]
    assert [c for c, _ in got] == [c for c, _ in held]
    # the session's own times (its timeline) are what the replay holds; the sleeps above are their source
    for (_, d), (_, planned) in zip(got, held):
        assert abs(d - planned) < 1.0, (got, held)
    assert out["methodology"]["max_tokens"] == doc["methodology"]["max_tokens"]
    assert any("replay of" in n for n in out["notes"])
    assert all(lv["failed"] == 0 and lv["completed"] > 0 for lv in out["levels"])


def test_files_that_cannot_be_replayed_are_one_line_exit_2(tmp_path):
    cases = {
        "not-json.json": "{cut",
        "sweep.json": json.dumps({"levels": [], "methodology": {}}),
        "bad-event.json": json.dumps({"levels": [], "timeline": [{"t_s": 0, "event": "teleport"}]}),
        "only-pause.json": json.dumps({"levels": [], "timeline": [{"t_s": 0, "event": "pause"},
                                                                 {"t_s": 3, "event": "end"}]}),
    }
    words = {"not-json.json": "not valid JSON", "sweep.json": "no timeline", "bad-event.json": "not an event",
             "only-pause.json": "nothing under load"}
    for name, body in cases.items():
        f = tmp_path / name
        f.write_text(body)
        r = run_qbench("replay", str(f), "--url", "http://127.0.0.1:9")
        assert r.returncode == 2, (name, r.stderr)
        line = r.stderr.strip()
        assert "\n" not in line and "Traceback" not in line and words[name] in line, (name, line)
    r = run_qbench("replay", str(tmp_path / "missing.json"), "--url", "http://127.0.0.1:9")
    assert r.returncode == 2 and "cannot read" in r.stderr
