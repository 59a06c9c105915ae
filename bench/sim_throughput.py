"""How many streamed tokens per CPU-second the simulator serves (and a quick load curve for a profile).

Starts `python -m qbench_tui.server.sim` in its own process, drives it from this process with a minimal aiohttp
client (closed loop, C workers, ignore_eos, max_tokens), and prints the server's token rate (from /metrics
generation_tokens deltas), the server process's CPU seconds (psutil) and tokens per CPU-second. Nothing is asserted:
compare the numbers against the reference (>= 20,000 streamed tokens/s on one core).

    .venv/bin/python bench/sim_throughput.py                      # h200-fast, speed 100, C=64, 10 s
    .venv/bin/python bench/sim_throughput.py --profile qwen2.5-14b-awq-32gb --speed 1 -c 1 8 40 60 128 --seconds 20
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time

import aiohttp
import psutil

PROMPT = "Write a short paragraph explaining why GPUs are good for AI."


def start_server(profile: str, speed: float, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "qbench_tui.server.sim", "--port", "0", "--profile", profile, "--speed", str(speed),
           *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, m.group(1)


async def gen_tokens(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    m = re.search(r"^vllm:generation_tokens_total\{[^}]*\} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def drive(url: str, model: str, concurrency: int, seconds: float, max_tokens: int, ignore_eos: bool
                ) -> dict[str, float]:
    payload = json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
                          "max_tokens": max_tokens, "ignore_eos": ignore_eos,
                          "stream_options": {"include_usage": True}}).encode()
    headers = {"content-type": "application/json"}
    stop_at = time.perf_counter() + seconds
    lat: list[float] = []
    ttft: list[float] = []
    out_tokens = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal out_tokens
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            first = None
            last = b""
            async with session.post(url + "/v1/chat/completions", data=payload, headers=headers) as resp:
                async for line in resp.content:
                    if first is None and line.startswith(b"data:"):
                        first = time.perf_counter()
                    if line.startswith(b'data: {"id"') and b'"usage":{' in line:
                        last = line
            if last:
                out_tokens += json.loads(last[6:])["usage"]["completion_tokens"]
                lat.append(time.perf_counter() - t0)
                ttft.append((first or t0) - t0)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
        g0 = await gen_tokens(session, url)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        g1 = await gen_tokens(session, url)
    return {"wall": wall, "server_tokens": g1 - g0, "client_tokens": out_tokens, "requests": len(lat),
            "mean_latency": sum(lat) / len(lat) if lat else 0.0, "mean_ttft": sum(ttft) / len(ttft) if ttft else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="h200-fast")
    ap.add_argument("--speed", type=float, default=100.0, help="simulator --speed (high = CPU-bound server)")
    ap.add_argument("-c", "--concurrency", type=int, nargs="+", default=[64])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--eos", action="store_true", help="let the profile's answer lengths apply (no ignore_eos)")
    ap.add_argument("server_args", nargs="*", help="extra simulator flags after --")
    args = ap.parse_args()
    proc, url = start_server(args.profile, args.speed, args.server_args)
    try:
        ps = psutil.Process(proc.pid)
        model = json.loads(__import__("urllib.request").request.urlopen(url + "/v1/models").read())["data"][0]["id"]
        print(f"simulator {url} profile={args.profile} speed={args.speed} max_tokens={args.max_tokens} "
              f"ignore_eos={not args.eos}")
        for c in args.concurrency:
            cpu0 = sum(ps.cpu_times()[:2])
            r = asyncio.run(drive(url, model, c, args.seconds, args.max_tokens, not args.eos))
            cpu = sum(ps.cpu_times()[:2]) - cpu0
            tps = r["server_tokens"] / r["wall"]
            print(f"C={c:<4} server {tps:10.0f} tok/s  server CPU {cpu:6.2f} s over {r['wall']:.1f} s  "
                  f"-> {r['server_tokens'] / cpu if cpu else 0:10.0f} tok/CPU-s | client: {r['requests']} req, "
                  f"{r['client_tokens'] / r['wall']:8.0f} out tok/s, mean latency {r['mean_latency']:.3f} s, "
                  f"mean TTFT {r['mean_ttft'] * 1000:.1f} ms (model time x{args.speed:g})")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
