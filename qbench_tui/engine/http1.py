"""A streaming HTTP/1.1 client: one keep-alive connection (http or https) per client, POST bytes in, body bytes out.

It knows nothing of what the body holds: a 200's body goes to the caller's `on_data(now, bytes)` as it arrives,
`now` being perf_counter() right after the network read returned (so bytes that came in one read share one
timestamp, as they did on the wire; a read of several whole chunks is handed over chunk by chunk, all with that
stamp), then `on_end(now)` once the body is complete. Any other status's body is
collected (up to 1 MiB) and returned for the error message.

Built from measurements (bench/client_capacity.py, docs/PERFORMANCE.md): each read is parsed inside the protocol's
callback (de-chunking, then straight into on_data) and the request's coroutine wakes once, when the response ends.
Over httpx (httpx -> httpcore -> h11 -> anyio, all per read) the engine streamed 0.4-0.5x the tokens per
CPU-second of a vllm-bench-style aiohttp client; over this client 2.4-2.8x on uvloop and 4.3-4.8x on asyncio's
default loop. So the per-read path allocates nothing it can avoid and calls as few Python functions as it can.
"""
from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import perf_counter
from urllib.parse import urlsplit

from qbench_tui.engine.records import one_line
from qbench_tui.engine.tls import make_ssl_context  # here too: the load engine takes it from this module

OnData = Callable[[float, bytes], None]
OnEnd = Callable[[float], None]

_MAX_HEAD = 64 * 1024
_MAX_ERROR_BODY = 1 << 20

_HEAD, _BODY, _TRAILER, _END = 0, 1, 2, 3
_CHUNKED, _LENGTH, _UNTIL_CLOSE = 0, 1, 2
_READ_BUF = 16 * 1024  # per connection; a streaming read is a few hundred bytes, more simply waits for the next


# The one error a request that never reached the server gets: the connection closed before any response byte.
STALE = "connection error: server disconnected without sending a response"


class _ConnBase:
    """One TCP (or TLS) connection; hands every read to the response being received on it. The loop's protocol
    is one of the two classes below, whichever reads cheaper on that loop (`_protocol_for`)."""

    __slots__ = ("transport", "resp", "closed")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.resp: _Response | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        r = self.resp
        if r is not None:
            r.feed(data)
        else:  # bytes nobody asked for: the connection's framing can no longer be trusted
            self.abort()

    def eof_received(self) -> bool:
        self.closed = True
        r = self.resp
        if r is not None:
            r.lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        r = self.resp
        if r is not None:
            r.lost(exc)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Conn(_ConnBase, asyncio.BufferedProtocol):
    """asyncio's default loop: a BufferedProtocol, read into this connection's small buffer. With a plain
    Protocol that loop allocates a fresh 256 KiB bytes object for every recv() and shrinks it, which cost ~3x the
    CPU per streamed token at C=256."""

    __slots__ = ("_buf", "_view")

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray(_READ_BUF)
        self._view = memoryview(self._buf)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._view[:nbytes].tobytes())


class _StreamConn(_ConnBase, asyncio.Protocol):
    """uvloop: a plain Protocol. uvloop reads into its own buffer either way and makes the bytes object in C, so
    a read is one Python call (data_received) instead of get_buffer + buffer_updated + a memoryview slice.
    Measured: 0.2-0.3 us less per read (256 socketpairs, one 300-byte chunk per read, paired runs: 4.46 -> 4.17,
    5.61 -> 5.39 us per write + read); end to end that is ~2% of a token's cost, inside bench/cost_per_token.py's
    noise on a shared machine (1.01x at C=256 over 4 rounds)."""

    __slots__ = ()


def _protocol_for(loop: asyncio.AbstractEventLoop) -> type[_ConnBase]:
    return _StreamConn if type(loop).__module__.startswith("uvloop") else _Conn


class _Response:
    """Parses one HTTP/1.1 response as it arrives; a 200's body goes to on_data, any other's to errbody."""

    __slots__ = ("conn", "on_data", "on_end", "fut", "phase", "head", "status", "framing", "left", "cbuf",
                 "errbody", "keep_alive", "error", "last_read", "read_timeout", "timer", "loop", "ctype", "cenc",
                 "retry_after")

    def __init__(self, conn: _ConnBase, on_data: OnData, on_end: OnEnd, loop: asyncio.AbstractEventLoop,
                 read_timeout: float) -> None:
        self.conn = conn
        self.on_data = on_data
        self.on_end = on_end
        self.loop = loop
        self.fut: asyncio.Future = loop.create_future()
        self.phase = _HEAD
        self.head = b""
        self.status: int | None = None
        self.ctype = ""  # content-type, as sent
        self.cenc = ""  # content-encoding, lowercased
        self.retry_after = ""  # Retry-After, as sent (the worker's backoff reads it)
        self.framing = _UNTIL_CLOSE
        self.left = -1  # chunked: bytes left in the current chunk; -1 = size line next, -2 = CRLF next
        self.cbuf = b""
        self.errbody: list[bytes] | None = None
        self.keep_alive = True
        self.error = ""
        self.read_timeout = read_timeout
        self.last_read = perf_counter()
        # one timer per request, re-armed lazily: a per-read timer would cost more than the parsing
        self.timer = loop.call_at(loop.time() + read_timeout, self._check_timeout)

    # ---- completion

    def _done(self, error: str = "") -> None:
        if self.phase == _END:
            return
        self.phase = _END
        self.error = error
        self.timer.cancel()
        if error:
            self.keep_alive = False
        if not self.fut.done():
            self.fut.set_result(None)

    def _check_timeout(self) -> None:
        if self.phase == _END:
            return
        idle = perf_counter() - self.last_read
        if idle >= self.read_timeout:
            self._done("read timeout")
            self.conn.abort()
        else:
            self.timer = self.loop.call_at(self.loop.time() + self.read_timeout - idle, self._check_timeout)

    def lost(self, exc: Exception | None) -> None:
        if self.phase == _END:
            return
        if self.phase == _BODY and self.framing == _UNTIL_CLOSE:
            self.keep_alive = False
            self._body_end()
        elif exc is not None:
            self._done(f"connection error: {_exc_text(exc)}")
        elif self.phase == _HEAD:
            self._done(STALE)
        else:
            self._done("connection error: peer closed connection without sending complete message body")

    def cancel(self) -> None:
        self.timer.cancel()
        self.phase = _END

    # ---- parsing

    def feed(self, data: bytes) -> None:
        now = perf_counter()
        self.last_read = now
        phase = self.phase
        if phase == _BODY:
            self._body(now, data)
        elif phase == _HEAD:
            self._head(now, data)
        elif phase == _TRAILER:
            self._trailer(data)
        else:  # data after the response ended: not reusable
            self.keep_alive = False

    def _head(self, now: float, data: bytes) -> None:
        buf = self.head + data
        while True:
            # the head ends at an empty line; bare-LF line ends (hand-written servers) are read as CRLF, which
            # RFC 9112 2.2 allows. The earliest end wins: the body may hold blank lines of its own.
            i = buf.find(b"\n\r\n")  # CRLF CRLF, or LF CRLF
            j = buf.find(b"\n\n", 0, i if i >= 0 else len(buf))
            if j >= 0 or i >= 0:
                end, skip = (j, 2) if j >= 0 else (i, 3)
                lines = [ln.rstrip("\r") for ln in buf[:end].decode("latin-1").split("\n")]
                rest = buf[end + skip:]
            else:
                if len(buf) > _MAX_HEAD:
                    self._done("connection error: response head too large")
                    self.conn.abort()
                elif len(buf) >= 5 and not buf.startswith(b"HTTP/"):
                    # e.g. TLS bytes from an https port, or another protocol: waiting would only meet the timeout
                    self._done(f"connection error: not an HTTP response (starts {one_line(repr(buf[:16]), 40)})")
                    self.conn.abort()
                else:
                    self.head = buf
                return
            try:
                version, code, *_ = lines[0].split(" ", 2)
                status = int(code)
            except ValueError:
                self._done(f"connection error: bad status line {one_line(lines[0], 80)!r}")
                self.conn.abort()
                return
            if 100 <= status < 200:  # interim response (100 Continue): the real one follows
                buf = rest
                continue
            break
        self.status = status
        self.head = b""
        chunked = False
        length = None
        conn_hdr = ""
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "transfer-encoding":
                chunked = "chunked" in v.lower()
            elif k == "content-length":
                try:
                    length = int(v.strip())
                except ValueError:
                    length = None
            elif k == "connection":
                conn_hdr = v.strip().lower()
            elif k == "content-type":
                self.ctype = v.strip()
            elif k == "content-encoding":
                self.cenc = v.strip().lower()
            elif k == "retry-after":
                self.retry_after = v.strip()
        if conn_hdr == "close" or (version == "HTTP/1.0" and conn_hdr != "keep-alive"):
            self.keep_alive = False
        if status in (204, 304):  # no body by definition, whatever the headers say
            chunked, length = False, 0
        if chunked:
            self.framing = _CHUNKED
        elif length is not None:
            self.framing = _LENGTH
            self.left = length
        else:
            self.framing = _UNTIL_CLOSE
            self.keep_alive = False
        if status != 200 or not is_event_stream(self.ctype, self.cenc):
            # an error, or a 200 that is no stream to time (an HTML page, a whole JSON completion, gzip):
            # collected for the message either way
            self.errbody = []
            # the body parsers call on_data whatever the status: pointing it here keeps that path branch-free
            self.on_data = self._collect
        self.phase = _BODY
        if self.framing == _LENGTH and self.left == 0:
            self._body_end()
        elif rest:
            self._body(now, rest)

    def _collect(self, now: float, data: bytes) -> None:
        eb = self.errbody
        if eb is not None and sum(map(len, eb)) < _MAX_ERROR_BODY:
            eb.append(data)

    def _body(self, now: float, data: bytes) -> None:
        framing = self.framing
        if framing == _CHUNKED:
            if self.left == -1 and not self.cbuf:
                # fast path, the usual read from a streaming server: exactly one whole chunk
                nl = data.find(b"\r\n")
                if 0 < nl <= 8:
                    try:
                        size = int(data[:nl], 16)
                    except ValueError:
                        size = 0
                    end = nl + 2 + size
                    if size and len(data) == end + 2 and data.endswith(b"\r\n"):
                        self.on_data(now, data[nl + 2:end])
                        return
                    if size and len(data) > end + 2 and data.startswith(b"\r\n", end):
                        # several whole chunks in one read (the client a step behind its server: most reads at
                        # C=1000), each checked as above and handed over on its own with the read's one stamp, so
                        # the SSE decoder meets its one-event fast path instead of re-splitting a joined body.
                        # Anything else (an extension, bare LF, the last chunk, a cut one) goes to the general loop
                        # below, from the start. Measured (min of 300 timings, this parser + StreamTiming on
                        # fast_sse_server's chunks): 2.71 -> 2.15 us per token at 4 chunks per read, 2.55-3.12 ->
                        # 2.12 at 16; one chunk per read 2.30 -> 2.20. A token costs no more when reads coalesce.
                        n = len(data)
                        out = [data[nl + 2:end]]
                        pos = end + 2
                        while True:
                            nl = data.find(b"\r\n", pos)
                            if not 0 < nl - pos <= 8:
                                break
                            try:
                                size = int(data[pos:nl], 16)
                            except ValueError:
                                break
                            end = nl + 2 + size
                            if not size or end + 2 > n or not data.startswith(b"\r\n", end):
                                break
                            out.append(data[nl + 2:end])
                            pos = end + 2
                            if pos == n:
                                on_data = self.on_data
                                for piece in out:
                                    on_data(now, piece)
                                return
            buf = self.cbuf + data if self.cbuf else data
            n = len(buf)
            pos = 0
            out: list[bytes] = []
            left = self.left
            while pos < n:
                if left > 0:
                    take = n - pos if n - pos < left else left
                    out.append(buf[pos:pos + take] if take != n else buf)
                    pos += take
                    left -= take
                    if left == 0:
                        left = -2
                elif left == -2:  # the line end after a chunk's data; bare LF accepted, as in the head
                    if buf[pos] == 10:
                        pos += 1
                    elif n - pos < 2:
                        break
                    else:
                        pos += 2
                    left = -1
                else:
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        break
                    line = buf[pos:nl]  # int() ignores the CR of a CRLF
                    semi = line.find(b";")
                    try:
                        size = int(line if semi < 0 else line[:semi], 16)
                    except ValueError:
                        self.left = left
                        self._done("connection error: bad chunk size")
                        self.conn.abort()
                        return
                    pos = nl + 1
                    if size == 0:
                        self.left = 0
                        self.cbuf = b""
                        if out:
                            self.on_data(now, out[0] if len(out) == 1 else b"".join(out))
                        self.phase = _TRAILER
                        self._trailer(buf[pos:])
                        return
                    left = size
            self.left = left
            self.cbuf = buf[pos:] if pos < n else b""
            if out:
                self.on_data(now, out[0] if len(out) == 1 else b"".join(out))
        elif framing == _LENGTH:
            left = self.left
            if len(data) >= left:
                if len(data) > left:
                    self.keep_alive = False
                self.on_data(now, data[:left] if len(data) > left else data)
                self.left = 0
                self._body_end()
            else:
                self.left = left - len(data)
                self.on_data(now, data)
        else:
            self.on_data(now, data)

    def _trailer(self, data: bytes) -> None:
        buf = self.cbuf + data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                self.cbuf = buf
                return
            line, buf = buf[:nl], buf[nl + 1:]
            if not line or line == b"\r":
                break
        self.cbuf = b""
        if buf:
            self.keep_alive = False
        self._body_end()

    def _body_end(self) -> None:
        if self.errbody is None:
            self.on_end(perf_counter())
        self._done()


def is_event_stream(content_type: str, content_encoding: str) -> bool:
    """A body this client can time: uncompressed, and text/event-stream (or untyped: some servers send none)."""
    if content_encoding not in ("", "identity"):
        return False
    return not content_type or content_type.lower().startswith("text/event-stream")


@dataclass(slots=True)
class Reply:
    """How one exchange ended: `error` ("" when the response arrived whole) wins over `status`; `body` is the
    collected body of a non-200 response or of a 200 that is not an event stream (None for a streamed 200,
    whose body went to on_data); `content_type`, `content_encoding`, `retry_after`: the head's ("" when absent)."""

    status: int | None
    error: str = ""
    body: bytes | None = None
    content_type: str = ""
    content_encoding: str = ""
    retry_after: str = ""


class RawClient:
    """One keep-alive HTTP/1.1 connection to `url` (http or https), for one caller at a time.

    `connect_timeout` bounds the TCP/TLS handshake, `read_timeout` the longest silence while a response is
    expected. `headers` go into every request (after Host, before User-Agent and Content-Length).
    """

    def __init__(self, url: str, ssl_ctx: ssl.SSLContext | None = None, *, headers: Mapping[str, str] | None = None,
                 connect_timeout: float = 10.0, read_timeout: float = 600.0) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = u.hostname
        self.tls = u.scheme == "https"
        self.port = u.port or (443 if self.tls else 80)
        netloc = u.netloc.rpartition("@")[2]  # never send userinfo in Host
        self.host_header = netloc
        self.prefix = u.path.rstrip("/")
        self.ssl_ctx = (ssl_ctx or make_ssl_context()) if self.tls else None
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.stale_retries = 0  # requests sent again after a kept-alive connection answered nothing (see post)
        self._conn: _ConnBase | None = None
        self._head_cache: dict[str, bytes] = {}

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        c, self._conn = self._conn, None
        if c is not None and c.transport is not None and not c.closed:
            c.closed = True
            c.transport.close()

    def _request_head(self, path: str) -> bytes:
        h = self._head_cache.get(path)
        if h is None:
            h = self._head_cache[path] = (
                f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n{self.headers}"
                f"User-Agent: qbench\r\nContent-Length: "
            ).encode("latin-1")
        return h

    async def _connect(self) -> _ConnBase:
        loop = asyncio.get_running_loop()
        kw = {"ssl": self.ssl_ctx, "server_hostname": self.host} if self.tls else {}
        _, conn = await asyncio.wait_for(loop.create_connection(_protocol_for(loop), self.host, self.port, **kw),
                                         self.connect_timeout)
        return conn  # type: ignore[return-value]

    async def post(self, path: str, content: bytes, on_data: OnData, on_end: OnEnd) -> Reply:
        """Send one POST and stream its response body to on_data / on_end. Never raises (except CancelledError,
        after which the connection is dropped: it is mid-response and cannot be reused).

        A kept-alive connection the server closed as the request went out (its keep-alive timer fired while its
        loop was busy) answers nothing at all; the request then never reached the server, so it is sent once more
        on a new connection, as HTTP clients do for a stale pooled connection. A new connection that answers
        nothing is a failure: never retried."""
        reused = self._conn is not None and not self._conn.closed
        reply = await self._post_once(path, content, on_data, on_end)
        if reused and reply.error == STALE:
            self.stale_retries += 1
            reply = await self._post_once(path, content, on_data, on_end)
        return reply

    async def _post_once(self, path: str, content: bytes, on_data: OnData, on_end: OnEnd) -> Reply:
        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            try:
                conn = self._conn = await self._connect()
            except (asyncio.TimeoutError, TimeoutError):
                return Reply(None, "connect error: timeout")
            except OSError as e:
                return Reply(None, f"connect error: {_exc_text(e)}")
            except Exception as e:  # never raise
                return Reply(None, f"connect error: {type(e).__name__}: {_exc_text(e)}")
        loop = asyncio.get_running_loop()
        resp = conn.resp = _Response(conn, on_data, on_end, loop, self.read_timeout)
        try:
            conn.transport.write(self._request_head(path) + b"%d\r\n\r\n" % len(content) + content)
            await resp.fut
        except asyncio.CancelledError:
            resp.cancel()
            conn.resp = None
            conn.abort()
            self._conn = None
            raise
        except Exception as e:  # never raise: e.g. writing to a transport that just closed
            resp._done(f"connection error: {_exc_text(e)}")
        conn.resp = None
        if not resp.keep_alive:
            conn.abort()
            self._conn = None
        body = None if resp.errbody is None else b"".join(resp.errbody)
        return Reply(resp.status, resp.error, body, resp.ctype, resp.cenc, resp.retry_after)


def _exc_text(e: BaseException) -> str:
    return one_line(str(e) or type(e).__name__)
