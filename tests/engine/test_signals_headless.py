"""SIGINT / SIGTERM / SIGHUP to a real `qbench sweep` process mid-level, against the simulator and with a launched
stand-in vllm: the exit status says which signal, the files parse and hold the finished level plus the interrupted
one with every request that finished, the launched server is stopped after the load and recorded as the cause is
the signal, and nothing qbench started is left running."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from qbench_tui.engine.prompts import make_prompt_source
from qbench_tui.engine.records import RequestSpec
from qbench_tui.headless import LevelPlan, StopFlag, run_plan
from tests.engine.test_cli_launch import config, port_free
from tests.sim_process import wait_until

ROOT = Path(__file__).resolve().parents[2]
STOP = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def _as_in_a_terminal() -> None:
    # a test run from a background shell or nohup hands these down ignored, and qbench rightly keeps an ignored
    # signal ignored; a user's terminal does not
    for s in STOP:
        signal.signal(s, signal.SIG_DFL)


def start_qbench(*args: str, preexec=_as_in_a_terminal, env: dict | None = None) -> subprocess.Popen:
    e = {k: v for k, v in os.environ.items() if k not in ("QBENCH_API_KEY", "OPENAI_API_KEY")}
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "qbench_tui.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=e, preexec_fn=preexec)


def jsonl(out: Path) -> list[dict]:
    """Every line of the run's .requests.jsonl, each of which must parse (none cut)."""
    files = list(out.glob("*.requests.jsonl"))
    if not files:
        return []
    assert len(files) == 1, files
    text = files[0].read_text()
    assert text == "" or text.endswith("\n"), "the file ends in a cut line"
    return [json.loads(line) for line in text.splitlines()]


def results(out: Path) -> dict:
    return json.loads(next(out.glob("benchmark_*[0-9].json")).read_text())


def level_records(out: Path, level: int) -> list[dict]:
    try:
        return [r for r in jsonl(out) if r["level"] == level]
    except json.JSONDecodeError:  # read while a flush was half way through the kernel: not a cut line
        return []


def wait_records(out: Path, level: int, n: int = 1, timeout: float = 120.0) -> list[dict]:
    return wait_until(lambda: (lambda rs: rs if len(rs) >= n else None)(level_records(out, level)), timeout)


def tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(procs: list[psutil.Process]) -> None:
    def gone() -> bool:
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    wait_until(gone, timeout=15)


def check_interrupted(out: Path, stderr: str, sig: int, finished: list[int], cut: int) -> dict:
    """The files after a stop during level `cut`: the finished levels, then `cut` marked interrupted and summed
    from exactly the requests of it that the JSONL holds; the one stderr line that says so."""
    name = signal.Signals(sig).name
    d = results(out)
    assert [lv["max_concurrency"] for lv in d["levels"]] == [*finished, cut]
    assert [lv["interrupted"] for lv in d["levels"]] == [False] * len(finished) + [True]
    lv = d["levels"][-1]
    mine = level_records(out, cut)
    assert lv["completed"] + lv["failed"] == len(mine) > 0
    assert lv["window"]["rule"].startswith("interrupted") and not lv["window"]["steady"]
    line = (f"qbench: interrupted by {name} during level {cut}: {len(finished)} level"
            f"{'' if len(finished) == 1 else 's'} finished, level {cut} kept as interrupted ({len(mine)} requests)")
    assert line in stderr.splitlines(), stderr
    assert any(n == line[len("qbench: "):] for n in d["notes"]), d["notes"]
    txt = next(out.glob("benchmark_*[0-9].txt")).read_text()
    assert "INTERRUPTED" in txt and line[len("qbench: "):] in txt
    return lv


@pytest.mark.parametrize("sig", STOP, ids=lambda s: signal.Signals(s).name)
def test_signal_mid_sweep_stops_keeps_levels_and_exits_128_plus(sim_proc, tmp_path, sig):
    sim = sim_proc()
    out = tmp_path / "out"
    proc = start_qbench("sweep", "--url", sim.url, "--levels", "2,8", "--mode", "steady", "--duration", "3",
                        "--max-tokens", "64", "--out", str(out))
    try:
        wait_records(out, 8)  # level 2 is done, level 8 is running (its requests reach the disk as they end)
        children = tree(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    lv = check_interrupted(out, err, sig, [2], 8)
    # it stopped before its own end: a full level is settling plus a 3 s window
    assert lv["duration"] < 3.0
    assert "Traceback" not in err
    assert_all_gone(children)


def test_sigterm_with_launch_stops_the_server_after_the_load(tmp_path):
    cfg, port = config(tmp_path)
    out = tmp_path / "out"
    proc = start_qbench("sweep", "--launch", str(cfg), "--levels", "1,4", "--mode", "steady", "--duration", "3",
                        "--out", str(out))
    try:
        wait_records(out, 4, timeout=180)
        children = tree(proc.pid)
        assert children  # the stand-in vllm, and its watchdog
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    lv = check_interrupted(out, err, signal.SIGTERM, [1], 4)
    # the server was still serving while the load was stopped: no request of the cut level failed
    assert lv["failed"] == 0
    d = results(out)
    assert not any("server died" in n or "server gone" in n for n in d["notes"]) and "server died" not in err
    assert_all_gone(children)
    assert port_free(port)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: signal.Signals(s).name)
def test_signal_while_launching_stops_the_server(tmp_path, sig):
    # outside the load (the server still starting) the process ends with 128+signal; the server must not outlive it
    pids = tmp_path / "pids"
    cfg, port = config(tmp_path, FAKE_VLLM_MODE="hang", FAKE_VLLM_PIDFILE=str(pids))
    proc = start_qbench("sweep", "--launch", str(cfg), "--out", str(tmp_path / "out"))
    try:
        wait_until(lambda: pids.exists() and pids.read_text().strip(), timeout=120)
        children = tree(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    server = int(pids.read_text().split()[1])
    assert server in {p.pid for p in children}
    assert_all_gone(children)
    assert not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE


def test_run_plan_stop_mid_level_keeps_what_finished(sim_proc):
    # in process: a StopFlag set from the record hook after 5 requests; the level is cut, every request that
    # finished is both streamed and summed, and nothing after the stop is sent
    import asyncio

    sim = sim_proc()
    model = httpx.get(f"{sim.url}/v1/models", timeout=10).json()["data"][0]["id"]
    spec = RequestSpec(url=sim.url, model=model, max_tokens=32)
    streamed: list[tuple[bool, int, str]] = []
    levels_seen: list = []

    async def main():
        stop = StopFlag()

        def on_record(rec, c):
            streamed.append((rec.ok, c, rec.error))
            if len(streamed) == 5:
                stop.set("stop asked")

        return await run_plan(spec, make_prompt_source("hi"), [LevelPlan(4, "steady", 30.0), LevelPlan(8)],
                              lambda lv, recs: levels_seen.append((lv, len(recs))), on_record=on_record, stop=stop)

    levels, stopped = asyncio.run(main())
    assert stopped == "stop asked"
    assert len(levels) == 1 and levels[0].interrupted and levels[0].max_concurrency == 4
    # handed on at once, summed up as they finished: no list of the level's records is kept for it
    assert levels_seen[0][0] is levels[0] and levels_seen[0][1] == 0
    assert levels[0].completed + levels[0].failed == len(streamed) >= 5
    assert all(ok and c == 4 for ok, c, _ in streamed), streamed
    # cut at once: at most the requests already in flight when it was asked finished after it
    assert len(streamed) <= 5 + 4
