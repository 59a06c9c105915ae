"""The simulator's raw ASGI app: vLLM 0.13's OpenAI-compatible surface on top of SimEngine.

Bodies are validated in requests.py; this module routes, streams and records ground truth.

Hot path: per token chunk the streaming handler joins pre-built byte templates (no json.dumps) and hands them to the
transport; per request it drains every token the engine produced since its last wake-up in one send.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .faults import FaultDice, FaultPlan, Faults
from .metrics import SimMetrics
from .profile import Profile
from .requests import ApiError, error_body, more_hashes, parse_generate, read_json
from .scheduler import SimEngine, SimRequest
from .tokenize import tokenize

DEFAULT_TEXT = (
    "GPUs are good for AI because they are built to do many simple calculations at the same time. Training and "
    "running neural networks mostly means multiplying large matrices, and a GPU has thousands of small cores that "
    "work on different parts of those matrices in parallel. They also have very fast memory, so the huge number of "
    "weights and activations can be read quickly, and mature software such as CUDA and cuDNN lets frameworks like "
    "PyTorch use that power without extra effort. The result is that models train and answer many times faster "
    "than on a CPU, which makes modern AI practical."
)

JSON_CT = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
METRICS_CT = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
DONE = b"data: [DONE]\n\n"
CHAT_SUFFIX = b'","reasoning_content":null},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
CMPL_SUFFIX = b'","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}\n\n'
# vLLM itself never rate-limits: this is what a proxy in front of it (LiteLLM, an API gateway) answers, in the
# OpenAI error shape those proxies use
RATE_LIMITED = error_body("Rate limit exceeded: too many requests, retry later.", "RateLimitError", 429)
GARBAGE_METRICS = (b'vllm:num_requests_running{engine="0",model_name="sim" 1.0\n'
                   b"<html><body>502 Bad Gateway {{{ not prometheus }}}</body></html>\n"
                   b"vllm:kv_cache_usage_perc{=} abc def\n")


class CutStream(Exception):
    """Raised inside a streaming response to make uvicorn drop the connection (simulated cut stream)."""


def _chat_final_suffix(reason: str) -> bytes:
    return (b'","reasoning_content":null},"logprobs":null,"finish_reason":"' + reason.encode()
            + b'","stop_reason":null,"token_ids":null}]}\n\n')


def _cmpl_final_suffix(reason: str) -> bytes:
    return b'","logprobs":null,"finish_reason":"' + reason.encode() + b'","stop_reason":null}],"usage":null}\n\n'


CHAT_FINAL = {r: _chat_final_suffix(r) for r in ("stop", "length")}
CMPL_FINAL = {r: _cmpl_final_suffix(r) for r in ("stop", "length")}


def _words(text: str) -> list[bytes]:
    parts = text.split(" ")
    out = [json.dumps(parts[0], ensure_ascii=False)[1:-1].encode()]
    out += [json.dumps(" " + w, ensure_ascii=False)[1:-1].encode() for w in parts[1:]]
    return [w for w in out if w]


class TruthRecorder:
    """Server-side ground truth: per request, when each chunk was handed to the transport.

    Record: {"id", "path", "arrival_perf", "arrival_wall", "client_port", "prompt_tokens", "completion_tokens",
    "finish_reason", "chunks": [[perf_counter, time.time, tokens_in_send], ...], "status"}. client_port lets a packet
    capture tie the request's bytes on the wire to this record (bench/fidelity.py --wire). The role chunk rides with
    the first token, so chunks[0] marks TTFT. Written as one JSON line per request when it ends (file), and kept
    in memory.
    """

    def __init__(self, path: str | None = None, keep: int = 100_000):
        self.records: deque[dict[str, Any]] = deque(maxlen=keep)
        self._fh = open(path, "a", encoding="utf-8") if path else None

    def add(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        if self._fh is not None:
            self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class SimApp:
    def __init__(self, profile: Profile, *, model_name: str | None = None, metrics_schema: str = "v1",
                 faults: Faults | None = None, speed: float = 1.0, seed: int = 0,
                 truth: TruthRecorder | None = None):
        self.profile = profile
        self.model_name = model_name or profile.model
        self.faults = faults or Faults()
        self.speed = speed
        self.metrics = SimMetrics(profile, self.model_name, metrics_schema)
        self.engine = SimEngine(profile, self.metrics, speed=speed, seed=seed)
        self.dice = FaultDice(self.faults, seed)
        self.truth = truth
        self.healthy_at = 0.0  # loop.time() from which /health says 200 (slow start sets it)
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._model_json = json.dumps(self.model_name).encode()
        words = _words(profile.vocab_text or DEFAULT_TEXT)
        self._words = words
        self._text_words = [json.loads(b'"' + w + b'"') for w in words]  # as a client decodes them
        self._chat_mid = [w + CHAT_SUFFIX for w in words]
        self._cmpl_mid = [w + CMPL_SUFFIX for w in words]
        self._routes: dict[str, Callable[..., Any]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/models": self._models,
            "/version": self._version,
            "/health": self._health,
            "/metrics": self._metrics,
            "/ping": self._health,
            "/tokenize": self._tokenize,
        }
        self._post_paths = {"/v1/chat/completions", "/v1/completions", "/tokenize"}
        self.on_cut: Callable[[], None] | None = None
        self._limited_headers = JSON_CT + [(b"retry-after", f"{self.faults.retry_after:g}".encode())]

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    msg = await receive()
                    if msg["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif msg["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        path = scope["path"]
        handler = self._routes.get(path)
        if handler is None:
            await self._respond(send, 404, b'{"detail":"Not Found"}')
            return
        method = scope["method"]
        want_post = path in self._post_paths
        if (method == "POST") != want_post and not (method == "HEAD" and not want_post):
            await self._respond(send, 405, b'{"detail":"Method Not Allowed"}')
            return
        await handler(scope, receive, send)

    @staticmethod
    async def _respond(send: Callable, status: int, body: bytes, headers: list | None = None) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers or JSON_CT})
        await send({"type": "http.response.body", "body": body})

    def _unhealthy(self) -> bool:
        return self.healthy_at > 0 and asyncio.get_running_loop().time() < self.healthy_at

    # ------------------------------------------------------------------ simple endpoints
    async def _health(self, scope, receive, send) -> None:
        if self._unhealthy() or self.engine.dead:
            await self._respond(send, 503, b"")
        else:
            await self._respond(send, 200, b"")

    async def _tokenize(self, scope, receive, send) -> None:
        try:
            data = await read_json(receive)
        except ApiError as e:
            await self._respond(send, e.status, e.body)
            return
        if data is None:
            return
        status, body = tokenize(data, self.profile, self.model_name)
        await self._respond(send, status, body)

    async def _version(self, scope, receive, send) -> None:
        await self._respond(send, 200, json.dumps({"version": self.profile.version}, separators=(",", ":")).encode())

    async def _models(self, scope, receive, send) -> None:
        now = int(time.time())
        body = {"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": now, "owned_by": "vllm", "root": self.model_name,
            "parent": None, "max_model_len": self.profile.max_model_len,
            "permission": [{"id": f"modelperm-{self._id_prefix}", "object": "model_permission", "created": now,
                            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                            "organization": "*", "group": None, "is_blocking": False}]}]}
        await self._respond(send, 200, json.dumps(body, separators=(",", ":")).encode())

    async def _metrics(self, scope, receive, send) -> None:
        mode = self.faults.metrics
        if mode == "missing":
            await self._respond(send, 404, b'{"detail":"Not Found"}')
        elif mode == "garbage":
            await self._respond(send, 200, GARBAGE_METRICS, METRICS_CT)
        else:
            await self._respond(send, 200, self.metrics.render(), METRICS_CT)

    # ------------------------------------------------------------------ completions
    async def _chat(self, scope, receive, send) -> None:
        await self._generate(receive, send, chat=True, client=scope.get("client"))

    async def _completions(self, scope, receive, send) -> None:
        await self._generate(receive, send, chat=False, client=scope.get("client"))

    async def _generate(self, receive, send, chat: bool, client=None) -> None:
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        arrival_perf = time.perf_counter()
        arrival_wall = time.time()
        try:
            if self._unhealthy():
                raise ApiError(503, "The server is starting up.", "ServiceUnavailableError")
            if self.engine.dead:
                raise ApiError(500, "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                               "Internal Server Error")
            data = await read_json(receive)
            if data is None:
                return
            if self.dice.rate_limited():
                await self._respond(send, 429, RATE_LIMITED, self._limited_headers)
                return
            n, hashes, max_tokens, param, stream, target, text = parse_generate(
                data, chat, self.profile, self.model_name, self.engine.draw_answer_len)
            plan = self.dice.plan(target, stream)
            if plan.error:
                raise ApiError(500, "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                               "Internal Server Error")
        except ApiError as e:
            await self._respond(send, e.status, e.body)
            return
        fl = self.profile.frontend_latency_s
        if fl > 0:
            await asyncio.sleep(fl / self.speed)
        rid = f"{self._id_prefix}{next(self._ids):x}"
        req = SimRequest(rid, n, hashes, max_tokens, target, arrival, param)
        if text is not None and self.profile.enable_prefix_caching:
            req.continuation = lambda: self._answer_hashes(text, hashes, target)
        so = data.get("stream_options")
        include_usage = isinstance(so, dict) and so.get("include_usage", True) is not False
        truth = None
        if self.truth is not None:
            truth = {"id": ("chatcmpl-" if chat else "cmpl-") + rid, "path": "chat" if chat else "completions",
                     "stream": stream, "arrival_perf": arrival_perf, "arrival_wall": arrival_wall,
                     "client_port": client[1] if client else None,
                     "prompt_tokens": n, "completion_tokens": 0, "finish_reason": None, "status": "ok",
                     "chunks": []}
        try:
            if stream:
                await self._stream(req, send, receive, chat, include_usage, plan, truth)
            else:
                await self._unary(req, send, receive, chat, truth)
        finally:
            if req.status != 2:  # not FINISHED: client went away or the stream was cut
                self.engine.abort(req)
            if truth is not None:
                truth["completion_tokens"] = req.num_output
                truth["finish_reason"] = req.finish_reason
                self.truth.add(truth)

    def _answer_hashes(self, prompt: str, hashes: list[int], n: int) -> list[int]:
        """The generated blocks' hashes: over the prompt's text and the n tokens' words it streams (as a next
        turn's chat template renders them: the answer right after the prompt's generation prompt)."""
        tw = self._text_words
        answer = "".join(tw[i % len(tw)] for i in range(n))
        p = self.profile
        return more_hashes(prompt + answer, hashes, p.block_size, p.chars_per_token)

    async def _watch_disconnect(self, receive, req: SimRequest) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                if not req.finished:
                    self.engine.abort(req)
                return

    async def _unary(self, req: SimRequest, send, receive, chat: bool, truth: dict | None) -> None:
        loop = asyncio.get_running_loop()
        req.wake_each_token = False
        self.engine.add(req)
        watcher = loop.create_task(self._watch_disconnect(receive, req))
        try:
            while not req.finished:
                fut = loop.create_future()
                req.waiter = fut
                await fut
                req.waiter = None
        finally:
            watcher.cancel()
        if req.aborted:
            return
        words = self._words
        text = b"".join(words[i % len(words)] for i in range(req.num_output)).decode()
        usage = {"prompt_tokens": req.prompt_len, "total_tokens": req.prompt_len + req.num_output,
                 "completion_tokens": req.num_output, "prompt_tokens_details": None}
        created = int(time.time())
        if chat:
            body = {"id": f"chatcmpl-{req.rid}", "object": "chat.completion", "created": created,
                    "model": self.model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                                         "annotations": None, "audio": None, "function_call": None,
                                                         "tool_calls": [], "reasoning_content": None},
                                 "logprobs": None, "finish_reason": req.finish_reason, "stop_reason": None}],
                    "service_tier": None, "system_fingerprint": None, "usage": usage, "prompt_logprobs": None,
                    "kv_transfer_params": None}
        else:
            body = {"id": f"cmpl-{req.rid}", "object": "text_completion", "created": created,
                    "model": self.model_name,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": req.finish_reason,
                                 "stop_reason": None, "prompt_logprobs": None}],
                    "usage": usage, "kv_transfer_params": None}
        if truth is not None:
            truth["chunks"].append([time.perf_counter(), time.time(), req.num_output])
        await self._respond(send, 200, json.dumps(body, separators=(",", ":")).encode())

    async def _stream(self, req: SimRequest, send, receive, chat: bool, include_usage: bool, plan: FaultPlan,
                      truth: dict | None) -> None:
        loop = asyncio.get_running_loop()
        created = str(int(time.time())).encode()
        if chat:
            rid = b"chatcmpl-" + req.rid.encode()
            head = (b'data: {"id":"' + rid + b'","object":"chat.completion.chunk","created":' + created
                    + b',"model":' + self._model_json + b',"choices":[{"index":0,"delta":{')
            first = (head + b'"role":"assistant","content":"","reasoning_content":null},"logprobs":null,'
                     b'"finish_reason":null}],"prompt_token_ids":null}\n\n')
            prefix = head + b'"content":"'
            mid, finals = self._chat_mid, CHAT_FINAL
            usage_head = (b'data: {"id":"' + rid + b'","object":"chat.completion.chunk","created":' + created
                          + b',"model":' + self._model_json + b',"choices":[],"usage":')
        else:
            rid = b"cmpl-" + req.rid.encode()
            head = (b'data: {"id":"' + rid + b'","object":"text_completion","created":' + created
                    + b',"model":' + self._model_json + b',"choices":')
            first = b""
            prefix = head + b'[{"index":0,"text":"'
            mid, finals = self._cmpl_mid, CMPL_FINAL
            usage_head = head + b'[],"usage":'
        words = self._words
        nw = len(words)
        chunks = truth["chunks"] if truth is not None else None
        perf, wall = time.perf_counter, time.time

        self.engine.add(req)
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        watcher = loop.create_task(self._watch_disconnect(receive, req))
        faulty = plan.any
        sent = 0
        try:
            while True:
                n = req.num_output
                if req.aborted:
                    return
                if n == sent:
                    if req.finished:
                        break
                    fut = loop.create_future()
                    req.waiter = fut
                    await fut
                    req.waiter = None
                    continue
                end = n
                if faulty:
                    for k in (plan.cut_at, plan.error_at, plan.stall_at):
                        if sent < k < end:
                            end = k
                done = req.finished and end == req.num_output
                parts = [first] if sent == 0 and first else []
                last = end - 1 if done else end
                for i in range(sent, last):
                    parts.append(prefix)
                    parts.append(mid[i % nw])
                if done:
                    parts.append(prefix)
                    parts.append(words[last % nw])
                    parts.append(finals[req.finish_reason or "stop"])
                if chunks is not None:
                    chunks.append([perf(), wall(), end - sent])
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                sent = end
                if faulty:
                    if sent == plan.cut_at and not done:
                        self.engine.abort(req)
                        if truth is not None:
                            truth["status"] = "cut"
                        if self.on_cut is not None:
                            self.on_cut()
                        raise CutStream(f"simulated cut after {sent} tokens")
                    if sent == plan.error_at and not done:
                        self.engine.abort(req)
                        req.finish_reason = "error"
                        self.metrics.success["error"] += 1  # an engine-side error finishes the request as "error"
                        if truth is not None:
                            truth["status"] = "stream_error"
                        err = json.dumps({"error": {"message": "Internal server error", "type": "InternalServerError",
                                                    "param": None, "code": 500}})
                        await send({"type": "http.response.body", "body": b"data: " + err.encode() + b"\n\n" + DONE,
                                    "more_body": False})
                        return
                    if sent == plan.stall_at and not done:
                        if truth is not None:
                            truth["status"] = "stalled"
                        await asyncio.sleep(self.faults.stall_seconds)
            tail = b""
            if include_usage:
                tail = usage_head + (f'{{"prompt_tokens":{req.prompt_len},"total_tokens":'
                                     f'{req.prompt_len + req.num_output},"completion_tokens":{req.num_output}}}}}\n\n'
                                     ).encode()
            await send({"type": "http.response.body", "body": tail + DONE, "more_body": False})
        finally:
            watcher.cancel()
