"""`qbench report` on results the simulator produced: the sections are there with the files' own numbers, and the
conclusions follow the data — change the data and the peak, the cause and the cache note change with it."""
from __future__ import annotations

import re

from qbench_tui.commands.report import read_run
from qbench_tui.engine.knee import find_knee
from qbench_tui.engine.result import LevelResult
from qbench_tui.report.document import render_text, tok
from qbench_tui.report.writeup import build_report
from tests.conftest import run_qbench
from tests.report.conftest import load, save

SECTIONS = ("Environment", "Methodology", "Results", "Analysis", "Key takeaways", "Recommendations")


def report(path) -> str:
    """The text report, paragraphs unwrapped so a sentence is found whole."""
    return render_text(build_report(read_run(str(path))), width=100_000)


def rejudge(doc: dict) -> dict:
    """What the sweep does after every level: the verdict over the file's levels, by the engine's find_knee."""
    levels = [LevelResult.from_json(x) for x in doc["levels"]]
    doc["saturation"] = find_knee(levels, doc["saturation"]["knee_share"]).to_json()
    return doc


def level(doc: dict, c: int) -> dict:
    return next(lv for lv in doc["levels"] if lv["max_concurrency"] == c)


def line(text: str, start: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith(start))


def test_sections_hold_the_files_numbers_for_both_profiles(sim_results):
    for name, path in sim_results.items():
        r = run_qbench("report", str(path))
        assert r.returncode == 0, r.stderr
        out = r.stdout
        for title in SECTIONS:
            assert f"\n{title}\n" in out, (name, title)
        doc = load(path)
        sat = doc["saturation"]
        for lv in doc["levels"]:
            # the classic row, digit for digit as the .txt prints it
            row = line(out, f"{lv['max_concurrency']:<11} |")
            assert f"{lv['output_throughput']:.2f}" in row and f"{lv['request_throughput']:.2f}" in row
            lat = line(out, f"{lv['max_concurrency']:<2} |")
            assert f"{lv['p99_ttft_ms']:.1f}" in lat and f"{lv['median_e2el_ms']:.1f}" in lat
        assert line(out, "- Peak").startswith(f"- Peak {tok(sat['peak_output_throughput'])} output tok/s")
        assert f"at C={sat['peak_concurrency']}" in line(out, "- Peak")
        # the recommendations are the verdict's own, not re-derived
        assert sat["interactive_why"] in out.replace("\n  ", " ") and sat["batch_why"] in out.replace("\n  ", " ")
        assert "SIMULATED" in out.splitlines()[2]


def test_the_cache_note_comes_from_each_profiles_data(sim_results):
    compute, kv = report(sim_results["compute"]), report(sim_results["kv"])
    # one fixed prompt: the prefix cache serves most of it; unique prefixes: nothing is shared
    assert "repeat with unique prompts" in compute and "repeat with unique prompts" not in kv
    assert "share almost nothing" in kv
    kv_doc = load(sim_results["kv"])
    pre = sum(lv["server"]["preemptions"] for lv in kv_doc["levels"])
    assert pre > 0  # the profile's point: its KV cache is too small for this load
    assert f"{pre:.0f} preemptions, at C=" in kv and "The KV cache filled" in kv
    assert "No preemptions." in compute


def _calm_client(doc: dict) -> None:
    for lv in doc["levels"]:
        lv["client"] = {"cpu_pct": 10.0, "loop_lag_ms": 1.0, "max_loop_lag_ms": 2.0}


def _flat_top(doc: dict) -> None:
    """The top level buys 1% more tok/s than the one below at 1.6x its mean latency: saturated by any rule."""
    top, below = doc["levels"][-1], doc["levels"][-2]
    top["output_throughput"] = below["output_throughput"] * 1.01
    top["mean_e2el_ms"] = below["mean_e2el_ms"] * 1.6


def test_the_peak_moves_with_the_data(results):
    doc = load(results["compute"])
    before = line(report(results["compute"]), "- Peak")
    assert f"at C={doc['saturation']['peak_concurrency']}" in before
    fastest = 2 * max(lv["output_throughput"] for lv in doc["levels"])
    level(doc, 16)["output_throughput"] = fastest
    after = report(save(results["compute"], rejudge(doc)))
    assert line(after, "- Peak").startswith(f"- Peak {tok(fastest)} output tok/s")
    assert "at C=16" in line(after, "- Peak") and "Batch: C=16: the peak" in after
    assert "at C=16" not in before


def test_the_cause_changes_with_the_evidence(results):
    doc = load(results["compute"])
    _calm_client(doc)
    _flat_top(doc)
    base = report(save(results["compute"], rejudge(doc)))
    assert doc["saturation"]["saturated"], doc["saturation"]["summary"]
    assert "shard the client" not in base and "the load client is the limit" not in base
    top = doc["levels"][-1]

    top["client"] = {"cpu_pct": 97.0, "loop_lag_ms": 3.0, "max_loop_lag_ms": 5.0}
    busy = report(save(results["compute"], rejudge(doc)))
    assert doc["saturation"]["cause_kind"] == "client"
    assert "the load client is the limit" in busy and "shard the client" in busy
    assert "97% CPU" in busy

    top["client"] = {"cpu_pct": 10.0, "loop_lag_ms": 1.0, "max_loop_lag_ms": 2.0}
    top["server"].update(preemptions=40.0, max_kv_cache_usage=0.97)
    full = report(save(results["compute"], rejudge(doc)))
    assert doc["saturation"]["cause_kind"] == "kv_cache"
    assert "the KV cache is the limit" in full and "The KV cache filled" in full and "shard the client" not in full
    assert f"KV-cache usage reached 97% at C={top['max_concurrency']}" in full


def test_the_cache_note_appears_and_disappears(results):
    doc = load(results["compute"])
    assert "repeat with unique prompts" in report(results["compute"])
    for lv in doc["levels"]:
        s = lv["server"]
        s["prefix_cache_hits"] = 0.02 * s["prefix_cache_queries"]
        s["prefix_cache_hit_rate"] = 0.02
    cold = report(save(results["compute"], doc))
    assert "repeat with unique prompts" not in cold and "Prefix-cache hit rate 2% of prompt tokens" in cold

    kv = load(results["kv"])
    for lv in kv["levels"]:
        s = lv["server"]
        s["prefix_cache_hits"] = 0.8 * s["prefix_cache_queries"]
        s["prefix_cache_hit_rate"] = 0.8
    assert "repeat with unique prompts" in report(save(results["kv"], kv))


def test_failures_reach_stability_and_the_takeaways(results):
    doc = load(results["compute"])
    assert "No failed requests." in report(results["compute"])
    lv = level(doc, 32)
    lv["failed"], lv["failures"] = 3, {"HTTP 500: Internal Server Error": 3}
    out = report(save(results["compute"], doc))
    assert re.search(r"32 \| +3 \| HTTP 500: Internal Server Error", out)
    assert "3 failed requests" in out and "find out why" in out


def test_markdown_and_format_choice(sim_results, tmp_path):
    src = str(sim_results["kv"])
    md = tmp_path / "r.md"
    r = run_qbench("report", src, "-o", str(md))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    text = md.read_text()
    assert text.startswith("# Benchmark report") and "\n## Analysis\n" in text and "\n### Cache behaviour\n" in text
    assert "| Concurrency | Total Time (s) |" in text and "```text" in text
    # --format wins over the suffix
    r = run_qbench("report", src, "-o", str(tmp_path / "r.txt"), "--format", "md")
    assert (tmp_path / "r.txt").read_text().startswith("# Benchmark report")
