"""One streamed completion -> one RequestRecord. Never raises (except CancelledError, which records nothing).

Timing follows `vllm bench serve` (reference vllm.md §4): TTFT is the first data event whose `choices` is
non-empty, ITL the gaps between consecutive such events, E2EL ends at the last data event (usage chunk
included, [DONE] excluded). Every timestamp is taken right after a network read returns, so events that arrive
in one read share a timestamp, as they did on the wire.

The hot path only looks at bytes: JSON is decoded for the first choice event, for events that mention
"error", and for the usage chunk.
"""
from __future__ import annotations

import functools
import json
import ssl
import time
from time import perf_counter

import httpx

from qbench_tui.engine.records import RequestRecord, RequestSpec
from qbench_tui.engine.sse import SSEDecoder

_CHAT_PATH = "/v1/chat/completions"
_COMPLETIONS_PATH = "/v1/completions"
_MAX_REASON = 200


@functools.lru_cache(maxsize=1)
def make_ssl_context() -> ssl.SSLContext:
    """One context per process: each default context loads the CA bundle (~30 ms), and there is a client per worker."""
    return ssl.create_default_context()


def make_client(spec: RequestSpec, ssl_ctx: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    """One client per worker: httpx scans every pooled connection per request, which is O(C) when shared.

    trust_env=False: a proxy picked up from the environment would be measured instead of the server.
    """
    return httpx.AsyncClient(
        base_url=spec.url,
        verify=ssl_ctx if ssl_ctx is not None else make_ssl_context(),
        timeout=httpx.Timeout(connect=spec.connect_timeout, read=spec.read_timeout, write=30.0, pool=None),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        trust_env=False,
    )


def build_request(spec: RequestSpec, prompt: str | list[dict]) -> tuple[str, dict]:
    """(path, JSON body) for one request."""
    body: dict = {"model": spec.model}
    if spec.endpoint == "completions":
        path = _COMPLETIONS_PATH
        if not isinstance(prompt, str):
            # a chat-style prompt on the completions endpoint: send the user text, nothing else fits
            prompt = "\n".join(str(m.get("content", "")) for m in prompt)
        body["prompt"] = prompt
    else:
        path = _CHAT_PATH
        body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    body["max_tokens"] = spec.max_tokens
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if spec.temperature is not None:
        body["temperature"] = spec.temperature
    if spec.ignore_eos:
        body["ignore_eos"] = True
    if spec.min_tokens is not None:
        body["min_tokens"] = spec.min_tokens
    return path, body


def _headers(spec: RequestSpec) -> dict[str, str]:
    h = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if spec.api_key:
        h["Authorization"] = f"Bearer {spec.api_key}"
    return h


def _one_line(s: str, limit: int = _MAX_REASON) -> str:
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def error_message(body: bytes) -> str:
    """The server's message from an error body: vLLM >= 0.11 nests it, older versions are flat."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        obj = None
    msg = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
        elif isinstance(err, str):
            msg = err
        if msg is None and "message" in obj:  # {"object":"error","message":...}
            msg = obj["message"]
        if msg is None and "detail" in obj:  # FastAPI default
            msg = obj["detail"]
    if msg is None:
        msg = body.decode("utf-8", "replace")
    return _one_line(str(msg))


def _has_choices(p: bytes) -> bool:
    """True when the event's `choices` list is non-empty, without decoding JSON."""
    i = p.find(b'"choices":')
    if i < 0:
        return False
    n = len(p)
    j = i + 10
    while j < n and p[j] == 32:
        j += 1
    if j >= n or p[j] != 91:  # "[" (choices: null)
        return False
    j += 1
    while j < n and p[j] in b" \n\r\t":
        j += 1
    return j < n and p[j] != 93  # "]"


def _stream_error(p: bytes) -> str | None:
    """The message of an in-stream error event, or None. Decodes only events that contain an "error" key/value."""
    if b'"error"' not in p:
        return None
    try:
        obj = json.loads(p)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    if "error" in obj:
        err = obj["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        return _one_line(str(msg if msg is not None else err))
    if obj.get("object") == "error":
        return _one_line(str(obj.get("message", "")))
    return None


def _is_empty_delta(p: bytes) -> bool:
    """A role-only or empty-content chunk (vLLM 0.13 sends the role with content ""), which carries no token."""
    return b'"content":""' in p or b'"text":""' in p or (b'"content":' not in p and b'"text":' not in p)


async def stream_request(
    client: httpx.AsyncClient,
    spec: RequestSpec,
    prompt: str | list[dict],
    *,
    segment: int,
    concurrency: int,
    worker: int,
) -> RequestRecord:
    rec = RequestRecord(ok=False, segment=segment, concurrency=concurrency, worker=worker, start=0.0)
    try:
        path, body = build_request(spec, prompt)
        content = json.dumps(body, separators=(",", ":")).encode()
        headers = _headers(spec)
    except Exception as e:  # a prompt that cannot be serialized is still one failed request, not a dead worker
        rec.start = rec.end = perf_counter()
        rec.wall_start = time.time()
        rec.error = f"bad request: {type(e).__name__}: {e}"
        return rec

    rec.wall_start = time.time()
    start = rec.start = perf_counter()
    ttft: float | None = None
    last = start
    itl = rec.itl
    content_events = 0
    usage: dict | None = None
    stream_error: str | None = None
    dec = SSEDecoder()
    try:
        async with client.stream("POST", path, content=content, headers=headers) as resp:
            rec.status = resp.status_code
            if resp.status_code != 200:
                raw = await resp.aread()
                rec.end = perf_counter()
                rec.error = f"HTTP {resp.status_code}: {error_message(raw)}"
                return rec
            async for chunk in resp.aiter_raw():
                now = perf_counter()
                events = dec.feed(chunk)
                if not events:
                    continue
                for p in events:
                    if _has_choices(p):
                        if ttft is None:
                            ttft = now - start
                            try:
                                first = json.loads(p)
                                ch = first["choices"][0]
                                delta = ch.get("delta") or {}
                                text = delta.get("content") if "delta" in ch else ch.get("text")
                                if text:
                                    content_events += 1
                            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                                stream_error = stream_error or "malformed event: " + _one_line(
                                    p.decode("utf-8", "replace"), 120
                                )
                        else:
                            itl.append(now - last)
                            if not _is_empty_delta(p):
                                content_events += 1
                        if b'"completion_tokens"' in p:  # continuous_usage_stats: keep the latest
                            usage = _usage(p) or usage
                    else:
                        err = _stream_error(p)
                        if err is not None:
                            stream_error = stream_error or err
                        elif b'"usage"' in p:
                            usage = _usage(p) or usage
                    last = now
            # Reading to EOF (not breaking at [DONE]) lets httpx keep the connection for the next request.
            for p in dec.close():
                if not _has_choices(p) and b'"usage"' in p:
                    usage = _usage(p) or usage
                    last = perf_counter()
    except httpx.ConnectTimeout:
        rec.error = "connect error: timeout"
    except httpx.ConnectError as e:
        rec.error = f"connect error: {_exc_text(e)}"
    except httpx.ReadTimeout:
        rec.error = "read timeout"
    except httpx.WriteTimeout:
        rec.error = "write timeout"
    except httpx.PoolTimeout:
        rec.error = "pool timeout"
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as e:
        rec.error = f"connection error: {_exc_text(e)}"
    except httpx.HTTPError as e:
        rec.error = f"http error: {type(e).__name__}: {_exc_text(e)}"
    except Exception as e:  # never raise: one odd stream must not end the run
        rec.error = f"{type(e).__name__}: {_exc_text(e)}"
    if rec.error:
        rec.end = perf_counter()
        _fill_tokens(rec, usage, content_events)
        rec.ttft = ttft
        return rec

    rec.end = last
    rec.ttft = ttft
    _fill_tokens(rec, usage, content_events)
    if stream_error is not None:
        rec.error = f"stream error: {stream_error}"
    elif not dec.done and usage is None:
        rec.error = "stream ended early"
    elif ttft is None:
        rec.error = "no tokens in stream"
    else:
        rec.ok = True
    return rec


def _usage(p: bytes) -> dict | None:
    try:
        obj = json.loads(p)
    except (ValueError, UnicodeDecodeError):
        return None
    u = obj.get("usage") if isinstance(obj, dict) else None
    return u if isinstance(u, dict) else None


def _fill_tokens(rec: RequestRecord, usage: dict | None, content_events: int) -> None:
    ct = usage.get("completion_tokens") if usage else None
    if isinstance(ct, int):
        rec.out_tokens = ct
    else:
        rec.out_tokens = content_events
        rec.tokens_estimated = True
    pt = usage.get("prompt_tokens") if usage else None
    if isinstance(pt, int):
        rec.in_tokens = pt


def _exc_text(e: BaseException) -> str:
    return _one_line(str(e) or type(e).__name__)
