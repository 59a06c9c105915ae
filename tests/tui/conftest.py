from __future__ import annotations

import time
from typing import Any

import pytest

from qbench_tui.tui.app import QBenchApp
from qbench_tui.tui.lifecycle import ENGINE_WORKER

from .fakes import FakeEngine

POLL = 0.05  # the app's poll period in tests: settle() counts ticks, so a faster tick only saves time


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def build_app(engine: FakeEngine | None = None, **kw: Any) -> tuple[QBenchApp, FakeEngine, list[int]]:
    """App wired to a FakeEngine; `calls` counts engine_factory calls."""
    eng = engine if engine is not None else FakeEngine()
    calls: list[int] = []

    def factory() -> FakeEngine:
        calls.append(1)
        return eng

    kw.setdefault("poll_period", POLL)
    return QBenchApp(factory, **kw), eng, calls


async def engine_started(app: QBenchApp) -> None:
    """Wait for the engine-start worker only: a restart's worker may rightly block until a test moves the server."""
    workers = [w for w in app.workers if w.name == ENGINE_WORKER]
    if workers:  # (an empty list would mean "all workers")
        await app.workers.wait_for_complete(workers)


async def settle(app: QBenchApp, pilot, ticks: int = 2, timeout: float = 30.0) -> None:
    """Let the engine worker finish, then wait for `ticks` more poll ticks (counted, not timed: CI is shared)."""
    await engine_started(app)
    start = app._ticks
    deadline = time.monotonic() + timeout
    while app._ticks < start + ticks and time.monotonic() < deadline:
        if app._exception is not None:  # a crashed app stops ticking: report why, not that it stopped
            raise app._exception
        await pilot.pause(POLL / 2)
    assert app._ticks >= start + ticks, f"poll timer did not tick ({app._ticks - start} of {ticks})"
    await engine_started(app)  # a tick may have started the engine worker
    await pilot.pause()


def notes(app: QBenchApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def until(pilot, pred, timeout: float = 30.0) -> bool:
    """Poll `pred` against a deadline (never a fixed sleep); the caller asserts the result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await pilot.pause(POLL / 2)
    return pred()
