"""A sweep over request rates in a comparison and its charts: levels matched by offered rate, the knee and the
recommendations named in req/s, the x axis the request rate; a rate sweep against a concurrency sweep refused."""
from __future__ import annotations

import pytest

from qbench_tui.engine.knee import find_knee
from qbench_tui.engine.result import LevelResult
from qbench_tui.report.compare import CompareError, build_compare
from qbench_tui.report.document import Run, render_text
from tests.engine.test_ladder_rate import open_loop


def _run(name: str, capacity: float, rates=(1, 2, 4, 8)) -> Run:
    lvs = [open_loop(r, capacity) for r in rates]
    return Run(name, {"levels": [lv.to_json() for lv in lvs], "model": "m"}, lvs, find_knee(lvs))


def test_rate_sweeps_compare_level_by_rate_with_the_rate_axis():
    a, b = _run("a.json", 5.0), _run("b.json", 100.0, rates=(8, 4, 2, 1))
    text = render_text(build_compare([a, b]))
    assert "Rate 1 req/s" in text and "Rate 8 req/s" in text and "Concurrency" not in text
    assert "knee" in text and "4 req/s" in text and "none found" in text  # a saturated past 4, b never
    assert "request rate (req/s)" in text and "Output throughput vs request rate" in text


def test_a_rate_sweep_and_a_concurrency_sweep_do_not_compare():
    closed = [LevelResult(max_concurrency=c, completed=5, output_throughput=10.0 * c) for c in (1, 2)]
    c = Run("c.json", {"levels": [lv.to_json() for lv in closed]}, closed, find_knee(closed))
    with pytest.raises(CompareError, match="a sweep over request rates"):
        build_compare([_run("a.json", 5.0), c])
