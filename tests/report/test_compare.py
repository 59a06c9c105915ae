"""`qbench compare`: two simulator profiles side by side, a real vllm bench serve file beside a qbench sweep of the
same server, and `--fail-if` as a gate whose boundary is where it says."""
from __future__ import annotations

import json
import re

from qbench_tui.report.compare import change
from tests.conftest import run_qbench
from tests.report.conftest import FIXTURES, load, save


def _row(out: str, section: str, metric: str) -> list[str]:
    """The cells of `metric`'s row in the table under `section` ("Concurrency 32")."""
    part = out.split(f"\n{section}\n", 1)[1]
    row = next(ln for ln in part.splitlines() if ln.startswith(metric))
    return [c.strip() for c in row.split("|")]


def test_two_profiles_side_by_side(sim_results):
    a, b = sim_results["compute"], sim_results["kv"]
    r = run_qbench("compare", str(a), str(b))
    assert r.returncode == 0, r.stderr
    da, db = load(a), load(b)
    common = sorted({lv["max_concurrency"] for lv in da["levels"]} & {lv["max_concurrency"] for lv in db["levels"]})
    assert common == [8, 16, 32, 64]
    for c in common:
        la = next(lv for lv in da["levels"] if lv["max_concurrency"] == c)
        lb = next(lv for lv in db["levels"] if lv["max_concurrency"] == c)
        cells = _row(r.stdout, f"Concurrency {c}", "output tok/s")
        assert cells[1:] == [f"{la['output_throughput']:,.2f}", f"{lb['output_throughput']:,.2f}",
                             f"{change(la['output_throughput'], lb['output_throughput']):+.1f}%"]
        ttft = _row(r.stdout, f"Concurrency {c}", "TTFT p99 ms")
        assert ttft[3] == f"{change(la['p99_ttft_ms'], lb['p99_ttft_ms']):+.1f}%"
    assert "Levels not in common (left out): A only: 96; B only: 4." in r.stdout
    # the knees and their causes next to each other, each the file's own verdict
    knee = _row(r.stdout, "Saturation side by side", "knee")
    for cell, d in zip(knee[1:], (da, db)):
        s = d["saturation"]
        assert cell == (f"C={s['knee_concurrency']}" if s["saturated"] else "none found")
    assert f"- A: {da['saturation']['cause'] or da['saturation']['summary']}" in r.stdout.replace("\n  ", " ")
    assert "Not like for like: prompts fixed vs synthetic:200 tokens" in r.stdout


def test_fail_if_exits_3_past_the_bound_and_0_inside_it(sim_results, tmp_path):
    a = sim_results["compute"]
    doc = load(a)
    lv = next(x for x in doc["levels"] if x["max_concurrency"] == 32)
    lv["output_throughput"] *= 0.96  # B lost 4% at one level
    lv["p99_ttft_ms"] *= 1.08
    b = save(tmp_path / "b.json", doc)
    ok = run_qbench("compare", str(a), str(b), "--fail-if", "output_throughput<-5%,p99_ttft_ms>+10%")
    assert ok.returncode == 0, ok.stderr
    assert "PASS: every bound held." in ok.stdout
    bad = run_qbench("compare", str(a), str(b), "--fail-if", "output_throughput<-3%,p99_ttft_ms>+10%")
    assert bad.returncode == 3
    lines = [ln for ln in bad.stderr.splitlines() if "regression" in ln]
    assert len(lines) == 1 and "B C=32: output_throughput" in lines[0] and "(-4.0%)" in lines[0]
    assert "FAIL B C=32: output_throughput" in bad.stdout
    # p50_* reads as the files' median_*, and a latency bound goes the other way
    lat = run_qbench("compare", str(a), str(b), "--fail-if", "p99_ttft_ms>+5%,p50_e2el_ms>+50%")
    assert lat.returncode == 3 and "p99_ttft_ms" in lat.stderr and "e2el" not in lat.stderr


def test_a_real_vllm_bench_file_beside_a_qbench_sweep():
    q, v = FIXTURES / "qbench-sweep-tiny.json", FIXTURES / "vllm-bench-tiny.json"
    r = run_qbench("compare", str(q), str(v), "--format", "md")
    assert r.returncode == 0, r.stderr
    runs = [json.loads(x) for x in v.read_text().splitlines() if x.strip()]
    assert [x["max_concurrency"] for x in runs] == [1, 4]  # --append-result: one run per line
    for run in runs:
        part = r.stdout.split(f"### Concurrency {run['max_concurrency']}\n", 1)[1]
        row = next(ln for ln in part.splitlines() if ln.startswith("| output tok/s"))
        assert f"| {run['output_throughput']:,.2f} |" in row
        p90 = next(ln for ln in part.splitlines() if ln.startswith("| TTFT p90 ms"))
        assert f"| {run['p90_ttft_ms']:,.2f} |" in p90
    assert "B = " in r.stdout and "vllm bench serve" in r.stdout and "mode wave vs vllm-bench" in r.stdout


def test_a_metric_the_file_lacks_is_an_error_not_a_pass(tmp_path):
    v = FIXTURES / "vllm-bench-tiny.json"
    runs = [json.loads(x) for x in v.read_text().splitlines() if x.strip()]
    for run in runs:  # what vllm bench saves with its default --metric-percentiles 99
        for k in [k for k in run if k.startswith(("p90_", "p50_"))]:
            del run[k]
    b = tmp_path / "default-percentiles.json"
    b.write_text("\n".join(json.dumps(x) for x in runs))
    r = run_qbench("compare", str(FIXTURES / "qbench-sweep-tiny.json"), str(b), "--fail-if", "p90_ttft_ms>+10%")
    assert r.returncode == 2
    assert re.fullmatch(r"qbench: --fail-if: p90_ttft_ms is not in B .*--metric-percentiles.*\n", r.stderr)


def test_three_files_each_against_the_first(sim_results, tmp_path):
    a = sim_results["compute"]
    worse = load(a)
    for lv in worse["levels"]:
        lv["output_throughput"] *= 0.5
    c = save(tmp_path / "c.json", worse)
    r = run_qbench("compare", str(a), str(a.with_name(a.name)), str(c), "--fail-if", "output_throughput<-10%")
    assert r.returncode == 2 and "the same file given twice" in r.stderr
    b = save(tmp_path / "b.json", load(a))
    r = run_qbench("compare", str(a), str(b), str(c), "--fail-if", "output_throughput<-10%")
    assert r.returncode == 3
    bad = [ln for ln in r.stderr.splitlines() if "regression" in ln]
    assert bad and all(ln.startswith("qbench: regression: C C=") for ln in bad)
    assert len(bad) == len(worse["levels"])
