"""A minimal, fast vLLM-shaped SSE server for client-capacity measurements (no model, no framework).

Raw asyncio protocol (uvloop when installed), HTTP/1.1 keep-alive, chunked transfer encoding like uvicorn.
POST /v1/chat/completions streams `max_tokens` (default --tokens) content chunks in vLLM 0.13's layout: the role
chunk (content "") together with the first token, one content chunk per token, `finish_reason:"length"` on the
last one, then the usage chunk and `data: [DONE]`.

Tokens are produced in global "decode steps", as a batching server does: every --step-ms milliseconds each active
stream gets exactly one token (one transport.write). So a client that keeps up reads one event per stream per
step, as it would from vLLM; --step-ms 0 steps as fast as the server can (a client that falls behind then reads
several events per read, which flatters a slow client: use a paced step to compare clients).

Also answers GET /health (200) and GET /metrics (vllm:generation_tokens_total only).

--record-truth FILE: one JSON line per finished stream in the simulator's --record-truth layout (bench/fidelity.py
reads both): arrival_perf (perf_counter when the request was parsed), chunks [[perf, 0, tokens], ...] stamped at
each write, completion_tokens, client_port. perf_counter is CLOCK_MONOTONIC, the same clock in every process here.

    .venv/bin/python bench/fast_sse_server.py --port 0 [--tokens 200] [--step-ms 10]
prints "LISTENING <port>" on stdout once it accepts connections.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from time import perf_counter

MODEL = "fast-sse"
_TOKEN = " tok"


def _chunk(payload: bytes) -> bytes:
    """One SSE event framed as one HTTP/1.1 chunk."""
    data = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: dict) -> bytes:
    return _chunk(json.dumps(obj, separators=(",", ":")).encode())


_BASE = {"id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 1764000000, "model": MODEL}
ROLE = _event({**_BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "",
                                                            "reasoning_content": None},
                                     "logprobs": None, "finish_reason": None}], "prompt_token_ids": None})
CONTENT = _event({**_BASE, "choices": [{"index": 0, "delta": {"content": _TOKEN, "reasoning_content": None},
                                        "logprobs": None, "finish_reason": None, "token_ids": None}]})
LAST = _event({**_BASE, "choices": [{"index": 0, "delta": {"content": _TOKEN, "reasoning_content": None},
                                     "logprobs": None, "finish_reason": "length", "stop_reason": None,
                                     "token_ids": None}]})
DONE = _chunk(b"[DONE]") + b"0\r\n\r\n"
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\n\r\n")


def _usage(prompt: int, n: int) -> bytes:
    return _event({**_BASE, "choices": [], "usage": {"prompt_tokens": prompt, "total_tokens": prompt + n,
                                                      "completion_tokens": n}})


def _plain(status: str, body: bytes, ctype: bytes = b"text/plain") -> bytes:
    return (b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (status.encode(), ctype, len(body), body))


class Server:
    def __init__(self, tokens: int, step_s: float, truth=None) -> None:
        self.truth = truth  # an open file, or None
        self.tokens = tokens
        self.step_s = step_s
        self.active: list[Stream] = []
        self.wake = asyncio.Event()
        self.generated = 0
        self.requests = 0

    async def stepper(self) -> None:
        nxt = perf_counter()
        while True:
            if not self.active:
                self.wake.clear()
                await self.wake.wait()
                nxt = perf_counter()
            alive = []
            for s in self.active:
                if s.step():
                    alive.append(s)
            self.active = alive
            if self.step_s > 0:
                nxt += self.step_s
                now = perf_counter()
                if nxt < now:  # behind: don't burst to catch up
                    nxt = now
                await asyncio.sleep(nxt - now)
            else:
                await asyncio.sleep(0)


class Stream:
    __slots__ = ("conn", "left", "n", "usage", "first", "arrival", "stamps")

    def __init__(self, conn: Conn, n: int, prompt: int) -> None:
        self.conn = conn
        self.n = n
        self.left = n
        self.usage = _usage(prompt, n)
        self.first = True
        self.arrival = perf_counter()
        self.stamps: list[float] | None = [] if conn.srv.truth is not None else None

    def step(self) -> bool:
        conn = self.conn
        if conn.closed:
            return False
        w = conn.t.write
        if self.first:
            self.first = False
            w(HEAD)
            w(ROLE)
        self.left -= 1
        conn.srv.generated += 1
        if self.left > 0:
            w(CONTENT)
            if self.stamps is not None:
                self.stamps.append(perf_counter())
            return True
        w(LAST)
        w(self.usage)
        w(DONE)
        if self.stamps is not None:
            self.stamps.append(perf_counter())
            self.write_truth()
        conn.stream = None
        conn.parse()  # a request that arrived while streaming (none expected, but keep-alive allows it)
        return False


    def write_truth(self) -> None:
        peer = self.conn.t.get_extra_info("peername") or ("", -1)
        self.conn.srv.truth.write(json.dumps({
            "status": "ok", "completion_tokens": self.n, "arrival_perf": self.arrival, "client_port": peer[1],
            "chunks": [[t, 0, 1] for t in self.stamps]}, separators=(",", ":")) + "\n")


class Conn(asyncio.Protocol):
    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.buf = b""
        self.stream: Stream | None = None
        self.closed = False
        self.t: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport) -> None:
        self.t = transport

    def connection_lost(self, exc) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.parse()

    def parse(self) -> None:
        while self.stream is None and not self.closed:
            buf = self.buf
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            lines = buf[:i].decode("latin-1").split("\r\n")
            try:
                method, path, _ = lines[0].split(" ", 2)
            except ValueError:
                self.t.close()
                return
            clen = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    clen = int(v.strip())
            if len(buf) < i + 4 + clen:
                return
            body = buf[i + 4:i + 4 + clen]
            self.buf = buf[i + 4 + clen:]
            self.handle(method, path, body)

    def handle(self, method: str, path: str, body: bytes) -> None:
        srv = self.srv
        if method == "POST" and path.startswith("/v1/chat/completions"):
            try:
                req = json.loads(body) if body else {}
            except ValueError:
                req = {}
            n = req.get("max_completion_tokens") or req.get("max_tokens") or srv.tokens
            n = max(1, int(n))
            srv.requests += 1
            self.stream = Stream(self, n, 16)
            srv.active.append(self.stream)
            srv.wake.set()
        elif path == "/health":
            self.t.write(_plain("200 OK", b""))
        elif path == "/metrics":
            body = (f"# TYPE vllm:generation_tokens_total counter\n"
                    f'vllm:generation_tokens_total{{engine="0",model_name="{MODEL}"}} {float(srv.generated)}\n'
                    f"# TYPE vllm:request_success_total counter\n"
                    f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="{MODEL}"}} '
                    f"{float(srv.requests)}\n").encode()
            self.t.write(_plain("200 OK", body, b"text/plain; version=0.0.4"))
        elif path == "/v1/models":
            self.t.write(_plain("200 OK", json.dumps({"object": "list", "data": [
                {"id": MODEL, "object": "model", "owned_by": "fast", "max_model_len": 4096}]}).encode(),
                b"application/json"))
        else:
            self.t.write(_plain("404 Not Found", b"not found"))


async def serve(host: str, port: int, tokens: int, step_s: float, truth_path: str = "") -> None:
    truth = open(truth_path, "w", buffering=1 << 20) if truth_path else None
    srv = Server(tokens, step_s, truth)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(srv), host, port, backlog=4096)
    sock_port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {sock_port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(srv.stepper())
    try:
        await stop.wait()
    finally:
        task.cancel()
        server.close()
        if truth is not None:
            truth.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=200, help="tokens per request when the body sets none")
    ap.add_argument("--step-ms", type=float, default=10.0,
                    help="one token per active stream every STEP ms (0: as fast as possible)")
    ap.add_argument("--record-truth", default="", metavar="FILE", help="per-stream write stamps (JSONL)")
    a = ap.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(serve(a.host, a.port, a.tokens, a.step_ms / 1000.0, a.record_truth))


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    main()
