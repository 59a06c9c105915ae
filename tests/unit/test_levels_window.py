"""A level's window, pure: rates by what happened inside it, the settle rule, and the artefact they replace."""
from __future__ import annotations

import random

import pytest

from qbench_tui.engine.records import RequestRecord
from qbench_tui.engine.settle import Settler, SettleRule
from qbench_tui.engine.timeline import Timeline, shares, token_times, window_shares


def _rec(start: float, ttft: float, itl: list[float], out: int, end_pad: float = 0.0, ok: bool = True,
         in_tokens: int = 5) -> RequestRecord:
    end = start + ttft + sum(itl) + end_pad
    return RequestRecord(ok=ok, segment=1, concurrency=1, worker=0, start=start, end=end, ttft=ttft, itl=itl,
                         out_tokens=out, in_tokens=in_tokens)


def lock_step(c: int, tokens: int, itl: float, ttft: float, waves: int) -> list[RequestRecord]:
    """A closed loop of equal-length answers that stays in lock step: c requests start together, end together."""
    recs, t = [], 0.0
    for _ in range(waves):
        for _ in range(c):
            recs.append(_rec(t, ttft, [itl] * (tokens - 1), tokens))
        t = recs[-1].end
    return recs


def test_token_times_and_usage_spread_over_events():
    r = _rec(10.0, 0.5, [0.1, 0.2], out=6)  # 3 content events carry 6 usage tokens: 2 each
    assert token_times(r) == pytest.approx([10.5, 10.6, 10.8])
    assert shares(r, 10.55, 10.9).out_tokens == pytest.approx(4.0)
    assert shares(r, 0.0, 10.5).out_tokens == 0.0  # [t0, t1): the first token at 10.5 is the next window's
    life = r.end - r.start
    assert shares(r, 10.4, 11.0).requests == pytest.approx(0.4 / life)
    assert shares(_rec(0.0, 0.1, [], 3, ok=False), 0, 9) == (0.0, 0.0, 0.0)  # a failure produced no output
    no_events = RequestRecord(ok=True, segment=1, concurrency=1, worker=0, start=0.0, end=2.0, out_tokens=7)
    assert shares(no_events, 1.0, 3.0).out_tokens == 7  # usage without content events: at the end


def test_timeline_steps_equal_exact_shares_on_step_edges():
    rng = random.Random(5)
    recs = [_rec(rng.uniform(0, 20), rng.uniform(0.01, 0.5), [rng.uniform(0.001, 0.05) for _ in range(n)],
                 out=n + 1 + rng.randint(0, 3), end_pad=rng.uniform(0, 0.01))
            for n in (rng.randint(0, 60) for _ in range(400))]
    tl = Timeline(0.0)
    for r in recs:
        tl.add(r)
    for a, b in [(0.0, 30.0), (2.25, 7.5), (10.0, 10.25), (19.75, 40.0)]:
        got, exact = tl.totals(a, b), window_shares(recs, a, b)
        assert got.out_tokens == pytest.approx(exact.out_tokens, rel=1e-9, abs=1e-9)
        assert got.requests == pytest.approx(exact.requests, rel=1e-9, abs=1e-9)
        assert got.in_tokens == pytest.approx(exact.in_tokens, rel=1e-9, abs=1e-9)
    # over everything, shares add up to whole requests and every usage token
    whole = tl.totals(0.0, 60.0)
    assert whole.requests == pytest.approx(len(recs)) and whole.out_tokens == pytest.approx(sum(r.out_tokens
                                                                                              for r in recs))


@pytest.mark.parametrize("cut", [0.0, 0.37, 1.1, 2.9])
def test_equal_length_waves_give_the_true_rate_wherever_the_window_cuts(cut):
    # 64 and 128 streams of 160 tokens in lock step (the tiny-cpu shape): each wave lasts as long as its
    # batch's steps, so the true rates differ; counting the requests that ENDED in a window counted whole waves
    # and read the same number at both (the 3,413.33 / 4,266.67 tok/s artefact)
    rates = {}
    for c, itl in ((64, 0.0150), (128, 0.0280)):
        recs = lock_step(c, 160, itl, ttft=0.05, waves=12)
        wave = recs[0].end - recs[0].start
        t0, t1 = cut + 2 * wave, cut + 2 * wave + 15.0
        truth = c * 160 / wave
        got = window_shares(recs, t0, t1).out_tokens / (t1 - t0)
        assert got == pytest.approx(truth, rel=0.02)
        rates[c] = (got, sum(r.out_tokens for r in recs if t0 <= r.end < t1) / (t1 - t0))
    assert rates[64][0] != pytest.approx(rates[128][0], rel=0.03)
    if cut:  # the old count: 16 waves of 64 or 8 of 128, the same 4096 tok/s at both (or, at cut 0, neither true)
        assert rates[64][1] == pytest.approx(4096.0) and rates[128][1] == pytest.approx(4096.0)


def _steady_timeline(rate_of, until: float, step: float = 0.05) -> Timeline:
    """Tokens arriving at rate_of(t) per second, as one-token requests."""
    tl = Timeline(0.0)
    t = 0.0
    while t < until:
        n = round(rate_of(t) * step)
        if n:
            tl.add(_rec(t, 0.0, [], n))
        t += step
    return tl


def test_settle_waits_for_a_steady_stretch_after_the_old_level():
    tl = _steady_timeline(lambda t: 100 * t if t < 4 else 1000, 20.0)  # a ramp over 4 s, then flat
    st = Settler(tl, 0.0, SettleRule())
    assert st.update(horizon=5.0, clean_at=0.0, now=5.0) is None  # the flat part is not 3 s long yet
    t0 = st.update(horizon=10.0, clean_at=0.0, now=10.0)
    assert t0 is not None and 3.0 <= t0 <= 4.0 and st.steady
    # old requests still in flight: nothing is decided however steady it looks, until the cap
    st = Settler(tl, 0.0, SettleRule(max_s=8.0))
    assert st.update(horizon=20.0, clean_at=None, now=7.9) is None
    assert st.update(horizon=20.0, clean_at=None, now=8.0) == 8.0 and st.steady is False
    # the old level's last request ended at 6.1: the window cannot start before it
    st = Settler(tl, 0.0, SettleRule())
    assert st.update(horizon=20.0, clean_at=6.1, now=20.0) == pytest.approx(6.25)


def test_settle_cap_marks_not_steady_and_a_short_level_is_no_level():
    noisy = _steady_timeline(lambda t: 1000 if int(t / 2) % 2 else 200, 60.0)  # bursts two seconds long
    st = Settler(noisy, 0.0, SettleRule(max_s=10.0))
    assert st.update(horizon=12.0, clean_at=0.0, now=12.0) is None  # candidates up to the cap not all tried
    assert st.update(horizon=14.0, clean_at=0.0, now=14.0) == 10.0 and st.steady is False
    st = Settler(noisy, 0.0, SettleRule(max_s=10.0))
    assert st.update(horizon=30.0, clean_at=0.0, now=30.0, until=6.0) is None  # ended before its cap
