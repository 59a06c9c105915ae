"""Where throughput stops growing while latency keeps rising, why, and what to run at (pure functions).

Input is one LevelResult per level (max_concurrency, output_throughput, avg_latency_s, ...) with its optional
`server` (max_kv_cache_usage, preemptions, max_waiting, max_running, ...) and `client` (cpu_pct, loop_lag_ms).
The test is elasticity: the share of the added concurrency that came back as added throughput. Below
ELASTICITY_FLOOR while latency rose at least LATENCY_RISE, the server is saturated.

Two recommendations come with the verdict, as a hand-written analysis gives them: for interactive use the largest
level meeting the SLO (goodput) or, without one, the last level before latency turns up (the first step whose
latency grew by more than its throughput did: past it, added load mostly queues); for batch use the peak.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .open_signals import achieved, in_flight, sustained
from .open_signals import rate_words as _r
from .result import ClientLevel, LevelResult, ServerLevel
from .slo import Slo, describe, goodput_level, meets, misses

KNEE_SHARE = 0.90  # the knee: the first level within 90% of the peak throughput
ELASTICITY_FLOOR = 0.25  # throughput grew by < 25% of what proportional scaling would give
LATENCY_RISE = 0.10  # ... while mean end-to-end latency rose by >= 10%
CLIENT_CPU_PCT = 85.0  # the load engine's mean CPU over the level, % of one core
CLIENT_LAG_MS = 50.0  # each second's worst event-loop lag, averaged over the level
PREFILL_TTFT_RISE = 1.5  # prefill-bound: TTFT p50 grew >= 1.5x ...
PREFILL_VS_ITL = 2.0  # ... and by at least twice ITL p50's relative growth
SEQS_ITL_FLAT = 1.2  # a batch-slot limit keeps the batch, so ITL p50 grows < 20%
MIN_SPAN = 1.5  # saturation is judged over at least +50% concurrency

CAUSES = ("client", "kv_cache", "max_num_seqs", "prefix_cache", "prefill", "compute")  # Knee.cause_kind


@dataclass(frozen=True, slots=True)
class Knee:
    """The verdict; `to_json()` is a results file's "saturation" object (the first six keys as ever)."""

    saturated: bool = False
    knee_concurrency: int | None = None
    peak_concurrency: int | None = None
    peak_output_throughput: float | None = None
    cause: str | None = None
    summary: str = ""
    knee_share: float = KNEE_SHARE  # the knee rule: the lowest level within this share of the peak throughput
    cause_kind: str | None = None  # one of CAUSES when saturated
    interactive_concurrency: int | None = None  # meets the SLO, or the last level before latency turns up
    interactive_why: str = ""  # in words, with its numbers
    batch_concurrency: int | None = None  # the peak
    batch_why: str = ""
    slo: str = ""  # the objective, in words ("ttft_p99 <= 2 s, itl_p99 <= 100 ms"); "" without one
    goodput_concurrency: int | None = None  # the largest level meeting the SLO (None: none met it, or no SLO)
    goodput_output_throughput: float | None = None
    # the x axis the levels were measured along: "concurrency" (closed loop) or "request_rate" (open loop, where
    # the *_concurrency keys stay None and these carry the offered rates in requests/s)
    axis: str = "concurrency"
    knee_request_rate: float | None = None
    peak_request_rate: float | None = None
    interactive_request_rate: float | None = None
    batch_request_rate: float | None = None
    goodput_request_rate: float | None = None
    sustained_request_rate: float | None = None  # the highest offered rate whose achieved rate kept up

    def to_json(self) -> dict[str, Any]:
        return {"saturated": self.saturated, "knee_concurrency": self.knee_concurrency,
                "peak_concurrency": self.peak_concurrency, "peak_output_throughput": self.peak_output_throughput,
                "cause": self.cause, "summary": self.summary, "knee_share": self.knee_share,
                "cause_kind": self.cause_kind, "interactive_concurrency": self.interactive_concurrency,
                "interactive_why": self.interactive_why, "batch_concurrency": self.batch_concurrency,
                "batch_why": self.batch_why, "slo": self.slo or None, "goodput_concurrency": self.goodput_concurrency,
                "goodput_output_throughput": self.goodput_output_throughput, "axis": self.axis,
                "knee_request_rate": self.knee_request_rate, "peak_request_rate": self.peak_request_rate,
                "interactive_request_rate": self.interactive_request_rate,
                "batch_request_rate": self.batch_request_rate, "goodput_request_rate": self.goodput_request_rate,
                "sustained_request_rate": self.sustained_request_rate}

    @classmethod
    def from_json(cls, d: dict | None) -> Knee | None:
        if d is None:
            return None
        return cls(bool(d.get("saturated")), d.get("knee_concurrency"), d.get("peak_concurrency"),
                   d.get("peak_output_throughput"), d.get("cause"), d.get("summary") or "",
                   d.get("knee_share") or KNEE_SHARE, d.get("cause_kind"), d.get("interactive_concurrency"),
                   d.get("interactive_why") or "", d.get("batch_concurrency"), d.get("batch_why") or "",
                   d.get("slo") or "", d.get("goodput_concurrency"), d.get("goodput_output_throughput"),
                   d.get("axis") or "concurrency", d.get("knee_request_rate"), d.get("peak_request_rate"),
                   d.get("interactive_request_rate"), d.get("batch_request_rate"), d.get("goodput_request_rate"),
                   d.get("sustained_request_rate"))

    @property
    def rate_axis(self) -> bool:
        return self.axis == "request_rate"

    def at(self, which: str) -> float | int | None:
        """The level a verdict key names on this knee's axis: which in knee, peak, interactive, batch, goodput."""
        return getattr(self, f"{which}_{'request_rate' if self.rate_axis else 'concurrency'}")

    def advice(self) -> list[str]:
        """The recommendations as lines for a report ("" parts left out)."""
        out = []
        if self.interactive_why:
            out.append(f"Interactive: {self.interactive_why}")
        if self.batch_why:
            out.append(f"Batch:       {self.batch_why}")
        return out


def axis_of(levels: list[LevelResult]) -> str:
    """"request_rate" when every finished level is an open-loop one (it has an offered rate), else "concurrency"."""
    done = [lv for lv in levels if lv.completed]
    return "request_rate" if done and all(lv.request_rate for lv in done) else "concurrency"


def find_knee(levels: list[LevelResult], share: float = KNEE_SHARE, slo: Slo = (), axis: str | None = None) -> Knee:
    """The knee is the lowest level already within `share` of the peak throughput; the server is saturated
    when going from the knee to the highest level returned less than ELASTICITY_FLOOR of proportional scaling
    while latency rose. Judging knee -> last level (not each neighbouring pair) keeps one noisy level from
    calling saturation early. With an `slo`, goodput is the largest level meeting it.

    `axis` (default: from the levels, axis_of): "request_rate" judges open-loop levels along their offered rate
    (rate_knee); "concurrency" the closed-loop levels, as ever."""
    if (axis or axis_of(levels)) == "request_rate":
        return rate_knee([lv for lv in levels if lv.request_rate], share, slo)
    if any(lv.request_rate for lv in levels):  # one axis at a time: open-loop levels have no concurrency of their own
        levels = [lv for lv in levels if not lv.request_rate]
    pts = sorted((lv for lv in levels if lv.completed), key=lambda lv: lv.max_concurrency or 0)
    if not pts:
        return Knee(knee_share=share, slo=describe(slo) if slo else "", summary="no completed levels")
    peak = max(pts, key=lambda lv: lv.output_throughput or 0)
    ptput = peak.output_throughput or 0.0
    got = Knee(peak_concurrency=peak.max_concurrency, peak_output_throughput=ptput, knee_share=share,
               **_advice(pts, peak, slo))
    if len(pts) < 2:
        return _with(got, summary="one level only: run at least two concurrency levels to find the knee")
    knee = next(lv for lv in pts if (lv.output_throughput or 0) >= share * ptput)
    last = pts[-1]
    base = _baseline(pts, knee, last)
    c0, c1 = base.max_concurrency or 0, last.max_concurrency or 0
    t0, t1 = base.output_throughput or 0.0, last.output_throughput or 0.0
    l0, l1 = base.avg_latency_s, last.avg_latency_s
    if c1 > (knee.max_concurrency or 0) and c1 > c0 and t0 > 0 and l0 and l1:  # a knee at the top is no verdict
        elasticity = ((t1 - t0) / t0) / (c1 / c0 - 1)
        if elasticity < ELASTICITY_FLOOR and (l1 - l0) / l0 >= LATENCY_RISE:
            kind, cause = diagnose(base, last)
            k = knee.max_concurrency
            return _with(got, saturated=True, knee_concurrency=k, cause=cause, cause_kind=kind, summary=(
                f"saturated past concurrency {k}: going {f'from {c0} ' if c0 != k else ''}to {c1} changed output "
                f"tok/s by {(t1 / t0 - 1):+.0%} for {(c1 / c0 - 1):+.0%} concurrency while mean latency rose "
                f"{(l1 / l0 - 1):+.0%}. Peak {ptput:.0f} tok/s at {peak.max_concurrency}. Why: {cause}. "
                f"(Knee: the lowest level within {share:.0%} of the peak throughput.)"))
    return _with(got, summary=(f"no saturation up to concurrency {last.max_concurrency}: throughput still grows "
                               f"with load (peak {ptput:.0f} tok/s at {peak.max_concurrency}); try higher levels"))


def _baseline(pts: list[LevelResult], knee: LevelResult, last: LevelResult) -> LevelResult:
    """What the last level is judged against: the knee, unless a refined knee sits so close to the last level
    (under MIN_SPAN apart) that a few percent of noise would decide; then the highest level at least MIN_SPAN
    below the last (the lowest level when none is)."""
    c1 = last.max_concurrency or 0
    if c1 >= MIN_SPAN * (knee.max_concurrency or 0):
        return knee
    below = [lv for lv in pts if (lv.max_concurrency or 0) * MIN_SPAN <= c1]
    return below[-1] if below else pts[0]


def _with(k: Knee, **changes) -> Knee:
    return replace(k, **changes)


def _lat(v: float | None) -> str:
    return "-" if v is None else (f"{v:.2f} s" if v >= 1 else f"{v * 1000:.0f} ms")


def _numbers(lv: LevelResult) -> str:
    return (f"{lv.output_throughput or 0:.0f} tok/s, {lv.request_throughput or 0:.2f} req/s, latency p50 "
            f"{_lat(lv.e2el.p50_s)} / p99 {_lat(lv.e2el.p99_s)}, TTFT p99 {_lat(lv.ttft.p99_s)}")


def latency_turn(pts: list[LevelResult]) -> tuple[LevelResult, LevelResult | None]:
    """(the last level before latency turns up, the level where it turned or None). By Little's law each step's
    added concurrency comes back as throughput times latency; the turn is the first step that bought more
    latency than throughput, i.e. the added load mostly queued."""
    for a, b in zip(pts, pts[1:]):
        ta, tb = a.output_throughput or 0.0, b.output_throughput or 0.0
        la, lb = a.avg_latency_s, b.avg_latency_s
        if ta > 0 and la and lb and (lb / la - 1) > max(0.0, tb / ta - 1) and (lb / la - 1) >= LATENCY_RISE:
            return a, b
    return pts[-1], None


def _advice(pts: list[LevelResult], peak: LevelResult, slo: Slo) -> dict[str, Any]:
    out: dict[str, Any] = {"batch_concurrency": peak.max_concurrency}
    batch = f"C={peak.max_concurrency}: the peak, {_numbers(peak)}"
    inter, turned = latency_turn(pts)
    if slo:
        out["slo"] = describe(slo)
        good = goodput_level(pts, slo)
        if good is None:
            lowest = pts[0]
            out["interactive_why"] = (f"no level met the SLO ({out['slo']}); the lowest, C={lowest.max_concurrency}, "
                                      f"missed it: {', '.join(misses(lowest, slo))}")
        else:
            above = next((lv for lv in pts if (lv.max_concurrency or 0) > (good.max_concurrency or 0)), None)
            why = f"C={good.max_concurrency}: the largest level meeting the SLO ({out['slo']}), {_numbers(good)}"
            if above is not None:
                why += f"; C={above.max_concurrency} missed it ({', '.join(misses(above, slo))})"
            out.update(interactive_concurrency=good.max_concurrency, interactive_why=why,
                       goodput_concurrency=good.max_concurrency, goodput_output_throughput=good.output_throughput)
    else:
        why = f"C={inter.max_concurrency}: {_numbers(inter)}"
        if turned is not None:
            ta, tb = inter.output_throughput or 0.0, turned.output_throughput or 0.0
            la, lb = inter.avg_latency_s or 0.0, turned.avg_latency_s or 0.0
            why += (f"; the last level before latency turns up (C={turned.max_concurrency} added {tb / ta - 1:+.0%} "
                    f"tok/s for {lb / la - 1:+.0%} mean latency)")
        else:
            why += "; latency had not turned up yet at the highest level measured"
        out.update(interactive_concurrency=inter.max_concurrency, interactive_why=why)
    ic = out.get("interactive_concurrency")
    if ic is not None and ic != peak.max_concurrency:
        base = next(lv for lv in pts if lv.max_concurrency == ic)
        tb, lb = base.output_throughput or 0.0, base.avg_latency_s
        if tb > 0 and lb and peak.avg_latency_s:
            batch += (f" ({(peak.output_throughput or 0) / tb - 1:+.0%} tok/s over C={ic} at "
                      f"{peak.avg_latency_s / lb:.1f}x its mean latency)")
    out["batch_why"] = batch
    return out


def explain(before: LevelResult, after: LevelResult) -> str:
    """Name the limit from what the server and client reported at the saturated level."""
    return diagnose(before, after)[1]


def _ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a and b else None


def diagnose(before: LevelResult, after: LevelResult) -> tuple[str, str]:
    """(one of CAUSES, the cause in words with its numbers), from the saturated level's evidence against the knee."""
    srv = after.server or ServerLevel()
    cli = after.client or ClientLevel()
    kv = srv.max_kv_cache_usage
    pre = srv.preemptions or 0
    waiting = srv.max_waiting or 0
    running = srv.max_running
    cpu, lag = cli.cpu_pct or 0.0, cli.loop_lag_ms or 0.0
    itl0, itl1 = before.itl.p50_s, after.itl.p50_s
    itl_x = _ratio(itl0, itl1)
    ttft_x = _ratio(before.ttft.p50_s, after.ttft.p50_s)
    if cpu >= CLIENT_CPU_PCT or lag >= CLIENT_LAG_MS:
        return "client", (f"the CLIENT is the limit (load engine at {cpu:.0f}% CPU, event-loop lag {lag:.0f} ms): "
                          "shard the client or run it on another machine")
    if pre > 0 or (kv is not None and kv >= 0.9):
        return "kv_cache", (
            f"the KV cache is full (max usage {kv:.0%}, {pre:.0f} preemptions): requests wait for blocks "
            "or are recomputed; more GPU memory, a shorter max_model_len or a smaller max_num_seqs help"
            if kv is not None else f"{pre:.0f} preemptions: the KV cache ran out of blocks")
    conc = after.max_concurrency or 0
    if (running is not None and waiting >= max(1.0, 0.1 * conc) and running < conc
            and (itl_x is None or itl_x < SEQS_ITL_FLAT)):
        return "max_num_seqs", (
            f"the scheduler's sequence limit: running requests flattened at {running:.0f} while up to "
            f"{waiting:.0f} waited (max_num_seqs); raise --max-num-seqs if the KV cache has room")
    hit0 = before.server.prefix_cache_hit_rate if before.server else None
    hit1 = srv.prefix_cache_hit_rate
    if hit0 is not None and hit1 is not None and hit0 - hit1 > 0.2:
        return "prefix_cache", f"the prefix-cache hit rate fell from {hit0:.0%} to {hit1:.0%}: prefills are recomputed"
    if ttft_x is not None and ttft_x >= PREFILL_TTFT_RISE and ttft_x - 1 >= PREFILL_VS_ITL * max(0.0, (itl_x or 1) - 1):
        return "prefill", (
            f"prefill: TTFT p50 grew {ttft_x:.1f}x ({_lat(before.ttft.p50_s)} -> {_lat(after.ttft.p50_s)}) while ITL "
            f"p50 grew {itl_x or 1:.2f}x: new requests wait for prefill compute (the batched-token budget); "
            "--max-num-batched-tokens, shorter prompts or prefix caching help")
    if itl0 and itl1 and itl1 > itl0:
        return "compute", (f"compute: every sequence is already in the batch and each decode step takes longer "
                           f"(ITL p50 {itl0 * 1000:.2f} -> {itl1 * 1000:.2f} ms)")
    return "compute", "compute: the server produces no more tokens per second at higher concurrency"


def _numbers_rate(lv: LevelResult) -> str:
    return (f"{achieved(lv):.2f} req/s achieved, {lv.output_throughput or 0:.0f} tok/s, latency p50 "
            f"{_lat(lv.e2el.p50_s)} / p99 {_lat(lv.e2el.p99_s)}, TTFT p99 {_lat(lv.ttft.p99_s)}")


# -- the open loop: levels along their offered rate (the signals: engine/open_signals.py) -------------------------

def rate_knee(levels: list[LevelResult], share: float = KNEE_SHARE, slo: Slo = ()) -> Knee:
    """find_knee along the offered rate. The knee: the lowest rate whose achieved requests/s is within `share` of
    the peak's (the concurrency rule, on the open loop's own throughput). Saturated when a rate did not keep up
    (`sustained`), or, as in the closed loop, when the knee -> highest rate step bought under ELASTICITY_FLOOR of
    proportional throughput while latency rose. Batch: the highest rate kept up (past it the queue grows without
    bound, so the peak's offered rate is no place to run); interactive: the largest rate meeting the SLO, or the
    last one kept up before latency turns up."""
    pts = sorted((lv for lv in levels if lv.completed), key=lambda lv: lv.request_rate or 0.0)
    base_k = Knee(axis="request_rate", knee_share=share, slo=describe(slo) if slo else "")
    if not pts:
        return _with(base_k, summary="no completed levels")
    peak = max(pts, key=achieved)
    got = _with(base_k, peak_request_rate=peak.request_rate, peak_output_throughput=peak.output_throughput or 0.0,
                **_rate_advice(pts, slo))
    if len(pts) < 2:
        return _with(got, summary="one rate only: run at least two request rates to find the knee")
    knee = rate_knee_level(pts, share)
    last = pts[-1]
    good, bad, why = sustained(pts, LATENCY_RISE)
    head = (f"Peak {achieved(peak):.2f} req/s ({peak.output_throughput or 0:.0f} tok/s) at {_r(peak.request_rate)} "
            "offered")
    rule = (f"(Knee: the lowest rate kept up within {share:.0%} of the peak throughput, else the highest kept up: "
            f"{_r(knee.request_rate)}.)")
    if bad is not None:
        kind, cause = diagnose(replace(knee, max_concurrency=in_flight(knee)),
                               replace(bad, max_concurrency=in_flight(bad)))
        return _with(got, saturated=True, knee_request_rate=knee.request_rate, cause=cause, cause_kind=kind,
                     summary=(f"saturated past {_r(knee.request_rate)}: the achieved rate stopped tracking the "
                              f"offered one ({why}). {head}. Why: {cause}. {rule}"))
    base = _baseline_rate(pts, knee, last)
    r0, r1 = base.request_rate or 0.0, last.request_rate or 0.0
    t0, t1 = achieved(base), achieved(last)
    l0, l1 = base.avg_latency_s, last.avg_latency_s
    if r1 > (knee.request_rate or 0.0) and r1 > r0 and t0 > 0 and l0 and l1:
        elasticity = ((t1 - t0) / t0) / (r1 / r0 - 1)
        if elasticity < ELASTICITY_FLOOR and (l1 - l0) / l0 >= LATENCY_RISE:
            kind, cause = diagnose(replace(base, max_concurrency=in_flight(base)),
                                   replace(last, max_concurrency=in_flight(last)))
            return _with(got, saturated=True, knee_request_rate=knee.request_rate, cause=cause, cause_kind=kind,
                         summary=(f"saturated past {_r(knee.request_rate)}: going from {_r(r0)} to {_r(r1)} changed "
                                  f"the achieved rate by {t1 / t0 - 1:+.0%} for {r1 / r0 - 1:+.0%} offered while mean "
                                  f"latency rose {l1 / l0 - 1:+.0%}. {head}. Why: {cause}. {rule}"))
    return _with(got, summary=(f"no saturation up to {_r(last.request_rate)}: the achieved rate still tracks the "
                               f"offered one ({head}); try higher rates"))


def rate_knee_level(pts: list[LevelResult], share: float = KNEE_SHARE) -> LevelResult:
    """The knee over rates (`pts` in rate order): the lowest rate kept up (open_signals.sustained) whose achieved
    requests/s is within `share` of the peak's, else the highest rate kept up. Past saturation an open loop's
    queue grows without bound, so a rate that was not kept up is never the knee, however high its throughput."""
    good, _, _ = sustained(pts, LATENCY_RISE)
    kept = [lv for lv in pts if (lv.request_rate or 0.0) <= (good.request_rate or 0.0)]
    top = max(achieved(lv) for lv in pts)
    return next((lv for lv in kept if achieved(lv) >= share * top), good)


def _baseline_rate(pts: list[LevelResult], knee: LevelResult, last: LevelResult) -> LevelResult:
    """_baseline on the rate axis."""
    r1 = last.request_rate or 0.0
    if r1 >= MIN_SPAN * (knee.request_rate or 0.0):
        return knee
    below = [lv for lv in pts if (lv.request_rate or 0.0) * MIN_SPAN <= r1]
    return below[-1] if below else pts[0]


def _rate_advice(pts: list[LevelResult], slo: Slo) -> dict[str, Any]:
    good, bad, _ = sustained(pts, LATENCY_RISE)
    kept = [lv for lv in pts if (lv.request_rate or 0.0) <= (good.request_rate or 0.0)]
    batch = f"{_r(good.request_rate)}: the highest rate the server kept up with, {_numbers_rate(good)}"
    if bad is not None:
        batch += f"; at {_r(bad.request_rate)} it fell behind (its queue grows for as long as the load lasts)"
    out: dict[str, Any] = {"batch_request_rate": good.request_rate, "sustained_request_rate": good.request_rate}
    if slo:
        out["slo"] = describe(slo)
        ok = [lv for lv in pts if meets(lv, slo)]
        best = max(ok, key=lambda lv: lv.request_rate or 0.0, default=None)
        if best is None:
            why = (f"no rate met the SLO ({out['slo']}); the lowest, {_r(pts[0].request_rate)}, missed it: "
                   f"{', '.join(misses(pts[0], slo))}")
        else:
            above = next((lv for lv in pts if (lv.request_rate or 0.0) > (best.request_rate or 0.0)), None)
            why = f"{_r(best.request_rate)}: the largest rate meeting the SLO ({out['slo']}), {_numbers_rate(best)}"
            if above is not None:
                why += f"; {_r(above.request_rate)} missed it ({', '.join(misses(above, slo))})"
            out.update(interactive_request_rate=best.request_rate, goodput_request_rate=best.request_rate,
                       goodput_output_throughput=best.output_throughput)
        out["interactive_why"] = why
    else:
        inter, turned = latency_turn(kept)
        why = f"{_r(inter.request_rate)}: {_numbers_rate(inter)}"
        if turned is not None:
            la, lb = inter.avg_latency_s or 0.0, turned.avg_latency_s or 0.0
            why += (f"; the last rate before latency turns up ({_r(turned.request_rate)} added "
                    f"{lb / la - 1:+.0%} mean latency)")
        else:
            why += "; latency had not turned up yet at the highest rate kept up"
        out.update(interactive_request_rate=inter.request_rate, interactive_why=why)
    out["batch_why"] = batch
    return out
