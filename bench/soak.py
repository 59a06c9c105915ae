"""Soak: the live session (EngineSession in an EngineProcess, as the dashboard runs it) against the simulator for
N minutes at its highest rate; RSS growth per hour and completeness of the request records on disk.

Samples the RSS of the engine process (and of this parent, which only polls snapshots) every --sample-s seconds,
fits a least-squares line over the samples after the first --settle fraction of the run, and reports the slope
in MiB/hour. At the end, counts the lines of requests.jsonl against completed + failed in the final snapshot.

    .venv/bin/python bench/soak.py [--minutes 10] [--concurrency 256] [--profile h200-fast]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench.fidelity import PROMPT, start_sim  # noqa: E402


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    n = len(ts)
    if n < 2:
        return float("nan")
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return float("nan")
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var * 3600.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--profile", default="h200-fast")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--settle", type=float, default=0.2, help="fraction of the run left out of the RSS fit")
    ap.add_argument("--url", default=None, help="use this server instead of starting the simulator")
    ap.add_argument("--model", default=None)
    a = ap.parse_args()

    import psutil

    from qbench_tui.engine.process import EngineProcess
    from qbench_tui.engine.records import RequestSpec
    from qbench_tui.engine.session import SessionConfig

    tmp = tempfile.mkdtemp(prefix="qbench-soak-")
    sim = None
    if a.url:
        url, model = a.url, a.model or "m"
    else:
        sim, url, model = start_sim(a.profile, os.path.join(tmp, "truth.jsonl"))
    out_dir = os.path.join(tmp, "results")
    print(f"# soak  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  cores={os.cpu_count()}  loadavg="
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}  {a.minutes} min at C={a.concurrency}  "
          f"profile {a.profile}  out {out_dir}", flush=True)
    cfg = SessionConfig(spec=RequestSpec(url=url, model=model, max_tokens=200), prompt=PROMPT, out_dir=out_dir,
                        start_concurrency=a.concurrency, simulated=sim is not None)
    ep = EngineProcess(cfg)
    child = psutil.Process(ep.pid)
    me = psutil.Process()
    samples: list[tuple[float, float, float, float, float, int]] = []
    t0 = time.monotonic()
    end = t0 + a.minutes * 60
    next_sample = t0
    lag_max = 0.0
    lags: list[tuple[float, float]] = []  # (t, max loop lag over the last second) per snapshot
    try:
        while time.monotonic() < end:
            snap = ep.poll()
            if snap is not None:
                lag_max = max(lag_max, snap.loop_lag_ms)
                lags.append((time.monotonic() - t0, snap.loop_lag_ms))
            now = time.monotonic()
            if now >= next_sample:
                next_sample += a.sample_s
                s = ep.last
                rss = child.memory_info().rss / 2**20
                if rss < 1.0:  # the child is still exec'ing: no meaningful RSS yet
                    continue
                samples.append((now - t0, rss, me.memory_info().rss / 2**20,
                                s.out_tok_s if s else 0.0, s.client_cpu_pct if s else 0.0,
                                s.completed_total if s else 0))
                if len(samples) % max(1, int(60 / a.sample_s)) == 1:
                    print(f"  t={now - t0:6.0f} s  engine RSS {rss:7.1f} MiB  parent {samples[-1][2]:6.1f} MiB  "
                          f"{samples[-1][3]:7.0f} tok/s  client CPU {samples[-1][4]:5.1f}%  "
                          f"completed {samples[-1][5]}  loop lag {s.loop_lag_ms if s else 0:.1f} ms",
                          flush=True)
            time.sleep(0.1)
    finally:
        ep.close(timeout=30)
        if sim is not None:
            sim.terminate()
            sim.wait(10)
    final = ep.last
    lines = 0
    for path in glob.glob(os.path.join(out_dir, "*.requests.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                json.loads(line)  # every line must parse: a torn write would fail here
                lines += 1
    expected = (final.completed_total + final.failed_total) if final else -1
    fit = [s for s in samples if s[0] >= a.settle * a.minutes * 60]
    eng_slope = slope_per_hour([s[0] for s in fit], [s[1] for s in fit])
    par_slope = slope_per_hour([s[0] for s in fit], [s[2] for s in fit])
    toks = [s[3] for s in samples if s[3] > 0]
    cpus = [s[4] for s in samples if s[4] > 0]
    print(f"\n== soak {a.minutes} min at C={a.concurrency}: {len(samples)} RSS samples, fit over t >= "
          f"{a.settle * a.minutes * 60:.0f} s")
    print(f"engine RSS: start {samples[0][1]:.1f} MiB, min {min(s[1] for s in samples):.1f}, "
          f"max {max(s[1] for s in samples):.1f}, end {samples[-1][1]:.1f}; growth {eng_slope:+.1f} MiB/hour")
    print(f"parent RSS: end {samples[-1][2]:.1f} MiB; growth {par_slope:+.1f} MiB/hour")
    if toks:
        print(f"client: mean {sum(toks) / len(toks):.0f} tok/s, mean CPU {sum(cpus) / max(1, len(cpus)):.1f}% "
              f"of a core, worst loop lag {lag_max:.1f} ms")
    if lags:
        vals = sorted(v for _, v in lags)
        worst = max(lags, key=lambda x: x[1])
        late = [v for t, v in lags if t >= a.settle * a.minutes * 60]
        print(f"loop lag (1-s max, per snapshot): p50 {vals[len(vals) // 2]:.1f} ms, p99 "
              f"{vals[min(len(vals) - 1, int(len(vals) * 0.99))]:.1f} ms, "
              f"worst {worst[1]:.1f} ms at t={worst[0]:.0f} s;"
              f" after settle: worst {max(late) if late else float('nan'):.1f} ms")
        thirds = [[v for t, v in lags if k * a.minutes * 20 <= t < (k + 1) * a.minutes * 20] for k in range(3)]
        print("loop lag mean by third of the run: " + ", ".join(
            f"{sum(x) / len(x):.1f} ms" if x else "-" for x in thirds))
    print(f"records on disk: {lines} lines, final snapshot completed+failed = {expected} "
          f"({final.completed_total if final else '?'} ok, {final.failed_total if final else '?'} failed) -> "
          f"{'complete' if lines == expected else 'MISMATCH'}")


if __name__ == "__main__":
    main()
