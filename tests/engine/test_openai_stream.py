"""StreamTiming on byte sequences: (arrival time, bytes) reads in, a filled RequestRecord out.

Event bodies are vLLM v0.13.0's own (shared/reference/sse_chat_stream_v0.13.0_derived.txt). Each read's time is
chosen by the test, so every TTFT, ITL and end below is exact: an event is timed by the read that completes it.
"""
from __future__ import annotations

import json

import pytest

from qbench_tui.engine.openai_stream import StreamTiming, error_message
from qbench_tui.engine.records import RequestRecord

_CHUNK = '{"id":"chatcmpl-1a2b3c","object":"chat.completion.chunk","created":1764000000,"model":"Qwen/Qwen2.5-14B-Instruct-AWQ",'
ROLE = (_CHUNK + '"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning_content":null},'
        '"logprobs":null,"finish_reason":null}],"prompt_token_ids":null}').encode()
HELLO = (_CHUNK + '"choices":[{"index":0,"delta":{"content":"Hello","reasoning_content":null},"logprobs":null,'
         '"finish_reason":null,"token_ids":null}]}').encode()
BANG = (_CHUNK + '"choices":[{"index":0,"delta":{"content":"!","reasoning_content":null},"logprobs":null,'
        '"finish_reason":"stop","stop_reason":null,"token_ids":null}]}').encode()
EMPTY = (_CHUNK + '"choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":null}]}').encode()
USAGE = (_CHUNK + '"choices":[],"usage":{"prompt_tokens":20,"total_tokens":29,"completion_tokens":9}}').encode()
ERROR = b'{"error": {"message": "boom at step 2", "type": "BadRequestError", "param": null, "code": 400}}'
FLAT_ERROR = b'{"object": "error", "message": "flat   boom", "type": "InternalServerError", "code": 500}'
DONE = b"[DONE]"


def ev(payload: bytes, nl: bytes = b"\n") -> bytes:
    return b"data: " + payload + nl + nl


def with_usage(payload: bytes, completion: int) -> bytes:
    """A chunk as continuous_usage_stats sends it: the running usage beside the choices."""
    obj = json.loads(payload)
    obj["usage"] = {"prompt_tokens": 20, "total_tokens": 20 + completion, "completion_tokens": completion}
    return json.dumps(obj, separators=(",", ":")).encode()


def run(reads: list[tuple[float, bytes]], *, start: float = 0.0, end_at: float | None = None,
        transport_error: str = "", failed_at: float = 99.0) -> RequestRecord:
    t = StreamTiming(start)
    for now, data in reads:
        t.feed(now, data)
    if not transport_error:
        t.end(end_at if end_at is not None else (reads[-1][0] if reads else start))
    rec = RequestRecord(ok=False, segment=0, concurrency=1, worker=0, start=start, error=transport_error)
    return t.finish(rec, failed_at)


def one_per_read(*payloads: bytes, nl: bytes = b"\n", t0: float = 1.0) -> list[tuple[float, bytes]]:
    return [(t0 + i, ev(p, nl)) for i, p in enumerate(payloads)]


# name -> (reads, expected record fields)
CASES: dict[str, tuple[list[tuple[float, bytes]], dict]] = {
    "v0.13 stream, LF": (
        one_per_read(ROLE, HELLO, BANG, USAGE, DONE),
        # the role chunk has non-empty choices: TTFT is its arrival, as vllm bench serve times it
        dict(ok=True, error="", ttft=1.0, itl=[1.0, 1.0], end=4.0, out_tokens=9, in_tokens=20, tokens_estimated=False),
    ),
    "v0.13 stream, CRLF": (
        one_per_read(ROLE, HELLO, BANG, USAGE, DONE, nl=b"\r\n"),
        dict(ok=True, error="", ttft=1.0, itl=[1.0, 1.0], end=4.0, out_tokens=9, in_tokens=20, tokens_estimated=False),
    ),
    "role-only first chunk is not a token": (
        one_per_read(ROLE, HELLO, BANG, DONE),
        dict(ok=True, ttft=1.0, itl=[1.0, 1.0], end=3.0, out_tokens=2, in_tokens=0, tokens_estimated=True),
    ),
    "first chunk with content counts as a token": (
        one_per_read(HELLO, BANG, DONE),
        dict(ok=True, ttft=1.0, itl=[1.0], out_tokens=2, tokens_estimated=True),
    ),
    "empty content deltas: ITL gaps, not tokens": (
        one_per_read(ROLE, EMPTY, HELLO, EMPTY, BANG, DONE),
        dict(ok=True, ttft=1.0, itl=[1.0, 1.0, 1.0, 1.0], end=5.0, out_tokens=2, tokens_estimated=True),
    ),
    "error event mid-stream": (
        one_per_read(ROLE, HELLO, ERROR, DONE),
        dict(ok=False, error="stream error: boom at step 2", ttft=1.0, itl=[1.0], end=3.0, out_tokens=1),
    ),
    "flat error event, whitespace collapsed": (
        one_per_read(ROLE, FLAT_ERROR, DONE),
        dict(ok=False, error="stream error: flat boom", ttft=1.0, itl=[]),
    ),
    "first error wins": (
        one_per_read(ROLE, ERROR, FLAT_ERROR, DONE),
        dict(ok=False, error="stream error: boom at step 2"),
    ),
    "usage in the last content chunk (continuous_usage_stats)": (
        one_per_read(with_usage(ROLE, 0), with_usage(HELLO, 4), with_usage(BANG, 7), DONE),
        dict(ok=True, ttft=1.0, itl=[1.0, 1.0], end=3.0, out_tokens=7, in_tokens=20, tokens_estimated=False),
    ),
    "usage without [DONE] is a whole stream": (
        one_per_read(ROLE, HELLO, USAGE),
        dict(ok=True, end=3.0, out_tokens=9, tokens_estimated=False),
    ),
    "missing usage: tokens estimated from content events": (
        one_per_read(ROLE, HELLO, BANG, HELLO, DONE),
        dict(ok=True, out_tokens=3, in_tokens=0, tokens_estimated=True),
    ),
    "[DONE] without usage": (
        one_per_read(HELLO, DONE),
        dict(ok=True, error="", ttft=1.0, itl=[], end=1.0, out_tokens=1, tokens_estimated=True),
    ),
    "multiple events in one read share its time": (
        [(1.0, ev(ROLE)), (2.0, ev(HELLO) + ev(BANG) + ev(HELLO)), (3.0, ev(USAGE) + ev(DONE))],
        dict(ok=True, ttft=1.0, itl=[1.0, 0.0, 0.0], end=3.0, out_tokens=9),
    ),
    "an event split over reads is timed by the read that completes it": (
        [(1.0, ev(ROLE)[:50]), (2.0, ev(ROLE)[50:] + ev(HELLO)[:-1]), (3.0, b"\n"), (4.0, ev(USAGE) + ev(DONE))],
        dict(ok=True, ttft=2.0, itl=[1.0], end=4.0, out_tokens=9),
    ),
    "no [DONE] and no usage: ended early": (
        one_per_read(ROLE, HELLO),
        dict(ok=False, error="stream ended early", ttft=1.0, out_tokens=1, tokens_estimated=True),
    ),
    "no choices at all": (
        one_per_read(USAGE, DONE),
        dict(ok=False, error="no tokens in stream", ttft=None, end=1.0, out_tokens=9),
    ),
    "empty body": (
        [],
        dict(ok=False, error="stream ended early", ttft=None, itl=[], end=0.0, out_tokens=0, tokens_estimated=True),
    ),
    "choices null and [] are not the first token": (
        one_per_read(_CHUNK.encode() + b'"choices":null}', _CHUNK.encode() + b'"choices": [ ]}', HELLO, DONE),
        dict(ok=True, ttft=3.0, itl=[]),
    ),
    "pings, event/id fields and a data line without its space": (
        [(1.0, b": ping\n\nevent: message\nid: 7\ndata:" + HELLO + b"\n\n"), (2.0, b": ping\r\n\r\n"),
         (3.0, ev(BANG)), (4.0, b"data:[DONE]\n\n")],
        dict(ok=True, ttft=1.0, itl=[2.0], end=3.0, out_tokens=2),
    ),
    "malformed first choice event": (
        one_per_read(b'{"choices":[{"index":0,"delta":{"content":"x"}} TRUNC', HELLO, DONE),
        dict(ok=False, error='stream error: malformed event: {"choices":[{"index":0,"delta":{"content":"x"}} TRUNC',
             ttft=1.0),
    ),
    "completions endpoint: text events": (
        one_per_read(b'{"choices":[{"index":0,"text":"Hi"}]}', b'{"choices":[{"index":0,"text":""}]}',
                     b'{"choices":[{"index":0,"text":" there"}]}', DONE),
        dict(ok=True, ttft=1.0, itl=[1.0, 1.0], out_tokens=2, tokens_estimated=True),
    ),
    "after [DONE] nothing counts": (
        one_per_read(HELLO, DONE, BANG, ERROR),
        dict(ok=True, error="", itl=[], end=1.0, out_tokens=1),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_stream_table(name):
    reads, want = CASES[name]
    rec = run(reads)
    got = {k: getattr(rec, k) for k in want}
    assert got == want


def test_usage_event_without_its_blank_line_is_read_at_end_of_body():
    # a server that forgot the final blank line: the SSE spec drops the event, we still take its usage
    reads = [(1.0, ev(HELLO)), (2.0, b"data: " + USAGE)]
    rec = run(reads, end_at=2.5)
    assert (rec.ok, rec.out_tokens, rec.in_tokens, rec.tokens_estimated, rec.end) == (True, 9, 20, False, 2.5)


def test_transport_failure_keeps_its_error_and_ends_when_it_failed():
    rec = run(one_per_read(ROLE, HELLO), transport_error="read timeout", failed_at=7.5)
    assert (rec.ok, rec.error, rec.ttft, rec.end, rec.out_tokens, rec.tokens_estimated) == (
        False, "read timeout", 1.0, 7.5, 1, True)
    assert rec.itl == [1.0]


def test_ttft_and_itl_are_relative_to_start():
    rec = run([(10.25, ev(ROLE)), (10.5, ev(HELLO)), (11.0, ev(USAGE) + ev(DONE))], start=10.0)
    assert (rec.ttft, rec.itl, rec.e2el) == (0.25, [0.25], 1.0)


@pytest.mark.parametrize("nl", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_byte_at_a_time_every_event_timed_by_its_last_byte(nl):
    # read i arrives at time i: an event's time is the offset of the final byte of its blank line
    blob = b"".join(ev(p, nl) for p in (ROLE, HELLO, EMPTY, BANG, USAGE, DONE))
    ends = []
    pos = 0
    for p in (ROLE, HELLO, EMPTY, BANG, USAGE):
        pos += len(ev(p, nl))
        ends.append(float(pos - 1))
    rec = run([(float(i), blob[i:i + 1]) for i in range(len(blob))])
    assert rec.ok and (rec.out_tokens, rec.tokens_estimated) == (9, False)
    assert rec.ttft == ends[0]
    assert rec.itl == [b - a for a, b in zip(ends[:3], ends[1:4])]
    assert rec.end == ends[4]


@pytest.mark.parametrize("nl", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_every_split_point_gives_the_same_record(nl):
    blob = b"".join(ev(p, nl) for p in (ROLE, HELLO, BANG, USAGE, DONE))
    role_end = len(ev(ROLE, nl))
    usage_end = len(blob) - len(ev(DONE, nl))
    for i in range(len(blob) + 1):
        rec = run([(1.0, blob[:i]), (2.0, blob[i:])])
        assert rec.ok and (rec.out_tokens, rec.in_tokens) == (9, 20), i
        assert rec.ttft == (1.0 if i >= role_end else 2.0), i
        assert len(rec.itl) == 2 and rec.end == (1.0 if i >= usage_end else 2.0), i


def test_error_message_forms():
    assert error_message(b'{"error":{"message":"a b"}}') == "a b"
    assert error_message(b'{"error":"plain string"}') == "plain string"
    assert error_message(b'{"object":"error","message":"flat"}') == "flat"
    assert error_message(b'{"detail":"Not Found"}') == "Not Found"
    assert error_message(b"plain\ntext") == "plain text"
    assert error_message(b"\xff<html>" + b"x" * 500).endswith("…")
    assert len(error_message(b"x" * 5000)) == 200
