"""The one log histogram against exact percentiles (numpy's linear rule, stats.percentile) on random data."""
from __future__ import annotations

import math
import random

import pytest

from qbench_tui.engine import histogram
from qbench_tui.engine.histogram import LogHistogram
from qbench_tui.engine.stats import percentile

QS = (0, 1, 10, 50, 90, 99, 99.9, 100)
TOL = histogram.RATIO - 1  # one bin


def _data(kind: str, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    if kind == "lognormal-itl":  # decode gaps around 20 ms with a long tail
        return [rng.lognormvariate(math.log(0.02), 0.8) for _ in range(n)]
    if kind == "uniform-ttft":
        return [rng.uniform(0.05, 3.0) for _ in range(n)]
    if kind == "exponential":
        return [1e-4 + rng.expovariate(50.0) for _ in range(n)]
    if kind == "bimodal":  # a fast path and a queued path, two decades apart
        return [rng.choice((rng.gauss(0.01, 0.001), rng.gauss(1.0, 0.1))) for _ in range(n)]
    if kind == "repeated":  # few distinct values, many ties (token gaps of a steady server)
        return [rng.choice((0.004, 0.005, 0.0125, 0.3)) for _ in range(n)]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["lognormal-itl", "uniform-ttft", "exponential", "bimodal", "repeated"])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 5_000])
def test_percentiles_within_a_bin_of_exact(kind, n):
    values = _data(kind, n, seed=n)
    h = LogHistogram()
    h.add_many(values)
    got = h.percentiles(*QS)
    for q, v in zip(QS, got):
        exact = percentile(values, q)
        assert v == pytest.approx(exact, rel=TOL), (kind, n, q)
    assert h.count == n and h.mean == pytest.approx(sum(values) / n, rel=1e-12)
    assert h.max == max(values)  # exact while the largest value is in


def test_remove_keeps_percentiles_of_what_is_left():
    values = _data("lognormal-itl", 20_000, seed=3)
    h = LogHistogram()
    h.add_many(values)
    h.remove_many(values[:12_000])
    rest = values[12_000:]
    assert h.count == len(rest) and h.mean == pytest.approx(sum(rest) / len(rest))
    for q in (50, 90, 99):
        assert h.percentile(q) == pytest.approx(percentile(rest, q), rel=TOL)
    # the largest value may have left: max comes from the top bin then, still within a bin
    assert h.max == pytest.approx(max(rest), rel=TOL)
    h.remove_many(rest)
    assert h.count == 0 and h.total == 0.0 and not any(h.counts)
    assert h.percentile(50) is None and h.mean is None and h.max is None


def test_zero_gaps_and_out_of_range():
    h = LogHistogram()
    h.add_many([0.0] * 60 + [0.01] * 40 + [2e4])  # zero gaps (tokens in one read), and one past HI
    assert h.percentile(50) == 0.0 and h.percentile(59) == 0.0
    assert h.percentile(70) == pytest.approx(0.01, rel=TOL)
    assert h.percentile(100) == 2e4 and h.count == 101  # nothing is lost off either end


def test_bad_q():
    h = LogHistogram()
    h.add(1.0)
    with pytest.raises(ValueError):
        h.percentile(101)
