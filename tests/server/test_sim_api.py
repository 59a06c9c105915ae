"""OpenAI-compatible surface of the simulator over real HTTP: SSE framing, bodies, errors, endpoints."""
from __future__ import annotations

import json

import httpx
import pytest

from qbench_tui.server.sim.profile import load_profile

CLASSIC = "Write a short paragraph explaining why GPUs are good for AI."
QWEN = "Qwen/Qwen2.5-14B-Instruct-AWQ"


def sse_events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n"), raw[-80:]
    events = raw.split(b"\n\n")[:-1]
    for ev in events:
        assert ev.startswith(b"data: "), ev  # no event:/id:/comment lines
        assert b"\n" not in ev
    return [ev[6:] for ev in events]


@pytest.fixture
def qwen(sim_server):
    return sim_server("qwen2.5-14b-awq-32gb", in_thread=True, speed=20)


def chat(url: str, **body) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": CLASSIC}])
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def test_streaming_chat_framing(qwen):
    r = chat(qwen.url, model=QWEN, stream=True, max_tokens=12, ignore_eos=True,
             stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = sse_events(r.content)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    role = chunks[0]
    assert role["object"] == "chat.completion.chunk" and role["model"] == QWEN
    assert role["id"].startswith("chatcmpl-")
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": "", "reasoning_content": None}
    assert role["prompt_token_ids"] is None
    content = chunks[1:-1]
    assert len(content) == 12
    assert all(c["id"] == role["id"] and c["choices"][0]["delta"]["content"] for c in content)
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 11 + ["length"]
    usage = chunks[-1]
    assert usage["choices"] == []
    u = usage["usage"]
    assert u["completion_tokens"] == 12 and u["total_tokens"] == u["prompt_tokens"] + 12
    assert 25 <= u["prompt_tokens"] <= 60
    # compact JSON exactly like pydantic's model_dump_json
    assert b'": ' not in b"".join(events[:-1])


def test_streaming_without_usage_and_eos_length(qwen):
    r = chat(qwen.url, stream=True)
    events = sse_events(r.content)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    n = len(chunks) - 1
    assert 40 <= n <= 250  # the profile's ~125-token answers
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_answer_length_near_125_and_min_tokens(qwen):
    lengths = []
    for _ in range(12):
        r = chat(qwen.url)
        assert r.status_code == 200
        lengths.append(r.json()["usage"]["completion_tokens"])
    assert 100 <= sum(lengths) / len(lengths) <= 150
    r = chat(qwen.url, min_tokens=300, max_tokens=400)
    assert r.json()["usage"]["completion_tokens"] >= 300
    r = chat(qwen.url, max_tokens=5)
    body = r.json()
    assert body["usage"]["completion_tokens"] == 5 and body["choices"][0]["finish_reason"] == "length"
    r = chat(qwen.url, max_completion_tokens=3, max_tokens=9)
    assert r.json()["usage"]["completion_tokens"] == 3


def test_non_streaming_bodies(qwen):
    r = chat(qwen.url, max_tokens=4, ignore_eos=True)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant" and len(msg["content"]) > 0
    assert body["usage"]["completion_tokens"] == 4
    r = httpx.post(qwen.url + "/v1/completions", json={"prompt": "Hello there", "max_tokens": 3}, timeout=30)
    body = r.json()
    assert body["object"] == "text_completion" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3 and body["usage"]["prompt_tokens"] == 3


def test_streaming_completions(qwen):
    r = httpx.post(qwen.url + "/v1/completions", json={"prompt": [1, 2, 3, 4, 5], "max_tokens": 4, "stream": True,
                                                       "stream_options": {"include_usage": True}}, timeout=30)
    events = sse_events(r.content)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["object"] for c in chunks] == ["text_completion"] * 5
    assert all(c["choices"][0]["text"] for c in chunks[:4])
    assert chunks[3]["choices"][0]["finish_reason"] == "length"
    assert chunks[4]["usage"] == {"prompt_tokens": 5, "total_tokens": 9, "completion_tokens": 4}


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == r.status_code
    return body["error"]


def test_error_statuses_and_bodies(qwen):
    r = chat(qwen.url, model="nope")
    assert r.status_code == 404
    e = error_of(r)
    assert e["type"] == "NotFoundError" and e["message"] == "The model `nope` does not exist."
    r = chat(qwen.url, max_tokens=5000)
    assert r.status_code == 400
    assert error_of(r)["message"].startswith("'max_tokens' or 'max_completion_tokens' is too large: 5000.")
    r = chat(qwen.url, messages=[{"role": "user", "content": "word " * 5000}])
    assert r.status_code == 400
    e = error_of(r)
    assert e["type"] == "BadRequestError" and "maximum context length is 4096 tokens" in e["message"]
    r = httpx.post(qwen.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and error_of(r)["type"] == "Bad Request"
    r = httpx.post(qwen.url + "/v1/chat/completions", json={"model": QWEN}, timeout=10)
    assert r.status_code == 400
    r = chat(qwen.url, stream_options={"include_usage": True})
    assert r.status_code == 400
    assert httpx.get(qwen.url + "/nope").status_code == 404
    assert httpx.get(qwen.url + "/v1/chat/completions").status_code == 405


def test_simple_endpoints(qwen):
    r = httpx.get(qwen.url + "/health")
    assert r.status_code == 200 and r.content == b""
    assert httpx.get(qwen.url + "/version").json()["version"].startswith("0.13.0")
    models = httpx.get(qwen.url + "/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == QWEN and models["data"][0]["max_model_len"] == 4096
    assert models["data"][0]["owned_by"] == "vllm"


def test_tiny_cpu_clamps_like_vllm_cpu(sim_server):
    sim = sim_server("tiny-cpu", in_thread=True, speed=20)
    assert httpx.get(sim.url + "/v1/models").json()["data"][0]["id"] == "tiny"
    r = httpx.post(sim.url + "/v1/completions", json={"model": "tiny", "prompt": "a" * 3000, "max_tokens": 1000},
                   timeout=60)
    assert r.status_code == 200
    assert r.json()["usage"]["total_tokens"] == 1024  # clamped to max_model_len
    r = httpx.post(sim.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 5000}, timeout=10)
    assert r.status_code == 400 and error_of(r)["param"] == "max_tokens"


def test_model_name_override_and_seeded_lengths(sim_server):
    a = sim_server("qwen2.5-14b-awq-32gb", in_thread=True, speed=50, model="served-x", seed=7)
    b = sim_server("qwen2.5-14b-awq-32gb", in_thread=True, speed=50, model="served-x", seed=7)
    la = [chat(a.url, model="served-x").json()["usage"]["completion_tokens"] for _ in range(4)]
    lb = [chat(b.url, model="served-x").json()["usage"]["completion_tokens"] for _ in range(4)]
    assert la == lb
    assert chat(a.url, model=QWEN).status_code == 404


def test_profile_object_overrides(sim_server):
    prof = load_profile("h200-fast").replace(max_model_len=256, model="small")
    sim = sim_server(prof, in_thread=True)
    assert httpx.get(sim.url + "/v1/models").json()["data"][0]["max_model_len"] == 256
    assert chat(sim.url, model="small", max_tokens=300).status_code == 400
