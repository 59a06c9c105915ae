from __future__ import annotations

import json

import pytest

from qbench_tui.engine.sse import SSEDecoder

ROLE = b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
UTF = json.dumps({"choices": [{"delta": {"content": "h\u00e9llo \u4e16\u754c \U0001F389"}}]},
                 ensure_ascii=False).encode()
USAGE = b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}'


def _stream(payloads, nl=b"\n", comments=False):
    out = b""
    for p in payloads:
        if comments:
            out += b": keep-alive" + nl + nl
        out += b"data: " + p + nl + nl
    return out


CASES = {
    "lf": (_stream([ROLE, UTF, USAGE, b"[DONE]"]), [ROLE, UTF, USAGE], True),
    "crlf": (_stream([ROLE, UTF, USAGE, b"[DONE]"], nl=b"\r\n"), [ROLE, UTF, USAGE], True),
    "comments": (_stream([UTF, USAGE, b"[DONE]"], comments=True), [UTF, USAGE], True),
    "no_space_after_colon": (b"data:" + UTF + b"\n\ndata:[DONE]\n\n", [UTF], True),
    "multiline_and_fields": (b"event: x\nid: 1\ndata: a\ndata: b\n\nretry: 5\n\ndata: [DONE]\n\n", [b"a\nb"], True),
    "no_done": (_stream([UTF, UTF]), [UTF, UTF], False),
    "after_done_ignored": (_stream([UTF, b"[DONE]", ROLE]), [UTF], True),
}


def _feed_pieces(pieces):
    d = SSEDecoder()
    out = []
    for p in pieces:
        out += d.feed(p)
    return out, d.done


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_single_split_offset(name):
    blob, want, done = CASES[name]
    for i in range(len(blob) + 1):
        got, got_done = _feed_pieces([blob[:i], blob[i:]])
        assert got == want, (name, i)
        assert got_done is done


@pytest.mark.parametrize("name", sorted(CASES))
def test_byte_at_a_time(name):
    blob, want, done = CASES[name]
    got, got_done = _feed_pieces([blob[i:i + 1] for i in range(len(blob))])
    assert got == want
    assert got_done is done


def test_two_splits_inside_utf8_payload():
    blob = _stream([UTF, b"[DONE]"])
    # every pair of cut points within the first event (covers cuts inside each multi-byte character)
    end = blob.index(b"\n\n") + 2
    for i in range(0, end):
        for j in range(i, end, 3):
            got, done = _feed_pieces([blob[:i], blob[i:j], blob[j:]])
            assert got == [UTF] and done, (i, j)
    assert json.loads(got[0])["choices"][0]["delta"]["content"].endswith("\U0001F389")


def test_many_events_in_one_chunk_and_payload_is_bytes():
    blob = _stream([b"1", b"2", b"3"])
    d = SSEDecoder()
    got = d.feed(blob)
    assert got == [b"1", b"2", b"3"]
    assert all(isinstance(x, bytes) for x in got)
    assert not d.done


def test_close_dispatches_unterminated_final_event():
    d = SSEDecoder()
    assert d.feed(b"data: " + USAGE) == []
    assert d.close() == [USAGE]
    d = SSEDecoder()
    assert d.feed(b"data: " + USAGE + b"\n") == []
    assert d.close() == [USAGE]


def test_done_then_feed_returns_nothing():
    d = SSEDecoder()
    assert d.feed(b"data: [DONE]\n\n") == []
    assert d.done
    assert d.feed(b"data: x\n\n") == []
