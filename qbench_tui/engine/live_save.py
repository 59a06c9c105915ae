"""Writing a live session's results (engine/session.py): on Save, once more whenever it stops, and the empty
records file removed when the session never started. Functions of the session, kept apart so the session stays
about the load."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..report.files import write_results
from .knee import find_knee
from .snapshot import EngineStatus

if TYPE_CHECKING:  # pragma: no cover
    from .session import EngineSession


def save_session(s: EngineSession, out_dir: str | None = None) -> tuple[str, ...]:
    out = Path(out_dir or s.cfg.out_dir)
    s.log.flush()
    levels = s.segment_levels()
    s.meta.vllm_version = s.version
    s.meta.levels = tuple(lv.max_concurrency or 0 for lv in levels)
    s.meta.config_sources = dict(s.cfg.config_sources)
    same = s.knee_levels(levels)
    events = s.meta.timeline
    s.meta.timeline = [*events, {"t_s": round(time.perf_counter() - s._t0, 3), "event": "end"}]
    try:
        txt, js = write_results(out, s.base, s.meta, levels, find_knee(same))
    except OSError as e:
        s.save_error = s.message = f"save failed: {e}"
        return ()
    finally:
        s.meta.timeline = events
    s.saved = (str(txt), str(js), str(s.log.path))
    s.save_error = ""
    s._saved_records = s.log.count
    s.message = f"saved {txt}"
    return s.saved


def final_save(s: EngineSession) -> None:
    """However the session ends (the face's Stop, its pipe closing, SIGTERM from a dying face), what was
    measured is written; a save the face just asked for is not repeated unless records came after it."""
    if s.saved and s._saved_records == s.log.count:
        return
    said = s.message
    try:
        s.save()
    except Exception as e:  # the last Snapshot must still go out
        s.save_error = f"save failed: {type(e).__name__}: {e}"
    if s.status is EngineStatus.ERROR:
        s.message = said  # the error is the news, not the save


async def not_started(s: EngineSession, loop_tasks: list[asyncio.Task]) -> None:
    """The fleet's parts could not be (start_fleet said why): nothing was sent, so nothing is saved and the
    empty records file goes; the last Snapshot carries the line and the exit status."""
    for t in loop_tasks:
        t.cancel()
    await asyncio.gather(*loop_tasks, return_exceptions=True)
    s.log.close()
    if s.log.count == 0:
        Path(s.log.path).unlink(missing_ok=True)
    s.emit(s.snapshot())
