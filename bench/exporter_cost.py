"""What the `--metrics-port` exporter costs the engine loop per finished request, and the ITL folding options.

Per ITL value (a request carries hundreds), on synthetic records shaped like the simulator's (lognormal gaps
around 8 ms, `--itls` per request), best of `--repeat` runs:
  - prometheus_client Histogram.observe per value (the obvious way: a lock and a method call each);
  - engine/histogram.LogHistogram.add_many over the record's list (a log() per value);
  - ClientMetrics.observe (engine/exporter.py, what qbench runs): an inlined bisect per value into vLLM's
    ITL bucket bounds, exact counts, plus the per-record counters and TTFT / E2E histograms;
and the whole ClientMetrics.observe per record. Not a test: numbers depend on the machine and its load.

    .venv/bin/python bench/exporter_cost.py [--records 2000] [--itls 200] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prometheus_client import CollectorRegistry, Histogram

from qbench_tui.engine.exporter import ClientMetrics
from qbench_tui.engine.histogram import LogHistogram
from qbench_tui.engine.records import RequestRecord
from qbench_tui.server.sim.metrics import ITL_BUCKETS


def records(n: int, itls: int, seed: int = 0) -> list[RequestRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        gaps = [rng.lognormvariate(-4.8, 0.5) for _ in range(itls)]
        out.append(RequestRecord(ok=True, segment=0, concurrency=64, worker=i, start=0.0, end=0.05 + sum(gaps),
                                 ttft=0.05, itl=gaps, out_tokens=itls + 1, in_tokens=100))
    return out


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--itls", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    recs = records(a.records, a.itls)
    values = a.records * a.itls

    def prom_observe() -> None:
        h = Histogram("x_seconds", "x", buckets=ITL_BUCKETS, registry=CollectorRegistry())
        for r in recs:
            for v in r.itl:
                h.observe(v)

    def log_hist() -> None:
        h = LogHistogram()
        for r in recs:
            h.add_many(r.itl)

    def exporter() -> None:
        m = ClientMetrics()
        for r in recs:
            m.observe(r)

    rows = [("prometheus_client Histogram.observe per ITL", prom_observe),
            ("LogHistogram.add_many per record", log_hist),
            ("ClientMetrics.observe per record (qbench)", exporter)]
    print(f"{a.records} records x {a.itls} ITLs = {values} values, best of {a.repeat}")
    for name, fn in rows:
        s = best(fn, a.repeat)
        print(f"  {name:<46} {s * 1e9 / values:7.1f} ns per ITL value   {s * 1e6 / a.records:7.1f} us per record")


if __name__ == "__main__":
    main()
