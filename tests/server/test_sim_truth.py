"""Ground truth: server-side send times per chunk, on disk (--record-truth) and in process (handle.truth())."""
from __future__ import annotations

import json
import time

import httpx

from tests.sim_process import wait_until

BODY = {"messages": [{"role": "user", "content": "hello"}], "stream": True, "max_tokens": 12, "ignore_eos": True,
        "stream_options": {"include_usage": True}}


def check_record(rec: dict) -> None:
    chunks = rec["chunks"]
    assert chunks, rec
    perf = [c[0] for c in chunks]
    wall = [c[1] for c in chunks]
    assert perf == sorted(perf) and wall == sorted(wall)
    assert rec["arrival_perf"] <= perf[0] and rec["arrival_wall"] <= wall[0]
    assert sum(c[2] for c in chunks) == rec["completion_tokens"]


def test_truth_file_from_subprocess_matches_client(sim_server, tmp_path):
    path = tmp_path / "truth.jsonl"
    sim = sim_server("h200-fast", speed=2, record_truth=str(path))
    client_first: list[float] = []
    client_start: list[float] = []
    for _ in range(3):
        t0 = time.perf_counter()
        first = None
        with httpx.stream("POST", sim.url + "/v1/chat/completions", json=BODY, timeout=30) as r:
            for line in r.iter_lines():
                if first is None and line.startswith("data:"):
                    first = time.perf_counter()
        client_start.append(t0)
        client_first.append(first)
    records = wait_until(lambda: [json.loads(x) for x in path.read_text().splitlines()] if path.exists()
                         and len(path.read_text().splitlines()) >= 3 else None, timeout=10)
    assert len(records) == 3
    for rec, t0, first in zip(records, client_start, client_first):
        check_record(rec)
        assert rec["completion_tokens"] == 12 and rec["finish_reason"] == "length" and rec["status"] == "ok"
        # perf_counter is CLOCK_MONOTONIC, shared by both processes: the client cannot see a chunk before the
        # server sent it, and the server cannot see the request before the client started it.
        assert rec["chunks"][0][0] <= first
        assert t0 <= rec["arrival_perf"]
        assert first - t0 >= rec["chunks"][0][0] - rec["arrival_perf"]


def test_truth_in_process(sim_server):
    sim = sim_server("h200-fast", in_thread=True, speed=2)
    with httpx.Client() as c:  # one keep-alive connection: its local port is the one the truth names
        c.post(sim.url + "/v1/chat/completions", json=BODY, timeout=30)
        c.post(sim.url + "/v1/chat/completions", json=BODY, timeout=30)
    ports = {t["client_port"] for t in sim.truth()}
    assert len(ports) == 1 and all(isinstance(p, int) and p > 0 for p in ports)
    httpx.post(sim.url + "/v1/chat/completions", json=BODY, timeout=30)
    httpx.post(sim.url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=30)
    truth = sim.truth()
    assert [t["path"] for t in truth] == ["chat", "chat", "chat", "completions"]
    for rec in truth:
        check_record(rec)
    assert truth[0]["stream"] is True and len(truth[0]["chunks"]) >= 2


def test_thread_handle_is_a_server_handle(sim_server):
    sim = sim_server("qwen2.5-14b-awq-32gb", in_thread=True)
    assert sim.state == "ready" and sim.returncode is None and sim.error == ""
    assert sim.kv_cache_tokens() == 5500 * 16
    assert [p.name for p in sim.phases()][-1] == "ready"
    assert "--profile qwen2.5-14b-awq-32gb" in sim.command_line
    sim.stop()
    sim.stop()  # idempotent
    assert sim.state == "stopped" and sim.returncode == 0
