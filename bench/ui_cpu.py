"""How much of one core does the dashboard cost? Headless, 160x48, evolving FakeEngine at C=64.

Budget (issue #5): <= 15% of one core. Prints a ratio against the budget; never asserted in tests, because wall-clock
numbers on a shared CI box are noise.

    .venv/bin/python bench/ui_cpu.py [--seconds 20] [--concurrency 64] [--size 160x48]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qbench_tui.tui.app import QBenchApp
from qbench_tui.tui.widgets.panels import ThroughputPanel
from tests.tui.fakes import FakeEngine, FakeServer

BUDGET_PCT = 15.0


async def measure(seconds: float, concurrency: int, size: tuple[int, int], warmup: float) -> dict:
    eng = FakeEngine(evolve=True, period=0.25)
    server = FakeServer(state="ready")  # shows the log panel too, as with a launched server
    app = QBenchApp(lambda: eng, server=server, start_concurrency=concurrency, simulated=True)
    result: dict = {}

    async with app.run_test(size=size) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause(warmup)  # ramp-up and first layout are not steady state
        tp = app.screen.query_one(ThroughputPanel)
        draws0, polls0 = tp.draws, eng.polls
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        result = {
            "cpu_pct": 100.0 * cpu / wall,
            "wall_s": wall,
            "chart_draws_per_s": (tp.draws - draws0) / wall,
            "polls_per_s": (eng.polls - polls0) / wall,
            "in_flight": app.snapshot.in_flight if app.snapshot else None,
        }
        await pilot.press("q")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--size", default="160x48")
    ap.add_argument("--warmup", type=float, default=3.0)
    a = ap.parse_args()
    w, h = (int(x) for x in a.size.lower().split("x"))
    r = asyncio.run(measure(a.seconds, a.concurrency, (w, h), a.warmup))
    print(f"size {w}x{h}  C={a.concurrency}  measured {r['wall_s']:.1f} s  in_flight={r['in_flight']}")
    print(f"UI process CPU: {r['cpu_pct']:.1f}% of one core  (budget {BUDGET_PCT:.0f}%, "
          f"ratio {r['cpu_pct'] / BUDGET_PCT:.2f}x budget)")
    print(f"chart redraws/s: {r['chart_draws_per_s']:.2f}   engine polls/s: {r['polls_per_s']:.2f}")


if __name__ == "__main__":
    main()
