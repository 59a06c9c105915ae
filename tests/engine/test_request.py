from __future__ import annotations

import asyncio
import json
import socket

import pytest

from qbench_tui.engine.http1 import make_ssl_context
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.request import build_request, make_client, stream_request
from tests.fakes.scripted_sse import Scenario, ScriptedSSEServer, frame, sse_events


async def _run(srv, model, prompt="hi", **spec_kw):
    spec = RequestSpec(url=srv.url, model=model, **spec_kw)
    async with make_client(spec, make_ssl_context()) as client:
        return await stream_request(client, spec, prompt, segment=3, concurrency=4, worker=1)


@pytest.fixture
def srv():
    s = ScriptedSSEServer({
        "ok": Scenario(tokens=5, delay=0.01, prompt_tokens=11, completion_tokens=9),
        "empties": Scenario(tokens=3, empty_chunks=2, delay=0.005),
        "no_usage": Scenario(kind="no_usage", tokens=4, empty_chunks=1),
        "nested400": Scenario(kind="http_error", status=400, error_body=json.dumps(
            {"error": {"message": "This model's maximum context length is 4096 tokens.",
                       "type": "BadRequestError", "param": None, "code": 400}}).encode()),
        "flat404": Scenario(kind="http_error", status=404, error_body=json.dumps(
            {"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError",
             "param": None, "code": 404}).encode()),
        "raw500": Scenario(kind="http_error", status=500, error_body=b"<html>" + b"x" * 500),
        "stream_err": Scenario(kind="stream_error", after=2),
        "reset": Scenario(kind="reset", after=2, tokens=10),
        "stall": Scenario(kind="stall", after=2, stall=3.0),
        "early": Scenario(kind="early_end", after=3, tokens=10),
        "crlf_comments": Scenario(tokens=4, crlf=True, comments=True),
    }).start()
    try:
        yield s
    finally:
        s.stop()


async def test_ok_tokens_from_usage_and_timing(srv):
    r = await _run(srv, "ok")
    assert r.ok and r.error == "" and r.status == 200
    assert (r.out_tokens, r.in_tokens, r.tokens_estimated) == (9, 11, False)
    assert r.ttft is not None and 0 < r.ttft < r.e2el
    # role chunk + 5 content chunks -> 6 choice events -> 5 gaps
    assert len(r.itl) == 5
    assert (r.segment, r.concurrency, r.worker, r.warmup) == (3, 4, 1, False)
    assert r.tpot is not None and r.tpot > 0
    assert r.wall_start > 1e9


async def test_empty_content_chunks_count_for_itl_not_estimates(srv):
    r = await _run(srv, "empties")
    assert r.ok and r.out_tokens == 3 and not r.tokens_estimated
    assert len(r.itl) == 1 + 2 + 3 - 1


async def test_estimated_tokens_without_usage(srv):
    r = await _run(srv, "no_usage")
    assert r.ok, r.error
    assert r.tokens_estimated and r.out_tokens == 4  # role + empty chunks are not tokens
    assert r.in_tokens == 0
    assert len(r.itl) == 1 + 1 + 4 - 1


@pytest.mark.parametrize("split_every", [1, 3, 7, 50])
async def test_arbitrary_write_splits(split_every):
    sc = Scenario(tokens=6, text="é世🎉", prompt_tokens=2)
    size = len(b"".join(frame(p) for p in sse_events(sc, "m", "chat")))
    sc.split = list(range(split_every, size, split_every))
    with ScriptedSSEServer(default=sc) as s:
        r = await _run(s, "m")
    assert r.ok, r.error
    assert (r.out_tokens, r.in_tokens) == (6, 2)
    assert len(r.itl) == 6


async def test_crlf_and_comment_lines(srv):
    r = await _run(srv, "crlf_comments")
    assert r.ok and r.out_tokens == 4 and len(r.itl) == 4


async def test_completions_endpoint():
    with ScriptedSSEServer(default=Scenario(tokens=3)) as s:
        r = await _run(s, "m", prompt="once upon", endpoint="completions")
        req = s.requests[-1]
    assert req["path"] == "/v1/completions"
    assert req["body"]["prompt"] == "once upon" and "messages" not in req["body"]
    assert r.ok and r.out_tokens == 3 and len(r.itl) == 2


async def test_http_error_nested_body(srv):
    r = await _run(srv, "nested400")
    assert not r.ok and r.status == 400
    assert r.error == "HTTP 400: This model's maximum context length is 4096 tokens."
    assert r.ttft is None and r.end >= r.start


async def test_http_error_flat_body(srv):
    r = await _run(srv, "flat404")
    assert not r.ok and r.status == 404
    assert r.error == "HTTP 404: The model `x` does not exist."


async def test_http_error_raw_body_truncated(srv):
    r = await _run(srv, "raw500")
    assert not r.ok and r.status == 500
    assert r.error.startswith("HTTP 500: <html>xxx")
    assert len(r.error) <= len("HTTP 500: ") + 200


async def test_in_stream_error(srv):
    r = await _run(srv, "stream_err")
    assert not r.ok and r.status == 200
    assert r.error == "stream error: boom in stream"


async def test_connection_reset_mid_stream(srv):
    r = await _run(srv, "reset")
    assert not r.ok
    assert r.error.startswith("connection error: "), r.error
    assert r.ttft is not None  # the first events did arrive


async def test_read_timeout(srv):
    r = await _run(srv, "stall", read_timeout=0.3)
    assert not r.ok and r.error == "read timeout"


async def test_stream_ended_early(srv):
    r = await _run(srv, "early")
    assert not r.ok and r.error == "stream ended early"
    assert r.tokens_estimated and r.out_tokens == 2  # role + 2 content events arrived


async def test_connect_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = RequestSpec(url=f"http://127.0.0.1:{port}", model="m", connect_timeout=2.0)
    async with make_client(spec, make_ssl_context()) as client:
        r = await stream_request(client, spec, "hi", segment=0, concurrency=1, worker=0)
    assert not r.ok and r.status is None
    assert r.error.startswith("connect error: ")


async def test_api_key_sent_as_bearer_never_in_record(srv):
    secret = "sk-very-secret-123"
    r = await _run(srv, "ok", api_key=secret)
    assert r.ok
    assert srv.requests[-1]["headers"]["authorization"] == f"Bearer {secret}"
    assert secret not in json.dumps(r.to_json())


async def test_request_body_fields(srv):
    await _run(srv, "ok", prompt=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
               max_tokens=33, temperature=None, ignore_eos=True, min_tokens=5)
    body = srv.requests[-1]["body"]
    assert srv.requests[-1]["path"] == "/v1/chat/completions"
    assert body["messages"][0] == {"role": "system", "content": "s"}
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 33 and "temperature" not in body
    assert body["ignore_eos"] is True and body["min_tokens"] == 5
    assert "authorization" not in srv.requests[-1]["headers"]


def test_build_request_defaults():
    path, body = build_request(RequestSpec(url="http://x", model="m"), "hello")
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert body["temperature"] == 0.0
    assert "ignore_eos" not in body and "min_tokens" not in body


def test_ssl_context_is_shared():
    assert make_ssl_context() is make_ssl_context()


async def test_keepalive_reuses_connection(srv):
    spec = RequestSpec(url=srv.url, model="ok")
    async with make_client(spec, make_ssl_context()) as client:
        for _ in range(3):
            r = await stream_request(client, spec, "hi", segment=0, concurrency=1, worker=0)
            assert r.ok
    # the server thread counts a response "finished" after its last write; the client may read that byte first
    for _ in range(500):
        snap = srv.snapshot()
        if snap["finished"] == 3:
            break
        await asyncio.sleep(0.01)
    assert snap["finished"] == 3 and snap["connections"] == 1
