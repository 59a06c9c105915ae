"""The dashboard's commands applied to a live session (engine/session.py): the concurrency, pause and resume (the
open segment ends or a new one starts), an explicit level, save, stop, the auto ladder, a new server config.

Commands arrive in order on one pipe; each is acknowledged (Snapshot.ack) even when it changes nothing, so the face
stops showing its own intent for it."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .auto_live import LiveLadder
from .snapshot import (
    AutoLadder,
    Command,
    Pause,
    ResetWindow,
    Resume,
    RunLevel,
    Save,
    ServerConfigChanged,
    SetConcurrency,
    Stop,
    StopAuto,
    clamp_concurrency,
)

if TYPE_CHECKING:
    from .session import EngineSession


def apply_command(s: EngineSession, cmd: Command) -> None:
    s.ack = max(s.ack, cmd.seq)
    if isinstance(cmd, SetConcurrency):
        n = clamp_concurrency(cmd.n)
        if n == s.engine.target and s.current is not None:
            return
        s.engine.set_concurrency(n)
        if not s.engine.paused:
            s.open_segment()
        s.message = f"concurrency {n}"
    elif isinstance(cmd, Pause):
        if not s.engine.paused:
            s.engine.pause()
            s.close_segment(time.perf_counter())
            s.mark("pause")
            s.message = "paused: in-flight requests finish, no new ones start"
    elif isinstance(cmd, Resume):
        _resume(s)
    elif isinstance(cmd, ResetWindow):
        s.window.reset(time.perf_counter())
        s.tok_hist.clear()
        s.message = "rolling window reset"
    elif isinstance(cmd, RunLevel):
        _run_level(s, cmd)
    elif isinstance(cmd, Save):
        s.save(cmd.out_dir)
    elif isinstance(cmd, Stop):
        s._stop.set()
    elif isinstance(cmd, AutoLadder):
        if s.auto is not None and s.auto.running:  # `a` again, or the palette twice: one ladder at a time
            s.auto.stop("stopped by hand")
        else:
            s.auto = LiveLadder(s, cmd)
            s.auto_state = f"auto: starting at {s.auto.spec.start}"
    elif isinstance(cmd, StopAuto):
        if s.auto is not None:
            s.auto.stop("stopped by hand")
    elif isinstance(cmd, ServerConfigChanged):
        if cmd.label != s.server_config:
            s.server_config = cmd.label
            s.meta.server_config = cmd.label  # the header names the latest; each level names its own
            s.mark("restart", flags=cmd.label)
            if s.current is not None:  # what runs from now on runs against the new config
                s.engine.new_segment()
                s.open_segment()
            s.message = f"server config: {cmd.label}"


def _resume(s: EngineSession) -> None:
    """The user's resume also clears a tripped error budget (LoadEngine.resume starts it afresh). Not while the
    records file cannot be written: a load nobody records only costs the server."""
    if s.log.error:
        s.message = f"cannot resume: {s.log.error}"
        return
    if s.engine.paused or s.engine.tripped:
        s.engine.resume()
        s.paused_why = ""
        s.engine.new_segment()
        s.open_segment()
        s.message = "resumed"


def _run_level(s: EngineSession, cmd: RunLevel) -> None:
    if s._level_task and not s._level_task.done():
        s.message = "a level is already running"
        return

    async def level() -> None:
        s.engine.new_segment()
        s.open_segment()
        s.current.concurrency = cmd.concurrency  # type: ignore[union-attr]
        s.current.explicit = True  # type: ignore[union-attr]
        if cmd.mode == "wave":
            await s.engine.run_wave(cmd.concurrency)
        else:
            await s.engine.run_steady(cmd.concurrency, cmd.duration, cmd.requests, cmd.warmup)
        s.close_segment(time.perf_counter())
        s.message = f"level {cmd.concurrency} ({cmd.mode}) done"

    s._level_task = asyncio.create_task(level())
