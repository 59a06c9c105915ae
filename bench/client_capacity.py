"""Client capacity: streamed tokens per second of client CPU, qbench's engine vs a vllm-bench-style client.

Starts bench/fast_sse_server.py in its own process, then for each concurrency runs, in fresh child processes and
alternating the order each round:
  - reference: aiohttp, one ClientSession, an asyncio.Semaphore(C), N request tasks, reading the body line by
    line and json-decoding every chunk, as vLLM's `vllm bench serve` endpoint_request_func does;
  - qbench: LoadEngine.run_steady(C, requests=N) (qbench_tui.engine, the code the app runs).
Each child first runs one warm-up wave of C requests (connections open, imports done), then measures
process CPU time (time.process_time of the client process) and tokens (usage.completion_tokens) over N = C x
--rounds-per-slot requests. Prints both sides and qbench/reference per round and the median ratio.
Not a test: numbers depend on the machine and its load (printed with them).

    .venv/bin/python bench/client_capacity.py [--concurrency 64 256] [--rounds 3] [--step-ms 10] [--loop uvloop]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


# ------------------------------------------------------------------ reference client (vllm bench serve style)

async def _ref_request(session, url: str, payload: dict) -> dict:
    # Mirrors vllm/benchmarks/lib/endpoint_request_func.py (openai-chat): per-line read, decode, json.loads each.
    out = {"success": False, "output_tokens": 0, "ttft": 0.0, "itl": []}
    generated = ""
    st = time.perf_counter()
    most_recent = st
    ttft = 0.0
    async with session.post(url=url, json=payload, headers={"Content-Type": "application/json"}) as response:
        if response.status == 200:
            async for chunk_bytes in response.content:
                chunk_bytes = chunk_bytes.strip()
                if not chunk_bytes:
                    continue
                chunk = chunk_bytes.decode("utf-8").removeprefix("data: ")
                if chunk != "[DONE]":
                    timestamp = time.perf_counter()
                    data = json.loads(chunk)
                    if choices := data.get("choices"):
                        content = choices[0]["delta"].get("content")
                        if ttft == 0.0:
                            ttft = timestamp - st
                            out["ttft"] = ttft
                        else:
                            out["itl"].append(timestamp - most_recent)
                        generated += content or ""
                    elif usage := data.get("usage"):
                        out["output_tokens"] = usage.get("completion_tokens")
                    most_recent = timestamp
            out["success"] = True
            out["latency"] = most_recent - st
    return out


async def run_reference(url: str, c: int, n: int, tokens: int) -> dict:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=c, limit_per_host=c, ttl_dns_cache=300, use_dns_cache=True,
                                     keepalive_timeout=60, enable_cleanup_closed=True, force_close=False)
    api = url + "/v1/chat/completions"
    payload = {"model": "fast-sse", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0,
               "max_completion_tokens": tokens, "stream": True, "stream_options": {"include_usage": True},
               "ignore_eos": True}
    async with aiohttp.ClientSession(connector=connector, trust_env=True,
                                     timeout=aiohttp.ClientTimeout(total=6 * 60 * 60)) as session:
        sem = asyncio.Semaphore(c)

        async def limited():
            async with sem:
                return await _ref_request(session, api, payload)

        await asyncio.gather(*(limited() for _ in range(c)))  # warm-up wave
        c0, w0 = time.process_time(), time.perf_counter()
        outs = await asyncio.gather(*(limited() for _ in range(n)))
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    ok = [o for o in outs if o["success"]]
    return {"cpu_s": cpu, "wall_s": wall, "tokens": sum(o["output_tokens"] or 0 for o in ok),
            "completed": len(ok), "failed": len(outs) - len(ok)}


# ------------------------------------------------------------------ qbench

async def run_qbench(url: str, c: int, n: int, tokens: int, httpx_transport: bool = False) -> dict:
    from qbench_tui.engine import load
    from qbench_tui.engine.load import LoadEngine
    from qbench_tui.engine.records import RequestSpec

    if httpx_transport:  # the engine as it was before the raw transport: one httpx.AsyncClient per worker
        from bench.httpx_stream import make_httpx_client, stream_request

        load.make_client, load.stream_request = make_httpx_client, stream_request

    spec = RequestSpec(url=url, model="fast-sse", max_tokens=tokens, ignore_eos=True)
    eng = LoadEngine(spec, lambda i: "hi")
    try:
        await eng.run_wave(c)  # warm-up wave: clients and connections exist afterwards
        c0, w0 = time.process_time(), time.perf_counter()
        recs = await eng.run_steady(c, requests=n)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    finally:
        await eng.stop()
    ok = [r for r in recs if r.ok]
    errs = sorted({r.error for r in recs if not r.ok})
    return {"cpu_s": cpu, "wall_s": wall, "tokens": sum(r.out_tokens for r in ok), "completed": len(ok),
            "failed": len(recs) - len(ok), "errors": errs[:3]}


def child(args) -> None:
    if args.child == "reference":
        coro = run_reference(args.url, args.c, args.n, args.tokens)
    else:
        coro = run_qbench(args.url, args.c, args.n, args.tokens, args.child == "qbench-httpx")
    if args.loop == "uvloop":
        import uvloop

        res = uvloop.run(coro)
    else:
        res = asyncio.run(coro)
    print("RESULT " + json.dumps(res), flush=True)


# ------------------------------------------------------------------ parent

def start_server(tokens: int, step_ms: float) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "fast_sse_server.py"), "--port", "0",
                          "--tokens", str(tokens), "--step-ms", str(step_ms)],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("LISTENING"):
        p.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return p, f"http://127.0.0.1:{line.split()[1]}"


def run_child(kind: str, url: str, c: int, n: int, tokens: int, loop: str, profile: str | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--url", url, "--c", str(c), "--n", str(n),
           "--tokens", str(tokens), "--loop", loop]
    if profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", profile] + cmd[1:]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind} child failed: rc={r.returncode}\n{r.stderr[-3000:]}")


def server_cpu(p: subprocess.Popen) -> float:
    try:
        import psutil

        t = psutil.Process(p.pid).cpu_times()
        return t.user + t.system
    except Exception:
        return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--rounds", type=int, default=3, help="alternating reference/qbench pairs per concurrency")
    ap.add_argument("--rounds-per-slot", type=int, default=5, help="N = C x this many measured requests")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--step-ms", type=float, default=10.0, help="server decode step (see fast_sse_server.py)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--only", choices=("reference", "qbench"), default=None)
    ap.add_argument("--with-httpx", action="store_true",
                    help="also run qbench's engine over httpx (the transport it used before): the before number")
    ap.add_argument("--profile-dir", default=None, help="write a cProfile of every qbench child here")
    ap.add_argument("--child", choices=("reference", "qbench", "qbench-httpx"), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--c", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return

    srv, url = start_server(a.tokens, a.step_ms)
    print(f"# client_capacity  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  cores={os.cpu_count()}  "
          f"loadavg={' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"# server step {a.step_ms} ms, {a.tokens} tokens/request, client loop {a.loop}, "
          f"N = C x {a.rounds_per_slot} measured requests after a warm-up wave")
    hdr = (f"{'C':>4} {'rnd':>3} {'client':<12} {'tokens':>7} {'cpu_s':>6} {'wall_s':>6} {'cpu%':>5} "
           f"{'tok/s':>7} {'tok/cpu_s':>9} {'srv_cpu%':>8}")
    try:
        for c in a.concurrency:
            n = c * a.rounds_per_slot
            ratios: list[float] = []
            httpx_ratios: list[float] = []
            print(hdr)
            for rnd in range(a.rounds):
                order = ["reference", "qbench"] if rnd % 2 == 0 else ["qbench", "reference"]
                if a.only:
                    order = [a.only]
                if a.with_httpx:
                    order.append("qbench-httpx")
                res = {}
                for kind in order:
                    prof = None
                    if a.profile_dir and kind == "qbench":
                        os.makedirs(a.profile_dir, exist_ok=True)
                        prof = os.path.join(a.profile_dir, f"qbench_c{c}_r{rnd}.prof")
                    s0 = server_cpu(srv)
                    r = run_child(kind, url, c, n, a.tokens, a.loop, prof)
                    s1 = server_cpu(srv)
                    r["tpc"] = r["tokens"] / r["cpu_s"] if r["cpu_s"] > 0 else float("nan")
                    res[kind] = r
                    print(f"{c:>4} {rnd:>3} {kind:<12} {r['tokens']:>7} {r['cpu_s']:>6.2f} {r['wall_s']:>6.2f} "
                          f"{100 * r['cpu_s'] / r['wall_s']:>5.0f} {r['tokens'] / r['wall_s']:>7.0f} "
                          f"{r['tpc']:>9.0f} {100 * (s1 - s0) / r['wall_s']:>8.0f}"
                          + (f"  failed={r['failed']} {r.get('errors', '')}" if r["failed"] else ""), flush=True)
                if "qbench" in res and "reference" in res:
                    ratios.append(res["qbench"]["tpc"] / res["reference"]["tpc"])
                    print(f"{c:>4} {rnd:>3} qbench/reference tokens per CPU-second: {ratios[-1]:.2f}x", flush=True)
                if "qbench-httpx" in res and "reference" in res:
                    hr = res["qbench-httpx"]["tpc"] / res["reference"]["tpc"]
                    httpx_ratios.append(hr)
                    print(f"{c:>4} {rnd:>3} qbench-httpx/reference tokens per CPU-second: {hr:.2f}x", flush=True)
            if ratios:
                print(f"== C={c}: median qbench/reference = {statistics.median(ratios):.2f}x "
                      f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})  loadavg now "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
            if httpx_ratios:
                print(f"== C={c}: median qbench-over-httpx/reference = {statistics.median(httpx_ratios):.2f}x",
                      flush=True)
    finally:
        srv.terminate()
        srv.wait(5)


if __name__ == "__main__":
    main()
