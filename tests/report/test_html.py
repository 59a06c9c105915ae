"""The HTML report is one self-contained file whose charts are there once a real browser has parsed it: headless
Chromium (Debian's `chromium`) loads it from disk and dumps the DOM it built."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_qbench
from tests.report.conftest import FIXTURES, load

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def dom(page: Path, tmp_path: Path) -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail("no chromium: `apt-get install chromium` (Debian's package; .ci/run installs it)", pytrace=False)
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _svg(html: str, key: str) -> str:
    m = re.search(rf'<svg[^>]*id="chart-{key}".*?</svg>', html, re.S)
    assert m, f"no chart-{key} svg"
    return m.group(0)


def test_report_html_renders_its_charts_in_chromium(sim_results, tmp_path):
    page = tmp_path / "report.html"
    r = run_qbench("report", str(sim_results["compute"]), "-o", str(page))
    assert r.returncode == 0, r.stderr
    raw = page.read_text()
    # self-contained: nothing fetched, nothing run
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", raw)
    assert "<script" not in raw and "<link" not in raw and "@import" not in raw
    out = dom(page, tmp_path)
    for key in ("throughput", "latency"):
        svg = _svg(out, key)
        assert 'id="series-0"' in svg and "<path" in svg  # the drawn line
    sat = load(sim_results["compute"])["saturation"]
    if sat["saturated"]:
        thr = _svg(out, "throughput")
        assert 'id="mark-0"' in thr and f"knee C={sat['knee_concurrency']}" in thr
    assert out.count("<table") >= 3 and '<section id="recommendations">' in out


def test_compare_html_overlays_both_curves(sim_results, tmp_path):
    page = tmp_path / "compare.html"
    r = run_qbench("compare", str(sim_results["compute"]), str(sim_results["kv"]), "-o", str(page))
    assert r.returncode == 0, r.stderr
    out = dom(page, tmp_path)
    thr = _svg(out, "throughput-overlay")
    assert 'id="series-0"' in thr and 'id="series-1"' in thr  # A's line and B's line on one chart
    lat = _svg(out, "latency-overlay")
    assert all(f'id="series-{i}"' in lat for i in range(4))  # p50 and p99 of each


def test_vllm_bench_file_renders_too(tmp_path):
    page = tmp_path / "vllm.html"
    r = run_qbench("report", str(FIXTURES / "vllm-bench-tiny.json"), "--format", "html", "-o", str(page))
    assert r.returncode == 0, r.stderr
    out = dom(page, tmp_path)
    assert "<path" in _svg(out, "throughput") and "vllm bench serve" in out
