"""Several endpoints under one load (`--url A --url B`, `[[targets]]`): which one the next request goes to, and
which ones are dead (pure: no I/O, the caller gives the clock).

Policies: "round-robin" (each request to the next endpoint in turn: equal shares, what a Kubernetes Service's
iptables mode gives on average) and "least-busy" (the endpoint with the fewest requests in flight, ties in turn:
a slow replica gets less, like a least-request router). A dead endpoint is skipped, not hammered: DEAD_AFTER
failures in a row that got no HTTP answer at all (refused, reset, timed out before a byte) mark it dead; every
PROBE_S one request is let through to see whether it is back, and its first success brings it back. An HTTP error
is an answer (the endpoint is up, it refused the request): that is the error budget's business, not this one's.
When every endpoint is dead, requests still go to the one due for a probe soonest, so the load's own backoff and
error budget (engine/backoff.py, budget.py) decide when to stop, as they do for one endpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .result import EndpointStat, LevelResult

POLICIES = ("round-robin", "least-busy")
DEAD_AFTER = 3
PROBE_S = 5.0


@dataclass(slots=True)
class Endpoint:
    url: str
    in_flight: int = 0
    sent: int = 0
    failing: int = 0  # failures without an answer, in a row
    dead_since: float | None = None
    next_probe: float = 0.0
    why: str = ""  # the last failure that counted towards death, for the dashboard's row

    @property
    def alive(self) -> bool:
        return self.dead_since is None


class Targets:
    def __init__(self, urls: list[str], policy: str = "round-robin", dead_after: int = DEAD_AFTER,
                 probe_s: float = PROBE_S) -> None:
        if not urls:
            raise ValueError("no endpoint given")
        if policy not in POLICIES:
            raise ValueError(f"--balance must be one of {', '.join(POLICIES)}, got {policy!r}")
        seen = set()
        for u in urls:
            if u in seen:
                raise ValueError(f"--url {u} given twice: each endpoint once (a share is what the policy decides)")
            seen.add(u)
        self.endpoints = [Endpoint(u) for u in urls]
        self.policy = policy
        self.dead_after = dead_after
        self.probe_s = probe_s
        self._turn = 0

    def __len__(self) -> int:
        return len(self.endpoints)

    def pick(self, now: float) -> int:
        """The endpoint the next request goes to; the caller then calls started(k) and, when it ends, finished()."""
        eps = self.endpoints
        n = len(eps)
        for k, e in enumerate(eps):  # a dead endpoint due for its probe gets this one request
            if e.dead_since is not None and now >= e.next_probe:
                e.next_probe = now + self.probe_s
                return k
        alive = [k for k in range(n) if eps[k].alive]
        if not alive:
            return min(range(n), key=lambda k: eps[k].next_probe)
        if self.policy == "least-busy":
            start = self._turn
            self._turn = (self._turn + 1) % n
            return min(alive, key=lambda k: (eps[k].in_flight, (k - start) % n))
        for _ in range(n):
            k = self._turn
            self._turn = (self._turn + 1) % n
            if eps[k].alive:
                return k
        return alive[0]  # pragma: no cover - the loop always finds the alive one

    def started(self, k: int) -> None:
        e = self.endpoints[k]
        e.in_flight += 1
        e.sent += 1

    def finished(self, k: int, ok: bool, answered: bool, why: str, now: float) -> None:
        """`answered`: an HTTP status came back (even an error); `why`: the failure's reason."""
        e = self.endpoints[k]
        e.in_flight = max(0, e.in_flight - 1)
        if ok or answered:
            e.failing = 0
            if e.dead_since is not None:
                e.dead_since = None
                e.why = ""
            return
        e.failing += 1
        e.why = why
        if e.dead_since is None and e.failing >= self.dead_after:
            e.dead_since = now
            e.next_probe = now + self.probe_s

    def status(self) -> list[tuple[str, bool, int, str]]:
        """(url, alive, in flight, why dead) per endpoint, in the order given."""
        return [(e.url, e.alive, e.in_flight, "" if e.alive else e.why) for e in self.endpoints]


def with_endpoints(lv: LevelResult, targets: Targets) -> LevelResult:
    """The level's per-endpoint rows in the order given, every endpoint present (one with no request in the
    window too), each marked dead or alive as the level ended."""
    got = {e.url: e for e in lv.endpoints}
    rows = []
    for e in targets.endpoints:
        row = got.get(e.url) or EndpointStat(e.url)
        rows.append(replace(row, down="" if e.alive else f"dead: {e.why}"))
    return replace(lv, endpoints=tuple(rows))
