"""The HTTP/1.1 client on its own: bytes in, body bytes out, against a real asyncio server on 127.0.0.1 that writes
exactly the response bytes each test scripts (no SSE, no OpenAI anywhere here)."""
from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from time import perf_counter

import pytest

from qbench_tui.engine.http1 import RawClient


@dataclass
class Script:
    writes: list[bytes]  # written in this order, each drained (the kernel may still merge them)
    then: str = "keep"  # keep (read the next request) | close | stall (send nothing more, keep the socket)
    gap: float = 0.0  # seconds between writes: each write then arrives as a read of its own


@dataclass
class Seen:
    conn: int
    head: bytes
    body: bytes


@dataclass
class RawServer:
    scripts: dict[str, Script] = field(default_factory=dict)
    once: dict[str, Script] = field(default_factory=dict)  # answers the next request of that name, then goes
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        me = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                body = await reader.readexactly(length)
                self.seen.append(Seen(me, head, body))
                path = head.split(b" ", 2)[1].decode()
                name = path.rsplit("/", 1)[-1]
                sc = self.once.pop(name, None) or self.scripts[name]
                for k, w in enumerate(sc.writes):
                    if k and sc.gap:
                        await asyncio.sleep(sc.gap)
                    writer.write(w)
                    await writer.drain()
                if sc.then == "close":
                    return
                if sc.then == "stall":
                    await reader.read()  # until the client gives up and closes
                    return
        finally:
            writer.close()


@pytest.fixture
async def server():
    srv = RawServer()
    s = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.url = f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}"
    try:
        yield srv
    finally:
        s.close()


class Sink:
    def __init__(self) -> None:
        self.reads: list[tuple[float, bytes]] = []
        self.ended: list[float] = []

    def data(self, now: float, b: bytes) -> None:
        assert not self.ended, "bytes after the end of the body"
        self.reads.append((now, b))

    def end(self, now: float) -> None:
        self.ended.append(now)

    @property
    def body(self) -> bytes:
        return b"".join(b for _, b in self.reads)


async def post(client: RawClient, name: str, content: bytes = b"{}"):
    sink = Sink()
    reply = await client.post("/" + name, content, sink.data, sink.end)
    return reply, sink


def chunked(*parts: bytes, head: bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") -> bytes:
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


PARTS = (b"data: one\n\n", b"data: t\xc3\xb6k\n\n", b"x" * 300)
BODY = b"".join(PARTS)

# name -> (response bytes, expected body delivered to on_data)
WHOLE_RESPONSES: dict[str, tuple[bytes, bytes]] = {
    "chunked": (chunked(*PARTS), BODY),
    "chunk-extension-and-trailer": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=val\r\nhello\r\n6\r\n world\r\n"
        b"0\r\nX-Trailer: 1\r\n\r\n", b"hello world"),
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY), BODY),
    "interim-100": (b"HTTP/1.1 100 Continue\r\n\r\n" + chunked(b"after"), b"after"),
    "empty-chunked": (chunked(), b""),
    # several whole chunks in one read (a client a step behind its server), at every split: whole ones, then a cut
    # one, an extension, the last chunk
    "many-chunks": (chunked(*(b"data: %d\n\n" % i for i in range(12))), b"".join(b"data: %d\n\n" % i for i in range(12))),
    "many-chunks-extension-between": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3;e=1\r\nabc\r\n2\r\nxy\r\n"
        b"10\r\n0123456789abcdef\r\n0\r\n\r\n", b"helloabcxy0123456789abcdef"),
}


@pytest.mark.parametrize("name", list(WHOLE_RESPONSES))
async def test_whole_response_at_every_split_on_one_connection(server, name):
    raw, want = WHOLE_RESPONSES[name]
    for i in range(len(raw) + 1):
        server.scripts[f"{name}-{i}"] = Script([raw[:i], raw[i:]] if 0 < i < len(raw) else [raw])
    async with RawClient(server.url) as client:
        for i in range(len(raw) + 1):
            reply, sink = await post(client, f"{name}-{i}")
            assert (reply.status, reply.error, reply.body) == (200, "", None), i
            assert sink.body == want, i
            assert len(sink.ended) == 1, i
    assert server.connections == 1  # every response ended cleanly, so the one connection was kept


async def test_several_whole_chunks_in_one_read_at_every_split(server):
    """Reads that hold several whole chunks (a client a step behind its server) and then a cut one, at every byte:
    the body is whole, and every piece of one read carries that read's one stamp (two writes hold chunk data:
    at most two stamps; writes merged by the kernel only make fewer)."""
    events = [b"data: %d\n\n" % i for i in range(12)]
    framed = [b"%x\r\n%s\r\n" % (len(p), p) for p in events]
    body = b"".join(framed)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(1, len(body)):
        server.scripts[f"s-{i}"] = Script([head, body[:i], body[i:], b"0\r\n\r\n"], gap=0.002)
    async with RawClient(server.url) as client:
        for i in range(1, len(body)):
            reply, sink = await post(client, f"s-{i}")
            assert (reply.status, reply.error) == (200, ""), i
            assert sink.body == b"".join(events) and len(sink.ended) == 1, i
            assert 1 <= len({now for now, _ in sink.reads}) <= 2, i
    assert server.connections == 1


async def test_reads_are_stamped_in_order_between_send_and_return(server):
    server.scripts["s"] = Script([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
                                 + [b"%x\r\n%s\r\n" % (len(p), p) for p in PARTS] + [b"0\r\n\r\n"])
    async with RawClient(server.url) as client:
        t0 = perf_counter()
        reply, sink = await post(client, "s")
        t1 = perf_counter()
    assert reply.status == 200 and sink.body == BODY
    times = [t for t, _ in sink.reads] + sink.ended
    assert times == sorted(times) and t0 <= times[0] and times[-1] <= t1
    assert all(type(b) is bytes for _, b in sink.reads)  # never a view into the connection's reused buffer


async def test_request_bytes_on_the_wire(server):
    server.scripts["p"] = Script([chunked(b"ok")])
    url = server.url.replace("http://", "http://user:pw@") + "/base/"
    async with RawClient(url, headers={"Content-Type": "application/json", "Authorization": "Bearer k"}) as client:
        reply, _ = await post(client, "p", b'{"a":1}')
    assert reply.status == 200
    head = server.seen[-1].head.decode("latin-1").split("\r\n")
    assert head[0] == "POST /base/p HTTP/1.1"
    assert head[1] == "Host: " + server.url.removeprefix("http://")  # no userinfo
    assert "Authorization: Bearer k" in head and "Content-Length: 7" in head
    assert server.seen[-1].body == b'{"a":1}'


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    chunked(b"ok") + b"HTTP/1.1 200 OK\r\n",  # bytes past the end of the response: framing no longer trusted
], ids=["connection-close", "http-1.0", "trailing-bytes"])
async def test_response_that_forbids_reuse_gets_a_new_connection(server, raw):
    server.scripts["r"] = Script([raw])
    async with RawClient(server.url) as client:
        for _ in range(2):
            reply, sink = await post(client, "r")
            assert (reply.status, reply.error, sink.body) == (200, "", b"ok")
    assert server.connections == 2


async def test_body_until_close(server):
    server.scripts["u"] = Script([b"HTTP/1.1 200 OK\r\n\r\n", b"part one, ", b"part two"], then="close")
    async with RawClient(server.url) as client:
        reply, sink = await post(client, "u")
    assert (reply.status, reply.error, sink.body, len(sink.ended)) == (200, "", b"part one, part two", 1)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 17\r\n\r\n{\"error\":\"nope\"}\n",
    b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"error\":\r\n8\r\n\"nope\"}\n\r\n0\r\n\r\n",
], ids=["length", "chunked"])
async def test_non_200_body_is_returned_not_streamed(server, raw):
    server.scripts["e"] = Script([raw])
    async with RawClient(server.url) as client:
        reply, sink = await post(client, "e")
    assert (reply.status, reply.error, reply.body) == (400, "", b'{"error":"nope"}\n')
    assert sink.reads == [] and sink.ended == []


async def test_204_has_no_body_whatever_the_headers_say(server):
    server.scripts["n"] = Script([b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"])
    async with RawClient(server.url) as client:
        reply, _ = await post(client, "n")
    assert (reply.status, reply.error, reply.body) == (204, "", b"")


@pytest.mark.parametrize("writes,then,error", [
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], "keep", "connection error: bad chunk size"),
    ([b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70000], "stall", "connection error: response head too large"),
    ([b"garbage\r\n\r\n"], "keep", "connection error: bad status line 'garbage'"),
    ([], "close", "connection error: server disconnected without sending a response"),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], "close",
     "connection error: peer closed connection without sending complete message body"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"], "close",
     "connection error: peer closed connection without sending complete message body"),
], ids=["bad-chunk-size", "head-too-large", "bad-status-line", "no-response", "short-length", "short-chunked"])
async def test_broken_responses_fail_with_a_reason(server, writes, then, error):
    server.scripts["b"] = Script(writes, then=then)
    async with RawClient(server.url) as client:
        reply, _ = await post(client, "b")
    assert reply.error == error
    server.scripts["ok"] = Script([chunked(b"fine")])
    async with RawClient(server.url) as client:  # the server is fine for the next client
        assert (await post(client, "ok"))[1].body == b"fine"


async def test_read_timeout_after_silence(server):
    server.scripts["stall"] = Script([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n"], "stall")
    loop = asyncio.get_running_loop()
    async with RawClient(server.url, read_timeout=0.3) as client:
        t0 = loop.time()
        reply, sink = await post(client, "stall")
        waited = loop.time() - t0
    assert (reply.status, reply.error, sink.body, sink.ended) == (200, "read timeout", b"hi", [])
    assert 0.25 <= waited < 5


async def test_connect_refused():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with RawClient(f"http://127.0.0.1:{port}", connect_timeout=2.0) as client:
        reply, sink = await post(client, "x")
    assert reply.status is None and reply.error.startswith("connect error: ") and sink.reads == []


async def test_cancel_mid_response_drops_the_connection(server):
    server.scripts["stall"] = Script([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n"], "stall")
    server.scripts["ok"] = Script([chunked(b"fine")])
    async with RawClient(server.url) as client:
        sink = Sink()
        task = asyncio.create_task(client.post("/stall", b"{}", sink.data, sink.end))
        deadline = asyncio.get_running_loop().time() + 10
        while not sink.reads and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        reply, sink2 = await post(client, "ok")
    assert sink.body == b"hi" and sink2.body == b"fine" and reply.error == ""
    assert server.connections == 2


def test_rejects_non_http_urls():
    for url in ("ftp://x", "localhost:8000", "http://"):
        with pytest.raises(ValueError):
            RawClient(url)


# Bare-LF heads and chunk lines, from hand-written servers: read as if CRLF (they used to wait for the read
# timeout, 600 s by default, for a "\r\n\r\n" that never came).
LF_RESPONSES: dict[str, tuple[bytes, bytes]] = {
    "lf-head-chunked": (chunked(*PARTS, head=b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n"), BODY),
    "lf-everywhere": (b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n5\nhello\n6;x=y\n world\n0\nX-T: 1\n\n",
                      b"hello world"),
    "lf-head-length-crlf-body": (b"HTTP/1.1 200 OK\nContent-Length: 22\n\ndata: a\r\n\r\ndata: b\r\n\r\n",
                                 b"data: a\r\n\r\ndata: b\r\n\r\n"),
    "mixed-head": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok", b"ok"),
    "lf-chunk-among-crlf-chunks": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\nabc\r\n"
                                   b"2\r\nxy\n4\r\nwxyz\r\n0\r\n\r\n", b"helloabcxywxyz"),
}


@pytest.mark.parametrize("name", list(LF_RESPONSES))
async def test_bare_lf_responses_parse_at_every_split(server, name):
    raw, want = LF_RESPONSES[name]
    for i in range(len(raw) + 1):
        server.scripts[f"{name}-{i}"] = Script([raw[:i], raw[i:]] if 0 < i < len(raw) else [raw])
    async with RawClient(server.url, read_timeout=3.0) as client:
        for i in range(len(raw) + 1):
            reply, sink = await post(client, f"{name}-{i}")
            assert (reply.status, reply.error, reply.body) == (200, "", None), i
            assert sink.body == want and len(sink.ended) == 1, i
    assert server.connections == 1


async def test_not_http_at_all_fails_at_once(server):
    # what an https port (or another protocol) sends back to a plain-http request: no head will ever end
    server.scripts["tls"] = Script([b"\x15\x03\x03\x00\x02\x02\x46"], then="stall")
    loop = asyncio.get_running_loop()
    async with RawClient(server.url, read_timeout=30.0) as client:
        t0 = loop.time()
        reply, sink = await post(client, "tls")
    assert reply.error.startswith("connection error: not an HTTP response") and loop.time() - t0 < 5
    assert sink.reads == [] and reply.status is None


@pytest.mark.parametrize("head, ctype, cenc", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n", "text/html; charset=utf-8", ""),
    (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n", "application/json", ""),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: GZIP\r\n", "text/event-stream",
     "gzip"),
], ids=["html", "json", "gzip"])
async def test_a_200_that_is_no_event_stream_is_collected_not_streamed(server, head, ctype, cenc):
    server.scripts["n"] = Script([head + b"Content-Length: 5\r\n\r\nhello"])
    async with RawClient(server.url) as client:
        reply, sink = await post(client, "n")
        assert (reply.status, reply.error, reply.body) == (200, "", b"hello")
        assert (reply.content_type, reply.content_encoding) == (ctype, cenc)
        assert sink.reads == [] and sink.ended == []
        server.scripts["s"] = Script([chunked(b"ok", head=b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; "
                                                          b"charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n")])
        reply, sink = await post(client, "s")  # same connection: the collected body was framed exactly
    assert (reply.body, sink.body, len(sink.ended)) == (None, b"ok", 1) and server.connections == 1


async def test_a_kept_alive_connection_that_answers_nothing_is_retried_once_on_a_new_one(server):
    # the server's keep-alive timer closed the connection as the next request went out: that request never
    # reached it (real vLLM on 2 busy cores did this to a few requests), so it goes once more on a new connection
    server.scripts["ok"] = Script([chunked(b"fine")])
    async with RawClient(server.url) as client:
        first, _ = await post(client, "ok")
        assert first.error == ""
        server.once["ok"] = Script([], then="close")
        reply, sink = await post(client, "ok")
        assert (reply.status, reply.error, sink.body) == (200, "", b"fine")
        assert client.stale_retries == 1 and server.connections == 2


async def test_a_new_connection_that_answers_nothing_is_a_failure_not_retried(server):
    server.scripts["ok"] = Script([chunked(b"fine")])
    server.once["ok"] = Script([], then="close")
    async with RawClient(server.url) as client:
        reply, _ = await post(client, "ok")
        assert reply.error == "connection error: server disconnected without sending a response"
        assert client.stale_retries == 0 and server.connections == 1 and len(server.seen) == 1


@pytest.mark.parametrize("name", ["chunked", "many-chunks", "chunk-extension-and-trailer", "content-length"])
def test_on_uvloop_every_split_reads_the_same(name):
    """On uvloop (what `qbench run` and the engine process run) the client reads through a plain Protocol, not
    the BufferedProtocol asyncio's loop gets: the same bytes at every split, one connection kept."""
    import uvloop

    from qbench_tui.engine import http1

    raw, want = WHOLE_RESPONSES[name]

    async def main() -> tuple[list, int, type]:
        srv = RawServer()
        for i in range(len(raw) + 1):
            srv.scripts[f"{name}-{i}"] = Script([raw[:i], raw[i:]] if 0 < i < len(raw) else [raw])
        s = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
        srv.url = f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}"
        got = []
        try:
            async with RawClient(srv.url) as client:
                for i in range(len(raw) + 1):
                    reply, sink = await post(client, f"{name}-{i}")
                    got.append((reply.status, reply.error, sink.body, len(sink.ended)))
                    kind = type(client._conn)
        finally:
            s.close()
        return got, srv.connections, kind

    got, connections, kind = uvloop.run(main())
    assert kind is http1._StreamConn
    assert got == [(200, "", want, 1)] * (len(raw) + 1)
    assert connections == 1
