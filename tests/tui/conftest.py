from __future__ import annotations

from typing import Any

import pytest

from qbench_tui.tui.app import QBenchApp
from qbench_tui.tui.fake_engine import FakeEngine


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

    return QBenchApp(factory, **kw), eng, calls


async def settle(app: QBenchApp, pilot, ticks: int = 2) -> None:
    """Let the engine worker finish, then wait for `ticks` more poll ticks (counted, not timed: CI is shared)."""
    await app.workers.wait_for_complete()
    start = app._ticks
    for _ in range(400):  # bounded: 400 x 50 ms = 20 s at worst
        if app._ticks >= start + ticks:
            break
        await pilot.pause(0.05)
    assert app._ticks >= start + ticks, "poll timer did not tick"
    await app.workers.wait_for_complete()  # a tick may have started the engine worker
    await pilot.pause()


def notes(app: QBenchApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
