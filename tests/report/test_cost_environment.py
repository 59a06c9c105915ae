"""Cost per million output tokens from the measured throughput, with the GPU count's origin said; and the
environment a run records (NVML through the stand-in `pynvml`) read back into the report."""
from __future__ import annotations

import sys
import types

import pytest

from qbench_tui.engine.knee import Knee
from qbench_tui.engine.result import LevelResult
from qbench_tui.report import environment
from qbench_tui.report.cost import parallel_gpus, usd
from qbench_tui.report.files import RunMeta, render_json
from qbench_tui.server import gpu
from tests.conftest import run_qbench
from tests.report.conftest import load, save


def _per_million(usd_per_hour: float, tok_s: float) -> float:
    return usd_per_hour / (tok_s * 3600) * 1e6


def _rows(out: str) -> dict[int, str]:
    """The latency table's rows by concurrency (the table with the cost column)."""
    part = out.split(" | ok | failed |", 1)[1]
    rows = {}
    for ln in part.splitlines()[2:]:
        if "|" not in ln:
            break
        rows[int(ln.split("|")[0])] = ln
    return rows


def test_cost_per_level_and_at_the_recommended_levels(sim_results):
    path = sim_results["compute"]
    r = run_qbench("report", str(path), "--gpu-cost-per-hour", "2.5", "--gpus", "2")
    assert r.returncode == 0, r.stderr
    doc = load(path)
    rows = _rows(r.stdout)
    for lv in doc["levels"]:
        assert rows[lv["max_concurrency"]].rstrip().endswith(usd(_per_million(5.0, lv["output_throughput"])))
    sat = doc["saturation"]
    flat = r.stdout.replace("\n  ", " ")
    for who, c in (("Interactive", sat["interactive_concurrency"]), ("Batch", sat["batch_concurrency"])):
        lv = next(x for x in doc["levels"] if x["max_concurrency"] == c)
        rec = next(ln for ln in flat.splitlines() if ln.startswith(f"- {who}: "))
        assert rec.endswith(f"; {usd(_per_million(5.0, lv['output_throughput']))} per million output tokens.")
    assert "$2.50 per GPU-hour x 2 GPUs (given by --gpus) = $5.00 per hour" in flat
    assert "Cost: not computed" in run_qbench("report", str(path)).stdout


@pytest.mark.parametrize("label, gpus, why", [
    ("tensor_parallel_size=2 pipeline_parallel_size=2 max_model_len=4096", 4,
     "the server config's tensor parallel 2 x pipeline parallel 2"),
    ("max_num_seqs=64 -tp 8", 8, "the server config's tensor parallel 8"),
    ("data_parallel_size=2 --tensor-parallel-size 4", 8, "data parallel 2 x tensor parallel 4"),
])
def test_gpu_count_from_the_servers_parallel_sizes(results, label, gpus, why):
    doc = load(results["compute"])
    doc["server_config"] = label
    r = run_qbench("report", str(save(results["compute"], doc)), "--gpu-cost-per-hour", "2")
    assert r.returncode == 0, r.stderr
    flat = r.stdout.replace("\n  ", " ")
    assert f"$2.00 per GPU-hour x {gpus} GPUs (" in flat and why in flat
    peak = doc["saturation"]["peak_output_throughput"]
    assert usd(_per_million(2.0 * gpus, peak)) in next(ln for ln in flat.splitlines() if ln.startswith("- Peak"))


def test_gpu_count_from_the_config_nvml_or_assumed(results, tmp_path):
    doc = load(results["compute"])
    cfg = tmp_path / "r.toml"
    cfg.write_text("[report]\ngpu_cost_per_hour = 3.0\ngpus = 8\n")
    out = run_qbench("report", str(results["compute"]), "--config", str(cfg)).stdout.replace("\n  ", " ")
    assert f"$3.00 per GPU-hour x 8 GPUs ([report] gpus in {cfg})" in out
    # a server qbench did not launch, described by the config given to the report
    cfg.write_text('[server]\nmodel = "m"\ntensor_parallel_size = 2\n[report]\ngpu_cost_per_hour = 3.0\n')
    out = run_qbench("report", str(results["compute"]), "--config", str(cfg)).stdout.replace("\n  ", " ")
    assert "$3.00 per GPU-hour x 2 GPUs (the server config's tensor parallel 2)" in out
    out = run_qbench("report", str(results["compute"]), "--gpu-cost-per-hour", "1").stdout.replace("\n  ", " ")
    assert "x 1 GPU (assumed 1: no parallel sizes in the server config and no GPU seen by NVML; say --gpus N)" in out
    doc["environment"] = {"gpus": [{"index": 0, "name": "NVIDIA H200", "mem_total_mib": 144384.0},
                                   {"index": 1, "name": "NVIDIA H200", "mem_total_mib": 144384.0}]}
    out = run_qbench("report", str(save(results["compute"], doc)), "--gpu-cost-per-hour", "1").stdout
    assert "x 2 GPUs (NVML saw 2 x NVIDIA H200 where the server was launched)" in out.replace("\n  ", " ")


def test_parallel_sizes_ignore_other_numbers():
    assert parallel_gpus("max_num_seqs=256 max_model_len=4096") is None
    assert parallel_gpus("") is None
    assert parallel_gpus("tensor_parallel_size=1")[0] == 1


def test_compare_shows_cost_per_level(sim_results):
    r = run_qbench("compare", str(sim_results["compute"]), str(sim_results["kv"]), "--gpu-cost-per-hour", "4")
    assert r.returncode == 0, r.stderr
    a, b = load(sim_results["compute"]), load(sim_results["kv"])
    part = r.stdout.split("\nConcurrency 16\n", 1)[1]
    row = next(ln for ln in part.splitlines() if ln.startswith("$ per M out tok"))
    ta = next(x["output_throughput"] for x in a["levels"] if x["max_concurrency"] == 16)
    tb = next(x["output_throughput"] for x in b["levels"] if x["max_concurrency"] == 16)
    cells = [c.strip() for c in row.split("|")]
    assert cells[1:3] == [usd(_per_million(4.0, ta)), usd(_per_million(4.0, tb))]


@pytest.fixture
def stand_in_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pynvml` as nvidia-ml-py shapes it: two H200s and a driver version (bytes, as older bindings return)."""
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetName = lambda h: b"NVIDIA H200"
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50, memory=40)
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2 * 2**30, total=141 * 2**30, free=0)
    fake.nvmlDeviceGetPowerUsage = lambda h: 400_000
    fake.nvmlSystemGetDriverVersion = lambda: b"550.54.15"
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setitem(gpu._state, "init", None)


def test_environment_reaches_the_results_file_and_the_report(stand_in_nvml, sim_results, tmp_path):
    env = environment.collect_environment(server_local=True)
    assert [g["name"] for g in env["gpus"]] == ["NVIDIA H200"] * 2
    assert env["gpus"][0]["mem_total_mib"] == 141 * 1024 and env["gpu_driver"] == "550.54.15"
    assert env["python"] == ".".join(map(str, sys.version_info[:3])) and env["client_host"]
    remote = environment.collect_environment(server_local=False)
    assert remote["gpus"] == [] and "not on this machine" in remote["gpu_note"]
    assert "no GPU" in environment.collect_environment(server_local=True, simulated=True)["gpu_note"]

    src = load(sim_results["compute"])
    levels = [LevelResult.from_json(x) for x in src["levels"]]
    meta = RunMeta(url=src["url"], model=src["model"], levels=tuple(lv.max_concurrency for lv in levels),
                   environment=env)
    path = tmp_path / "with-env.json"
    path.write_text(render_json(meta, levels, Knee.from_json(src["saturation"])))
    assert load(path)["environment"] == env
    out = run_qbench("report", str(path)).stdout
    assert "- GPU: 2 x NVIDIA H200\n" in out and "- GPU memory: 141 GiB each\n" in out
    assert "- GPU driver: 550.54.15\n" in out and f"- Client: {env['client_host']} (" in out


def test_which_servers_gpus_are_this_machines():
    assert environment.server_is_local("http://10.0.0.5:8000", launched=True)
    assert environment.server_is_local("http://127.0.0.1:8000", launched=False)
    assert environment.server_is_local("http://[::1]:8000", launched=False)
    assert not environment.server_is_local("https://gpu-box.example:443", launched=False)
