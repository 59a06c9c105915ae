"""When a level's work happened: output tokens by their arrival time, and each request's share of a window.

Rates over a window count what happened INSIDE it, so they do not depend on where the window cuts a wave of
requests that started together (counting whole requests that ended inside a window does: with equal-length
answers the count jumps by C at each wave, and C=64 and C=128 read the same 4266.67 tok/s).

- an output token arrives with its content event: start + TTFT, then + each ITL. The usage count
  (`out_tokens`) is spread evenly over the content events, since an event may carry several tokens (or, like
  vLLM's first chat chunk, none);
- a request counts in a window by the share of its life (start to end) inside it, and so do its prompt tokens:
  summed over a long window this is the number of requests that finished, but a wave that ends just after the
  window adds its share, not nothing or C whole requests.

Pure (no clock): `Timeline` holds those sums per fixed step of time for the live view (array-backed, ~24 bytes a
step: a ten-hour session at 0.25 s steps is ~3.5 MB); `shares` is the exact per-request version a headless level
and a test recomputing a level from `.requests.jsonl` use. For windows whose ends lie on step edges the two agree.
"""
from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from itertools import accumulate
from typing import NamedTuple

from .records import RequestRecord

STEP_S = 0.25  # the timeline's resolution: live windows start and end on these edges


class Shares(NamedTuple):
    """What happened inside a window: requests (shares of their lives), prompt tokens (same shares), output
    tokens (by arrival). Floats: a request half inside counts 0.5."""

    requests: float
    in_tokens: float
    out_tokens: float


def token_times(r: RequestRecord) -> list[float]:
    """Arrival times (perf_counter) of the content events of an ok request; a stream with no content event but a
    usage count has its tokens at its end."""
    if r.ttft is None:
        return [r.end] if r.out_tokens else []
    return list(accumulate(r.itl, initial=r.start + r.ttft))


def first_token_at(r: RequestRecord) -> float | None:
    return None if r.ttft is None else r.start + r.ttft


def life_share(r: RequestRecord, t0: float, t1: float) -> float:
    """The share of [start, end] inside [t0, t1); a zero-length request counts where it started."""
    life = r.end - r.start
    if life <= 0:
        return 1.0 if t0 <= r.start < t1 else 0.0
    return max(0.0, min(r.end, t1) - max(r.start, t0)) / life


def shares(r: RequestRecord, t0: float, t1: float) -> Shares:
    """One ok request's part of the window [t0, t1) (failed requests have none: their tokens are not output)."""
    if not r.ok or t1 <= t0:
        return Shares(0.0, 0.0, 0.0)
    times = token_times(r)
    out = 0.0
    if times and times[0] < t1 and times[-1] >= t0:
        n = bisect_left(times, t1) - bisect_left(times, t0)
        out = n * r.out_tokens / len(times)
    f = life_share(r, t0, t1)
    return Shares(f, f * r.in_tokens, out)


def window_shares(records, t0: float, t1: float) -> Shares:
    req = inp = out = 0.0
    for r in records:
        s = shares(r, t0, t1)
        req += s.requests
        inp += s.in_tokens
        out += s.out_tokens
    return Shares(req, inp, out)


def step_cv(values: list[float]) -> float | None:
    """Coefficient of variation (population std / mean) of per-step amounts; None when nothing happened."""
    if not values:
        return None
    mean = sum(values) / len(values)
    if mean <= 0:
        return None
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return math.sqrt(var) / mean


class Timeline:
    """Per step of `step` seconds from `origin` (perf_counter): output tokens, request shares and prompt-token
    shares of every ok request added, by when they happened. Steps before the origin are dropped."""

    def __init__(self, origin: float, step: float = STEP_S) -> None:
        self.origin = origin
        self.step = step
        self.out = array("d")
        self.req = array("d")
        self.inp = array("d")

    # ---------------------------------------------------------------- edges

    def index(self, t: float) -> int:
        return math.floor((t - self.origin) / self.step)

    def edge(self, k: int) -> float:
        return self.origin + k * self.step

    def floor(self, t: float) -> float:
        return self.edge(self.index(t))

    def ceil(self, t: float) -> float:
        k = self.index(t)
        return t if self.edge(k) == t else self.edge(k + 1)

    def __len__(self) -> int:
        return len(self.out)

    def _grow(self, k: int) -> None:
        n = k + 1 - len(self.out)
        if n > 0:
            zeros = array("d", bytes(8 * n))
            self.out.extend(zeros)
            self.req.extend(zeros)
            self.inp.extend(zeros)

    # ---------------------------------------------------------------- adding

    def add(self, r: RequestRecord) -> None:
        if not r.ok:
            return
        times = token_times(r)
        if times:
            per = r.out_tokens / len(times)
            ka, kb = self.index(times[0]), self.index(times[-1])
            self._grow(kb)
            if ka == kb:
                if ka >= 0:
                    self.out[ka] += per * len(times)
            else:
                # one bisect per step edge the stream crosses (a few), not one bucket lookup per token
                lo = 0
                for k in range(ka, kb + 1):
                    hi = len(times) if k == kb else bisect_left(times, self.edge(k + 1), lo)
                    if k >= 0 and hi > lo:
                        self.out[k] += per * (hi - lo)
                    lo = hi
        ka, kb = self.index(r.start), self.index(r.end)
        self._grow(kb)
        life = r.end - r.start
        for k in range(max(ka, 0), kb + 1):
            f = 1.0 if life <= 0 else (min(r.end, self.edge(k + 1)) - max(r.start, self.edge(k))) / life
            self.req[k] += f
            self.inp[k] += f * r.in_tokens

    # ---------------------------------------------------------------- reading

    def _span(self, t0: float, t1: float) -> tuple[int, int]:
        a, b = max(0, self.index(t0)), min(len(self.out), self.index(t1))
        return a, max(a, b)

    def totals(self, t0: float, t1: float) -> Shares:
        """Sums over the steps in [floor(t0), floor(t1)): exact for windows on step edges."""
        a, b = self._span(t0, t1)
        return Shares(sum(self.req[a:b]), sum(self.inp[a:b]), sum(self.out[a:b]))

    def out_per(self, t0: float, t1: float, per_s: float) -> list[float]:
        """Output tokens per `per_s` seconds (a multiple of the step) over [t0, t1), complete periods only."""
        k = max(1, round(per_s / self.step))
        a, b = max(0, self.index(t0)), self.index(t1)
        vals = list(self.out[a:min(b, len(self.out))])
        vals += [0.0] * max(0, b - a - len(vals))  # steps nothing reached yet: nothing arrived in them
        return [sum(vals[i * k:(i + 1) * k]) for i in range(len(vals) // k)]
