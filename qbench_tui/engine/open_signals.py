"""What an open-loop level says about keeping up (pure): achieved vs offered requests/s, the backlog's signs, and
the highest rate kept up. The knee over rates (engine/knee.rate_knee) and the ladder over rates
(engine/rate_ladder.py) both judge with these.

In an open loop the load does not wait for the server, so saturation has its own signature: the achieved request
rate stops tracking the offered one (it plateaus below it) while the queue, the schedule lag and the latency grow
for as long as the level runs. Achieved/offered is below 1 even while the server keeps up (a level's last answers
come after its measured arrivals stop, and a Poisson count is noisy), so a level is judged against the levels that
kept up, not against 1, and only together with a sign of a growing backlog.
"""
from __future__ import annotations

from .result import LevelResult

KEEP_UP = 0.90  # a level keeps up while its achieved/offered ratio is within 90% of those below it that did
LATENCY_RISE = 0.10  # the knee's rule (engine/knee.LATENCY_RISE); callers pass theirs


def rate_words(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.3g} req/s"


def achieved(lv: LevelResult) -> float:
    return lv.request_throughput or 0.0


def tracking(lv: LevelResult) -> float:
    """Achieved over offered requests/s (0 without an offered rate)."""
    return achieved(lv) / lv.request_rate if lv.request_rate else 0.0


def in_flight(lv: LevelResult) -> int:
    """The mean number of requests in the system (Little's law: achieved rate x mean latency): the concurrency an
    open-loop level reached, which the knee's diagnose() reads as a closed loop's."""
    return max(1, round(achieved(lv) * (lv.avg_latency_s or 0.0)))


def _lat(v: float | None) -> str:
    return "-" if v is None else (f"{v:.2f} s" if v >= 1 else f"{v * 1000:.0f} ms")


def fell_behind(ref: LevelResult, lv: LevelResult, ref_tracking: float | None = None,
                rise: float = LATENCY_RISE) -> str | None:
    """Why the higher-rate `lv` did not keep up where `ref` did, in words; None when it did. It takes both: the
    achieved rate fell short of the offered one (against `ref_tracking`, by default ref's own) and a sign of a
    growing backlog (mean latency up by `rise`, the server's queue grown, the schedule lag gone behind)."""
    ref_t = tracking(ref) if ref_tracking is None else ref_tracking
    t = tracking(lv)
    if ref_t <= 0 or t >= KEEP_UP * ref_t:
        return None
    l0, l1 = ref.avg_latency_s, lv.avg_latency_s
    w0 = (ref.server.max_waiting if ref.server else None) or 0.0
    w1 = (lv.server.max_waiting if lv.server else None) or 0.0
    signs = []
    if l0 and l1 and l1 / l0 - 1 >= rise:
        signs.append(f"mean latency {l1 / l0 - 1:+.0%}")
    if w1 > w0 and w1 >= 1:
        signs.append(f"the server's queue up to {w1:.0f}")
    if lv.behind_schedule and not ref.behind_schedule and lv.schedule_lag is not None:
        signs.append(f"schedule lag p99 {_lat(lv.schedule_lag.p99)}")
    if not signs:
        return None
    return (f"{rate_words(lv.request_rate)} offered, {achieved(lv):.2f} req/s achieved ({t:.0%}; "
            f"{rate_words(ref.request_rate)} kept {ref_t:.0%}), {', '.join(signs)}")


def sustained(pts: list[LevelResult], rise: float = LATENCY_RISE) -> tuple[LevelResult, LevelResult | None, str]:
    """(the highest rate kept up below the first that was not, that first one or None, why it was not). `pts` in
    rate order, not empty; the lowest is taken as kept up; each next one is judged against the median tracking of
    those kept up so far (one lucky level does not set the bar) and the latency of the last of them."""
    good = [pts[0]]
    for lv in pts[1:]:
        ts = sorted(tracking(x) for x in good)
        if why := fell_behind(good[-1], lv, ts[len(ts) // 2], rise):
            return good[-1], lv, why
        good.append(lv)
    return good[-1], None, ""
