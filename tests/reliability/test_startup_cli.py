"""`qbench sweep --launch` when the server cannot start (the stand-in vllm, tests/fakes/vllm): one line saying why,
exit 1, no load sent and no results files, the vLLM log kept where the results go, nothing left running and the
port free. The launcher's own tests (tests/server/test_launcher.py) check the same cases one layer down."""
from __future__ import annotations

import re
import socket

import pytest

from tests.conftest import run_qbench
from tests.engine.test_cli_launch import config, port_free
from tests.reliability.leftovers import assert_nothing_left

CASES = {
    "startup-failure": ({"FAKE_VLLM_MODE": "exit_during_startup"},
                        r"^qbench: vLLM exited with code 3 during startup: RuntimeError: Engine core initialization "
                        r"failed\."),
    "startup-timeout": ({"FAKE_VLLM_MODE": "hang"},
                        r"^qbench: vLLM did not become ready within 2 s \(waited .*\); stopped it\. Raise "
                        r"startup_timeout"),
    "port-taken": ({}, r"^qbench: port (\d+) on 127\.0\.0\.1 is already in use: stop what is using it or choose "
                       r"another port"),
    "binary-missing": ({}, r"^qbench: vllm executable not found: /nonexistent/.*vllm \(install vLLM or set "
                           r"vllm_bin / --vllm-bin\)$"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_server_that_cannot_start_is_one_line_exit_1_and_nothing_left(case, tmp_path):
    env, want = CASES[case]
    cfg, port = config(tmp_path, **env)
    text = cfg.read_text().replace("startup_timeout = 60", "startup_timeout = 2")
    busy = None
    if case == "port-taken":
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))  # a port this test holds, written into the config
        busy.listen()
        text = re.sub(r"^port = \d+$", f"port = {busy.getsockname()[1]}", text, flags=re.M)
        port = busy.getsockname()[1]
    if case == "binary-missing":
        text = text.replace('vllm_bin = "', 'vllm_bin = "/nonexistent')
    cfg.write_text(text)
    out = tmp_path / "out"
    try:
        r = run_qbench("sweep", "--launch", str(cfg), "--out", str(out), timeout=120)
    finally:
        if busy is not None:
            busy.close()
    assert r.returncode == 1, r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("qbench: ")]
    assert len(said) == 1 and re.search(want, said[0]), r.stderr
    assert "Traceback" not in r.stderr
    # nothing was measured: no requests, no results; a server that got as far as logging leaves its log
    written = sorted(p.name for p in out.glob("*")) if out.exists() else []
    assert not [n for n in written if n.startswith("benchmark_")], written
    if case in ("startup-failure", "startup-timeout"):
        assert [n for n in written if n.startswith("vllm_") and n.endswith(".log")], written
    assert port_free(port)
    assert_nothing_left()
