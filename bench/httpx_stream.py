"""The engine's transport before engine/http1.py: one httpx.AsyncClient per worker. Kept only so that
client_capacity.py --with-httpx can still measure the before number; the app never uses it.

Same records as engine/request.stream_request (the timing is the same pure StreamTiming); 5-6x the client CPU.
"""
from __future__ import annotations

import json
import ssl
import time
from time import perf_counter

import httpx

from qbench_tui.engine.http1 import make_ssl_context
from qbench_tui.engine.openai_stream import StreamTiming, error_message
from qbench_tui.engine.records import RequestRecord, RequestSpec, one_line
from qbench_tui.engine.request import build_request, request_headers


def make_httpx_client(spec: RequestSpec, ssl_ctx: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=spec.url,
        verify=ssl_ctx if ssl_ctx is not None else make_ssl_context(),
        timeout=httpx.Timeout(connect=spec.connect_timeout, read=spec.read_timeout, write=30.0, pool=None),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        trust_env=False,
    )


async def stream_request(client: httpx.AsyncClient, spec: RequestSpec, prompt: str | list[dict], *,
                         segment: int, concurrency: int, worker: int) -> RequestRecord:
    rec = RequestRecord(ok=False, segment=segment, concurrency=concurrency, worker=worker, start=0.0)
    path, body = build_request(spec, prompt)
    content = json.dumps(body, separators=(",", ":")).encode()
    rec.wall_start = time.time()
    start = rec.start = perf_counter()
    timing = StreamTiming(start)
    try:
        async with client.stream("POST", path, content=content, headers=request_headers(spec)) as resp:
            rec.status = resp.status_code
            if resp.status_code != 200:
                raw = await resp.aread()
                rec.end = perf_counter()
                rec.error = f"HTTP {resp.status_code}: {error_message(raw)}"
                return rec
            async for chunk in resp.aiter_raw():
                timing.feed(perf_counter(), chunk)
            # reading to EOF (not breaking at [DONE]) lets httpx keep the connection for the next request
            timing.end(perf_counter())
    except httpx.TimeoutException as e:
        rec.error = f"timeout: {type(e).__name__}"
    except Exception as e:  # never raise: one odd stream must not end the run
        rec.error = f"{type(e).__name__}: {one_line(str(e))}"
    return timing.finish(rec, perf_counter())
