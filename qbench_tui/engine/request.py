"""One streamed completion -> one RequestRecord. Never raises (except CancelledError, which records nothing).

Timing follows `vllm bench serve` (reference vllm.md §4): TTFT is the first data event whose `choices` is
non-empty, ITL the gaps between consecutive such events, E2EL ends at the last data event (usage chunk
included, [DONE] excluded). Every timestamp is taken right after a network read returns, so events that arrive
in one read share a timestamp, as they did on the wire.

The hot path only looks at bytes: JSON is decoded for the first choice event, for events that mention
"error", and for the usage chunk.

Transport: `RawClient`, one keep-alive HTTP/1.1 (http or https) connection driven by an asyncio protocol. Each
network read is parsed inside the protocol callback (de-chunking, SSE framing, timing) and the request's coroutine
wakes once, when the response ends. Measured with bench/client_capacity.py (docs/PERFORMANCE.md): over httpx
(httpx -> httpcore -> h11 -> anyio, all per read) the engine streamed 0.4-0.5x the tokens per CPU-second of a
vllm-bench-style aiohttp client; over RawClient 2.4-2.8x on uvloop and 4.3-4.8x on asyncio's default loop.
`stream_request` still accepts an httpx.AsyncClient (same records, more CPU): `make_httpx_client`.
"""
from __future__ import annotations

import asyncio
import functools
import json
import ssl
import time
from time import perf_counter
from urllib.parse import urlsplit

import httpx

from qbench_tui.engine.prompts import Sized
from qbench_tui.engine.records import RequestRecord, RequestSpec
from qbench_tui.engine.sse import SSEDecoder

_CHAT_PATH = "/v1/chat/completions"
_COMPLETIONS_PATH = "/v1/completions"
_MAX_REASON = 200
_MAX_HEAD = 64 * 1024
_MAX_ERROR_BODY = 1 << 20


@functools.lru_cache(maxsize=1)
def make_ssl_context() -> ssl.SSLContext:
    """One context per process: each default context loads the CA bundle (~30 ms), and there is a client per worker."""
    return ssl.create_default_context()


def make_client(spec: RequestSpec, ssl_ctx: ssl.SSLContext | None = None) -> RawClient:
    """One client (one kept-alive connection) per worker. No proxy from the environment: a proxy would be
    measured instead of the server."""
    return RawClient(spec.url, ssl_ctx if ssl_ctx is not None else make_ssl_context(),
                     connect_timeout=spec.connect_timeout, read_timeout=spec.read_timeout)


def make_httpx_client(spec: RequestSpec, ssl_ctx: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    """The httpx equivalent of make_client, for callers that want httpx (5-6x the client CPU per token)."""
    return httpx.AsyncClient(
        base_url=spec.url,
        verify=ssl_ctx if ssl_ctx is not None else make_ssl_context(),
        timeout=httpx.Timeout(connect=spec.connect_timeout, read=spec.read_timeout, write=30.0, pool=None),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        trust_env=False,
    )


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
    i = p.find(b'"content":')
    if i < 0:
        i = p.find(b'"text":')
        if i < 0:
            return True
        i += 7
    else:
        i += 10
    return p.startswith(b'""', i)


class _Acc:
    """Per-request timing and token state, fed with (read time, SSE payloads) as reads arrive."""

    __slots__ = ("start", "ttft", "last", "itl", "content_events", "usage", "stream_error", "dec")

    def __init__(self, start: float, itl: list[float]) -> None:
        self.start = start
        self.ttft: float | None = None
        self.last = start
        self.itl = itl
        self.content_events = 0
        self.usage: dict | None = None
        self.stream_error: str | None = None
        self.dec = SSEDecoder()

    def events(self, now: float, events: list[bytes]) -> None:
        for p in events:
            if _has_choices(p):
                if self.ttft is None:
                    self.ttft = now - self.start
                    try:
                        first = json.loads(p)
                        ch = first["choices"][0]
                        delta = ch.get("delta") or {}
                        text = delta.get("content") if "delta" in ch else ch.get("text")
                        if text:
                            self.content_events += 1
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        self.stream_error = self.stream_error or "malformed event: " + _one_line(
                            p.decode("utf-8", "replace"), 120
                        )
                else:
                    self.itl.append(now - self.last)
                    if not _is_empty_delta(p):
                        self.content_events += 1
                if b'"completion_tokens"' in p:  # continuous_usage_stats: keep the latest
                    self.usage = _usage(p) or self.usage
            else:
                err = _stream_error(p)
                if err is not None:
                    self.stream_error = self.stream_error or err
                elif b'"usage"' in p:
                    self.usage = _usage(p) or self.usage
            self.last = now

    def close(self) -> None:
        """End of body: an event whose blank line never came may still hold the usage chunk."""
        for p in self.dec.close():
            if not _has_choices(p) and b'"usage"' in p:
                self.usage = _usage(p) or self.usage
                self.last = perf_counter()

    def finish(self, rec: RequestRecord) -> RequestRecord:
        rec.ttft = self.ttft
        _fill_tokens(rec, self.usage, self.content_events)
        if rec.error:
            rec.end = perf_counter()
            return rec
        rec.end = self.last
        if self.stream_error is not None:
            rec.error = f"stream error: {self.stream_error}"
        elif not self.dec.done and self.usage is None:
            rec.error = "stream ended early"
        elif self.ttft is None:
            rec.error = "no tokens in stream"
        else:
            rec.ok = True
        return rec


async def stream_request(
    client: RawClient | httpx.AsyncClient,
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
    except Exception as e:  # a prompt that cannot be serialized is still one failed request, not a dead worker
        rec.start = rec.end = perf_counter()
        rec.wall_start = time.time()
        rec.error = f"bad request: {type(e).__name__}: {e}"
        return rec
    if isinstance(client, httpx.AsyncClient):
        return await _stream_httpx(client, spec, path, content, rec)
    return await client.stream(path, content, spec.api_key, rec)


async def _stream_httpx(client: httpx.AsyncClient, spec: RequestSpec, path: str, content: bytes,
                        rec: RequestRecord) -> RequestRecord:
    headers = _headers(spec)
    rec.wall_start = time.time()
    start = rec.start = perf_counter()
    acc = _Acc(start, rec.itl)
    dec = acc.dec
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
                if events:
                    acc.events(now, events)
            # Reading to EOF (not breaking at [DONE]) lets httpx keep the connection for the next request.
            acc.close()
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
    return acc.finish(rec)


# ---------------------------------------------------------------- raw HTTP/1.1 transport

_HEAD, _BODY, _TRAILER, _END = 0, 1, 2, 3
_CHUNKED, _LENGTH, _UNTIL_CLOSE = 0, 1, 2
_READ_BUF = 16 * 1024  # per connection; a streaming read is a few hundred bytes, more simply waits for the next


class _Conn(asyncio.BufferedProtocol):
    """One TCP (or TLS) connection; hands every read to the response being received on it.

    A BufferedProtocol: the loop reads into this connection's small buffer. With a plain Protocol, asyncio's
    default loop allocates a fresh 256 KiB bytes object for every recv() and shrinks it, which cost ~3x the CPU
    per streamed token at C=256 (uvloop reads into its own buffer either way).
    """

    __slots__ = ("transport", "resp", "closed", "_buf", "_view")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.resp: _Response | None = None
        self.closed = False
        self._buf = bytearray(_READ_BUF)
        self._view = memoryview(self._buf)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._view[:nbytes].tobytes())

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


class _Response:
    """Parses one HTTP/1.1 response as it arrives; for a 200, feeds the SSE body to an _Acc."""

    __slots__ = ("conn", "acc", "fut", "phase", "head", "status", "framing", "left", "cbuf", "errbody",
                 "keep_alive", "error", "last_read", "read_timeout", "timer", "loop")

    def __init__(self, conn: _Conn, acc: _Acc, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self.conn = conn
        self.acc = acc
        self.loop = loop
        self.fut: asyncio.Future = loop.create_future()
        self.phase = _HEAD
        self.head = b""
        self.status: int | None = None
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
            self._done("connection error: server disconnected without sending a response")
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
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                if len(buf) > _MAX_HEAD:
                    self._done("connection error: response head too large")
                    self.conn.abort()
                else:
                    self.head = buf
                return
            lines = buf[:i].decode("latin-1").split("\r\n")
            rest = buf[i + 4:]
            try:
                version, code, *_ = lines[0].split(" ", 2)
                status = int(code)
            except ValueError:
                self._done(f"connection error: bad status line {_one_line(lines[0], 80)!r}")
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
        if status != 200:
            self.errbody = []
        self.phase = _BODY
        if self.framing == _LENGTH and self.left == 0:
            self._body_end()
        elif rest:
            self._body(now, rest)

    def _payload(self, now: float, data: bytes) -> None:
        eb = self.errbody
        if eb is None:
            events = self.acc.dec.feed(data)
            if events:
                self.acc.events(now, events)
        elif sum(map(len, eb)) < _MAX_ERROR_BODY:
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
                        self._payload(now, data[nl + 2:end])
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
                elif left == -2:
                    if n - pos < 2:
                        break
                    pos += 2
                    left = -1
                else:
                    nl = buf.find(b"\r\n", pos)
                    if nl < 0:
                        break
                    line = buf[pos:nl]
                    semi = line.find(b";")
                    try:
                        size = int(line if semi < 0 else line[:semi], 16)
                    except ValueError:
                        self.left = left
                        self._done("connection error: bad chunk size")
                        self.conn.abort()
                        return
                    pos = nl + 2
                    if size == 0:
                        self.left = 0
                        self.cbuf = b""
                        if out:
                            self._payload(now, out[0] if len(out) == 1 else b"".join(out))
                        self.phase = _TRAILER
                        self._trailer(buf[pos:])
                        return
                    left = size
            self.left = left
            self.cbuf = buf[pos:] if pos < n else b""
            if out:
                self._payload(now, out[0] if len(out) == 1 else b"".join(out))
        elif framing == _LENGTH:
            left = self.left
            if len(data) >= left:
                if len(data) > left:
                    self.keep_alive = False
                self._payload(now, data[:left] if len(data) > left else data)
                self.left = 0
                self._body_end()
            else:
                self.left = left - len(data)
                self._payload(now, data)
        else:
            self._payload(now, data)

    def _trailer(self, data: bytes) -> None:
        buf = self.cbuf + data
        while True:
            nl = buf.find(b"\r\n")
            if nl < 0:
                self.cbuf = buf
                return
            line, buf = buf[:nl], buf[nl + 2:]
            if not line:
                break
        self.cbuf = b""
        if buf:
            self.keep_alive = False
        self._body_end()

    def _body_end(self) -> None:
        if self.errbody is None:
            self.acc.close()
        self._done()


class RawClient:
    """One keep-alive HTTP/1.1 connection to `url` (http or https), for one worker at a time.

    Same timeout meaning as before: `connect_timeout` for the TCP/TLS handshake, `read_timeout` for the longest
    silence while a response is expected.
    """

    def __init__(self, url: str, ssl_ctx: ssl.SSLContext | None = None, *, connect_timeout: float = 10.0,
                 read_timeout: float = 600.0) -> None:
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
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._conn: _Conn | None = None
        self._head_cache: dict[tuple[str, str | None], bytes] = {}

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        c, self._conn = self._conn, None
        if c is not None and c.transport is not None and not c.closed:
            c.closed = True
            c.transport.close()

    def _request_head(self, path: str, api_key: str | None) -> bytes:
        key = (path, api_key)
        h = self._head_cache.get(key)
        if h is None:
            auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
            h = self._head_cache[key] = (
                f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
                f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{auth}"
                f"User-Agent: qbench\r\nContent-Length: "
            ).encode("latin-1")
        return h

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        kw = {"ssl": self.ssl_ctx, "server_hostname": self.host} if self.tls else {}
        _, conn = await asyncio.wait_for(loop.create_connection(_Conn, self.host, self.port, **kw),
                                         self.connect_timeout)
        return conn  # type: ignore[return-value]

    async def stream(self, path: str, content: bytes, api_key: str | None, rec: RequestRecord) -> RequestRecord:
        """Send one POST and stream its response into `rec`. Never raises (except CancelledError)."""
        rec.wall_start = time.time()
        start = rec.start = perf_counter()
        acc = _Acc(start, rec.itl)
        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            try:
                conn = self._conn = await self._connect()
            except (asyncio.TimeoutError, TimeoutError):
                rec.error = "connect error: timeout"
                return acc.finish(rec)
            except OSError as e:
                rec.error = f"connect error: {_exc_text(e)}"
                return acc.finish(rec)
            except Exception as e:  # never raise
                rec.error = f"connect error: {type(e).__name__}: {_exc_text(e)}"
                return acc.finish(rec)
        loop = asyncio.get_running_loop()
        resp = conn.resp = _Response(conn, acc, loop, self.read_timeout)
        try:
            conn.transport.write(self._request_head(path, api_key) + b"%d\r\n\r\n" % len(content) + content)
            await resp.fut
        except asyncio.CancelledError:
            resp.cancel()
            conn.resp = None
            conn.abort()  # mid-response: the connection cannot be reused
            self._conn = None
            raise
        except Exception as e:  # never raise: e.g. writing to a transport that just closed
            resp._done(f"connection error: {_exc_text(e)}")
        conn.resp = None
        if not resp.keep_alive:
            conn.abort()
            self._conn = None
        rec.status = resp.status
        if resp.error:
            rec.error = resp.error
            return acc.finish(rec)
        if resp.errbody is not None:
            rec.end = perf_counter()
            rec.error = f"HTTP {resp.status}: {error_message(b''.join(resp.errbody))}"
            return rec
        return acc.finish(rec)


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
