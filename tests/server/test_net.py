"""server/net.py (the one free_port / port_in_use / url_for) and proctree's one PR_SET_PDEATHSIG."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from qbench_tui.config import ServerConfig
from qbench_tui.server.launcher import LaunchedServer
from qbench_tui.server.net import free_port, health_ok, port_in_use, url_for
from qbench_tui.server.sim_child import SimServer


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host, url", [
    ("127.0.0.1", "http://127.0.0.1:8000"),
    ("", "http://127.0.0.1:8000"),
    ("0.0.0.0", "http://127.0.0.1:8000"),
    ("localhost", "http://localhost:8000"),
    ("::", "http://[::1]:8000"),
    ("::1", "http://[::1]:8000"),
    ("[::1]", "http://[::1]:8000"),
    ("fe80::1", "http://[fe80::1]:8000"),
])
def test_url_for(host: str, url: str) -> None:
    assert url_for(host, 8000) == url


def test_launcher_and_simulator_child_agree_on_ipv6(tmp_path) -> None:
    # they once had their own formatters: the simulator child wrote http://::1:8000, which no client can parse
    assert LaunchedServer(ServerConfig(model="m", host="::1", port=8000), tmp_path).url == "http://[::1]:8000"
    assert SimServer("tiny-cpu", host="::1", port=8000).url == "http://[::1]:8000"
    assert SimServer("tiny-cpu", host="0.0.0.0", port=8000).url == "http://127.0.0.1:8000"


def test_free_port_can_be_bound_and_port_in_use_sees_a_listener() -> None:
    port = free_port()
    assert not port_in_use("127.0.0.1", port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert port_in_use("127.0.0.1", port)
        assert not health_ok(f"http://127.0.0.1:{free_port()}", timeout=1.0)  # nobody there: False, no raise


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_free_port_on_ipv6() -> None:
    port = free_port("::1")
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", port))
        s.listen()
        assert port_in_use("::1", port) and port_in_use("[::1]", port)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_set_pdeathsig_is_what_the_kernel_reports() -> None:
    # the engine process calls this; the launcher's preexec_fn uses the same prctl
    code = ("import ctypes, signal, sys\n"
            "from qbench_tui.server.proctree import set_pdeathsig\n"
            "assert set_pdeathsig(signal.SIGTERM)\n"
            "got = ctypes.c_int()\n"
            "ctypes.CDLL(None).prctl(2, ctypes.byref(got), 0, 0, 0)  # PR_GET_PDEATHSIG\n"
            "sys.exit(0 if got.value == signal.SIGTERM else 1)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0
