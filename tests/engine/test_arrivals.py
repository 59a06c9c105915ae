"""Gamma arrivals: the mean rate holds for every burstiness, CV = 1/sqrt(B) (1 for Poisson), bad values named."""
from __future__ import annotations

import itertools
import math
import statistics

import pytest

from qbench_tui.engine.arrivals import ArrivalError, intervals, schedule


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_rate_and_cv_follow_the_gamma_shape(burstiness):
    gaps = list(itertools.islice(intervals(20.0, burstiness, seed=1), 40_000))
    mean = statistics.fmean(gaps)
    cv = statistics.pstdev(gaps) / mean
    assert abs(1 / mean - 20.0) / 20.0 < 0.03
    assert abs(cv - 1 / math.sqrt(burstiness)) < 0.05


def test_the_schedule_is_absolute_and_seeded():
    a = list(itertools.islice(schedule(5.0, 1.0, seed=2), 100))
    assert a[0] == 0.0 and a == sorted(a)
    assert a == list(itertools.islice(schedule(5.0, 1.0, seed=2), 100))
    assert a != list(itertools.islice(schedule(5.0, 1.0, seed=3), 100))


@pytest.mark.parametrize("rate, b, words", [(0, 1, "request-rate"), (-2, 1, "request-rate"),
                                            (float("nan"), 1, "request-rate"), (1, 0, "burstiness"),
                                            (1, -1, "burstiness"), (1, float("inf"), "burstiness")])
def test_bad_rates_are_refused(rate, b, words):
    with pytest.raises(ArrivalError, match=words):
        next(intervals(rate, b))
