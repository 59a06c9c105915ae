"""Client shards as Ray actors (engine/ray_shards.py) on a real local Ray cluster: a head and a worker node started
by the test on loopback, two shards against the simulator, merged numbers equal a single-process run of the same
load, and nothing of Ray is left running afterwards."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from qbench_tui.engine.load import LoadEngine
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.stats import LevelTally
from qbench_tui.server.net import free_port

ray = pytest.importorskip("ray")  # the dev extra installs it (CI); `pip install -e .` alone does not
RAY = str(Path(sys.executable).with_name("ray"))


def _ray_pids(temp_dir: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in a for a in (p.info["cmdline"] or [])):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start --head` + one `ray start --address` worker, each with 1 CPU, on 127.0.0.1; all stopped after."""
    temp_dir = tempfile.mkdtemp(prefix="qbray-", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                        "--temp-dir", temp_dir, *common], check=True, capture_output=True, env=env, timeout=180)
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", *common], check=True,
                       capture_output=True, env=env, timeout=180)
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
        for pid in _ray_pids(temp_dir):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


async def test_two_ray_shards_count_what_one_process_counts(sim_proc, ray_cluster):
    from qbench_tui.engine.ray_shards import RayShardPool

    address, temp_dir = ray_cluster
    sim = sim_proc("h200-fast", "--model", "m")
    spec = RequestSpec(url=sim.url, model="m", max_tokens=12)
    single = LoadEngine(spec, lambda i: f"question {i}")
    try:
        one = await single.run_steady(6, requests=40, settle=None)
        bounds_one = single.last_bounds
    finally:
        await single.stop()
    pool = RayShardPool(spec, 2, address)
    await pool.start()
    try:
        assert len(pool.nodes) == 2
        sharded = LoadEngine(spec, lambda i: f"question {i}", sender=pool.send)
        try:
            two = await sharded.run_steady(6, requests=40, settle=None)
            bounds_two = sharded.last_bounds
        finally:
            await sharded.stop()
    finally:
        await pool.close()
    a = LevelTally().add_all(r for r in one if bounds_one.counts(r))
    b = LevelTally().add_all(r for r in two if bounds_two.counts(r))
    assert (a.completed, a.failed) == (b.completed, b.failed) == (40, 0)
    assert a.out_tokens == b.out_tokens == 40 * 12
    assert len(a.itl) == len(b.itl) == 40 * 12
    assert all(r.ttft is not None and 0 < r.ttft <= r.e2el for r in two)
    assert not ray.is_initialized()  # the pool shut down the driver it started


async def test_an_address_that_does_not_answer_is_one_line():
    from qbench_tui.engine.ray_shards import RayShardPool, RayUnavailable

    pool = RayShardPool(RequestSpec(url="http://127.0.0.1:1", model="m"), 1, f"127.0.0.1:{free_port()}")
    with pytest.raises(RayUnavailable, match="no Ray cluster answered"):
        await pool.start()


def test_the_dashboards_engine_drives_ray_shards_live(sim_proc, ray_cluster, tmp_path):
    """The live session (its own engine process) with `--ray`: a concurrency change reaches the actors at once,
    every record comes back whole, and the session's end shuts the driver down."""
    import json

    from qbench_tui.config import FleetConfig
    from qbench_tui.engine.process import EngineProcess
    from qbench_tui.engine.session import SessionConfig
    from qbench_tui.engine.snapshot import SetConcurrency

    address, _ = ray_cluster
    sim = sim_proc("h200-fast", "--model", "m")
    spec = RequestSpec(url=sim.url, model="m", max_tokens=16, ignore_eos=True)
    eng = EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), window_s=5,
                                      min_segment_s=0.3, fleet=FleetConfig(ray=address, client_procs=2)))
    try:
        first = eng.wait_for(lambda s: s.status == "running", 120)
        assert first is not None and "on Ray" in first.message, eng.last
        for c in (3, 9):
            eng.send(SetConcurrency(c))
            assert eng.wait_for(lambda s, c=c: s.target_concurrency == c and s.in_flight == c, 60) is not None
        assert eng.wait_for(lambda s: s.completed_total >= 60, 60) is not None
    finally:
        eng.close(timeout=30)
    last = eng.last
    assert last is not None and last.status == "stopped" and last.failed_total == 0
    recs = [json.loads(line) for line in open(last.saved[2])]
    assert sum(not r.get("warmup") for r in recs) == last.completed_total
    assert all(r["ok"] and r["out_tokens"] == 16 for r in recs)
