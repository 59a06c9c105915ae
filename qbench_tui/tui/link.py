"""The only channel between the dashboard and the engine process, and the app's handling of it: opening one off
the event loop, draining it, the final save on quit, closing it whatever state it is in. No Textual here."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from qbench_tui.engine.snapshot import Command, Save, Snapshot, Stop


@runtime_checkable
class EngineLink(Protocol):
    def send(self, cmd: Command) -> None:
        """Queue a command for the engine; never blocks."""

    def poll(self) -> Snapshot | None:
        """Newest Snapshot since the last call, or None; never blocks."""

    def close(self) -> None:
        """Stop the load and the engine process; may block for a few seconds."""


def open_engine(factory: Callable[[], EngineLink], closed: Callable[[], bool]) -> EngineLink | None:
    """Runs in a thread (a factory may spawn a process). If the app closed meanwhile (the worker awaiting this may
    even have been cancelled), the thread itself closes the new engine: quitting during startup orphans nothing."""
    engine = factory()
    if closed():
        engine.close()
        return None
    return engine


def drain(engine: EngineLink, bound: int = 64) -> Snapshot | None:
    """The newest Snapshot waiting, or None; the bound only guards a misbehaving link. Raises what poll() raises."""
    latest = None
    for _ in range(bound):
        snap = engine.poll()
        if snap is None:
            break
        latest = snap
    return latest


async def save_and_close(engine: EngineLink, out_dir: str, before: tuple[str, ...], wait: float,
                         on_error: Callable[[str], None]) -> Snapshot | None:
    """Ask for a final save and the stop, give the engine up to `wait` seconds to report new saved paths (so the CLI
    can print them after exit), then close it. Never raises: the engine may already be gone. -> the last Snapshot."""
    last = None
    try:
        engine.send(Save(out_dir))
        engine.send(Stop())
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            snap = engine.poll()
            if snap is not None:
                last = snap
                if snap.saved and snap.saved != before:
                    break
            await asyncio.sleep(0.05)
    except Exception as exc:
        on_error(f"qbench: sending Save/Stop failed: {exc!r}")
    try:
        await asyncio.to_thread(engine.close)
    except Exception as exc:
        on_error(f"qbench: engine.close failed: {exc!r}")
    return last


def close_quietly(engine: EngineLink) -> None:
    """Blocking last resort (unmount after a crash): whatever fails, the next step is still tried."""
    for step in (lambda: engine.send(Stop()), engine.close):
        try:
            step()
        except Exception:
            pass
