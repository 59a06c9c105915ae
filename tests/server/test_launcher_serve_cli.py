"""`qbench serve CONFIG` (qbench_tui.server.serve_cli) against the fake `vllm`."""
from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from qbench_tui.server import serve_cli
from qbench_tui.server.net import free_port
from qbench_tui.server.proctree import group_alive as _group_alive

ROOT = Path(__file__).resolve().parents[2]
FAKE = str(ROOT / "tests" / "fakes" / "vllm")


def write_config(tmp_path: Path, port: int, vllm_bin: str = FAKE, extra: str = "") -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(textwrap.dedent(f"""
        [server]
        model = "fake-model"
        port = {port}
        vllm_bin = "{vllm_bin}"
        max_model_len = 1024
        enable_prefix_caching = true
        {extra}
    """))
    return path


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    serve_cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_arguments() -> None:
    a = parse("x.toml", "--vllm-bin", "/v", "--port", "9000", "--host", "0.0.0.0", "--startup-timeout", "5")
    assert (a.config, a.vllm_bin, a.port, a.host, a.startup_timeout, a.log_dir) == (
        "x.toml", "/v", 9000, "0.0.0.0", 5.0, "results")


def test_bad_config_is_exit_2(tmp_path: Path) -> None:
    err = io.StringIO()
    assert serve_cli.run(parse(str(tmp_path / "missing.toml")), out=io.StringIO(), err=err) == 2
    assert "config file not found" in err.getvalue()
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'x'\n")
    err = io.StringIO()
    assert serve_cli.run(parse(str(bad)), out=io.StringIO(), err=err) == 2
    assert "'port' must be an integer" in err.getvalue()


def test_launch_error_is_exit_1(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, free_port(), vllm_bin="/nonexistent/vllm")
    out, err = io.StringIO(), io.StringIO()
    assert serve_cli.run(parse(str(cfg), "--log-dir", str(tmp_path)), out=out, err=err) == 1
    assert "vllm executable not found: /nonexistent/vllm" in err.getvalue()
    assert out.getvalue().startswith("/nonexistent/vllm serve fake-model")  # the command is printed first


def test_serve_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, 1, extra="")  # the --port flag wins over the file
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from qbench_tui.server import serve_cli; import argparse;"
            "p = argparse.ArgumentParser(); serve_cli.add_arguments(p); sys.exit(serve_cli.run(p.parse_args()))")
    env = dict(os.environ, FAKE_VLLM_PYTHON=sys.executable, FAKE_VLLM_SERVER="builtin", FAKE_VLLM_DELAY="0.01")
    proc = subprocess.Popen([sys.executable, "-c", code, str(cfg), "--port", str(port), "--log-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        end = time.monotonic() + 60
        while time.monotonic() < end:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("ready: "):
                break
        assert lines and lines[-1].startswith(f"ready: http://127.0.0.1:{port} (KV cache 8,192 tokens"), lines
        assert lines[0] == f"{FAKE} serve fake-model --host 127.0.0.1 --port {port} --max-model-len 1024 " \
                           "--enable-prefix-caching"
        assert lines[1].startswith(f"log: {tmp_path}/vllm_")
        phases = [ln.split("] ", 1)[1].split(":")[0] for ln in lines if ln.startswith("[")]
        assert phases == ["process started", "loading weights", "weights loaded", "compiling", "KV cache",
                          "engine initialized", "API server", "ready"]
        pgid = next(int(ln.rsplit("pid ", 1)[1]) for ln in lines if "process started" in ln)
        assert _group_alive(pgid)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert "stopping vLLM" in rest and "stopped (exit code 0)" in rest
        assert not _group_alive(pgid)
    finally:
        proc.kill()
        proc.wait()
