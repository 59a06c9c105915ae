"""The engine process without the process: a real EngineSession on the test's own loop behind the EngineLink the
App holds, so what the dashboard draws is what the real session produced (and a stand-in NVML or simulator set up by
the test is the one the session talks to)."""
from __future__ import annotations

import asyncio

from qbench_tui.engine.session import EngineSession, SessionConfig
from qbench_tui.engine.snapshot import Command, Snapshot, Stop


class InProcessEngine:
    """EngineLink over a real EngineSession on the test's loop: the engine process without the process, so the
    stand-in NVML installed here is the one the session samples."""

    def __init__(self, cfg: SessionConfig) -> None:
        self.snaps: list[Snapshot] = []
        self.session = EngineSession(cfg, self.snaps.append)
        self.loop = asyncio.get_running_loop()
        self.task = self.loop.create_task(self.session.run())

    def send(self, cmd: Command) -> None:
        self.session.handle(cmd)

    def poll(self) -> Snapshot | None:
        newest = self.snaps[-1] if self.snaps else None
        self.snaps.clear()
        return newest

    def close(self) -> None:  # the app calls this from a thread
        self.loop.call_soon_threadsafe(self.session.handle, Stop())
