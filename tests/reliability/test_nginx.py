"""nginx in front of the simulator, as many deployments put vLLM: a real `qbench run` through a real nginx
(proxy_buffering on and off), then with the upstream dead.

What it shows (nginx 1.22, Debian's nginx-light): through either variant every token is counted exactly as the
simulator generated it, and the first token arrives while the server is still streaming. proxy_buffering on does
not hold an event stream back from a client that keeps up: nginx writes each upstream read on at once (the buffers
absorb a slow client), so the user sees the same stream as with buffering off. With the upstream stopped nginx
answers 502 itself; qbench names it ("HTTP 502: 502 Bad Gateway") and its error budget stops the run after a
bounded number of requests instead of hammering the proxy.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from qbench_tui.engine.budget import auto_consecutive
from tests.conftest import run_qbench
from tests.reliability import nginx
from tests.reliability.leftovers import assert_nothing_left
from tests.reliability.results import records, results, truth

pytestmark = pytest.mark.skipif(not nginx.available(), reason="nginx not installed (apt-get install nginx-light)")

TOKENS = 60
C = 8


@pytest.fixture
def proxies():
    started: list[nginx.Nginx] = []

    def start(folder: Path, upstream_port: int, buffering: bool) -> nginx.Nginx:
        ng = nginx.Nginx(folder, upstream_port, buffering)
        started.append(ng)
        return ng.start()

    yield start
    for ng in started:
        ng.stop()


@pytest.mark.parametrize("buffering", [False, True], ids=["buffering-off", "buffering-on"])
def test_run_through_nginx_counts_every_token_and_streams(buffering, sim_proc, proxies, tmp_path):
    truth_file = tmp_path / "truth.jsonl"
    # speed 0.25: ~20 ms between tokens, so a stream lasts ~1.2 s and a held-back one could not pass for streamed
    sim = sim_proc("h200-fast", "--speed", "0.25", "--record-truth", str(truth_file))
    ng = proxies(tmp_path / "nginx", sim.port, buffering)
    out = tmp_path / "results"
    r = run_qbench("run", "--url", ng.url, "--mode", "wave", "-c", str(C), "--max-tokens", str(TOKENS),
                   "--ignore-eos", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    level = json.loads(r.stdout)
    assert level["completed"] == C and level["failed"] == 0

    recs = records(out)
    assert len(recs) == C and all(x["ok"] for x in recs)
    saved = results(out)["levels"][0]
    assert saved["completed"] == C and saved["total_output_tokens"] == C * TOKENS
    # tokens: the client's count, the results file's, the simulator's own (truth file, written by the simulator
    # itself behind nginx) and its /metrics as scraped through nginx all agree
    server = truth(truth_file, at_least=C)
    assert len(server) == C and all(s["status"] == "ok" for s in server)
    assert sum(x["out_tokens"] for x in recs) == sum(s["completion_tokens"] for s in server) == C * TOKENS
    assert level["total_output_tokens"] == C * TOKENS
    assert level["server"]["generation_tokens"] == C * TOKENS

    # TTFT is within the stream: every client's first token came before the simulator sent any stream's last
    # chunk (perf_counter is CLOCK_MONOTONIC, one clock for both processes), and not before the first was sent
    first_in = [x["start"] + x["ttft_s"] for x in recs]
    first_out = min(s["chunks"][0][0] for s in server)
    last_out = min(s["chunks"][-1][0] for s in server)
    assert first_out <= min(first_in) and max(first_in) < last_out
    assert all(0 < x["ttft_s"] < x["e2el_s"] for x in recs)
    # not held back in bursts: tokens that came in one read have a gap of exactly 0; a proxy holding back
    # its 4-8 KB buffers would deliver ~30 events per read (the sim's first send carries role + token 1)
    gaps = [g for x in recs for g in x["itl_s"][1:]]
    assert len(gaps) == C * (TOKENS - 1)
    assert sum(1 for g in gaps if g == 0.0) <= len(gaps) // 2

    posts = [line for line in ng.access_log if "POST /v1/chat/completions" in line]
    assert len(posts) == C and all(re.search(r'" 200 ', line) for line in posts)
    ng.stop()
    sim.stop()
    assert_nothing_left()


def test_dead_upstream_502_is_named_and_the_error_budget_stops_the_run(sim_proc, proxies, tmp_path):
    sim = sim_proc("h200-fast")
    ng = proxies(tmp_path / "nginx", sim.port, False)
    model = httpx.get(ng.url + "/v1/models", timeout=10).json()["data"][0]["id"]
    sim.stop()  # the upstream is gone; nginx stays
    dead = httpx.post(ng.url + "/v1/chat/completions", json={"model": model}, timeout=10)
    assert dead.status_code == 502 and "text/html" in dead.headers["content-type"]

    out = tmp_path / "results"
    c = 4
    r = run_qbench("run", "--url", ng.url, "--model", model, "-c", str(c), "--mode", "steady", "--duration", "60",
                   "--out", str(out), timeout=120)
    assert r.returncode != 0
    assert "HTTP 502" in r.stderr and "error budget" in r.stderr, r.stderr

    recs = records(out)
    # count-bounded: the budget trips after auto_consecutive(c) failures in a row; at most the c in flight more
    assert 0 < len(recs) <= auto_consecutive(c) + c
    assert all(not x["ok"] and x["status"] == 502 and x["error"].startswith("HTTP 502: ") for x in recs)
    level = results(out)["levels"][0]
    assert level["interrupted"] is True and level["completed"] == 0
    # nginx saw exactly the requests qbench recorded (the probe above was one more): nothing retried unseen
    posts = [line for line in ng.access_log if "POST /v1/chat/completions" in line]
    assert len(posts) == len(recs) + 1 and all('" 502 ' in line for line in posts)
    ng.stop()
    assert_nothing_left()
