"""`qbench sweep --auto` from the command line: bad input is one line and exit 2 before anything starts; a run
writes the table, the verdict and the recommendations, holds at the level found, and Ctrl-C keeps what it measured."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from qbench_tui.cli import main
from qbench_tui.engine.knee import Knee
from qbench_tui.engine.result import LevelResult
from tests.engine.test_auto_profiles import assert_cause


@pytest.mark.parametrize(("flags", "words"), [
    (["--auto", "--slo", "ttfb_p99=2s"], "--slo: unknown metric 'ttfb_p99'"),
    (["--auto", "--slo", "ttft_p99=2h"], "--slo: unknown unit 'h'"),
    (["--slo", "ttft_p99=2"], "has no unit"),
    (["--auto", "--start", "64", "--max-concurrency", "32"], "--max-concurrency 32 is below the ladder's start 64"),
    (["--auto", "--levels", "1,2"], "give either --auto or --levels, not both"),
    (["--auto", "--mode", "wave"], "--mode wave does not apply"),
    (["--hold", "30"], "--hold needs --auto"),
    (["--auto", "--knee-share", "1.5"], "--knee-share must be between 0 and 1"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, flags, words):
    # nothing listens on port 9: the line must come before any connection is tried
    assert main(["sweep", "--url", "http://127.0.0.1:9", *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err


def _qbench(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("QBENCH_API_KEY", "OPENAI_API_KEY")}
    return subprocess.Popen([sys.executable, "-m", "qbench_tui.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _json(out) -> dict:
    return json.loads(next(out.glob("benchmark_*.json")).read_text())


def test_auto_sweep_writes_verdict_and_advice_then_holds_at_the_knee(sim_proc, tmp_path):
    sim = sim_proc("seqs-limited", "--speed", "3")  # max_num_seqs 16
    p = _qbench("sweep", "--url", sim.url, "--auto", "--start", "16", "--max-concurrency", "32", "--duration", "1",
                "--hold", "1", "--slo", "ttft_p99=80ms,e2el_p99=10s", "--max-tokens", "32", "--ignore-eos",
                "--out", str(tmp_path))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    d = _json(tmp_path)
    cs = [lv["max_concurrency"] for lv in d["levels"]]
    # 16 -> 32 bought nothing: the knee is 16, the lowest level, so no refinement; then the hold at 16
    assert cs == [16, 32, 16], cs
    k = Knee.from_json(d["saturation"])
    assert k.saturated and k.knee_concurrency == 16, k.summary
    assert_cause([LevelResult.from_json(lv) for lv in d["levels"][:2]], k, "max_num_seqs")
    # at 32 requests queue for a slot (TTFT p99 a request's length, ~150 ms here); at 16 none waits
    assert k.slo == "ttft_p99 <= 80 ms, e2el_p99 <= 10 s" and k.goodput_concurrency == 16, k.interactive_why
    assert k.interactive_concurrency == 16 and "C=32 missed it (ttft_p99" in k.interactive_why
    assert k.batch_concurrency == k.peak_concurrency
    assert any("the last level is the hold at concurrency 16" in n for n in d["notes"]), d["notes"]
    assert d["methodology"]["levels"] == cs and d["methodology"]["mode"] == "steady"
    txt = next(tmp_path.glob("benchmark_*.txt")).read_text()
    for needle in ("auto ladder from 16, x2 up to 32", "saturated past concurrency 16", "SLO:         ttft_p99",
                   "Interactive: C=16", "Batch:       C="):
        assert needle in txt, needle
    assert "ladder: growing: level 16" in err and "holding at concurrency 16 for 1 s" in err
    assert "Interactive: C=16" in out and "within 90% of the peak" in out


def test_ctrl_c_keeps_the_levels_measured(sim_proc, tmp_path):
    sim = sim_proc("seqs-limited", "--speed", "3")
    p = _qbench("sweep", "--url", sim.url, "--auto", "--start", "4", "--duration", "1", "--max-tokens", "32",
                "--ignore-eos", "--out", str(tmp_path))
    deadline = time.monotonic() + 90
    try:
        while True:  # the files are rewritten after every level: wait for two
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() else "timeout"
            files = list(tmp_path.glob("benchmark_*.json"))
            if files and len(json.loads(files[0].read_text() or "{}").get("levels", [])) >= 2:
                break
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err  # 128 + SIGINT, as the shell reports a Ctrl-C
    d = _json(tmp_path)
    cs = [lv["max_concurrency"] for lv in d["levels"]]
    assert cs[:2] == [4, 8] and any(n.startswith("interrupted by SIGINT") for n in d["notes"])
    assert d["saturation"] is not None and "interrupted" in err
    assert "Concurrency" in out and all(f"{c} |" in out for c in cs)  # the table of what was kept


def test_the_ladder_settings_come_from_the_config_file_too(capsys, tmp_path):
    cfg = tmp_path / "q.toml"
    cfg.write_text('[sweep]\nauto = true\nstart = 8\nmax_concurrency = 4\n')
    assert main(["sweep", "--url", "http://127.0.0.1:9", "--config", str(cfg)]) == 2
    assert "--max-concurrency 4 is below the ladder's start 8" in capsys.readouterr().err
    cfg.write_text('[sweep]\nslo = "itl_p99=100ms,ttft_p99=2m"\n')
    assert main(["sweep", "--url", "http://127.0.0.1:9", "--config", str(cfg)]) == 2
    assert "unknown unit 'm'" in capsys.readouterr().err
