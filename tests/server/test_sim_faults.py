"""Every fault flag produces its failure, over real HTTP."""
from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.sim_process import wait_until

BODY = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 20, "ignore_eos": True,
        "stream_options": {"include_usage": True}}
UNARY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_error_rate_answers_500_in_vllm_format(sim_server):
    sim = sim_server("h200-fast", in_thread=True, speed=5, error_rate=1.0)
    r = httpx.post(sim.url + "/v1/chat/completions", json=BODY, timeout=10)
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == 500 and err["type"] == "Internal Server Error" and "EngineCore" in err["message"]
    assert httpx.get(sim.url + "/health").status_code == 200  # the rest of the server is fine


def test_error_rate_fraction_is_seeded(sim_server):
    sim = sim_server("h200-fast", in_thread=True, speed=5, error_rate=0.5, seed=3)
    codes = [httpx.post(sim.url + "/v1/chat/completions", json=UNARY,
                        timeout=10).status_code for _ in range(30)]
    assert set(codes) == {200, 500}
    assert 5 <= codes.count(500) <= 25


def test_cut_stream_closes_without_done(sim_server):
    sim = sim_server("h200-fast", speed=5, cut_rate=1.0)
    got = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", sim.url + "/v1/chat/completions", json=BODY, timeout=10) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                got += chunk
    assert got.count(b'"content":"') >= 1
    assert b"[DONE]" not in got
    assert sim.returncode is None  # the server survives
    assert httpx.get(sim.url + "/health").status_code == 200


def test_in_stream_error_event_then_done(sim_server):
    sim = sim_server("h200-fast", in_thread=True, speed=5, stream_error_rate=1.0)
    r = httpx.post(sim.url + "/v1/chat/completions", json=BODY, timeout=10)
    assert r.status_code == 200
    events = [e[6:] for e in r.content.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    err = json.loads(events[-2])
    assert err == {"error": {"message": "Internal server error", "type": "InternalServerError", "param": None,
                             "code": 500}}
    assert b'{"error": {' in events[-2]  # json.dumps spacing, as vLLM writes it
    assert not any(b'"usage":{' in e for e in events)
    assert sum(b'"content":"' in e for e in events) < 20


def test_stall_pauses_the_stream(sim_server):
    sim = sim_server("h200-fast", in_thread=True, speed=5, stall_rate=1.0, stall_seconds=1.0)
    times = []
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json=BODY, timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                times.append(time.perf_counter())
    assert len(times) >= 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) >= 0.9
    truth = sim.truth()
    assert truth[-1]["status"] == "stalled" and truth[-1]["completion_tokens"] == 20


def test_crash_after_exits_the_process(sim_server):
    sim = sim_server("h200-fast", crash_after=1.0)
    assert httpx.get(sim.url + "/health").status_code == 200
    rc = sim.wait(20)
    assert rc is not None and rc != 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.url + "/health", timeout=2)


def test_slow_start_refuses_then_503_then_ready(sim_server):
    sim = sim_server("h200-fast", refuse_seconds=1.0, unhealthy_seconds=1.0)
    seen: list[object] = []

    def probe() -> bool:
        try:
            code = httpx.get(sim.url + "/health", timeout=2).status_code
        except httpx.ConnectError:
            code = "refused"
        if not seen or seen[-1] != code:
            seen.append(code)
        return code == 200

    wait_until(probe, timeout=30, interval=0.05)
    assert seen == ["refused", 503, 200]
    r = httpx.post(sim.url + "/v1/chat/completions", json=UNARY, timeout=10)
    assert r.status_code == 200


def test_garbage_and_missing_metrics(sim_server):
    garbage = sim_server("h200-fast", in_thread=True, metrics="garbage")
    r = httpx.get(garbage.url + "/metrics")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        list(text_string_to_metric_families(r.text))
    missing = sim_server("h200-fast", in_thread=True, metrics="missing")
    assert httpx.get(missing.url + "/metrics").status_code == 404
    assert httpx.get(missing.url + "/health").status_code == 200


def test_bad_fault_values_are_rejected(sim_server):
    with pytest.raises(ValueError):
        sim_server("h200-fast", in_thread=True, error_rate=2.0)
    with pytest.raises(ValueError):
        sim_server("h200-fast", in_thread=True, metrics="weird")


def test_crash_after_in_thread_stops_the_server(sim_server):
    sim = sim_server("h200-fast", in_thread=True, crash_after=0.5)
    assert httpx.get(sim.url + "/health").status_code == 200
    wait_until(lambda: not sim.alive, timeout=20)
    assert sim.state == "failed" and sim.returncode == 1 and "crash" in sim.error
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.url + "/health", timeout=2)


def test_rate_limit_answers_429_with_retry_after(sim_server):
    sim = sim_server("h200-fast", speed=5, rate_limit_rate=1.0, retry_after=7)  # subprocess: the CLI flags
    r = httpx.post(sim.url + "/v1/chat/completions", json=BODY, timeout=10)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    err = r.json()["error"]
    assert err["code"] == 429 and err["type"] == "RateLimitError" and "Rate limit" in err["message"]
    assert httpx.get(sim.url + "/health").status_code == 200  # only completions are limited


def test_rate_limit_fraction_is_seeded_and_leaves_other_faults_alone(sim_server):
    sim = sim_server("h200-fast", in_thread=True, speed=5, rate_limit_rate=0.5, seed=3)
    codes = [httpx.post(sim.url + "/v1/chat/completions", json=UNARY, timeout=10).status_code for _ in range(30)]
    assert set(codes) == {200, 429}
    assert 5 <= codes.count(429) <= 25
    from qbench_tui.server.sim.faults import FaultDice, Faults

    # the 500s a seed picks are the same with rate limiting on: it draws from its own stream
    plain = FaultDice(Faults(error_rate=0.3), seed=5)
    limited = FaultDice(Faults(error_rate=0.3, rate_limit_rate=0.5), seed=5)
    picks = []
    for _ in range(40):
        limited.rate_limited()
        picks.append((plain.plan(10, True).error, limited.plan(10, True).error))
    assert all(a == b for a, b in picks) and any(a for a, _ in picks)


def test_rate_limit_values_checked():
    from qbench_tui.server.sim.faults import Faults

    for bad in ({"rate_limit_rate": 1.5}, {"rate_limit_rate": -0.1}, {"retry_after": -1.0},
                {"retry_after": float("nan")}):
        with pytest.raises(ValueError):
            Faults(**bad)
    assert Faults(rate_limit_rate=0.2, retry_after=3.0).cli_args() == ["--rate-limit-rate", "0.2",
                                                                          "--retry-after", "3.0"]


def test_unknown_model_gets_vllms_404(sim_server):
    sim = sim_server("h200-fast", in_thread=True, speed=5)
    r = httpx.post(sim.url + "/v1/chat/completions", json={**BODY, "model": "nope"}, timeout=10)
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "The model `nope` does not exist.", "type": "NotFoundError",
                                  "param": None, "code": 404}}
