"""The dashboard's commands applied to a live session (engine/session.py): the concurrency, pause and resume (the
open segment ends or a new one starts), an explicit level, save, stop, the auto ladder, a new server config, and
the loop's mode: closed (a concurrency) or open (a rate, engine/live_open.py).

In open loop a concurrency asked for (a typed C, the ladder, a level) ends the open loop first: a concurrency is
the closed loop's; the rate is kept for the next switch to open.

Commands arrive in order on one pipe; each is acknowledged (Snapshot.ack) even when it changes nothing, so the face
stops showing its own intent for it."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .auto_live import LiveLadder
from .live_open import LiveOpenLoop, start_rate
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
    SetMode,
    SetRate,
    Stop,
    StopAuto,
    clamp_concurrency,
    clamp_rate,
)

if TYPE_CHECKING:
    from .session import EngineSession


def apply_command(s: EngineSession, cmd: Command) -> None:
    s.ack = max(s.ack, cmd.seq)
    if isinstance(cmd, SetConcurrency):
        n = clamp_concurrency(cmd.n)
        if s.open_loop:
            _to_closed(s, n)
            return
        if n == s.engine.target and s.current is not None:
            return
        s.engine.set_concurrency(n)
        s.closed_target = n
        if not s.engine.paused:
            s.open_segment()
        s.message = f"concurrency {n}"
    elif isinstance(cmd, SetMode):
        if cmd.mode == "open":
            _to_open(s, cmd)
        elif s.open_loop:
            _to_closed(s, clamp_concurrency(cmd.concurrency) if cmd.concurrency else s.closed_target)
    elif isinstance(cmd, SetRate):
        _set_rate(s, clamp_rate(cmd.rate))
    elif isinstance(cmd, Pause):
        if not s.engine.paused:
            s.engine.pause()
            if s.open is not None:
                s.open.stop()
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
        if s.open_loop and not (s.auto is not None and s.auto.running):
            _to_closed(s, s.closed_target)  # the ladder's axis is concurrency
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
                _restart_open(s)
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
        _restart_open(s)
        s.open_segment()
        s.message = "resumed"


def _run_level(s: EngineSession, cmd: RunLevel) -> None:
    if s._level_task and not s._level_task.done():
        s.message = "a level is already running"
        return

    if s.open_loop:
        _to_closed(s, 0)  # the level holds its own concurrency; the open loop ends first

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


def _restart_open(s: EngineSession) -> None:
    """The open loop sends again (after a pause, a restart): its schedule starts from now, on the segment the load
    engine has just opened (its number seeds the arrivals: another segment, other draws, the same on a rerun)."""
    if s.open_loop and not s.engine.paused:
        s.open.start(s.open.rate or 1.0, seed=s.engine.segment)  # type: ignore[union-attr]


def _to_open(s: EngineSession, cmd: SetMode) -> None:
    """Open loop at cmd.rate (0: the request throughput measured now, rounded; the last open rate when there was
    one), gamma shape cmd.burstiness, at most cmd.max_concurrency in flight. The closed loop's workers finish their
    request and stop; its target is kept for the way back."""
    if s.open_loop:
        if cmd.rate:
            _set_rate(s, clamp_rate(cmd.rate))
        return
    if cmd.concurrency:
        s.closed_target = clamp_concurrency(cmd.concurrency)
    elif s.engine.target:
        s.closed_target = s.engine.target
    prev = s.open.rate if s.open is not None else None
    rate = start_rate(cmd.rate, s.window.req_s(time.perf_counter()) if prev is None else prev)
    if s.engine.target:
        s.engine.set_concurrency(0)  # a new segment, workers draining
    else:
        s.engine.new_segment()
    s.open = LiveOpenLoop(s.engine, cmd.max_concurrency, cmd.burstiness)
    s.open.rate = rate
    s.mode = "open"
    if not s.engine.paused:
        s.open.start(rate, seed=s.engine.segment)
        s.open_segment()
    cap = f", at most {s.open.cap} in flight" if s.open.cap else ""
    s.message = f"open loop: {rate:g} requests/s{cap}"


def _set_rate(s: EngineSession, rate: float) -> None:
    if not s.open_loop:
        return
    op = s.open
    assert op is not None
    if rate == op.rate and (s.current is not None or s.engine.paused):
        return
    s.engine.new_segment()
    op.rate = rate
    if not s.engine.paused:
        op.start(rate, seed=s.engine.segment)
        s.open_segment()
    s.message = f"request rate {rate:g}/s"


def _to_closed(s: EngineSession, n: int) -> None:
    """Back to the closed loop at n: the open loop sends nothing more (its requests in flight finish)."""
    if s.open is not None:
        s.open.stop()
    s.mode = "closed"
    if n == s.engine.target:
        s.engine.new_segment()
    s.engine.set_concurrency(n)
    s.closed_target = n
    if not s.engine.paused:
        s.open_segment()
    s.message = f"closed loop: concurrency {n}"
