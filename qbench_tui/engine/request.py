"""One request: build its body, send it on the worker's HTTP client, time its stream into a RequestRecord.

`stream_request` never raises (except CancelledError, which records nothing). The transport is engine/http1.py
(bytes only), the timing engine/openai_stream.py (pure); this module joins them and owns what goes on the wire.
The clock starts after the body is serialized, just before the connection is taken and the request written.
"""
from __future__ import annotations

import json
import ssl
import time
from time import perf_counter

from qbench_tui.engine.backoff import parse_retry_after
from qbench_tui.engine.http1 import RawClient
from qbench_tui.engine.openai_stream import StreamTiming, error_message, not_a_stream
from qbench_tui.engine.prompts import Sized
from qbench_tui.engine.records import RequestRecord, RequestSpec
from qbench_tui.engine.tls import make_ssl_context

_CHAT_PATH = "/v1/chat/completions"
_COMPLETIONS_PATH = "/v1/completions"


def make_client(spec: RequestSpec, ssl_ctx: ssl.SSLContext | None = None) -> RawClient:
    """One client (one kept-alive connection) per worker. No proxy from the environment: a proxy would be
    measured instead of the server, and would see the key. The spec's own TLS settings win over `ssl_ctx`."""
    if ssl_ctx is None or spec.ca_cert or spec.insecure:
        ssl_ctx = make_ssl_context(spec.ca_cert, spec.insecure)
    return RawClient(spec.url, ssl_ctx, headers=request_headers(spec),
                     connect_timeout=spec.connect_timeout, read_timeout=spec.read_timeout)


def build_request(spec: RequestSpec, prompt: str | list[dict] | Sized) -> tuple[str, dict]:
    """(path, JSON body) for one request."""
    body: dict = {"model": spec.model}
    max_tokens = spec.max_tokens
    if isinstance(prompt, Sized):
        prompt, max_tokens = prompt
    if spec.endpoint == "completions":
        path = _COMPLETIONS_PATH
        if not isinstance(prompt, str):
            # a chat-style prompt on the completions endpoint: send the user text, nothing else fits
            prompt = "\n".join(str(m.get("content", "")) for m in prompt)
        body["prompt"] = prompt
    else:
        path = _CHAT_PATH
        body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    body["max_tokens"] = max_tokens
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if spec.temperature is not None:
        body["temperature"] = spec.temperature
    if spec.ignore_eos:
        body["ignore_eos"] = True
    if spec.min_tokens is not None:
        body["min_tokens"] = spec.min_tokens
    return path, body


def request_headers(spec: RequestSpec) -> dict[str, str]:
    """What every request of this spec carries besides Host, User-Agent and Content-Length."""
    # identity: a compressed stream cannot be timed per token (and this client does not inflate)
    h = {"Content-Type": "application/json", "Accept": "text/event-stream", "Accept-Encoding": "identity"}
    if spec.api_key:
        h["Authorization"] = f"Bearer {spec.api_key}"
    return h


async def stream_request(
    client: RawClient,
    spec: RequestSpec,
    prompt: str | list[dict],
    *,
    segment: int,
    concurrency: int,
    worker: int,
    text: list[str] | None = None,
) -> RequestRecord:
    """`text`: a list the answer's content is collected into (a conversation resends it); None: not decoded."""
    rec = RequestRecord(ok=False, segment=segment, concurrency=concurrency, worker=worker, start=0.0)
    try:
        path, body = build_request(spec, prompt)
        content = json.dumps(body, separators=(",", ":")).encode()
    except Exception as e:  # a prompt that cannot be serialized is still one failed request, not a dead worker
        rec.start = rec.end = perf_counter()
        rec.wall_start = time.time()
        rec.error = f"bad request: {type(e).__name__}: {e}"
        return rec
    rec.wall_start = time.time()
    start = rec.start = perf_counter()
    timing = StreamTiming(start, text)
    reply = await client.post(path, content, timing.feed, timing.end)
    rec.status = reply.status
    if reply.error:
        rec.error = reply.error
    elif reply.body is not None:
        # an HTTP error (its body is the server's message), or a 200 that was no stream: nothing to time
        rec.end = perf_counter()
        if reply.status == 200:
            rec.error = not_a_stream(reply.content_type, reply.content_encoding, reply.body)
        else:
            rec.error = f"HTTP {reply.status}: {error_message(reply.body, reply.content_type, reply.content_encoding)}"
            if reply.retry_after:
                rec.retry_after = parse_retry_after(reply.retry_after, time.time())
        return rec
    return timing.finish(rec, perf_counter())
