"""Client overhead at high concurrency: TTFT / ITL error against a fast deterministic mock's own write stamps,
for the engine in one process and sharded over client processes (`--client-procs`, engine/shards.py).

The server is bench/fast_sse_server.py with --record-truth (every write stamped with perf_counter, CLOCK_MONOTONIC:
the same clock as the client's); it produces one token per active stream every --step-ms (C=1000 at 10 ms is 100k
chunks/s, the load the anchors publish: vLLM's Rust `vllm-bench` +28 ms TTFT error at c=1000 / 100k chunks/s,
Python `vllm bench serve` +294 ms — ../shared/reference/anchors.md). The client is the code `qbench run` runs:
LoadEngine.run_steady(C, requests=N + C), its first C requests (the ones that opened connections) left out.
Records are matched to the server's streams by bench/fidelity.analyze (arrival after the client's start, token count,
no write read before it happened).

Server and client get their own cores when the machine has them (--server-cores / --client-cores; shards inherit the
client's). On a 2-core machine the server has one core and every client process shares the other, so N shards can
only show what the hand-over costs, not what N cores would give: the output says how many cores each side had and
the chunk rate the server really achieved, so a figure is never read as more than it is.

    .venv/bin/python bench/fidelity_fast.py [--concurrency 1000] [--step-ms 10] [--procs 1 2] [--requests 3000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

ANCHORS = "published at c=1000 / 100k chunks/s: Rust vllm-bench +28 ms TTFT error, Python vllm bench serve +294 ms"


def _cores(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


async def _client(url: str, c: int, n: int, procs: int, tokens: int) -> list[dict]:
    from fidelity import _rec_dict

    from qbench_tui.engine.load import LoadEngine
    from qbench_tui.engine.records import RequestSpec
    from qbench_tui.engine.shards import ShardPool

    spec = RequestSpec(url=url, model="fast-sse", max_tokens=tokens)
    pool = ShardPool(spec, procs) if procs > 1 else None
    if pool is not None:
        await pool.start()
    eng = LoadEngine(spec, lambda i: "fidelity", **({"sender": pool.send} if pool else {}))
    t_cpu = time.process_time()
    try:
        recs = await eng.run_steady(c, requests=n + c)
    finally:
        await eng.stop()
        if pool is not None:
            await pool.close()
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the shards, joined by pool.close()
    out = [_rec_dict(r) for r in recs]
    out.append({"engine_cpu_s": time.process_time() - t_cpu, "shards_cpu_s": kids.ru_utime + kids.ru_stime})
    return out


def child(a) -> None:
    if a.client_cores:
        os.sched_setaffinity(0, _cores(a.client_cores))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    recs = asyncio.run(_client(a.url, a.c, a.n, a.procs, a.tokens))
    with open(a.out, "w") as f:
        json.dump(recs, f)


def start_server(step_ms: float, tokens: int, truth: str, cores: list[int]) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "fast_sse_server.py"), "--port", "0", "--step-ms",
                          str(step_ms), "--tokens", str(tokens), "--record-truth", truth], stdout=subprocess.PIPE,
                         text=True, preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    line = p.stdout.readline()
    if not line.startswith("LISTENING"):
        p.kill()
        raise SystemExit(f"fast server did not start: {line!r}")
    return p, f"http://127.0.0.1:{int(line.split()[1])}"


def one_run(a, procs: int) -> dict:
    from fidelity import analyze

    tmp = tempfile.mkdtemp(prefix="qbench-fidfast-")
    truth = os.path.join(tmp, "truth.jsonl")
    srv, url = start_server(a.step_ms, a.tokens, truth, _cores(a.server_cores))
    out = os.path.join(tmp, "client.json")
    try:
        subprocess.run([sys.executable, __file__, "--child", "--url", url, "--c", str(a.concurrency), "--n",
                        str(a.requests), "--procs", str(procs), "--tokens", str(a.tokens), "--out", out,
                        "--client-cores", a.client_cores], check=True, cwd=ROOT, timeout=900)
    finally:
        srv.terminate()
        srv.wait(30)
    with open(out) as f:
        recs = json.load(f)
    cpus = recs.pop()
    cpu = cpus["engine_cpu_s"]
    with open(truth) as f:
        streams = [json.loads(line) for line in f if line.strip()]
    res = analyze(recs, streams, skip_first=a.concurrency)
    stamps = sorted(c[0] for s in streams for c in s["chunks"])
    span = (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    res["chunks_per_s"] = len(stamps) / span if span else 0.0
    res["engine_cpu_s"] = cpu
    res["client_cpu_s"] = cpu + cpus["shards_cpu_s"]
    res["tokens"] = sum(r["out"] for r in recs if r["ok"])
    return res


def main() -> None:
    from fidelity import _fmt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--step-ms", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--requests", type=int, default=3000, help="measured requests per run (after the first C)")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="client processes to compare")
    ap.add_argument("--server-cores", default="", help="e.g. 1 (default: the last core when there are 2+)")
    ap.add_argument("--client-cores", default="", help="e.g. 0 (default: every core but the server's)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--c", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.procs = a.procs[0]
        child(a)
        return
    ncpu = os.cpu_count() or 1
    if ncpu >= 2:
        a.server_cores = a.server_cores or str(ncpu - 1)
        a.client_cores = a.client_cores or ",".join(str(i) for i in range(ncpu) if str(i) not in
                                                     a.server_cores.split(","))
    target = a.concurrency / (a.step_ms / 1000.0)
    print(f"C={a.concurrency}, one token per stream every {a.step_ms:g} ms (asked {target:,.0f} chunks/s), "
          f"{a.tokens} tokens, {a.requests} measured requests; server cores [{a.server_cores or 'any'}], "
          f"client cores [{a.client_cores or 'any'}] (shared by every client process)")
    print(ANCHORS)
    for procs in a.procs:
        r = one_run(a, procs)
        tps = r["tokens"] / r["client_cpu_s"] if r["client_cpu_s"] else float("nan")
        print(f"\n--client-procs {procs}: server wrote {r['chunks_per_s']:,.0f} chunks/s; matched {r['matched']} of "
              f"{r['ok']} ok ({r['unmatched']} unmatched, {r['event_count_mismatch']} event-count mismatches); "
              f"client {r['client_cpu_s']:.1f} CPU-s (engine process {r['engine_cpu_s']:.1f}), {tps:,.0f} tokens "
              "per client CPU-second")
        print(f"  TTFT error   {_fmt(r['ttft_err'])}")
        print(f"    send       {_fmt(r['send_delay'])}")
        print(f"    first read {_fmt(r['first_delay'])}")
        print(f"  ITL error    {_fmt(r['itl_err'])}")
        print(f"  read delay   {_fmt(r['delay'])}")


if __name__ == "__main__":
    main()
