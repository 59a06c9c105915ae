"""real_vllm tier: vLLM's own `vllm bench serve --save-result` and `qbench sweep` against the same real server,
then `qbench compare` reads both (and the result kept in tests/fixtures/vllm_bench/), level by level."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_qbench
from tests.integration.conftest import tiny_model, vllm_bin

pytestmark = pytest.mark.real_vllm
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm_bench" / "vllm-bench-tiny.json"
C = 4  # few prompts at one level: the machine is shared, and one common level is all compare needs


def _vllm_bench(real_vllm, out: Path) -> dict:
    env = dict(os.environ) | dict(real_vllm.config.server.env) | {"TMPDIR": str(real_vllm.work / "tmp")}
    argv = [str(vllm_bin()), "bench", "serve", "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
            "--base-url", real_vllm.url, "--model", "tiny", "--tokenizer", str(tiny_model()),
            "--dataset-name", "random", "--random-input-len", "64", "--random-output-len", "32",
            "--num-prompts", "16", "--max-concurrency", str(C), "--ignore-eos", "--temperature", "0",
            "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(out.read_text())


def test_compare_a_fresh_vllm_bench_result_with_qbench(real_vllm, tmp_path):
    bench = tmp_path / "vllm-bench.json"
    run = _vllm_bench(real_vllm, bench)
    assert run["completed"] == 16 and run["max_concurrency"] == C
    sweep = run_qbench("sweep", "--url", real_vllm.url, "--levels", str(C), "--max-tokens", "32", "--ignore-eos",
                       "--out", str(tmp_path / "qb"), timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    qb = next((tmp_path / "qb").glob("benchmark_*.json"))

    r = run_qbench("compare", str(qb), str(bench))
    assert r.returncode == 0, r.stderr
    part = r.stdout.split(f"\nConcurrency {C}\n", 1)[1]
    row = next(ln for ln in part.splitlines() if ln.startswith("output tok/s"))
    mine = json.loads(qb.read_text())["levels"][0]
    assert [c.strip() for c in row.split("|")][1:3] == [f"{mine['output_throughput']:,.2f}",
                                                        f"{run['output_throughput']:,.2f}"]
    # the gate on real numbers: a bound every change breaks, and one none can
    assert run_qbench("compare", str(qb), str(bench), "--fail-if", "output_throughput<+1000%").returncode == 3
    assert run_qbench("compare", str(qb), str(bench), "--fail-if", "output_throughput<-100%").returncode == 0

    # and beside the result kept from an earlier server: C=4 is common to both
    r = run_qbench("compare", str(FIXTURE), str(bench), "--format", "md")
    assert r.returncode == 0, r.stderr
    assert f"### Concurrency {C}" in r.stdout and "A only: 1" in r.stdout
