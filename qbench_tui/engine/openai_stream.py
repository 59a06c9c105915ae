"""The timing of one OpenAI-compatible streamed completion, from (arrival time, body bytes) pairs. Pure: no I/O, no
clock; every time comes from the caller.

Timing follows `vllm bench serve` (reference vllm.md §4): TTFT is the first data event whose `choices` is
non-empty, ITL the gaps between consecutive such events, E2EL ends at the last data event (usage chunk
included, [DONE] excluded). Events that arrive in one read share that read's timestamp, as they did on the wire.

This runs for every read of every stream, so it only looks at bytes: JSON is decoded for the first choice event,
for events that mention "error", and for the usage chunk. Only a caller that asks for the answer's text (a
conversation's next turn resends it: engine/conversations.py) gets every content event decoded, into its list.
"""
from __future__ import annotations

import json
import re

from qbench_tui.engine.records import RequestRecord, one_line
from qbench_tui.engine.sse import SSEDecoder


def _html_title(body: bytes) -> str | None:
    m = re.search(rb"<title[^>]*>(.*?)</title>", body[:65536], re.I | re.S)
    return one_line(m.group(1).decode("utf-8", "replace"), 120) if m else None


def error_message(body: bytes, content_type: str = "", content_encoding: str = "") -> str:
    """The server's message from an error body: vLLM >= 0.11 nests it, older versions are flat; a proxy's HTML
    page gives its title; a compressed body is not decoded, only named."""
    if content_encoding not in ("", "identity"):
        return f"({content_encoding}-encoded body)"
    if "html" in content_type.lower() and (title := _html_title(body)):
        return title
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
    return one_line(str(msg))


def not_a_stream(content_type: str, content_encoding: str, body: bytes) -> str:
    """Why a 200 could not be timed, in the words of its head, e.g. "not an event stream: content-type text/html
    (Welcome to nginx!)" — rather than the "stream ended early" an SSE parser would conclude."""
    if content_encoding not in ("", "identity"):
        return (f"not an event stream: content-encoding {content_encoding} (content-type {content_type or 'none'}); "
                "something between qbench and the server compresses it")
    what = f"not an event stream: content-type {content_type}"
    if "json" in content_type.lower():
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict) and "error" in obj:
            return f"{what}: {error_message(body)}"
        if isinstance(obj, dict) and "choices" in obj:
            return f"{what}, a whole completion: the server ignored \"stream\": true"
    if "html" in content_type.lower() and (title := _html_title(body)):
        return f"{what} ({title})"
    head = one_line(body[:200].decode("utf-8", "replace"), 80)
    return f"{what}: {head!r}" if head else what


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
        return one_line(str(msg if msg is not None else err))
    if obj.get("object") == "error":
        return one_line(str(obj.get("message", "")))
    return None


def _is_empty_delta(p: bytes) -> bool:
    """A role-only or empty-content chunk (vLLM 0.13 sends the role with content ""), which carries no token."""
    i = p.find(b'"content":')
    if i < 0:
        i = p.find(b'"text":')
        if i < 0:
            return True
        i += 7
    else:
        i += 10
    return p.startswith(b'""', i)


def _content(p: bytes) -> str:
    """The text one choice event carries (chat: delta.content; completions: text); "" when it carries none."""
    try:
        ch = json.loads(p)["choices"][0]
        text = (ch.get("delta") or {}).get("content") if "delta" in ch else ch.get("text")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    return text if isinstance(text, str) else ""


def _usage(p: bytes) -> dict | None:
    try:
        obj = json.loads(p)
    except (ValueError, UnicodeDecodeError):
        return None
    u = obj.get("usage") if isinstance(obj, dict) else None
    return u if isinstance(u, dict) else None


class StreamTiming:
    """One response body's timing and token state: feed(now, bytes) per read, end(now) when the body is whole,
    then finish(rec, now) fills the record. feed/end match the HTTP client's on_data/on_end.

    `text`: a list to collect the answer's content into, piece by piece (None, the default: nothing decoded)."""

    __slots__ = ("start", "ttft", "last", "itl", "content_events", "usage", "stream_error", "dec", "text")

    def __init__(self, start: float, text: list[str] | None = None) -> None:
        self.start = start
        self.ttft: float | None = None
        self.last = start
        self.itl: list[float] = []
        self.content_events = 0
        self.usage: dict | None = None
        self.stream_error: str | None = None
        self.dec = SSEDecoder()
        self.text = text

    def feed(self, now: float, data: bytes) -> None:
        # the per-read path: the event loop is inlined here rather than a method of its own (one call less per read)
        events = self.dec.feed(data)
        for p in events:
            # _has_choices and _is_empty_delta inlined for the usual content event (`"choices":[{`, a "content"
            # key): two calls less per token; any other shape takes the functions, unchanged. Measured (min of 300
            # timings, SSE framing included, fast_sse_server's events): 1.57 -> 1.45 us per token at one event
            # per read, 1.72 -> 1.61 at four. End to end (bench/cost_per_token.py, headless, with http1's
            # several-chunks path and plain Protocol) 1.01-1.19x tokens per client CPU-second at C=64..1000 in
            # two runs on a shared machine: the gain is real but near the bench's noise.
            i = p.find(b'"choices":')
            if i >= 0 and (p.startswith(b"[{", i + 10) or _has_choices(p)):
                if self.ttft is None:
                    self.ttft = now - self.start
                    try:
                        first = json.loads(p)
                        ch = first["choices"][0]
                        delta = ch.get("delta") or {}
                        text = delta.get("content") if "delta" in ch else ch.get("text")
                        if text:
                            self.content_events += 1
                            if self.text is not None and isinstance(text, str):
                                self.text.append(text)
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        self.stream_error = self.stream_error or "malformed event: " + one_line(
                            p.decode("utf-8", "replace"), 120
                        )
                else:
                    self.itl.append(now - self.last)
                    k = p.find(b'"content":')
                    if k >= 0:
                        empty = p.startswith(b'""', k + 10)
                    else:
                        empty = _is_empty_delta(p)
                    if not empty:
                        self.content_events += 1
                        if self.text is not None:
                            self.text.append(_content(p))
                if b'"completion_tokens"' in p:  # continuous_usage_stats: keep the latest
                    self.usage = _usage(p) or self.usage
            else:
                err = _stream_error(p)
                if err is not None:
                    self.stream_error = self.stream_error or err
                elif b'"usage"' in p:
                    self.usage = _usage(p) or self.usage
            self.last = now

    def end(self, now: float) -> None:
        """End of body: an event whose blank line never came may still hold the usage chunk."""
        for p in self.dec.close():
            if not _has_choices(p) and b'"usage"' in p:
                self.usage = _usage(p) or self.usage
                self.last = now

    def finish(self, rec: RequestRecord, now: float) -> RequestRecord:
        """Fill rec from what was fed. A transport failure already in rec.error is kept and ends at `now`;
        otherwise the record ends at the last data event and is ok unless the stream itself says otherwise."""
        rec.ttft = self.ttft
        rec.itl = self.itl
        usage = self.usage
        ct = usage.get("completion_tokens") if usage else None
        if isinstance(ct, int):
            rec.out_tokens = ct
        else:
            rec.out_tokens = self.content_events
            rec.tokens_estimated = True
        pt = usage.get("prompt_tokens") if usage else None
        if isinstance(pt, int):
            rec.in_tokens = pt
        if rec.error:
            rec.end = now
            return rec
        rec.end = self.last
        if self.stream_error is not None:
            rec.error = f"stream error: {self.stream_error}"
        elif not self.dec.done and usage is None:
            rec.error = "stream ended early"
        elif self.ttft is None:
            rec.error = "no tokens in stream"
        else:
            rec.ok = True
        return rec
