"""The live session in its own process: commands in, snapshots out, records and results on disk."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qbench_tui.engine.process import EngineProcess
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import SessionConfig
from qbench_tui.engine.snapshot import Pause, ResetWindow, Resume, RunLevel, Save, ServerConfigChanged, SetConcurrency
from tests.fakes.scripted_sse import Scenario, ScriptedSSEServer
from tests.levels_files import check_recomputed, read_records

# A segment counts as a level once it has lasted this long (the product's 2 s, shortened so tests need not sleep
# through it); a key-repeat transition here lasts milliseconds, far below it.
MIN_SEGMENT_S = 0.3


def _has_level(c: int, config: str | None = None):
    """A Snapshot predicate: the segment table has a row at concurrency c (under that server config)."""
    return lambda s: any(r.concurrency == c and r.completed > 0 and (config is None or r.server_config == config)
                         for r in s.segments)


@pytest.fixture
def server():
    with ScriptedSSEServer(default=Scenario(tokens=5, delay=0.01)) as s:
        yield s


@pytest.fixture
def engine(server, tmp_path):
    spec = RequestSpec(url=server.url, model="m", max_tokens=5)
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), window_s=30,
                                      min_segment_s=MIN_SEGMENT_S))
    yield eng
    eng.close()


def test_live_control_and_snapshots(engine, server, tmp_path):
    first = engine.wait_for(lambda s: s.status == "running", 30)
    assert first is not None and first.target_concurrency == 0 and first.in_flight == 0
    engine.send(SetConcurrency(4))
    s = engine.wait_for(lambda s: s.completed_total >= 20 and s.in_flight == 4, 30)
    assert s is not None, engine.last
    assert s.target_concurrency == 4 and s.out_tok_s > 0 and s.req_s > 0
    assert s.ttft.count > 0 and s.itl.count > 0 and s.e2el.p50 is not None
    assert sum(s.ttft.counts) == s.ttft.count
    assert s.server.schema == "none"  # the scripted server has no /metrics: shown, not an error
    seg4 = s.segment
    assert server.snapshot()["max_current"] <= 4

    assert engine.wait_for(_has_level(4), 30) is not None  # a level by now: what follows is not its transition
    engine.send(SetConcurrency(5))  # passed through on the way to 8: not a level
    engine.send(SetConcurrency(8))
    s = engine.wait_for(lambda s: s.target_concurrency == 8 and s.in_flight == 8, 30)
    assert s is not None and s.segment > seg4
    # in_flight counts a request from before its bytes are sent: the server sees the 8th a moment later
    engine.wait_for(lambda s: server.snapshot()["max_current"] >= 8, 10)
    assert server.snapshot()["max_current"] == 8

    engine.send(Pause())
    s = engine.wait_for(lambda s: s.status == "paused" and s.in_flight == 0, 30)
    assert s is not None
    posts = lambda: sum(1 for r in server.requests if r["path"].endswith("completions"))  # noqa: E731
    total = posts()
    engine.wait_for(lambda s: False, 0.5)
    assert posts() == total  # paused: nothing new starts

    engine.send(Resume())
    assert engine.wait_for(lambda s: s.status == "running" and s.in_flight > 0, 30) is not None

    engine.send(ResetWindow())
    assert engine.wait_for(lambda s: "reset" in s.message, 10) is not None

    # a level counts once it has lasted min_segment_s (shorter ones are key-repeat transitions)
    assert engine.wait_for(lambda s: {4, 8} <= {r.concurrency for r in s.segments}, 30) is not None
    engine.send(Save(str(tmp_path / "saved")))
    s = engine.wait_for(lambda s: bool(s.saved), 30)
    assert s is not None
    txt, js, records = (Path(p) for p in s.saved)
    assert txt.exists() and js.exists() and records.exists()
    levels = json.loads(js.read_text())["levels"]
    assert {lv["max_concurrency"] for lv in levels} >= {4, 8}
    assert "Concurrency | Total Time (s)" in txt.read_text()
    rows = {r.concurrency for r in s.segments}
    assert {4, 8} <= rows and 5 not in rows
    row4 = next(r for r in s.segments if r.concurrency == 4)
    assert row4.seconds >= MIN_SEGMENT_S and row4.tok_s > 0 and row4.ttft_p50 is not None


def test_server_config_labels_segments_and_scopes_the_knee(server, tmp_path):
    spec = RequestSpec(url=server.url, model="m", max_tokens=5)
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), server_config="max_num_seqs=8",
                                      min_segment_s=MIN_SEGMENT_S))
    try:
        assert eng.wait_for(lambda s: s.status == "running", 30)
        for c in (2, 4):
            eng.send(SetConcurrency(c))
            assert eng.wait_for(_has_level(c), 30), eng.last
        # as the dashboard restarts a launched server: pause, new flags, resume
        eng.send(Pause())
        eng.send(ServerConfigChanged("max_num_seqs=2"))
        assert eng.wait_for(lambda s: "server config: max_num_seqs=2" in s.message, 10)
        eng.send(Resume())
        assert eng.wait_for(_has_level(4, "max_num_seqs=2"), 30), eng.last
        eng.send(Save(str(tmp_path / "saved")))
        s = eng.wait_for(lambda s: bool(s.saved), 30)
        assert s is not None
    finally:
        eng.close()
    assert [(r.concurrency, r.server_config) for r in s.segments] == [
        (2, "max_num_seqs=8"), (4, "max_num_seqs=8"), (4, "max_num_seqs=2")]  # the live table's rows
    data = json.loads(Path(s.saved[1]).read_text())
    got = [(lv["max_concurrency"], lv.get("server_config")) for lv in data["levels"]]
    assert got == [(2, "max_num_seqs=8"), (4, "max_num_seqs=8"), (4, "max_num_seqs=2")]
    assert data["server_config"] == "max_num_seqs=2"
    # one level under the new flags: no knee yet (the two old levels are another server's)
    assert "one level only" in data["saturation"]["summary"]
    assert "[server: max_num_seqs=2]" in Path(s.saved[0]).read_text()


def test_quiet_child_log_kept_only_when_written(server, tmp_path):
    spec = RequestSpec(url=server.url, model="m", max_tokens=8)
    clean = tmp_path / "clean"
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(clean), start_concurrency=2), quiet=True)
    try:
        assert eng.wait_for(lambda s: s.completed_total >= 4, 30)
        assert (clean / "qbench-engine.log").exists()  # the child's stdout/stderr go there while it runs
    finally:
        eng.close()
    assert not (clean / "qbench-engine.log").exists()  # nothing was written: no empty file beside the results
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    (noisy / "qbench-engine.log").write_text("a warning from an earlier run\n")
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(noisy)), quiet=True)
    try:
        assert eng.wait_for(lambda s: s.status == "running", 30)
    finally:
        eng.close()
    assert (noisy / "qbench-engine.log").read_text() == "a warning from an earlier run\n"

def test_records_complete_after_close(server, tmp_path):
    spec = RequestSpec(url=server.url, model="m", max_tokens=5)
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), start_concurrency=3))
    try:
        s = eng.wait_for(lambda s: s.completed_total >= 10, 30)
        assert s is not None
    finally:
        eng.close()
    assert not eng.alive()
    last = eng.last
    assert last is not None and last.status == "stopped"
    lines = Path(last.records_path).read_text().splitlines()
    # every finished request is on disk; requests cut by the stop are not records
    assert len(lines) >= last.completed_total + last.failed_total - 3
    assert all("segment" in json.loads(x) for x in lines)


def test_wave_level_by_command(server, tmp_path):
    spec = RequestSpec(url=server.url, model="m", max_tokens=5)
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path)))
    try:
        assert eng.wait_for(lambda s: s.status == "running", 30)
        posts = lambda: sum(1 for r in server.requests if r["path"].endswith("completions"))  # noqa: E731
        before = posts()
        eng.send(RunLevel(6, mode="wave"))
        s = eng.wait_for(lambda s: "done" in s.message and any(r.concurrency == 6 for r in s.segments), 30)
        assert s is not None
        assert posts() - before == 6  # exactly C requests
        row = next(r for r in s.segments if r.concurrency == 6)
        assert row.completed == 6
    finally:
        eng.close()


def test_steady_level_by_command_is_saved_with_its_window(server, tmp_path):
    spec = RequestSpec(url=server.url, model="m", max_tokens=5)
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path)))
    try:
        assert eng.wait_for(lambda s: s.status == "running", 30)
        eng.send(RunLevel(3, mode="steady", duration=1.0))
        assert eng.wait_for(lambda s: "done" in s.message, 60)
        eng.send(Save(str(tmp_path / "saved")))
        s = eng.wait_for(lambda s: bool(s.saved), 30)
        assert s is not None
    finally:
        eng.close()
    (lv,) = json.loads(Path(s.saved[1]).read_text())["levels"]
    w = lv["window"]
    # the load engine's own window (settled, held at C until its requests ended), not the segment's wall time
    assert lv["max_concurrency"] == 3 and w["steady"] and w["started_until_perf"] - w["start_perf"] == 1.0
    check_recomputed(lv, read_records(Path(s.saved[2])))


def test_engine_dies_with_parent(tmp_path, server):
    """A SIGKILLed face must not leave the engine process behind."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys, time\n"
        "from qbench_tui.engine.process import EngineProcess\n"
        "from qbench_tui.engine.records import RequestSpec\n"
        "from qbench_tui.engine.session import SessionConfig\n"
        f"e = EngineProcess(SessionConfig(spec=RequestSpec(url='{server.url}', model='m'), prompt='x',"
        f" out_dir=r'{tmp_path}'))\n"
        "print(e.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("engine process outlived its parent")


# ---------------------------------------------------------------- however it ends, what was measured is kept


def _saved_files(out: Path) -> tuple[dict, list[dict]]:
    """The one run's results JSON and its records, each parsed (a cut line or a half-written JSON fails here)."""
    (js,) = out.glob("benchmark_*.json")
    (txt,) = out.glob("benchmark_*.txt")
    (jl,) = out.glob("benchmark_*.requests.jsonl")
    assert "Concurrency | Total Time (s)" in txt.read_text()
    return json.loads(js.read_text()), read_records(jl)


def test_a_stop_saves_without_being_asked(server, tmp_path):
    spec = RequestSpec(url=server.url, model="m", max_tokens=5)
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), start_concurrency=2,
                                      min_segment_s=MIN_SEGMENT_S))
    try:
        assert eng.wait_for(_has_level(2), 30) is not None
    finally:
        eng.close()  # Stop only, as the face's last resort sends: no Save command
    last = eng.last
    assert last is not None and last.status == "stopped" and len(last.saved) == 3
    data, records = _saved_files(tmp_path)
    assert [lv["max_concurrency"] for lv in data["levels"]] == [2]
    assert len(records) >= last.completed_total and all(r["ok"] for r in records)


def test_a_killed_face_leaves_the_results_saved(server, tmp_path):
    """SIGKILL of the dashboard's process: the engine gets SIGTERM (PDEATHSIG), saves, and goes."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import time\n"
        "from qbench_tui.engine.process import EngineProcess\n"
        "from qbench_tui.engine.records import RequestSpec\n"
        "from qbench_tui.engine.session import SessionConfig\n"
        f"e = EngineProcess(SessionConfig(spec=RequestSpec(url='{server.url}', model='m', max_tokens=5), prompt='x',"
        f" out_dir=r'{tmp_path}', start_concurrency=3, min_segment_s={MIN_SEGMENT_S}))\n"
        "s = e.wait_for(lambda s: s.completed_total >= 30 and any(r.concurrency == 3 for r in s.segments), 60)\n"
        "print(e.pid, s is not None, flush=True)\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid, ready = p.stdout.readline().split()
    assert ready == "True"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(int(pid), signal.SIGKILL)
        raise AssertionError("engine process outlived its parent")
    data, records = _saved_files(tmp_path)
    assert [lv["max_concurrency"] for lv in data["levels"]] == [3]
    assert len(records) >= 30 and data["levels"][0]["completed"] <= len(records)


# ---------------------------------------------------------------- the session pauses itself


def _posts(server) -> int:
    return sum(1 for r in server.requests if r["path"].endswith("completions"))


def test_a_server_that_only_fails_trips_the_budget_and_the_session_pauses(tmp_path):
    bad = Scenario(kind="http_error", status=404,
                   error_body=b'{"object":"error","message":"The model `x` does not exist.","code":404}')
    with ScriptedSSEServer(default=bad) as srv:
        spec = RequestSpec(url=srv.url, model="x", max_tokens=5, max_consecutive_failures=5)
        eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), start_concurrency=2))
        try:
            s = eng.wait_for(lambda s: bool(s.paused_why), 60)
            assert s is not None and s.status == "paused"
            assert s.paused_why.startswith("error budget: ") and "does not exist" in s.paused_why
            assert s.message == f"load paused: {s.paused_why}"
            eng.wait_for(lambda s: False, 0.5)  # in-flight ones end
            sent = _posts(srv)
            eng.wait_for(lambda s: False, 1.0)
            assert _posts(srv) == sent  # paused: no more hammering
            eng.send(Resume())  # the user's resume clears the trip and gives the server a fresh budget
            assert eng.wait_for(lambda s: s.message == "resumed" or _posts(srv) > sent, 30) is not None
            assert eng.wait_for(lambda s: _posts(srv) > sent and bool(s.paused_why), 60) is not None  # tripped again
        finally:
            eng.close()


def test_a_records_file_that_cannot_grow_pauses_the_load_and_keeps_whole_lines(server, tmp_path):
    """A real write failure: the engine process may not grow a file past LIMIT bytes (RLIMIT_FSIZE, inherited at
    spawn; SIGXFSZ ignored so the write fails with EFBIG instead of killing it). The load pauses naming why, resume
    is refused (a load nobody records only costs the server), a save still writes what fits."""
    import resource
    import signal

    limit = 250_000  # some seconds of records, so a level settles first; its .txt and .json are far smaller
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    prev = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        spec = RequestSpec(url=server.url, model="m", max_tokens=5)
        eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), start_concurrency=4,
                                          min_segment_s=MIN_SEGMENT_S))
    finally:  # only the child keeps the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, prev)
    try:
        s = eng.wait_for(lambda s: bool(s.paused_why), 90)
        assert s is not None and s.status == "paused", eng.last
        assert s.paused_why.startswith("results file write failed: File too large (")
        eng.wait_for(lambda s: s.in_flight == 0, 10)
        sent = _posts(server)
        eng.send(Resume())
        s = eng.wait_for(lambda s: s.message.startswith("cannot resume: results file write failed"), 10)
        assert s is not None and s.status == "paused" and _posts(server) == sent
        eng.send(Save(str(tmp_path)))
        s = eng.wait_for(lambda s: bool(s.saved), 30)
        assert s is not None and s.save_error == ""
    finally:
        eng.close()
    (jl,) = tmp_path.glob("benchmark_*.requests.jsonl")
    raw = jl.read_bytes()
    assert 0 < len(raw) <= limit and raw.endswith(b"\n")  # cut back to the last whole record
    records = read_records(jl)
    data = json.loads(Path(s.saved[1]).read_text())
    # the summary is the engine's own count; the file holds what reached the disk before the write failed
    assert data["levels"] and data["levels"][0]["completed"] > 0
    assert 0 < len(records) <= s.completed_total + s.failed_total and all(r["ok"] for r in records)
