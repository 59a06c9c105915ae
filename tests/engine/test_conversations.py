"""Multi-turn conversations across the engine's seams: a scripted server records every body on the wire (turn k
carries exactly the k-1 answers it streamed, verbatim, in order), the answer's text is decoded only when asked, a
user thinks between turns without a request in flight, and a thinking user stops at the level's end."""
from __future__ import annotations

import asyncio
import json

from qbench_tui.engine.conversations import Conversations
from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.openai_stream import StreamTiming
from qbench_tui.engine.prompts import Refused
from qbench_tui.engine.records import RequestRecord, RequestSpec


class Scripted:
    """A keep-alive HTTP/1.1 chat server: answers request n with "answer n is here" in 4 content events, counts
    prompt tokens as the body's characters / 4, and records each body and how many requests were in flight."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                raw = await reader.readexactly(length)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                n = len(self.bodies)
                self.bodies.append(json.loads(raw))
                await asyncio.sleep(0.005)
                words = ["answer", f" {n}", " is", " here"]
                events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
                events += [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in words]
                events.append({"choices": [], "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": 4}})
                body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
                self.in_flight -= 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _serve():
    s = Scripted()
    server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
    return s, server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _by_conversation(records):
    convs: dict[int, list[RequestRecord]] = {}
    for r in records:
        convs.setdefault(r.conversation, []).append(r)
    return {c: sorted(rs, key=lambda r: r.turn) for c, rs in convs.items()}


async def test_each_turn_carries_the_answers_streamed_back_verbatim_and_in_order():
    s, server, url = await _serve()
    records: list[RequestRecord] = []
    source = Conversations(lambda j: f"question {j}", 4, max_tokens=8)
    eng = LoadEngine(RequestSpec(url=url, model="m", max_tokens=8), source, on_record=records.append)
    try:
        await eng.run_wave(3)
    finally:
        await eng.stop()
        server.close()
    assert len(records) == 12 and all(r.ok for r in records)
    convs = _by_conversation(records)
    assert len(convs) == 3 and all([r.turn for r in rs] == [1, 2, 3, 4] for rs in convs.values())
    # the answer of request n is "answer n is here": each body's assistant messages are exactly the answers its
    # conversation's earlier bodies got, in order, and the users' messages alternate with them
    answers: dict[int, list[str]] = {}
    openings = set()
    for n, body in enumerate(s.bodies):
        msgs = body["messages"]
        roles = [m["role"] for m in msgs]
        assert roles == ["user", "assistant"] * (len(msgs) // 2) + ["user"]
        first = msgs[0]["content"]
        turn = len(msgs) // 2 + 1
        if turn == 1:
            openings.add(first)
        said = answers.setdefault(first, [])
        assert [m["content"] for m in msgs if m["role"] == "assistant"] == said
        said.append(f"answer {n} is here")
    assert len(openings) == 3  # every conversation is its own from its first message (a unique tag opens it)
    for rs in convs.values():  # prompt tokens grow with the history
        assert all(a.in_tokens < b.in_tokens for a, b in zip(rs, rs[1:]))


async def test_a_thinking_user_is_idle_and_each_conversation_has_k_turns():
    s, server, url = await _serve()
    records: list[RequestRecord] = []
    source = Conversations(lambda j: f"q{j}", 3, think_time=0.05, max_tokens=8)
    eng = LoadEngine(RequestSpec(url=url, model="m", max_tokens=8), source, on_record=records.append)
    try:
        await eng.run_steady(2, requests=12, settle=None)
    finally:
        await eng.stop()
        server.close()
    assert s.max_in_flight <= 2
    convs = _by_conversation([r for r in records if r.ok])
    whole = [rs for rs in convs.values() if len(rs) == 3]
    assert len(whole) >= 3 and all(len(rs) <= 3 for rs in convs.values())
    for rs in whole:  # the next turn starts only after the think time (asyncio.sleep never returns early)
        assert all(b.start - a.end >= 0.05 - 0.002 for a, b in zip(rs, rs[1:]))


async def test_the_level_end_cuts_a_users_think_time_short():
    s, server, url = await _serve()
    source = Conversations(lambda j: f"q{j}", 5, think_time=600.0, max_tokens=8)
    eng = LoadEngine(RequestSpec(url=url, model="m", max_tokens=8), source)
    try:
        recs = await asyncio.wait_for(eng.run_steady(2, duration=0.2, settle=None), 60)
    finally:
        await eng.stop()
        server.close()
    assert [r.turn for r in recs] == [1, 1] and eng.workers == 0


def test_a_turn_that_would_not_fit_is_refused_and_ends_the_conversation():
    src = Conversations(lambda j: "x" * 400, 5, max_tokens=100, max_model_len=600)  # ~101 tokens a message
    prompt, turn, conv = src.next(0)
    assert turn == 1 and not isinstance(prompt, Refused)
    rec = RequestRecord(ok=True, segment=0, concurrency=1, worker=0, start=0.0, in_tokens=120, out_tokens=100)
    assert src.answered(0, rec, "a" * 400)
    prompt, turn, _ = src.next(0)  # 220 + 101 + 16 + 100 = 437: fits
    assert turn == 2 and not isinstance(prompt, Refused)
    rec.in_tokens = 340
    assert src.answered(0, rec, "b" * 400)
    prompt, turn, c = src.next(0)  # 440 + 101 + 16 + 100 > 600
    assert isinstance(prompt, Refused) and turn == 3 and c == conv
    assert "turn 3" in prompt.reason and "max_model_len 600" in prompt.reason
    assert src.next(0)[1:] == (1, conv + 1)  # the user's next request opens a new conversation


def test_a_failed_turn_ends_its_conversation():
    src = Conversations(lambda j: f"q{j}", 3)
    _, _, first = src.next(0)
    assert not src.answered(0, RequestRecord(ok=False, segment=0, concurrency=1, worker=0, start=0.0), "")
    assert src.next(0)[1:] == (1, first + 1)


def test_completions_history_is_one_text_the_answer_continuing_its_prompt():
    src = Conversations(lambda j: f"q{j}", 3, chat=False)
    p1, _, _ = src.next(0)
    src.answered(0, RequestRecord(ok=True, segment=0, concurrency=1, worker=0, start=0.0), " a1")
    p2, _, _ = src.next(0)
    assert isinstance(p1, str) and p2 == p1 + " a1\n\nq1"


def _chunk(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"


def test_the_answer_text_is_collected_only_when_asked():
    body = _chunk("Hel") + _chunk("lo") + _chunk(" there") + b"data: [DONE]\n\n"
    plain = StreamTiming(0.0)
    plain.feed(1.0, body)
    assert plain.text is None and plain.content_events == 3
    parts: list[str] = []
    asked = StreamTiming(0.0, parts)
    asked.feed(1.0, body)
    assert "".join(parts) == "Hello there" and asked.content_events == 3
