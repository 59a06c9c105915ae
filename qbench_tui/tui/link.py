"""The only channel between the dashboard and the engine process."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from qbench_tui.engine.snapshot import Command, Snapshot


@runtime_checkable
class EngineLink(Protocol):
    def send(self, cmd: Command) -> None:
        """Queue a command for the engine; never blocks."""

    def poll(self) -> Snapshot | None:
        """Newest Snapshot since the last call, or None; never blocks."""

    def close(self) -> None:
        """Stop the load and the engine process; may block for a few seconds."""
