"""`qbench sweep` over request rates on the real simulator: fixed rates write the files with each level's offered
rate and a rate-column table; `--auto --request-rate` climbs the rate ladder on a simulator that saturates (two
batch slots), bisects to a knee between its rungs and names the cause; bad input is one line and exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qbench_tui.cli import main
from qbench_tui.engine.knee import Knee
from qbench_tui.engine.result import LevelResult
from qbench_tui.report.files import RunMeta, render_txt


@pytest.mark.parametrize(("flags", "words"), [
    (["--request-rates", "1,0", "--requests", "5"], "'request_rates' must be > 0 (requests/s), got 0"),
    (["--request-rates", "1,-2", "--requests", "5"], "must be > 0"),
    (["--request-rates", "1,nan", "--requests", "5"], "must be a finite number"),
    (["--request-rates", "1,inf", "--requests", "5"], "must be a finite number"),
    (["--request-rates", "2,1,2", "--requests", "5"], "names 2 twice"),
    (["--request-rates", "1,2", "--levels", "4,8", "--requests", "5"], "sweep one axis"),
    (["--request-rates", "1,2"], "--request-rates needs --duration S or --requests N"),
    (["--request-rates", "1,2", "--mode", "wave", "--requests", "5"], "--mode wave sends C at once"),
    (["--request-rates", "1,2", "--auto"], "--auto chooses the rates itself"),
    (["--request-rates", "1,2", "--burstiness", "0", "--requests", "5"], "'burstiness' must be > 0 (1 = Poisson)"),
    (["--request-rate", "2"], "add --auto"),
    (["--auto", "--request-rate", "0"], "--request-rate must be a positive number"),
    (["--auto", "--request-rate", "2", "--start", "4"], "give one of them"),
    (["--auto", "--request-rate", "8", "--max-request-rate", "4"], "--max-request-rate 4 is below the ladder's "
                                                                    "start 8"),
    (["--burstiness", "0.5"], "--burstiness needs --request-rates"),
    (["--max-request-rate", "50", "--request-rates", "1,2", "--requests", "5"], "--max-request-rate needs --auto"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, flags, words):
    # nothing listens on port 9: the line must come before any connection is tried
    assert main(["sweep", "--url", "http://127.0.0.1:9", *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err


def test_rates_come_from_the_config_file_too(capsys, tmp_path):
    cfg = tmp_path / "q.toml"
    cfg.write_text("[sweep]\nrequest_rates = [1, 2, 2]\nrequests = 5\n")
    assert main(["sweep", "--url", "http://127.0.0.1:9", "--config", str(cfg)]) == 2
    assert "names 2 twice" in capsys.readouterr().err
    cfg.write_text("[sweep]\nrequest_rates = [1, 2]\nlevels = [4]\nrequests = 5\n")
    assert main(["sweep", "--url", "http://127.0.0.1:9", "--config", str(cfg)]) == 2
    assert "sweep one axis" in capsys.readouterr().err


def _qbench(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("QBENCH_API_KEY", "OPENAI_API_KEY")}
    return subprocess.run([sys.executable, "-m", "qbench_tui.cli", *args], capture_output=True, text=True, env=env,
                          timeout=180)


def _json(out) -> dict:
    return json.loads(next(out.glob("benchmark_*.json")).read_text())


SATURATING = ("seqs-limited", "--speed", "3", "--set", "max_num_seqs=2")  # two batch slots: ~20 req/s at most


def test_a_rate_sweep_writes_each_rate_and_finds_where_the_server_fell_behind(sim_proc, tmp_path):
    sim = sim_proc(*SATURATING)
    p = _qbench("sweep", "--url", sim.url, "--request-rates", "4,8,32", "--requests", "30", "--max-tokens", "32",
                "--ignore-eos", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    d = _json(tmp_path)
    lvs = d["levels"]
    assert [lv["request_rate"] for lv in lvs] == [4, 8, 32]
    assert all(lv["mode"] == "rate" and lv["burstiness"] == 1 and lv["completed"] == 30 for lv in lvs)
    assert all(lv["schedule_lag_ms"] is not None for lv in lvs)
    assert d["methodology"]["mode"] == "rate"
    k = Knee.from_json(d["saturation"])
    # 32 req/s on two slots: the achieved rate fell far below the offered one while the queue grew
    assert k.axis == "request_rate" and k.saturated and k.knee_request_rate == 8, k.summary
    assert k.cause_kind == "max_num_seqs" and "running requests flattened at 2" in k.cause
    assert k.batch_request_rate == 8 and k.knee_concurrency is None
    achieved = LevelResult.from_json(lvs[2]).request_throughput
    assert achieved < 0.8 * 32 and f"32 req/s offered, {achieved:.2f} req/s achieved" in k.summary
    # the table on stdout reads along the rate
    out = p.stdout.splitlines()
    assert out[0].split(" | ")[0].strip() == "Rate (req/s)" and "Lag p99 (ms)" in out[0]
    assert [row.split("|")[0].strip() for row in out[2:5]] == ["4", "8", "32"]
    assert "saturated past 8 req/s" in p.stdout and "Batch:       8 req/s" in p.stdout
    assert "rate 32 req/s: 30 ok" in p.stderr


def test_auto_over_rates_bisects_to_a_knee_between_its_rungs(sim_proc, tmp_path):
    sim = sim_proc(*SATURATING)
    p = _qbench("sweep", "--url", sim.url, "--auto", "--request-rate", "6", "--requests", "30", "--max-tokens", "32",
                "--ignore-eos", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    d = _json(tmp_path)
    rates = [lv["request_rate"] for lv in d["levels"]]
    # 6 and 12 kept up, 24 did not (two slots serve ~20 req/s): growth stops there, bisection comes back down
    assert rates[:3] == [6, 12, 24] and len(rates) > 3 and all(12 < r < 24 for r in rates[3:]), rates
    k = Knee.from_json(d["saturation"])
    assert k.axis == "request_rate" and k.saturated, k.summary
    assert k.knee_request_rate not in (6, 12, 24) and 12 < k.knee_request_rate < 24, (k.knee_request_rate, rates)
    assert k.cause_kind == "max_num_seqs", k.cause
    assert "ladder: refining between 12 req/s (kept up) and 24 req/s (not)" in p.stderr
    assert any(n.startswith("ladder: knee at") for n in d["notes"]), d["notes"]
    assert f"saturated past {k.knee_request_rate:g} req/s" in p.stdout


def test_txt_file_has_the_rate_column():
    # needs the report/files.py change this work asked for (classic_table -> report/rates.rate_table)
    lvs = [LevelResult(completed=10, request_rate=r, burstiness=1.0, request_throughput=r * 0.95,
                       output_throughput=r * 30, mode="rate") for r in (8.0, 2.0)]
    txt = render_txt(RunMeta(url="http://x", model="m", mode="rate"), lvs)
    head = next(line for line in txt.splitlines() if "Tokens/sec" in line)
    assert head.split(" | ")[0].strip() == "Rate (req/s)"
    assert "Rate 2 req/s: 10 ok" in txt and txt.index("Rate 2 req/s") < txt.index("Rate 8 req/s")
