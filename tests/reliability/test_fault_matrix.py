"""The reliability matrix's server-fault rows, end to end: a real `qbench run` against the real simulator with its
fault flags (`qbench sim --help`), every file the run wrote parsed, the simulator's own account (--record-truth,
its /metrics read directly) set against qbench's, and nothing left running afterwards. docs/RELIABILITY.md lists
which row each test proves.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qbench_tui.engine.budget import auto_consecutive
from qbench_tui.server.net import free_port
from qbench_tui.server.sim_child import SimServer
from tests.conftest import ROOT, run_qbench
from tests.engine.test_cli_launch import config, port_free
from tests.reliability.leftovers import assert_nothing_left
from tests.reliability.results import records, results, truth, wait_records

C = 4
TOKENS = 30


def sim_counts(url: str) -> dict[str, float]:
    """The simulator's own counters, read from it directly: generation tokens and finished requests by reason."""
    text = httpx.get(url + "/metrics", timeout=10, trust_env=False).text
    out: dict[str, float] = Counter()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "vllm:generation_tokens_total":
                out["generation_tokens"] += s.value
            elif s.name == "vllm:request_success_total":
                out["finished_" + s.labels["finished_reason"]] += s.value
    return out


def run(url: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    r = run_qbench("run", "--url", url, "-c", str(C), "--mode", "steady", "--requests", "40",
                   "--max-tokens", str(TOKENS), "--ignore-eos", "--out", str(out), "--json", *extra)
    assert r.returncode == 0, r.stderr
    return r, json.loads(r.stdout)


def failures(recs: list[dict]) -> Counter:
    return Counter(x["error"] for x in recs if not x["ok"])


def test_http_500s_are_named_counted_and_kept(sim_proc, tmp_path):
    tf = tmp_path / "truth.jsonl"
    sim = sim_proc("h200-fast", "--error-rate", "0.25", "--seed", "5", "--record-truth", str(tf))
    _, level = run(sim.url, tmp_path / "out")
    recs = records(tmp_path / "out")
    reasons = failures(recs)
    assert list(reasons) == ["HTTP 500: EngineCore encountered an issue. See stack trace (above) for the root cause."]
    assert all(x["status"] == 500 for x in recs if not x["ok"])
    assert level["failed"] > 0 and level["completed"] > 0
    assert level["failures"] == {next(iter(reasons)): level["failed"]}
    # a 500 is answered before the engine sees the request: every ok line is one the simulator served, token
    # for token, and it served nothing else
    ok = [x for x in recs if x["ok"]]
    served = truth(tf, at_least=len(ok))
    assert len(served) == len(ok) and all(s["status"] == "ok" for s in served)
    assert sum(x["out_tokens"] for x in ok) == sim_counts(sim.url)["generation_tokens"] == len(ok) * TOKENS
    sim.stop()
    assert_nothing_left()


def test_wrong_model_404_is_named_and_the_budget_stops_the_run(sim_proc, tmp_path):
    sim = sim_proc("h200-fast")
    out = tmp_path / "out"
    r = run_qbench("run", "--url", sim.url, "--model", "no-such-model", "-c", str(C), "--mode", "steady",
                   "--duration", "60", "--out", str(out))
    assert r.returncode != 0
    assert "HTTP 404" in r.stderr and "no-such-model" in r.stderr and "error budget" in r.stderr, r.stderr
    recs = records(out)
    assert 0 < len(recs) <= auto_consecutive(C) + C
    assert all(x["status"] == 404 and "does not exist" in x["error"] for x in recs)
    assert results(out)["levels"][0]["interrupted"] is True
    sim.stop()
    assert_nothing_left()


def test_error_event_in_a_stream_is_a_failure_with_the_servers_words(sim_proc, tmp_path):
    tf = tmp_path / "truth.jsonl"
    sim = sim_proc("h200-fast", "--stream-error-rate", "0.3", "--seed", "2", "--record-truth", str(tf))
    _, level = run(sim.url, tmp_path / "out")
    recs = records(tmp_path / "out")
    assert list(failures(recs)) == ["stream error: Internal server error"]
    # each failure is one stream the simulator ended with its error event, and it counted it as finished "error"
    n_failed = sum(1 for x in recs if not x["ok"])
    errored = [s for s in truth(tf, at_least=len(recs)) if s["status"] == "stream_error"]
    assert n_failed == len(errored) == sim_counts(sim.url)["finished_error"] > 0
    assert level["completed"] > 0 and all(x["out_tokens"] == TOKENS for x in recs if x["ok"])
    sim.stop()
    assert_nothing_left()


def test_a_stream_reset_mid_way_is_a_failure_and_the_run_goes_on(sim_proc, tmp_path):
    tf = tmp_path / "truth.jsonl"
    sim = sim_proc("h200-fast", "--cut-rate", "0.3", "--seed", "4", "--record-truth", str(tf))
    _, level = run(sim.url, tmp_path / "out")
    recs = records(tmp_path / "out")
    reasons = failures(recs)
    assert reasons and all(r.startswith("connection error: ") for r in reasons), reasons
    cut = [s for s in truth(tf, at_least=len(recs)) if s["status"] == "cut"]
    assert sum(reasons.values()) == len(cut) > 0
    assert level["completed"] > 0
    sim.stop()
    assert_nothing_left()


def test_a_stall_past_the_read_timeout_fails_that_request_only(sim_proc, tmp_path):
    tf = tmp_path / "truth.jsonl"
    # every other stream pauses 3 s mid-way; the client's read timeout is 1 s
    sim = sim_proc("h200-fast", "--stall-rate", "0.5", "--stall-seconds", "3", "--seed", "1",
                   "--record-truth", str(tf))
    _, level = run(sim.url, tmp_path / "out", "--timeout", "1")
    recs = records(tmp_path / "out")
    assert list(failures(recs)) == ["read timeout"]
    assert level["completed"] > 0 and level["failed"] > 0
    # every stream the simulator stalled is a timed-out record, no more (it writes a stalled stream's truth once
    # its pause is over and it sees the client gone)
    assert len([s for s in truth(tf, at_least=len(recs), timeout=15) if s["status"] == "stalled"]) == \
        sum(1 for x in recs if not x["ok"])
    sim.stop()
    assert_nothing_left()


@pytest.mark.parametrize(("fault", "says"), [("missing", "no server metrics"), ("garbage", "bad /metrics: ")])
def test_metrics_missing_or_garbage_measures_the_client_side_and_says_so(fault, says, sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--metrics-fault", fault)
    _, level = run(sim.url, tmp_path / "out")
    assert level["completed"] == 40 and level["failed"] == 0
    assert level["server_metrics"].startswith(says)
    assert level["mean_ttft_ms"] > 0 and level["total_output_tokens"] == 40 * TOKENS
    saved = results(tmp_path / "out")["levels"][0]
    assert saved["server_metrics"] == level["server_metrics"]
    assert len(records(tmp_path / "out")) >= 40
    sim.stop()
    assert_nothing_left()


def test_server_down_then_back_mid_run_the_run_goes_on_and_counters_restart(tmp_path):
    """The simulator SIGKILLed mid-level and a fresh one started on the same port: requests fail while it is
    down (named), succeed again once it is back, and the server's counters, which restarted from zero, give no
    negative or doubled figure."""
    port = free_port()
    out = tmp_path / "out"
    first = SimServer("h200-fast", port=port)
    second = SimServer("h200-fast", port=port)
    proc = None
    try:
        first.start()
        first.wait_ready(60)
        proc = subprocess.Popen([sys.executable, "-m", "qbench_tui.cli", "run", "--url", first.url, "-c", "2",
                                 "--mode", "steady", "--duration", "8", "--max-tokens", str(TOKENS),
                                 "--ignore-eos", "--max-consecutive-failures", "100000", "--out", str(out), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        wait_records(out, lambda rs: sum(x["ok"] for x in rs) >= 10)
        os.kill(first.pid, signal.SIGKILL)
        wait_records(out, lambda rs: any(not x["ok"] for x in rs))  # the client saw it go
        first.stop()
        second.start()
        second.wait_ready(60)
        back = time.perf_counter()  # CLOCK_MONOTONIC, as the records' start
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        first.stop()
        second.stop()
    level = json.loads(stdout)
    recs = records(out)
    reasons = failures(recs)
    assert reasons and all(r.startswith(("connect error: ", "connection error: ")) for r in reasons), reasons
    assert any(x["ok"] and x["start"] > back for x in recs)  # it went on against the server that came back
    server = level["server"]
    # a counter that went down is a restart: what accrued since counts, so the level's figure is positive and no
    # more than the tokens that were asked for
    asked = len(recs) * TOKENS
    assert 0 < server["generation_tokens"] <= asked
    assert 0 <= server["prefix_cache_hit_rate"] <= 1
    assert results(out)["levels"][0]["server"]["generation_tokens"] == server["generation_tokens"]
    assert_nothing_left()


def test_launched_vllm_sigkilled_mid_run_is_reported_and_nothing_is_left(tmp_path):
    pidfile = tmp_path / "pids"
    cfg, port = config(tmp_path, FAKE_VLLM_PIDFILE=str(pidfile))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "qbench_tui.cli", "sweep", "--launch", str(cfg), "--levels", "2,4",
                             "--mode", "steady", "--duration", "5", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_records(out, lambda rs: sum(x["ok"] for x in rs) >= 5, timeout=120)
        api = int(next(line.split()[1] for line in pidfile.read_text().splitlines() if line.startswith("api ")))
        os.kill(api, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "server died" in stderr, stderr
    d = results(out)
    assert d["levels"] and d["levels"][-1]["interrupted"] is True
    assert any("server died" in n for n in d["notes"])
    recs = records(out)
    assert sum(x["ok"] for x in recs) >= 5
    assert port_free(port)
    assert_nothing_left()
