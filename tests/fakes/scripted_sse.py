"""A scripted OpenAI-style SSE server on 127.0.0.1:<free port>, in a background thread with its own loop.

Raw asyncio streams and hand-written HTTP/1.1 (chunked bodies, keep-alive), so a test controls exactly which
bytes go out in which write, and when. The request's `model` picks the Scenario; the server counts requests
and concurrent in-flight streams, and keeps each request's headers and body for assertions.
"""
from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from dataclasses import dataclass


@dataclass
class Scenario:
    kind: str = "ok"  # ok | http_error | whole | stream_error | reset | stall | early_end | no_usage
    # http_error / whole: one response of `status` with `error_body` as its whole body (whole: a 200 that is
    # no event stream, e.g. an HTML page or a non-streaming completion)
    tokens: int = 5  # content chunks
    delay: float = 0.0  # seconds between events
    hold: float = 0.0  # seconds before the first event (queueing)
    role_chunk: bool = True
    empty_chunks: int = 0  # extra empty-content chunks after the role chunk
    usage: bool = True
    prompt_tokens: int = 7
    completion_tokens: int | None = None  # default: tokens
    text: str = "tök"  # content of each chunk (multi-byte on purpose)
    split: list[int] | None = None  # byte offsets: the whole SSE body is written in these pieces
    crlf: bool = False
    comments: bool = False  # ": ping" lines between events
    status: int = 200
    error_body: bytes = b""
    content_type: str = "application/json"
    content_encoding: str = ""
    after: int = 2  # events sent before an error / reset / stall / early end
    stall: float = 5.0


def sse_events(sc: Scenario, model: str, endpoint: str) -> list[bytes]:
    """The data payloads (no framing) a scenario streams, [DONE] included."""
    chat = endpoint == "chat"
    out: list[bytes] = []

    def chunk(content: str | None, role: bool = False, finish: str | None = None) -> bytes:
        if chat:
            delta: dict = {}
            if role:
                delta["role"] = "assistant"
            if content is not None:
                delta["content"] = content
            ch = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": model,
                   "choices": [ch]}
        else:
            ch = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
            obj = {"id": "cmpl-x", "object": "text_completion", "created": 1, "model": model, "choices": [ch]}
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    if sc.role_chunk and chat:
        out.append(chunk("", role=True))
    for _ in range(sc.empty_chunks):
        out.append(chunk(""))
    for k in range(sc.tokens):
        out.append(chunk(sc.text, finish="stop" if k == sc.tokens - 1 else None))
    if sc.usage:
        ct = sc.tokens if sc.completion_tokens is None else sc.completion_tokens
        u = {"prompt_tokens": sc.prompt_tokens, "total_tokens": sc.prompt_tokens + ct, "completion_tokens": ct}
        out.append(json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": model,
                               "choices": [], "usage": u}, separators=(",", ":")).encode())
    out.append(b"[DONE]")
    return out


def frame(payload: bytes, crlf: bool = False) -> bytes:
    nl = b"\r\n" if crlf else b"\n"
    return b"data: " + payload + nl + nl


class ScriptedSSEServer:
    def __init__(self, scenarios: dict[str, Scenario] | None = None, default: Scenario | None = None) -> None:
        self.scenarios = dict(scenarios or {})
        self.default = default or Scenario()
        self.lock = threading.Lock()
        self.total = 0
        self.current = 0
        self.max_current = 0
        self.connections = 0
        self.finished = 0  # responses written to the end
        self.aborted = 0  # client went away before the end (scenario-made resets/stalls excluded)
        self.requests: list[dict] = []  # {"path", "headers", "body"}
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # -------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedSSEServer:
        self._thread = threading.Thread(target=self._run, name="scripted-sse", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted SSE server did not start")
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        loop.run_until_complete(main())
        loop.run_forever()
        # cleanup after stop(): cancel handlers still running, then close
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> ScriptedSSEServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> dict:
        with self.lock:
            return {"total": self.total, "current": self.current, "max_current": self.max_current,
                    "finished": self.finished, "aborted": self.aborted, "connections": self.connections}

    def reset_counts(self) -> None:
        with self.lock:
            self.max_current = self.current

    # -------------------------------------------------------- HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.lock:
            self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0"))
                body = await reader.readexactly(n) if n else b""
                keep = await self._respond(path, headers, body, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _respond(self, path: str, headers: dict, body: bytes, writer: asyncio.StreamWriter) -> bool:
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        model = req.get("model", "")
        sc = self.scenarios.get(model, self.default)
        endpoint = "completions" if path.endswith("/v1/completions") else "chat"
        with self.lock:
            self.total += 1
            self.current += 1
            self.max_current = max(self.max_current, self.current)
            self.requests.append({"path": path, "headers": headers, "body": req})
        clean = counted = False
        try:
            if sc.hold:
                await asyncio.sleep(sc.hold)
            if sc.kind in ("http_error", "whole"):
                enc = f"content-encoding: {sc.content_encoding}\r\n" if sc.content_encoding else ""
                writer.write(
                    f"HTTP/1.1 {sc.status} Whatever\r\ncontent-type: {sc.content_type}\r\n{enc}"
                    f"content-length: {len(sc.error_body)}\r\n\r\n".encode() + sc.error_body
                )
                await writer.drain()
                clean = True
                return True
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            payloads = sse_events(sc, model, endpoint)
            if sc.kind == "stream_error":
                err = json.dumps({"error": {"message": "boom in stream", "type": "BadRequestError",
                                            "param": None, "code": 400}}).encode()  # spaced, as vLLM does
                payloads = payloads[: sc.after] + [err, b"[DONE]"]
            elif sc.kind in ("reset", "stall", "early_end"):
                payloads = payloads[: sc.after]
            elif sc.kind == "no_usage":
                payloads = [p for p in payloads if b'"usage"' not in p]
            pieces = [frame(p, sc.crlf) for p in payloads]
            if sc.comments:
                pieces = [b": ping\n\n" + p for p in pieces]
            if sc.split is not None:
                blob = b"".join(pieces)
                cuts = sorted({c for c in sc.split if 0 < c < len(blob)})
                bounds = [0, *cuts, len(blob)]
                pieces = [blob[a:b] for a, b in zip(bounds, bounds[1:])]
            for k, piece in enumerate(pieces):
                if k and sc.delay:
                    await asyncio.sleep(sc.delay)
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            if sc.kind == "reset":
                sock = writer.get_extra_info("socket")
                if sock is not None:  # SO_LINGER 0: close sends RST
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                clean = True
                return False
            if sc.kind == "stall":
                await asyncio.sleep(sc.stall)
                clean = True
                return False
            writer.write(b"0\r\n\r\n")
            # no longer in flight once the last byte is handed over, before any await: the client may read it
            # and send its next request before drain() returns, and that one must not count as a 9th of 8
            with self.lock:
                self.current -= 1
                counted = True
            await writer.drain()
            clean = True
            return True
        finally:
            with self.lock:
                if not counted:
                    self.current -= 1
                if clean and sc.kind == "ok":
                    self.finished += 1
                elif not clean:
                    self.aborted += 1
