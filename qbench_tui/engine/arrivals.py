"""Open-loop send times: gamma inter-arrivals at a rate, as `vllm bench serve --request-rate R --burstiness B`
(shape B, scale 1/(R·B): mean 1/R for every B; B = 1 is a Poisson process, B < 1 burstier, B > 1 more even).

The schedule is absolute (times from the start), so a client that falls behind does not slide it: each request
keeps the time it was due, and how late it actually went out is the schedule lag the results report (coordinated
omission made visible, instead of hidden by a loop that waits for the previous request)."""
from __future__ import annotations

import random
from collections.abc import Iterator


class ArrivalError(ValueError):
    pass


def check_rate(rate: float, burstiness: float = 1.0) -> None:
    if not (rate > 0) or rate == float("inf"):
        raise ArrivalError(f"--request-rate must be a positive number of requests/s, got {rate:g}")
    if not (burstiness > 0) or burstiness == float("inf"):
        raise ArrivalError(f"--burstiness must be a positive number (1 = Poisson), got {burstiness:g}")


def intervals(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Inter-arrival gaps in seconds, forever."""
    check_rate(rate, burstiness)
    rng = random.Random(f"arrivals:{seed}")
    theta = 1.0 / (rate * burstiness)
    while True:
        yield rng.gammavariate(burstiness, theta)


def schedule(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Absolute send times from 0: the first request at 0, then the gaps summed."""
    t = 0.0
    yield t
    for gap in intervals(rate, burstiness, seed):
        t += gap
        yield t
