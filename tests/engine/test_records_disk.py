"""Nothing lost, and the disk: records stream to `.requests.jsonl` as requests end (a SIGKILLed qbench leaves every
request the simulator finished up to about a second before, in lines that all parse), `qbench run` saves the
three files, runs never share a name, the results folder is checked before anything starts, a full disk stops
the load with one line and never leaves a cut line, and every results file gets one mode."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from qbench_tui.engine.recordlog import RecordLog, open_run_log
from qbench_tui.engine.records import RequestRecord
from qbench_tui.report.files import MIN_FREE_BYTES, atomic_write, check_results_dir, file_mode
from tests.conftest import run_qbench
from tests.engine.test_cli_launch import config
from tests.engine.test_signals_headless import jsonl, level_records, results, start_qbench, wait_records
from tests.sim_process import wait_until


def record(i: int = 0) -> RequestRecord:
    return RequestRecord(ok=True, segment=0, concurrency=1, worker=i, start=float(i), end=float(i) + 0.5,
                         itl=[0.01] * 50, out_tokens=50)


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *opts: str):
    """A real small filesystem of its own; the test is skipped only where mounting one is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *opts]), "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip() or r.returncode}); needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path) -> None:
    """Take every free byte of `disk`, as another program filling it would."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------ streamed


def test_sigkill_leaves_every_record_finished_a_second_before(sim_proc, tmp_path):
    truth = tmp_path / "truth.jsonl"
    sim = sim_proc("h200-fast", "--record-truth", str(truth))
    out = tmp_path / "out"
    proc = start_qbench("sweep", "--url", sim.url, "--levels", "2,8", "--mode", "steady", "--duration", "3",
                        "--max-tokens", "64", "--out", str(out))
    frozen = False
    try:
        first = wait_records(out, 8)
        wait_until(lambda: len(level_records(out, 8)) > len(first) + 10, timeout=60)
        # freeze the server well inside level 8: no request finishes any more, so whatever finished must reach
        # the disk by qbench's own once-a-second flush, with no new record to trigger one
        os.kill(sim.pid, signal.SIGSTOP)
        frozen = True
        time.sleep(2.0)  # the flush interval (1 s) and slack for a loaded machine
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        # read while the server is still frozen: once it runs again it also logs the requests qbench's death cut
        done = [json.loads(x) for x in truth.read_text().splitlines()]
    finally:
        if frozen:
            os.kill(sim.pid, signal.SIGCONT)
        proc.kill()
    got = jsonl(out)  # every line parses
    assert {t["status"] for t in done} == {"ok"} and all(t["finish_reason"] for t in done)
    # every request the simulator finished is on disk, once (qbench's records hold only finished requests)
    assert len([r for r in got if r["ok"]]) == len(got) == len(done)
    assert len([r for r in got if r["level"] == 8]) > 10
    d = results(out)  # the summary of the finished level is whole
    assert [lv["max_concurrency"] for lv in d["levels"]] == [2]


def test_record_log_timer_flushes_without_new_records(tmp_path):
    async def main() -> list[str]:
        log = RecordLog(tmp_path / "r.jsonl", flush_interval=0.2)
        log.start_timer()
        log.add(record(1), level=3)  # the only record: no later add() would flush it
        try:
            for _ in range(200):
                if log.path.read_text():
                    break
                await asyncio.sleep(0.05)
            return log.path.read_text().splitlines()
        finally:
            log.close()

    lines = asyncio.run(main())
    assert [json.loads(x)["level"] for x in lines] == [3]


def test_run_writes_the_three_files(sim_proc, tmp_path):
    sim = sim_proc()
    out = tmp_path / "out"
    r = run_qbench("run", "--url", sim.url, "-c", "2", "--requests", "6", "--max-tokens", "8", "--json",
                   "--out", str(out))
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)  # --json still prints the level alone
    d = results(out)
    assert d["levels"] == [printed]
    assert d["methodology"]["levels"] == [2]
    recs = jsonl(out)
    assert len(recs) >= 6 and all(x["level"] == 2 for x in recs)
    assert "Concurrency 2:" in next(out.glob("*.txt")).read_text()


def test_two_sweeps_started_together_get_two_runs(sim_proc, tmp_path):
    sim = sim_proc()
    out = tmp_path / "out"
    procs = [start_qbench("sweep", "--url", sim.url, "--levels", "3", "--max-tokens", "8", "--out", str(out))
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    logs = sorted(out.glob("*.requests.jsonl"))
    assert len(logs) == 2 and len(list(out.glob("*.json"))) == 2 and len(list(out.glob("*.txt"))) == 2
    for f in logs:
        lines = f.read_text().splitlines()
        assert len(lines) == 3 and len({json.loads(x)["worker"] for x in lines}) == 3  # one wave of 3 each


def test_open_run_log_never_shares_a_name(tmp_path):
    when = 1_700_000_000.25
    base1, log1 = open_run_log(tmp_path, "org/model", when)
    base2, log2 = open_run_log(tmp_path, "org/model", when)
    (tmp_path / f"{base1}-3.json").write_text("{}")  # a run whose summary is there although its log is not
    base3, log3 = open_run_log(tmp_path, "org/model", when)
    assert base1.endswith("_250") and base2 == base1 + "-2" and base3 == base1 + "-4"
    log1.add(record(1))
    for log in (log1, log2, log3):
        log.close()
    assert len(log1.path.read_text().splitlines()) == 1 and log2.path.read_text() == ""


# ------------------------------------------------------------------------------------------------ disk


def test_unwritable_results_folder_exits_2_before_anything_starts(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    pids = tmp_path / "pids"
    cfg, _ = config(tmp_path, FAKE_VLLM_PIDFILE=str(pids))
    r = run_qbench("sweep", "--launch", str(cfg), "--out", str(blocker / "results"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"qbench: results folder {blocker / 'results'}: cannot create it: "
                                             "Not a directory"]
    assert not pids.exists()  # no server was launched
    r = run_qbench("run", "--url", "http://127.0.0.1:9", "-c", "1", "--requests", "1", "--out",
                   str(blocker / "x"))
    assert r.returncode == 2 and "cannot reach" not in r.stderr  # refused before any connection


def test_read_only_and_nearly_full_folders_are_refused(tmp_path):
    with tmpfs(tmp_path / "ro", "4m", "ro") as ro:
        assert check_results_dir(ro) == f"results folder {ro} is not writable: Read-only file system (give --out DIR)"
        r = run_qbench("run", "--url", "http://127.0.0.1:9", "-c", "1", "--requests", "1", "--out", str(ro))
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"qbench: {check_results_dir(ro)}"]
    with tmpfs(tmp_path / "small", "8m") as small:
        problem = check_results_dir(small)
        assert problem is not None and "MB free on its disk" in problem and "at least 50 MB" in problem
    with tmpfs(tmp_path / "roomy", f"{MIN_FREE_BYTES // 1_000_000 + 4}m") as roomy:
        assert check_results_dir(roomy / "new" / "folder") is None  # created, and enough room
        assert (roomy / "new" / "folder").is_dir() and not list((roomy / "new" / "folder").iterdir())


def test_record_log_on_a_full_disk_keeps_whole_lines_and_never_raises(tmp_path):
    with tmpfs(tmp_path / "disk", "256k") as disk:
        log = RecordLog(disk / "r.jsonl", flush_interval=3600)
        n = 0
        while log.error is None and n < 10_000:
            log.add(record(n))
            n += 1
            if n % 7 == 0:
                log.flush()
        assert log.error is not None and log.error.startswith("results disk full: No space left on device (")
        assert str(disk) in log.error
        log.add(record(n))
        log.flush()  # neither raises after the failure
        log.close()
        text = (disk / "r.jsonl").read_text()
        assert text.endswith("\n")
        lines = [json.loads(x) for x in text.splitlines()]  # every line whole
        assert len(lines) == log.written > 0
        assert [x["worker"] for x in lines] == list(range(len(lines)))


def test_disk_full_mid_sweep_stops_cleanly(sim_proc, tmp_path):
    sim = sim_proc()
    with tmpfs(tmp_path / "disk", "64m") as disk:
        out = disk / "results"
        proc = start_qbench("sweep", "--url", sim.url, "--levels", "2,8", "--mode", "steady", "--duration", "3",
                            "--max-tokens", "64", "--out", str(out))
        try:
            wait_records(out, 8)
            before = results(out)
            fill(disk)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 1, err
        lines = [x for x in err.splitlines() if x.startswith("qbench:")]
        assert len(lines) == 1 and lines[0].startswith("qbench: results disk full: No space left on device ("), err
        assert f"on {disk})" in lines[0] and "level 8 kept as interrupted" in lines[0]
        assert "Traceback" not in err
        recs = jsonl(out)  # whole lines only
        assert any(r["level"] == 8 for r in recs)
        after = results(out)  # the summary kept its last good version (or the interrupted level, if it fit)
        assert after["levels"][0] == before["levels"][0]
        assert not list(out.glob(".benchmark_*"))  # no temp file left by a failed rewrite


# ------------------------------------------------------------------------------------------------ mode


def test_results_files_share_one_mode(sim_proc, tmp_path):
    sim = sim_proc()
    out = tmp_path / "out"

    def umask_027() -> None:
        os.umask(0o027)

    proc = start_qbench("sweep", "--url", sim.url, "--levels", "2", "--max-tokens", "8", "--out", str(out),
                        preexec=umask_027)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    files = list(out.iterdir())
    assert len(files) == 3
    assert {f.stat().st_mode & 0o777 for f in files} == {0o640}
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.txt", "x")
        assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o644 == file_mode()
    finally:
        os.umask(old)
