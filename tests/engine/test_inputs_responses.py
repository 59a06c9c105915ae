"""Responses that are no event stream, through the real request path (scripted server on 127.0.0.1): each failed
request says what came instead, in the words of the response head, never "stream ended early"."""
from __future__ import annotations

import gzip
import json

import pytest

from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.request import make_client, stream_request
from tests.fakes.scripted_sse import Scenario, ScriptedSSEServer, frame, sse_events

NGINX_PAGE = (b"<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1>"
              b"</body></html>")
WHOLE_COMPLETION = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
GZIPPED_STREAM = gzip.compress(b"".join(frame(p) for p in sse_events(Scenario(), "m", "chat")))


@pytest.fixture(scope="module")
def srv():
    s = ScriptedSSEServer({
        "html": Scenario(kind="whole", status=200, content_type="text/html", error_body=NGINX_PAGE),
        "whole": Scenario(kind="whole", status=200, error_body=WHOLE_COMPLETION),
        "json_error": Scenario(kind="whole", status=200, error_body=b'{"error": {"message": "quota exceeded"}}'),
        "gzip": Scenario(kind="whole", status=200, content_type="text/event-stream", content_encoding="gzip",
                         error_body=GZIPPED_STREAM),
        "plain": Scenario(kind="whole", status=200, content_type="text/plain", error_body=b"hello there"),
        "html502": Scenario(kind="http_error", status=502, content_type="text/html",
                            error_body=b"<html><head><title>502 Bad Gateway</title></head><body>...</body></html>"),
        "gzip500": Scenario(kind="http_error", status=500, content_encoding="gzip",
                            error_body=gzip.compress(b'{"error": "x"}')),
    }).start()
    try:
        yield s
    finally:
        s.stop()


async def _one(srv, model: str):
    spec = RequestSpec(url=srv.url, model=model)
    async with make_client(spec) as client:
        rec = await stream_request(client, spec, "hi", segment=0, concurrency=1, worker=0)
    return rec


@pytest.mark.parametrize("model, error", [
    ("html", "not an event stream: content-type text/html (Welcome to nginx!)"),
    ("whole", 'not an event stream: content-type application/json, a whole completion: the server ignored '
              '"stream": true'),
    ("json_error", "not an event stream: content-type application/json: quota exceeded"),
    ("gzip", "not an event stream: content-encoding gzip (content-type text/event-stream); something between "
             "qbench and the server compresses it"),
    ("plain", "not an event stream: content-type text/plain: 'hello there'"),
    ("html502", "HTTP 502: 502 Bad Gateway"),
    ("gzip500", "HTTP 500: (gzip-encoded body)"),
])
async def test_what_came_instead_of_a_stream_is_named(srv, model, error):
    rec = await _one(srv, model)
    assert (rec.ok, rec.error) == (False, error)
    assert rec.ttft is None and rec.itl == []


async def test_identity_encoding_is_asked_for(srv):
    await _one(srv, "html")
    assert srv.requests[-1]["headers"]["accept-encoding"] == "identity"
