"""The live client's own health: event-loop lag and the engine process's CPU. Past a few ms of lag, or near a
full core, client-side ITL is suspect and a level may be measuring the client (engine/views.client_limit_why)."""
from __future__ import annotations

import asyncio
import time

LAG_PERIOD = 0.05


class ClientHealth:
    def __init__(self) -> None:
        self.lag_ms = 0.0  # the latest wake-up delay
        self.lag_max = 0.0  # the worst over the last second
        self.cpu_pct = 0.0  # of one core, over the last second
        self._last = (time.perf_counter(), time.process_time())

    async def lag_monitor(self) -> None:
        """How late a 50 ms sleep wakes up; runs until cancelled."""
        window: list[float] = []
        while True:
            t = time.perf_counter()
            await asyncio.sleep(LAG_PERIOD)
            lag = max(0.0, time.perf_counter() - t - LAG_PERIOD) * 1000
            window.append(lag)
            if len(window) > int(1 / LAG_PERIOD):
                window.pop(0)
            self.lag_ms = lag
            self.lag_max = max(window)

    def mark(self) -> None:
        """Where the next CPU sample counts from (the session's setup is not the load's)."""
        self._last = (time.perf_counter(), time.process_time())

    def sample_cpu(self) -> None:
        """CPU since the previous call, as % of one core (the session calls it once a second)."""
        wall, cpu = time.perf_counter(), time.process_time()
        last_wall, last_cpu = self._last
        self.cpu_pct = 100.0 * (cpu - last_cpu) / max(1e-9, wall - last_wall)
        self._last = (wall, cpu)
