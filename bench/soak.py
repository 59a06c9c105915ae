"""Soak: hold concurrency C for M minutes against a simulator this script starts, headless and/or live.

What it proves, printed every ~10 s and at the end of each mode:
  - failures not caused by injected faults: must be 0 (faults are off unless --error-rate / --stream-error-rate);
  - the RSS of every qbench process over time (headless: the `qbench sweep` client; live: the engine process and
    this script, which consumes its snapshots as the dashboard does; both: the simulator), first / after warm-up /
    last, and the least-squares slope after warm-up in MiB/hour: flat after warm-up;
  - the client's event-loop lag: live, p50/p99/max of the engine's per-second worst (its snapshots); headless,
    the results file's mean of per-second worsts and the worst second (what `qbench sweep` records);
  - records on disk = completed + failed, every line parsed; the ok lines are also checked against the requests
    the simulator itself finished (its /metrics), and no qbench process is left running afterwards.

Modes: headless runs `qbench sweep --mode steady --levels C --duration M*60` as a user would; live runs the
dashboard's engine process (engine/process.py) at C for M minutes with this script as its face, then pauses,
lets the requests in flight finish and closes it. `both` runs one after the other, each on a fresh simulator.
The simulator gets a core of its own where there are two or more (os.sched_setaffinity); the client the rest.

The simulator's RSS rises until its prefix-cache model holds num_gpu_blocks blocks (~18 MB on h200-fast, filled
in ~1-2 minutes at C=200-1000), as vLLM's block pool fills; the default warm-up (30% of the run, at most 120 s)
covers that on a 10-minute run. Exit status 1 when a check fails.

    .venv/bin/python bench/soak.py --minutes 10 --concurrency 1000 --mode both
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench.fidelity import PROMPT  # noqa: E402

# what the simulator's injected faults look like in a record's error (server/sim/app.py, engine/request.py)
INJECTED = {"error_rate": "HTTP 500: EngineCore encountered an issue",
            "stream_error_rate": "stream error: Internal server error"}


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    n = len(ts)
    if n < 2:
        return float("nan")
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return float("nan")
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var * 3600.0


def pct(vals: list[float], q: float) -> float:
    if not vals:
        return float("nan")
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * len(s)))]


# ------------------------------------------------------------------ the simulator

def cores() -> tuple[list[int] | None, list[int] | None]:
    """(simulator's cores, client's cores): the last core for the simulator when there are two or more."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(allowed) < 2:
        return None, None
    return allowed[-1:], allowed[:-1]


def _sim_preexec():
    """PDEATHSIG, and the soft open-files limit raised to the hard one: `qbench sim` does not raise its own, and
    under `ulimit -n 256` it failed 61 of 300 requests at C=300 (one descriptor per connection)."""
    import resource

    from qbench_tui.server.proctree import pdeathsig_preexec

    deathsig = pdeathsig_preexec()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if deathsig is not None:
            deathsig()

    return preexec


def start_sim(profile: str, faults: list[str], log_path: str, sim_cores: list[int] | None):
    log = open(log_path, "w")
    p = subprocess.Popen([sys.executable, "-m", "qbench_tui.server.sim", "--host", "127.0.0.1", "--port", "0",
                          "--profile", profile, *faults], cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                         preexec_fn=_sim_preexec())
    log.close()
    if sim_cores:
        os.sched_setaffinity(p.pid, sim_cores)
    banner = p.stdout.readline()  # the simulator binds port 0 itself and names it in its banner
    m = re.search(r"listening on (http://\S+)", banner)
    if not m:
        p.kill()
        p.wait(5)
        raise SystemExit(f"simulator did not start: {banner!r}; see {log_path}")
    url = m.group(1)
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        model = json.loads(r.read())["data"][0]["id"]
    return p, url, model


def server_finished(url: str) -> tuple[int, int]:
    """(requests the simulator finished normally, generation tokens), from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    done = gen = 0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "vllm:request_success_total" and s.labels.get("finished_reason") in ("stop", "length"):
                done += int(s.value)
            elif s.name == "vllm:generation_tokens_total":
                gen += int(s.value)
    return done, gen


def stop_proc(p: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


# ------------------------------------------------------------------ watching

class Records:
    """The run's requests.jsonl read as it grows: cheap counts while the load runs (a JSON parse only for failed
    lines), every line parsed at the end."""

    def __init__(self, out_dir: str, injected: tuple[str, ...]):
        self.out_dir = out_dir
        self.injected = injected
        self.path: str | None = None
        self._off = 0
        self._tail = b""
        self.lines = self.failed = self.not_injected = 0
        self.reasons: dict[str, int] = {}

    def _find(self) -> str | None:
        if self.path is None:
            found = glob.glob(os.path.join(self.out_dir, "*.requests.jsonl"))
            self.path = found[0] if len(found) == 1 else None
        return self.path

    def update(self) -> None:
        path = self._find()
        if path is None:
            return
        with open(path, "rb") as f:
            f.seek(self._off)
            data = f.read()
        self._off += len(data)
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        chunk = data[:cut]
        self.lines += chunk.count(b"\n")
        if b'"ok":false' in chunk:
            for line in chunk.split(b"\n"):
                if b'"ok":false' in line:
                    self._failure(json.loads(line)["error"])

    def _failure(self, error: str) -> None:
        self.failed += 1
        self.reasons[error[:120]] = self.reasons.get(error[:120], 0) + 1
        if not any(error.startswith(x) for x in self.injected):
            self.not_injected += 1

    def parse_all(self) -> tuple[int, int, int, int]:
        """Every line parsed (a torn or cut line fails here): (lines, ok, failed, output tokens of the ok ones)."""
        lines = ok = failed = tokens = 0
        if self._find() is None:
            return 0, 0, 0, 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                lines += 1
                if d["ok"]:
                    ok += 1
                    tokens += d["out_tokens"]
                else:
                    failed += 1
        return lines, ok, failed, tokens


class RssLog:
    """RSS of named processes every sample; a process that has gone reads None."""

    def __init__(self, procs: dict[str, int]):
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.samples: list[tuple[float, dict[str, float | None]]] = []

    def sample(self, t: float) -> dict[str, float | None]:
        row: dict[str, float | None] = {}
        for name, p in self.procs.items():
            try:
                row[name] = p.memory_info().rss / 2**20
            except Exception:
                row[name] = None
        self.samples.append((t, row))
        return row

    def summary(self, warmup: float, tolerance: float) -> tuple[list[str], bool]:
        """One line per process, and whether every one stayed within `tolerance` MiB after the warm-up."""
        out, flat = [], True
        for name in self.procs:
            pts = [(t, r[name]) for t, r in self.samples if r.get(name)]
            if not pts:
                out.append(f"  {name:18} no samples")
                continue
            late = [(t, v) for t, v in pts if t >= warmup] or pts[-1:]
            slope = slope_per_hour([t for t, _ in late], [v for _, v in late])
            growth = pts[-1][1] - late[0][1]
            flat &= growth <= tolerance
            out.append(f"  {name:18} first {pts[0][1]:7.1f} MiB (t={pts[0][0]:.0f} s)  after warm-up "
                       f"{late[0][1]:7.1f} (t={late[0][0]:.0f} s)  last {pts[-1][1]:7.1f} (t={pts[-1][0]:.0f} s)  "
                       f"max {max(v for _, v in pts):7.1f}  growth after warm-up {growth:+.1f} MiB  slope "
                       f"{slope:+.1f} MiB/hour  {'flat' if growth <= tolerance else 'GROWING'}")
        return out, flat


def left_running() -> list[str]:
    """Our descendants still alive (a leaked simulator, client or engine process would show here), but for
    multiprocessing's resource tracker, which the spawn context keeps for this script's lifetime."""
    import psutil

    out = []
    for c in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(c.cmdline())
            if c.status() != psutil.STATUS_ZOMBIE and "multiprocessing.resource_tracker" not in cmd:
                out.append(f"{c.pid} {cmd[:100]}")
        except psutil.NoSuchProcess:
            pass
    return out


# ------------------------------------------------------------------ the two modes

def watch(a, t0: float, end_when, rss: RssLog, recs: Records, url: str, extra=None) -> None:
    """Sample RSS every --sample-s and print a line every --print-s until end_when() is true."""
    next_sample = next_print = t0
    last_gen: tuple[float, int] | None = None
    while not end_when():
        now = time.monotonic()
        if now >= next_sample:
            next_sample += a.sample_s
            row = rss.sample(now - t0)
            if now >= next_print:
                next_print += a.print_s
                recs.update()
                try:
                    _, gen = server_finished(url)
                except OSError:
                    gen = -1
                rate = (gen - last_gen[1]) / (now - last_gen[0]) if last_gen and gen >= 0 else 0.0
                last_gen = (now, gen)
                mem = "  ".join(f"{k} {v:.1f}" if v else f"{k} -" for k, v in row.items())
                more = extra() if extra else ""
                print(f"  t={now - t0:5.0f} s  RSS MiB: {mem}  | records {recs.lines} ({recs.failed} failed, "
                      f"{recs.not_injected} not injected)  server {rate:6.0f} tok/s{more}", flush=True)
        time.sleep(0.1)


def run_headless(a, url: str, model: str, sim_pid: int, out_dir: str, client_cores, injected) -> dict:
    from qbench_tui.server.proctree import pdeathsig_preexec

    argv = [sys.executable, "-m", "qbench_tui.cli", "sweep", "--url", url, "--model", model, "--mode", "steady",
            "--levels", str(a.concurrency), "--duration", str(a.minutes * 60), "--max-tokens", str(a.max_tokens),
            "--prompt", PROMPT, "--out", out_dir]
    shown = [x if x != PROMPT else "'<the fidelity prompt>'" for x in argv[3:]]
    print("  $ qbench " + " ".join(shown), flush=True)
    log = open(os.path.join(os.path.dirname(out_dir), "sweep.log"), "w")
    p = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pdeathsig_preexec())
    log.close()
    if client_cores:
        os.sched_setaffinity(p.pid, client_cores)
    rss = RssLog({"client": p.pid, "simulator": sim_pid})
    recs = Records(out_dir, injected)
    t0 = time.monotonic()
    try:
        watch(a, t0, lambda: p.poll() is not None, rss, recs, url)
    finally:
        stop_proc(p)
    recs.update()
    res = {"rc": p.returncode, "rss": rss, "recs": recs, "wall": time.monotonic() - t0}
    files = glob.glob(os.path.join(out_dir, "*.json"))
    if files:
        with open(files[0], encoding="utf-8") as f:
            level = json.load(f)["levels"][0]
        res["completed"], res["failed"] = level["completed"], level["failed"]
        client = level.get("client") or {}
        res["lag"] = (f"mean of per-second worst {client.get('loop_lag_ms') or float('nan'):.1f} ms, worst second "
                      f"{client.get('max_loop_lag_ms') or float('nan'):.1f} ms (the results file; it keeps no "
                      f"percentiles); client CPU {client.get('cpu_pct') or float('nan'):.0f}% of a core")
        res["window"] = f"measured window: {level['completed']} completed + {level['failed']} failed"
    return res


def run_live(a, url: str, model: str, sim_pid: int, out_dir: str, client_cores, injected) -> dict:
    from qbench_tui.engine.process import EngineProcess
    from qbench_tui.engine.records import RequestSpec
    from qbench_tui.engine.session import SessionConfig
    from qbench_tui.engine.snapshot import Pause

    cfg = SessionConfig(spec=RequestSpec(url=url, model=model, max_tokens=a.max_tokens), prompt=PROMPT,
                        out_dir=out_dir, start_concurrency=a.concurrency, simulated=True)
    ep = EngineProcess(cfg)
    if client_cores:
        os.sched_setaffinity(ep.pid, client_cores)
    rss = RssLog({"engine process": ep.pid, "face (this)": os.getpid(), "simulator": sim_pid})
    recs = Records(out_dir, injected)
    lag_by_s: dict[int, float] = {}  # engine second -> its worst loop lag (snapshots come at 4 Hz)

    def poll() -> None:
        s = ep.poll()
        if s is not None:
            lag_by_s[int(s.t)] = s.loop_lag_ms

    def extra() -> str:
        s = ep.last
        return f"  | engine: in flight {s.in_flight}, loop lag {s.loop_lag_ms:.1f} ms" if s else ""

    t0 = time.monotonic()
    end = t0 + a.minutes * 60

    def over() -> bool:
        poll()
        return time.monotonic() >= end or not ep.alive()

    try:
        watch(a, t0, over, rss, recs, url, extra)
        # stop sending, let what is in flight finish, give the records log a flush (once a second), then close
        ep.send(Pause(seq=1))
        ep.wait_for(lambda s: s.ack >= 1 and s.in_flight == 0, timeout=120)
        time.sleep(1.5)
        poll()
    finally:
        ep.close(timeout=30)
    recs.update()
    final = ep.last
    lags = [lag_by_s[k] for k in sorted(lag_by_s) if k >= a.warmup_s]
    res = {"rss": rss, "recs": recs, "wall": time.monotonic() - t0,
           "completed": final.completed_total if final else None, "failed": final.failed_total if final else None}
    if lags:
        res["lag"] = (f"per-second worst after warm-up: p50 {pct(lags, 0.5):.1f} ms, p99 {pct(lags, 0.99):.1f} ms, "
                      f"max {max(lags):.1f} ms over {len(lags)} s (the engine's snapshots); client CPU "
                      f"{final.client_cpu_pct if final else float('nan'):.0f}% of a core at the end")
    return res


# ------------------------------------------------------------------ main

def report(mode: str, a, res: dict, url: str) -> bool:
    recs: Records = res["recs"]
    lines, ok, failed, tokens = recs.parse_all()
    done, gen = server_finished(url)
    print(f"\n== {mode}: C={a.concurrency} for {a.minutes:g} min ({res['wall']:.0f} s wall), warm-up "
          f"{a.warmup_s:.0f} s; results {recs.out_dir}")
    print(f"failures not caused by injected faults: {recs.not_injected}   (all failures: {failed}"
          + (": " + "; ".join(f"{n}x {r}" for r, n in sorted(recs.reasons.items(), key=lambda x: -x[1])[:4])
             if recs.reasons else "") + ")")
    lines_rss, flat = res["rss"].summary(a.warmup_s, a.rss_tolerance)
    print(f"RSS (flat: at most {a.rss_tolerance:g} MiB more than after warm-up):")
    for line in lines_rss:
        print(line)
    print(f"loop lag: {res.get('lag', 'not available')}")
    checks = [recs.not_injected == 0, lines > 0, flat]
    if mode == "live":
        same = res["completed"] is not None and lines == res["completed"] + res["failed"]
        print(f"records on disk: {lines} lines ({ok} ok, {failed} failed); the session counted "
              f"{res['completed']} completed + {res['failed']} failed -> {'equal' if same else 'MISMATCH'}")
        checks.append(same)
    else:
        print(f"records on disk: {lines} lines ({ok} ok, {failed} failed); {res.get('window', 'no results file')}; "
              f"qbench sweep exit status {res['rc']}")
        checks.append(res["rc"] == 0)
    # the simulator's own count: every request it finished normally is an ok line, token for token
    same_srv = ok == done and tokens == gen
    print(f"the simulator finished {done} requests, {gen} tokens; ok lines {ok}, {tokens} tokens -> "
          f"{'equal' if same_srv else 'MISMATCH'}")
    checks.append(same_srv or bool(a.error_rate or a.stream_error_rate))
    return all(checks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="per mode")
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--mode", choices=("headless", "live", "both"), default="both")
    ap.add_argument("--profile", default="h200-fast")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--sample-s", type=float, default=2.0, help="RSS sample period")
    ap.add_argument("--print-s", type=float, default=10.0, help="progress line period")
    ap.add_argument("--warmup-s", type=float, default=None,
                    help="left out of the RSS slope and the live lag figures (default 30%% of the run, <= 120 s)")
    # the simulator's prefix-cache model grows until it holds num_gpu_blocks (~20 MiB on h200-fast), bounded
    ap.add_argument("--rss-tolerance", type=float, default=25.0, metavar="MIB",
                    help="growth after warm-up that still counts as flat (default 25)")
    ap.add_argument("--error-rate", type=float, default=0.0, help="inject HTTP 500s (counted apart)")
    ap.add_argument("--stream-error-rate", type=float, default=0.0, help="inject in-stream errors (counted apart)")
    ap.add_argument("--keep", action="store_true", help="keep the files also when every check passed")
    a = ap.parse_args()
    if a.minutes <= 0 or a.concurrency < 1:
        ap.error("--minutes must be > 0 and --concurrency >= 1")
    if a.warmup_s is None:
        a.warmup_s = min(120.0, 0.3 * a.minutes * 60)
    faults, injected = [], []
    for name in ("error_rate", "stream_error_rate"):
        if getattr(a, name):
            faults += [f"--{name.replace('_', '-')}", str(getattr(a, name))]
            injected.append(INJECTED[name])
    sim_cores, client_cores = cores()
    if sim_cores:
        os.sched_setaffinity(0, sim_cores)  # this script only watches: it shares the simulator's core
    tmp = tempfile.mkdtemp(prefix="qbench-soak-")
    print(f"# soak {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  cores={os.cpu_count()} (simulator {sim_cores}, client "
          f"{client_cores})  loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())}  C={a.concurrency}  "
          f"{a.minutes:g} min per mode  profile {a.profile}  faults {' '.join(faults) or 'none'}  tmp {tmp}",
          flush=True)
    ok_all = True
    for mode in (("headless", "live") if a.mode == "both" else (a.mode,)):
        work = os.path.join(tmp, mode)
        os.makedirs(work)
        out_dir = os.path.join(work, "results")
        sim, url, model = start_sim(a.profile, faults, os.path.join(work, "sim.log"), sim_cores)
        print(f"\n# {mode}: simulator pid {sim.pid} at {url}", flush=True)
        try:
            run = run_headless if mode == "headless" else run_live
            res = run(a, url, model, sim.pid, out_dir, client_cores, tuple(injected))
            ok_all &= report(mode, a, res, url)
        finally:
            stop_proc(sim)
        left = left_running()
        print(f"processes left running: {'; '.join(left) if left else 'none'}", flush=True)
        ok_all &= not left
    if ok_all and not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nsoak {'PASSED' if ok_all else 'FAILED'}" + ("" if ok_all and not a.keep else f" (files in {tmp})"))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
