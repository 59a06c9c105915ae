"""The auto ladder on a live session (the dashboard's `a`): the same policy as `qbench sweep --auto`
(engine/ladder.py), run on live segments.

For each level the policy asks for: set the concurrency (a new segment), wait until the segment is settled (the
previous level's requests are out and throughput is steady, or the settle cap was hit) and has been measured for
at least MEASURE_S and a few mean request latencies, read the segment's LevelResult, ask the policy again. It
stops on StopAuto, on the budget or the maximum, or when the user takes over (changes the concurrency or pauses),
keeping every level it measured; then it leaves the load at the knee (`hold`) or where the user had it.
Progress goes to `session.auto_state`, in words, for the face.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .knee import Knee, find_knee
from .ladder import LadderSpec, next_step
from .result import LevelResult
from .snapshot import AutoLadder, Pause, Resume, SetConcurrency, clamp_concurrency

if TYPE_CHECKING:
    from .session import EngineSession

MEASURE_S = 10.0  # seconds measured per level once settled (read at run time, so a test can lower it)
LATENCIES_PER_LEVEL = 3.0  # ... and at least this many mean request latencies
TICK_S = 0.25

CAUSE_WORDS = {"client": "the client", "kv_cache": "KV cache full", "max_num_seqs": "max_num_seqs",
               "prefix_cache": "prefix-cache collapse", "prefill": "prefill-bound", "compute": "compute"}


class LiveLadder:
    """One ladder run on a session; `task` ends when the ladder does."""

    def __init__(self, session: EngineSession, cmd: AutoLadder) -> None:
        self.s = session
        start = max(1, clamp_concurrency(cmd.start))
        self.spec = LadderSpec(start=start, max_concurrency=max(start, clamp_concurrency(cmd.max_concurrency)),
                               budget_s=cmd.budget_s)
        self.slo = tuple(cmd.slo)
        self.hold = cmd.hold
        self.levels: list[LevelResult] = []
        self.segment_ids: set[int] = set()  # the segments the ladder measured (CurvePoint.auto)
        self.verdict: Knee | None = None
        self._before = (session.engine.target, session.engine.paused)  # where the user had the load
        self._level = 0  # the concurrency the ladder set last
        self._stopped = ""  # why the ladder was stopped from outside
        self.task = asyncio.create_task(self._run())

    @property
    def running(self) -> bool:
        return not self.task.done()

    def stop(self, why: str = "stopped") -> None:
        if self.running:
            self._stopped = why
            self.task.cancel()

    # ------------------------------------------------------------ the ladder

    def _set(self, c: int) -> None:
        if self.s.engine.paused:
            self.s.handle(Resume())
        self.s.handle(SetConcurrency(c))
        self._level = c

    def _taken_over(self) -> str:
        if self.s.engine.paused:
            return "paused by hand"
        if self._level and self.s.engine.target != self._level:
            return f"concurrency changed by hand to {self.s.engine.target}"
        return ""

    async def _measure(self, c: int) -> LevelResult | None:
        """Hold level `c` until the segment is settled (segments.py: the old level's requests are out and
        throughput is steady, or its settle cap was hit) and measured long enough; its LevelResult, or None when
        the session ends."""
        self._set(c)
        seg = self.s.current
        while True:
            await asyncio.sleep(TICK_S)
            if self.s._stop.is_set():
                return None
            if why := self._taken_over():
                raise _TakenOver(why)
            seg = self.s.current or seg
            lv = None
            if seg.settled:  # cheap; the level itself is summed up only once it has a window
                lv = next((x for x in self.s.segment_levels() if x.segment == seg.segment), None)
            if lv is None:
                self.s.auto_state = f"auto: level {c} settling {time.perf_counter() - seg.t_start:.0f} s"
                continue
            need = max(MEASURE_S, LATENCIES_PER_LEVEL * (lv.e2el.mean_s or 0.0))
            got = lv.window.span_s if lv.window is not None else lv.duration_s
            if got < need or (lv.completed == 0 and lv.failed == 0):  # failures only: the policy stops on them
                self.s.auto_state = f"auto: level {c} measuring {got:.0f}/{need:.0f} s"
                continue
            self.segment_ids.add(seg.segment)
            return lv

    async def _run(self) -> None:
        t0 = time.monotonic()
        try:
            while True:
                step = next_step(self.spec, self.levels, time.monotonic() - t0)
                if step.concurrency is None:
                    self._finish(step.why)
                    return
                lv = await self._measure(step.concurrency)
                if lv is None:
                    self._finish("the session ended", restore=False)
                    return
                self.levels.append(lv)
                self.verdict = find_knee(self.levels, self.spec.share, self.slo)
        except _TakenOver as e:
            self._finish(f"stopped: {e}", restore=False)
        except asyncio.CancelledError:
            self._finish(self._stopped or "stopped", restore=False)
            raise

    def _finish(self, why: str, restore: bool = True) -> None:
        k = self.verdict = find_knee(self.levels, self.spec.share, self.slo) if self.levels else None
        knee = ""
        if k is not None and k.saturated:
            knee = f"knee at {k.knee_concurrency} ({CAUSE_WORDS.get(k.cause_kind or '', k.cause_kind)})"
        elif k is not None:
            knee = f"no knee up to {max(lv.max_concurrency or 0 for lv in self.levels)}"
        where = ""
        if restore and self.hold and k is not None:
            c = k.interactive_concurrency or k.knee_concurrency or k.peak_concurrency
            if c:
                self._set(c)
                where = f"; holding at {c}"
        elif restore:
            target, paused = self._before
            self.s.handle(SetConcurrency(target))
            if paused:
                self.s.handle(Pause())
            where = f"; back at {target}" + (" (paused)" if paused else "")
        n = len(self.levels)
        # the state line stays short enough for an 80-column status line; the message says why it ended
        self.s.auto_state = f"auto: {knee or 'no level measured'}{where}; {n} level{'s' * (n != 1)} kept"
        self.s.message = f"auto ladder ended ({why})"


class _TakenOver(Exception):
    pass
