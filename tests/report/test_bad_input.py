"""Input `qbench report` and `qbench compare` cannot use: one clear line on stderr, exit 2, nothing on stdout."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_qbench
from tests.report.conftest import FIXTURES, load, save


def _one_line(r, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qbench: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("content, words", [
    ("", ("empty file",)),
    ("hello, not json", ("not JSON",)),
    ('{"foo": 1, "bar": [1, 2]}', ("neither a qbench results file nor a vllm bench serve result",)),
    ("[1, 2, 3]", ("not a results object",)),
    ('{"tool": "qbench-tui", "schema_version": 99, "levels": []}', ("newer qbench", "schema 99")),
    ('{"tool": "qbench-tui", "schema_version": 1, "levels": []}', ("no level in it finished",)),
    ('{"date": "20261202-003620", "backend": "openai-chat", "num_prompts": 10, "request_rate": 5.0, '
     '"max_concurrency": null, "duration": 2.0, "completed": 10, "request_throughput": 5.0}',
     ("request rate", "--max-concurrency")),
])
def test_report_refuses_files_it_cannot_read(tmp_path, content, words):
    p = tmp_path / "x.json"
    p.write_text(content)
    _one_line(run_qbench("report", str(p)), str(p), *words)


def test_a_truncated_results_file_is_named_as_truncated(sim_results, tmp_path):
    text = sim_results["compute"].read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: len(text) // 2])
    _one_line(run_qbench("report", str(cut)), "truncated JSON")
    lines = (FIXTURES / "vllm-bench-tiny.json").read_text().splitlines()
    half = tmp_path / "vllm-cut.json"
    half.write_text(lines[0] + "\n" + lines[1][:200])  # --append-result file cut in its second run
    _one_line(run_qbench("report", str(half)), "truncated JSON")


def test_missing_files_folders_and_the_request_log(sim_results, tmp_path):
    _one_line(run_qbench("report", str(tmp_path / "nope.json")), "no such file")
    _one_line(run_qbench("report", str(tmp_path)), "a directory")
    log = next(sim_results["compute"].parent.glob("*.requests.jsonl"))
    _one_line(run_qbench("report", str(log)), "a per-request log", sim_results["compute"].name)


def test_compare_refuses_bad_bounds_and_disjoint_levels(sim_results, tmp_path):
    a = str(sim_results["compute"])
    b = save(tmp_path / "b.json", load(sim_results["compute"]))
    _one_line(run_qbench("compare", a, str(b), "--fail-if", "tokens_per_watt<-5%"),
              "unknown metric 'tokens_per_watt'", "output_throughput")
    _one_line(run_qbench("compare", a, str(b), "--fail-if", "output_throughput<-5"), "needs a %")
    _one_line(run_qbench("compare", a, str(b), "--fail-if", "output_throughput=5%"), "cannot read")
    _one_line(run_qbench("compare", a), "at least two")
    moved = load(sim_results["compute"])
    for lv in moved["levels"]:
        lv["max_concurrency"] += 1
    far = save(tmp_path / "far.json", moved)
    _one_line(run_qbench("compare", a, str(far)), "no common levels", "A has 8, 16, 32, 64, 96", "B has 9, 17")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"levels": "x"}))
    _one_line(run_qbench("compare", a, str(bad)), str(bad), "neither a qbench results file")


def test_bad_cost_settings(sim_results, tmp_path):
    a = str(sim_results["compute"])
    _one_line(run_qbench("report", a, "--gpu-cost-per-hour", "-2"), "--gpu-cost-per-hour", ">= 0")
    _one_line(run_qbench("report", a, "--gpu-cost-per-hour", "nan"), "finite")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[report]\ngpu_cost_per_hour = "cheap"\n')
    _one_line(run_qbench("report", a, "--config", str(cfg)), "gpu_cost_per_hour", "a number")
    cfg.write_text("[report]\ngpu_cost_per_hr = 2\n")
    _one_line(run_qbench("report", a, "--config", str(cfg)), "unknown key 'gpu_cost_per_hr'", "did you mean 'gpu_cost_per_hour'")
