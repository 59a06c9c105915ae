"""Several endpoints, client shards and the client exporter through `qbench run` / `sweep`, against real
simulators over HTTP: shares by policy, a dead endpoint skipped (not hammered) and named, the servers' metrics
summed, every request in the JSONL once, and one clear line for every flag that cannot be."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from qbench_tui.server.net import free_port
from tests.conftest import ROOT, run_qbench


def _json(out: str) -> dict:
    return json.load(open(next(p for p in glob.glob(os.path.join(out, "*.json")))))


def _jsonl(out: str) -> list[dict]:
    path = next(p for p in glob.glob(os.path.join(out, "*.requests.jsonl")))
    return [json.loads(line) for line in open(path)]


def test_two_endpoints_round_robin_with_client_shards(sim_proc, tmp_path):
    a, b = sim_proc("h200-fast", "--model", "m"), sim_proc("h200-fast", "--model", "m")
    out = str(tmp_path)
    r = run_qbench("run", "--url", a.url, "--url", b.url, "-c", "8", "--requests", "80", "--max-tokens", "16",
                   "--ignore-eos", "--client-procs", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "2 endpoints, round-robin" in r.stderr and "2 client processes" in r.stderr
    lv = _json(out)["levels"][0]
    eps = {e["url"]: e for e in lv["endpoints"]}
    assert set(eps) == {a.url, b.url}
    assert sum(e["completed"] for e in eps.values()) == lv["completed"] == 80
    # requests in turn: the window's 80 split evenly within one (a level starts where the turn happens to be)
    assert abs(eps[a.url]["completed"] - eps[b.url]["completed"]) <= 2
    assert sum(e["total_output_tokens"] for e in eps.values()) == lv["total_output_tokens"] == 80 * 16
    lines = _jsonl(out)
    assert {d["endpoint"] for d in lines} == {a.url, b.url}
    assert all(d["ok"] for d in lines)
    # the server side is both simulators' /metrics summed: their own counters over the level
    assert lv["server"]["generation_tokens"] > 0.5 * 80 * 16
    assert f"Endpoint {a.url}: " in r.stdout and f"Endpoint {b.url}: " in r.stdout


def test_least_busy_sends_less_to_the_slow_endpoint(sim_proc, tmp_path):
    fast, slow = sim_proc("h200-fast", "--model", "m"), sim_proc("h200-fast", "--model", "m", "--speed", "0.25")
    out = str(tmp_path)
    r = run_qbench("run", "--url", fast.url, "--url", slow.url, "-c", "8", "--requests", "120", "--max-tokens",
                   "24", "--ignore-eos", "--balance", "least-busy", "--out", out)
    assert r.returncode == 0, r.stderr
    eps = {e["url"]: e["completed"] for e in _json(out)["levels"][0]["endpoints"]}
    assert eps[fast.url] > 2 * eps[slow.url] > 0


def test_a_dead_endpoint_is_skipped_not_hammered_and_named(sim_proc, tmp_path):
    live = sim_proc("h200-fast", "--model", "m")
    dead = f"http://127.0.0.1:{free_port()}"
    out = str(tmp_path)
    r = run_qbench("run", "--url", live.url, "--url", dead, "-c", "4", "--duration", "3", "--max-tokens", "16",
                   "--out", out)
    lines = _jsonl(out)
    to_dead = [d for d in lines if d.get("endpoint") == dead]
    ok = [d for d in lines if d["ok"]]
    assert ok and all(d["endpoint"] == live.url for d in ok)
    # three answerless failures make it dead; then one probe per 5 s: a handful, where the live one took hundreds
    assert 3 <= len(to_dead) <= 12 and len(ok) > 20 * len(to_dead)
    assert all(not d["ok"] and d["status"] is None for d in to_dead)
    assert f"Endpoint {dead}: DEAD (" in r.stdout, r.stdout
    row = next(e for e in _json(out)["levels"][0]["endpoints"] if e["url"] == dead)
    assert row["alive"] is False and row["down"].startswith("dead: ")


def test_the_client_exporter_counts_what_the_run_sends(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--model", "m")
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "qbench_tui.cli", "run", "--url", sim.url, "-c", "4", "--duration",
                          "6", "--max-tokens", "16", "--metrics-port", str(port), "--out", str(tmp_path)],
                         cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = 0.0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            for line in page.splitlines():
                if line.startswith('qbench_requests_total{outcome="ok"}'):
                    seen = float(line.split()[-1])
            if seen >= 20:
                break
            time.sleep(0.2)
    finally:
        out, errs = p.communicate(timeout=120)
    assert p.returncode == 0, errs
    assert seen >= 20
    assert f"client metrics on http://127.0.0.1:{port}/metrics" in errs


def test_targets_from_the_config_file(sim_proc, tmp_path):
    a, b = sim_proc("h200-fast", "--model", "m"), sim_proc("h200-fast", "--model", "m")
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'[[targets]]\nurl = "{a.url}"\n[[targets]]\nurl = "{b.url}"\n[fleet]\nbalance = "least-busy"\n')
    out = str(tmp_path / "out")
    r = run_qbench("sweep", "--config", str(cfg), "--levels", "2,4", "--max-tokens", "8", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "2 endpoints, least-busy" in r.stderr
    levels = _json(out)["levels"]
    assert [len(lv["endpoints"]) for lv in levels] == [2, 2]


@pytest.mark.parametrize("args,code,words", [
    (["--url", "http://127.0.0.1:1", "--url", "http://127.0.0.1:1/"], 2, "given twice"),
    (["--url", "http://127.0.0.1:1", "--client-procs", "0"], 2, "--client-procs must be >= 1"),
    (["--url", "http://127.0.0.1:1", "--prometheus-selector", 'a="b"'], 2, "needs --prometheus"),
    (["--url", "http://127.0.0.1:1", "--metrics-url", "http://127.0.0.1:2", "--prometheus", "http://127.0.0.1:3"],
     2, "two sources"),
    (["--url", "http://127.0.0.1:1", "--balance", "random"], 2, "invalid choice"),
])
def test_bad_fleet_flags_are_one_line(args, code, words, tmp_path):
    r = run_qbench("run", *args, "-c", "2", "--requests", "2", "--out", str(tmp_path))
    assert r.returncode == code and words in r.stderr, r.stderr
    assert words in r.stderr.strip().splitlines()[-1]  # one line says it (argparse prints its usage above)


@pytest.mark.parametrize("flag,value,words", [
    ("--prometheus", None, "Prometheus unreachable"),
    ("--ray", None, "no Ray cluster answered"),
])
def test_unreachable_prometheus_or_ray_exits_1_and_leaves_no_files(sim_proc, tmp_path, flag, value, words):
    sim = sim_proc("h200-fast", "--model", "m")
    where = f"http://127.0.0.1:{free_port()}" if flag == "--prometheus" else f"127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    r = run_qbench("run", "--url", sim.url, "-c", "2", "--requests", "2", flag, where, "--out", str(out))
    assert r.returncode == 1 and words in r.stderr, r.stderr
    assert not list(out.glob("*"))


_ = ROOT
