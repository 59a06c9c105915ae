"""A dashboard session's timeline as steps to re-run headless (`qbench replay`).

The session saves every control event with its time from the start: the concurrency set (keys, the ladder, a
level run), pause, resume, a server restarted with other flags, and the end. Replayed, each stretch at one
concurrency becomes a level held for the same time (measured from its first request, no settling: the point is
to repeat what the person did, not to re-decide it), a pause becomes a wait, a restart a note (a server given
by URL is not restarted by a replay). A stretch of open loop (event "rate": the rate, its burstiness, the cap)
becomes an open-loop level at that rate (headless LevelPlan mode "rate", the cap as its concurrency, 0: none).
"""
from __future__ import annotations

from dataclasses import dataclass

EVENTS = ("concurrency", "rate", "pause", "resume", "restart", "end")
MIN_LEVEL_S = 0.5  # a stretch shorter than this (keys pressed in a row) is passed through, not measured


class ReplayError(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    kind: str  # "level" | "wait" | "note"
    concurrency: int = 0
    duration_s: float = 0.0
    note: str = ""
    mode: str = "steady"  # a level: "steady" (closed loop at `concurrency`) or "rate" (open loop at `rate`)
    rate: float | None = None  # requests/s (mode "rate"); `concurrency` is then the cap, 0: none
    burstiness: float = 1.0


def read_timeline(data: object, where: str = "the session file") -> list[dict]:
    """The events, checked: a list of {"t_s": number >= 0, non-decreasing, "event": one of EVENTS, ...}."""
    tl = data.get("timeline") if isinstance(data, dict) else None
    if not isinstance(tl, list) or not tl:
        raise ReplayError(f"{where} has no timeline (only dashboard sessions saved by this version have one)")
    last = 0.0
    for i, ev in enumerate(tl):
        if not isinstance(ev, dict) or ev.get("event") not in EVENTS:
            raise ReplayError(f"{where}: timeline entry {i} is not an event ({', '.join(EVENTS)})")
        t = ev.get("t_s")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t < float("inf") or t < last:
            raise ReplayError(f"{where}: timeline entry {i} has a bad time {t!r} (seconds, in order)")
        if ev["event"] == "concurrency" and not (isinstance(ev.get("value"), int) and ev["value"] >= 0):
            raise ReplayError(f"{where}: timeline entry {i} sets no concurrency")
        if ev["event"] == "rate" and not _rate_ok(ev):
            raise ReplayError(f"{where}: timeline entry {i} sets no request rate (value > 0, burstiness > 0, "
                              "max_concurrency >= 0)")
        last = t
    return tl


def steps(timeline: list[dict], speed: float = 1.0) -> list[Step]:
    """The timeline as steps; `speed` > 1 compresses every duration (a 10-minute session at --speed 10 takes a
    minute; the levels are then shorter than the person's, and the results say so)."""
    if not speed > 0 or speed == float("inf"):
        raise ReplayError(f"--speed must be a positive number, got {speed:g}")
    out: list[Step] = []
    conc, paused, since = 0, False, 0.0
    rate: tuple[float, float] | None = None  # (rate, burstiness) while the open loop runs

    def close(t: float) -> None:
        d = (t - since) / speed
        if d <= 0:
            return
        if paused or (conc == 0 and rate is None):
            out.append(Step("wait", 0, d))
        elif d >= MIN_LEVEL_S:
            if rate is None:
                out.append(Step("level", conc, d))
            else:
                out.append(Step("level", conc, d, mode="rate", rate=rate[0], burstiness=rate[1]))

    for ev in timeline:
        t, kind = float(ev["t_s"]), ev["event"]
        if kind == "restart":
            out.append(Step("note", note=f"at {t:.1f} s the session restarted its server"
                                         + (f" with {ev['flags']}" if ev.get("flags") else "")
                                         + "; the replay keeps the server it is given"))
            continue
        close(t)
        since = t
        if kind == "concurrency":  # saved when a segment opens, i.e. while the load runs: it resumes too
            conc, paused, rate = int(ev["value"]), False, None
        elif kind == "rate":  # likewise; the cap is the level's concurrency
            conc, paused = int(ev.get("max_concurrency") or 0), False
            rate = (float(ev["value"]), float(ev.get("burstiness", 1.0)))
        elif kind == "pause":
            paused = True
        elif kind == "resume":
            paused = False
        elif kind == "end":
            break
    merged = _merge(out)
    while merged and merged[0].kind == "wait":  # the time before the first load (the dashboard starting up)
        merged.pop(0)
    return merged


def _merge(out: list[Step]) -> list[Step]:
    """Neighbouring levels at one concurrency (a pause shorter than MIN_LEVEL_S between them, a note) stay two
    levels, as in the session; neighbouring waits are one."""
    merged: list[Step] = []
    for s in out:
        if merged and s.kind == "wait" and merged[-1].kind == "wait":
            merged[-1] = Step("wait", 0, merged[-1].duration_s + s.duration_s)
        else:
            merged.append(s)
    return merged


def _rate_ok(ev: dict) -> bool:
    def num(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float("inf")

    cap = ev.get("max_concurrency", 0)
    return (num(ev.get("value")) and num(ev.get("burstiness", 1.0))
            and isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0)
