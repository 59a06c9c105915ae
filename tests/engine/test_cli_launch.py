"""`qbench run|sweep --launch CONFIG` with the stand-in `vllm` (tests/fakes/vllm serving the simulator)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from qbench_tui.server.net import free_port
from tests.conftest import run_qbench

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "vllm"


def config(tmp_path: Path, **env: str) -> tuple[Path, int]:
    port = free_port()
    env_lines = "\n".join(f'{k} = "{v}"' for k, v in env.items())
    p = tmp_path / "launch.toml"
    p.write_text(f'''
[server]
model = "tiny"
port = {port}
vllm_bin = "{FAKE}"
startup_timeout = 60
max_num_seqs = 32
enable_prefix_caching = true

[server.env]
FAKE_VLLM_PYTHON = "{sys.executable}"
FAKE_VLLM_SERVER = "sim"
{env_lines}

[load]
max_tokens = 16
ignore_eos = true

[sweep]
levels = [1, 2]
mode = "wave"
out = "{tmp_path / 'out'}"
''')
    return p, port


def port_free(port: int) -> bool:
    """Nothing listens any more (TIME_WAIT sockets of finished requests may remain: a server binds with
    SO_REUSEADDR, so so do we)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_sweep_launch_measures_and_stops(tmp_path):
    cfg, port = config(tmp_path)
    out = tmp_path / "out"
    r = run_qbench("sweep", "--launch", str(cfg), "--out", str(out), timeout=240)
    assert r.returncode == 0, r.stderr
    assert "launching:" in r.stderr and "--max-num-seqs 32" in r.stderr and "--enable-prefix-caching" in r.stderr
    assert "ready" in r.stderr  # startup phases are printed as they happen
    d = json.loads(next(out.glob("benchmark_*.json")).read_text())
    assert [lv["max_concurrency"] for lv in d["levels"]] == [1, 2]
    assert d["server_config"] == "max_num_seqs=32 enable_prefix_caching"
    assert port_free(port)  # the launched server is gone


def test_server_dies_mid_run_is_reported_with_log_tail(tmp_path):
    cfg, port = config(tmp_path, FAKE_VLLM_MODE="crash_after=3")
    out = tmp_path / "out"
    r = run_qbench("sweep", "--launch", str(cfg), "--levels", "1,2,4", "--mode", "steady", "--duration", "2",
                   "--out", str(out), timeout=240)
    assert r.returncode == 1
    assert "server died (exit code" in r.stderr
    assert "Application startup complete" in r.stderr  # the log tail is shown
    d = json.loads(next(out.glob("benchmark_*.json")).read_text())
    # the level the server died in is kept, marked interrupted; the levels after it never ran
    assert len([lv for lv in d["levels"] if not lv["interrupted"]]) < 3
    assert any("server died" in n for n in d["notes"])
    assert port_free(port)


def test_launch_failure_is_clear(tmp_path):
    cfg, _ = config(tmp_path, FAKE_VLLM_MODE="missing_model")
    r = run_qbench("run", "--launch", str(cfg), "-c", "1", "--requests", "1", timeout=120)
    assert r.returncode == 1
    assert "during startup" in r.stderr
    # the vLLM log goes where the results go ([sweep] out, by default ./results), with the failure in it
    assert "Invalid repository ID" in next((tmp_path / "out").glob("vllm_*.log")).read_text()
