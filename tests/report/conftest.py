"""Results made by real sweeps on the simulator, once per session, for the report and compare tests to read.

Two profiles with different limits:
- "compute": qwen2.5-14b-awq-32gb, one fixed prompt (the prefix cache serves most of it), levels 8..96;
- "kv": kv-limited, ~200-token prompts with a unique prefix each (no prefix hits), levels 4..64: the KV cache
  fills and requests are preempted.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qbench_tui.server.sim_child import SimServer
from tests.conftest import run_qbench

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm_bench"
SWEEPS = {
    "compute": ("qwen2.5-14b-awq-32gb", ["--levels", "8,16,32,64,96"]),
    "kv": ("kv-limited", ["--levels", "4,8,16,32,64", "--prompt-len", "200", "--unique-prefix"]),
}


def _sweep(profile: str, flags: list[str], out: Path) -> Path:
    sim = SimServer(profile, extra=["--speed", "4"])
    sim.start()
    try:
        sim.wait_ready(60)
        r = run_qbench("sweep", "--url", sim.url, *flags, "--out", str(out))
        assert r.returncode == 0, r.stderr
    finally:
        sim.stop()
    return next(out.glob("benchmark_*.json"))


@pytest.fixture(scope="session")
def sim_results(tmp_path_factory) -> dict[str, Path]:
    """{"compute": path, "kv": path}: results .json files written by `qbench sweep`."""
    base = tmp_path_factory.mktemp("sweeps")
    return {name: _sweep(profile, flags, base / name) for name, (profile, flags) in SWEEPS.items()}


@pytest.fixture
def results(sim_results, tmp_path) -> dict[str, Path]:
    """Copies a test may edit."""
    out = {}
    for name, p in sim_results.items():
        out[name] = tmp_path / f"{name}.json"
        shutil.copy(p, out[name])
    return out


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def save(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc, indent=2))
    return path
