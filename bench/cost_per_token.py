"""Where the client's cost per streamed token goes as concurrency grows: tokens per client CPU-second, by C.

Starts bench/fast_sse_server.py (or, --server sim, the simulator) pinned to one core, then for each concurrency
runs, in a fresh child pinned to another core, one of:
  headless  what `qbench run` runs: headless.run_plan (ServerWatch scraping /metrics each second, ClientWatch,
            LoadEngine, the level's WindowTally) with every record going to the .requests.jsonl through
            engine/recordlog.RecordLog (flushed by its timer each second), as commands/results.RunFiles does;
  engine    the dashboard's engine process (engine/process.EngineProcess: EngineSession with snapshots, rolling
            window, segments, the JSONL) with an idle parent, as bench/fidelity.py's `engine` mode does.
Each child loads for --warm seconds (connections open, level settled), then measures its own CPU time
(time.process_time; for `engine`, the engine child's, read through psutil) and the output tokens streamed over
--span seconds (the fast server's generation_tokens_total: every token written to this client), next to the
requests that finished in it.

--tree DIR (repeatable) runs each child with DIR first on sys.path (a copy of qbench_tui taken before a change),
alternating trees within each round, so before/after ratios come from the same run on the same loaded machine.
--profile pyspy|cprofile: a second pass per C under the profiler, printing the top functions by cumulative and by
own share (py-spy samples the measured span only; cProfile the whole child and slows calls, so read its shares,
not its speed). Not a test: absolute numbers depend on the machine and its load; compare ratios within one run.

    .venv/bin/python bench/cost_per_token.py [--concurrency 64 256 1000] [--mode headless engine] [--span 10]
        [--tree /tmp/before --tree .] [--profile pyspy]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROMPT = "hi"


def pin(cores: list[int] | None) -> None:
    if cores:
        try:
            os.sched_setaffinity(0, set(cores))
        except (OSError, AttributeError):  # one core, or not Linux: unpinned, said in the header
            pass


# ------------------------------------------------------------------ children

async def _headless(url: str, model: str, c: int, warm: float, span: float, tokens: int, out_dir: str,
                    spy: str) -> dict:
    from qbench_tui.engine.recordlog import RecordLog
    from qbench_tui.engine.records import RequestSpec
    from qbench_tui.headless import LevelPlan, StopFlag, run_plan

    log = RecordLog(os.path.join(out_dir, "run.requests.jsonl"), exclusive=True)
    log.start_timer()
    got = [0, 0]  # output tokens, requests of ok records finished so far

    def on_record(rec, concurrency: int) -> None:  # commands/results.RunFiles.record
        log.add(rec, level=concurrency)
        if rec.ok:
            got[0] += rec.out_tokens
            got[1] += 1

    spec = RequestSpec(url=url, model=model, max_tokens=tokens, ignore_eos=True)
    # a steady level that outlasts the measurement: warm-up, then span, then one request's length of slack
    plan = LevelPlan(c, mode="steady", duration=warm + span + 30.0, warmup=warm, settle=False)
    stop = StopFlag()
    out: dict = {}

    async def measure() -> None:
        await asyncio.sleep(warm)
        s0 = await asyncio.to_thread(server_tokens, url)
        t0, c0, k0, n0 = time.perf_counter(), time.process_time(), got[0], got[1]
        prof = start_spy(os.getpid(), span, spy)
        await asyncio.sleep(span)
        cpu, wall, k1, n1 = time.process_time() - c0, time.perf_counter() - t0, got[0], got[1]
        s1 = await asyncio.to_thread(server_tokens, url)
        out.update(cpu_s=cpu, wall_s=wall, tokens=s1 - s0, finished_tokens=k1 - k0, requests=n1 - n0)
        stop_spy(prof)
        stop.set("measured")

    task = asyncio.create_task(measure())
    await run_plan(spec, lambda i: PROMPT, [plan], on_record=on_record, stop=stop)
    await task
    log.close()
    out["jsonl_lines"] = log.written
    return out


def _engine(url: str, model: str, c: int, warm: float, span: float, tokens: int, out_dir: str, spy: str) -> dict:
    import psutil

    from qbench_tui.engine.process import EngineProcess
    from qbench_tui.engine.records import RequestSpec
    from qbench_tui.engine.session import SessionConfig

    cfg = SessionConfig(spec=RequestSpec(url=url, model=model, max_tokens=tokens, ignore_eos=True),
                        prompt=PROMPT, out_dir=out_dir, start_concurrency=c, simulated=True)
    ep = EngineProcess(cfg)
    proc = psutil.Process(ep.pid)
    pin_other = os.sched_getaffinity(0)
    try:
        proc.cpu_affinity(sorted(pin_other))
    except (psutil.Error, AttributeError):
        pass

    def cpu() -> float:
        t = proc.cpu_times()
        return t.user + t.system

    def tokens_so_far() -> tuple[int, int]:
        # snapshots count requests, not tokens: with ignore_eos every answer is `tokens` long (as headless counts)
        snap = ep.poll() or ep.last
        n = snap.completed_total if snap is not None else 0
        return n * tokens, n

    try:
        ep.wait_for(lambda s: s.completed_total > 0, timeout=60.0)  # spawned, imported, first answers back
        end = time.monotonic() + warm
        while time.monotonic() < end:
            tokens_so_far()
            time.sleep(0.2)
        # the snapshot that says how many tokens had finished, and the CPU at that moment
        k0, n0 = tokens_so_far()
        s0 = server_tokens(url)
        t0, c0 = time.perf_counter(), cpu()
        prof = start_spy(ep.pid, span, spy)
        end = time.monotonic() + span
        while time.monotonic() < end:
            tokens_so_far()
            time.sleep(0.2)
        c1, t1 = cpu(), time.perf_counter()
        s1 = server_tokens(url)
        k1, n1 = tokens_so_far()
        out = {"cpu_s": c1 - c0, "wall_s": t1 - t0, "tokens": s1 - s0, "finished_tokens": k1 - k0,
               "requests": n1 - n0}
        stop_spy(prof)
    finally:
        ep.close()
    return out


def server_tokens(url: str) -> float:
    """The fast server's vllm:generation_tokens_total: tokens streamed (written), not tokens of finished requests,
    so a span's count does not jump with the waves of equal-length answers that end in it."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("vllm:generation_tokens_total"):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


def start_spy(pid: int, span: float, path: str):
    if not path:
        return None
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    # samples only the measured span; the sampler itself runs on the server's core (--spy-cores)
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(span)), "--rate", "200", "--format", "raw",
           "--output", path, "--nonblocking"]
    cores = os.environ.get("COST_SPY_CORES")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=(lambda: pin([int(x) for x in cores.split(",")])) if cores else None)


def stop_spy(p) -> None:
    if p is not None:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def child(a) -> None:
    out_dir = tempfile.mkdtemp(prefix="qbench-cost-")
    try:
        import qbench_tui

        if a.mode == ["headless"]:
            import uvloop  # as `qbench run` runs (commands/common.run_async)

            res = uvloop.run(_headless(a.url, a.model, a.c, a.warm, a.span, a.tokens, out_dir, a.spy))
        else:
            res = _engine(a.url, a.model, a.c, a.warm, a.span, a.tokens, out_dir, a.spy)
        res["package"] = os.path.dirname(qbench_tui.__file__)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    print("RESULT " + json.dumps(res), flush=True)


# ------------------------------------------------------------------ parent

def start_server(tokens: int, step_ms: float, cores: list[int]) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "fast_sse_server.py"), "--port", "0",
                          "--tokens", str(tokens), "--step-ms", str(step_ms)],
                         stdout=subprocess.PIPE, text=True, preexec_fn=lambda: pin(cores))
    line = p.stdout.readline()
    if not line.startswith("LISTENING"):
        p.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return p, f"http://127.0.0.1:{line.split()[1]}"


def start_sim(profile: str, cores: list[int]) -> tuple[subprocess.Popen, str, str]:
    import urllib.request

    from qbench_tui.server.net import free_port

    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "qbench_tui.server.sim", "--host", "127.0.0.1", "--port", str(port),
                          "--profile", profile], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=lambda: pin(cores))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                return p, url, json.loads(r.read())["data"][0]["id"]
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise SystemExit("simulator did not become ready")


def run_child(a, mode: str, tree: str, url: str, c: int, spy: str = "", cprof: str = "") -> dict:
    cmd = [os.path.abspath(__file__), "--child", "--mode", mode, "--url", url, "--model", a.model, "--c", str(c),
           "--warm",
           str(a.warm), "--span", str(a.span), "--tokens", str(a.tokens), "--spy", spy]
    cmd = [sys.executable] + (["-m", "cProfile", "-o", cprof] if cprof else []) + cmd
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               COST_SPY_CORES=",".join(map(str, a.server_cores)))
    cores = a.client_cores
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.warm + a.span + 300, env=env,
                       preexec_fn=lambda: pin(cores))
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mode} child failed: rc={r.returncode}\n{r.stderr[-3000:]}")


def _fn_name(frame: str) -> str:
    # py-spy raw frame: "name (path/to/file.py:LINE)" -> "file.py:name"
    name, _, where = frame.rpartition(" (")
    f = where.rstrip(")").rsplit(":", 1)[0]
    return f"{os.path.basename(f)}:{name}"


def spy_shares(path: str) -> tuple[int, collections.Counter, collections.Counter]:
    total, cum, own = 0, collections.Counter(), collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            k = int(n)
            frames = [_fn_name(x) for x in stack.split(";")]
            total += k
            own[frames[-1]] += k
            for fn in set(frames):
                cum[fn] += k
    return total, cum, own


def cprofile_shares(path: str) -> tuple[float, collections.Counter, collections.Counter]:
    st = pstats.Stats(path)
    cum, own = collections.Counter(), collections.Counter()
    for (file, _line, name), (_cc, _nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        key = f"{os.path.basename(file)}:{name}"
        cum[key] += ct
        own[key] += tt
    return st.total_tt, cum, own  # type: ignore[attr-defined]


def print_top(title: str, total: float, cum: collections.Counter, own: collections.Counter, n: int) -> None:
    if not total:
        print(f"  {title}: no samples")
        return
    print(f"  {title}: top {n} by own share | by cumulative share (qbench_tui frames and callbacks)")
    owns = own.most_common(n)
    cums = [kv for kv in cum.most_common() if ".py:" in kv[0] and "<module>" not in kv[0]
            and not kv[0].startswith(("runpy.py", "cProfile.py", "cost_per_token.py", "base_events.py",
                                      "events.py:run", "runners.py"))][:n]
    for i in range(n):
        left = f"{100 * owns[i][1] / total:5.1f}% {owns[i][0]:<44}" if i < len(owns) else " " * 51
        right = f"{100 * cums[i][1] / total:5.1f}% {cums[i][0]}" if i < len(cums) else ""
        print(f"    {left} | {right}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256, 1000])
    ap.add_argument("--mode", nargs="+", choices=("headless", "engine"), default=["headless"])
    ap.add_argument("--tree", action="append", default=None,
                    help="a folder holding a qbench_tui to measure (repeatable; default: this checkout)")
    ap.add_argument("--rounds", type=int, default=1, help="passes over the trees per C and mode")
    ap.add_argument("--warm", type=float, default=8.0, help="seconds of load before measuring")
    ap.add_argument("--span", type=float, default=10.0, help="seconds measured")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--step-ms", type=float, default=10.0, help="server decode step (see fast_sse_server.py)")
    ap.add_argument("--server", choices=("fast", "sim"), default="fast",
                    help="bench/fast_sse_server.py, or the simulator (`python -m qbench_tui.server.sim`)")
    ap.add_argument("--sim-profile", default="h200-fast")
    ap.add_argument("--server-cores", type=int, nargs="+", default=[1])
    ap.add_argument("--client-cores", type=int, nargs="+", default=[0])
    ap.add_argument("--profile", choices=("pyspy", "cprofile"), default=None)
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--c", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="fast-sse", help=argparse.SUPPRESS)
    ap.add_argument("--spy", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    trees = a.tree or [ROOT]
    # a SIGTERM (timeout, kill) still stops the server through the finally below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.server == "sim":
        srv, url, a.model = start_sim(a.sim_profile, a.server_cores)
    else:
        srv, url = start_server(a.tokens, a.step_ms, a.server_cores)
    print(f"# cost_per_token  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  cores={os.cpu_count()}  "
          f"loadavg={' '.join(f'{x:.2f}' for x in os.getloadavg())}  server on {a.server_cores}, "
          f"client on {a.client_cores}")
    what = f"simulator profile {a.sim_profile}" if a.server == "sim" else f"fast server step {a.step_ms} ms"
    print(f"# {what}, {a.tokens} tokens/request; measured {a.span:g} s after {a.warm:g} s")
    print(f"{'mode':<9} {'C':>5} {'tree':<28} {'tokens':>8} {'req':>6} {'cpu_s':>6} {'cpu%':>5} {'tok/s':>7} "
          f"{'tok/cpu_s':>9}")
    table: dict[tuple, list[float]] = collections.defaultdict(list)
    try:
        for mode in a.mode:
            for c in a.concurrency:
                for rnd in range(a.rounds):
                    order = trees if rnd % 2 == 0 else trees[::-1]
                    for tree in order:
                        r = run_child(a, mode, tree, url, c)
                        tpc = r["tokens"] / r["cpu_s"] if r["cpu_s"] > 0 else float("nan")
                        table[(mode, c, tree)].append(tpc)
                        print(f"{mode:<9} {c:>5} {_short(tree):<28} {r['tokens']:>8.0f} {r['requests']:>6} "
                              f"{r['cpu_s']:>6.2f} {100 * r['cpu_s'] / r['wall_s']:>5.0f} "
                              f"{r['tokens'] / r['wall_s']:>7.0f} {tpc:>9.0f}", flush=True)
                if len(trees) > 1:
                    base = statistics.median(table[(mode, c, trees[0])])
                    for tree in trees[1:]:
                        print(f"== {mode} C={c}: {_short(tree)} / {_short(trees[0])} tokens per CPU-second = "
                              f"{statistics.median(table[(mode, c, tree)]) / base:.2f}x", flush=True)
                if a.profile:
                    for tree in trees:
                        fd, path = tempfile.mkstemp(prefix="qbench-cost-", suffix=".prof")
                        os.close(fd)
                        try:
                            if a.profile == "pyspy":
                                r = run_child(a, mode, tree, url, c, spy=path)
                                total, cum, own = spy_shares(path)
                            else:
                                r = run_child(a, mode, tree, url, c, cprof=path)
                                total, cum, own = cprofile_shares(path)
                        finally:
                            os.unlink(path)
                        print_top(f"{a.profile} {mode} C={c} {_short(tree)}", total, cum, own, a.top)
    finally:
        srv.terminate()
        srv.wait(5)
    if len(a.concurrency) > 1:
        print("# tokens per client CPU-second (median over rounds)")
        for mode in a.mode:
            for tree in trees:
                row = "  ".join(f"C={c}: {statistics.median(table[(mode, c, tree)]):.0f}" for c in a.concurrency)
                print(f"  {mode:<9} {_short(tree):<28} {row}")


def _short(tree: str) -> str:
    t = os.path.abspath(tree)
    return "this checkout" if t == ROOT else t[-28:]


if __name__ == "__main__":
    main()
