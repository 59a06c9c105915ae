"""TLS trust and environment proxies, against real endpoints on 127.0.0.1: the simulator behind uvicorn's own TLS
with a certificate from a CA this test makes with `openssl`, and a stand-in proxy that records every byte that
reaches it. The key must never reach the proxy, from any of qbench's clients."""
from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import threading

import httpx
import pytest

from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.request import make_client, stream_request
from qbench_tui.engine.server_poll import MetricsPoller, probe, side_client
from qbench_tui.headless import discover
from tests.conftest import run_qbench

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
MARKER = "sk-MARKER-never-at-the-proxy"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=qbench test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem",
        "-days", "2", "-extfile", "ext.cnf")
    return d


@pytest.fixture(scope="module")
def tls_url(certs):
    import uvicorn

    from qbench_tui.server.sim.runner import SimServer

    sim = SimServer("h200-fast", hard_crash=False)
    # the simulator as shipped, behind uvicorn's own TLS: only the uvicorn config differs from `qbench sim`
    sim.config = uvicorn.Config(sim.app, host="127.0.0.1", port=sim.port, loop="none", http="httptools",
                                lifespan="off", access_log=False, log_level="warning",
                                ssl_certfile=str(certs / "srv.pem"), ssl_keyfile=str(certs / "srv.key"))
    sim.server = uvicorn.Server(sim.config)
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_until_complete, args=(sim.serve(),), daemon=True)
    t.start()
    assert sim.listening.wait(30)
    yield f"https://127.0.0.1:{sim.port}"
    sim.request_stop()
    t.join(10)


class StandInProxy:
    """Accepts anything, keeps every byte, answers 502: a request that reaches it was sent through a proxy."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen = bytearray()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with c:
                c.settimeout(2)
                try:
                    self.seen += c.recv(65536)
                    c.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass


@pytest.fixture
def proxy(monkeypatch):
    p = StandInProxy()
    for name in PROXY_VARS:
        monkeypatch.setenv(name, p.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    yield p
    p.sock.close()


def _proxy_env(p: StandInProxy) -> dict[str, str]:
    return {**{n: p.url for n in PROXY_VARS}, "NO_PROXY": "", "no_proxy": ""}


# ------------------------------------------------------------------ proxies


async def test_the_stand_in_proxy_catches_a_client_that_trusts_the_environment(proxy, sim_proc):
    sim = sim_proc("h200-fast")
    async with httpx.AsyncClient() as c:  # httpx's default: environment proxies
        r = await c.get(f"{sim.url}/v1/models", headers={"Authorization": f"Bearer {MARKER}"})
    assert r.status_code == 502 and MARKER.encode() in proxy.seen  # so the tests below can see a leak


async def test_no_client_of_qbench_goes_through_an_environment_proxy(proxy, sim_proc):
    sim = sim_proc("h200-fast")
    headers = {"Authorization": f"Bearer {MARKER}"}
    _, models = await discover(sim.url, headers, need_model=True)
    d = await probe(sim.url, MARKER)
    samples: list = []
    poller = MetricsPoller(sim.url, MARKER, 0.05, on_sample=samples.append)
    task = asyncio.create_task(poller.run())
    async with side_client(sim.url, headers) as c:
        assert (await c.get("/version")).status_code == 200
    spec = RequestSpec(url=sim.url, model=models[0], max_tokens=4, api_key=MARKER)
    async with make_client(spec) as client:
        rec = await stream_request(client, spec, "hi", segment=0, concurrency=1, worker=0)
    while not samples:
        await asyncio.sleep(0.02)
    poller.stop()
    await task
    assert models and d["metrics_schema"] == "v1" and rec.ok
    assert proxy.connections == 0 and MARKER.encode() not in proxy.seen


def test_probe_never_reaches_the_proxy(sim_proc):
    sim = sim_proc("h200-fast")
    p = StandInProxy()
    try:
        r = run_qbench("probe", "--url", sim.url, "--api-key", MARKER, "--json", env=_proxy_env(p))
    finally:
        p.sock.close()
    assert r.returncode == 0 and json.loads(r.stdout)["models"], r.stderr
    assert p.connections == 0 and MARKER.encode() not in p.seen


def test_run_never_reaches_the_proxy(sim_proc):
    # discovery, the /metrics scrapes around and during the level, and the completions
    sim = sim_proc("h200-fast")
    p = StandInProxy()
    try:
        r = run_qbench("run", "--url", sim.url, "-c", "2", "--requests", "4", "--max-tokens", "4", "--json",
                       env={**_proxy_env(p), "QBENCH_API_KEY": MARKER})
    finally:
        p.sock.close()
    assert r.returncode == 0 and json.loads(r.stdout)["completed"] == 4, r.stderr
    assert p.connections == 0 and MARKER.encode() not in p.seen


def test_a_key_over_plain_http_to_another_host_is_warned_about(capsys):
    from qbench_tui.commands.common import warn_about_target

    warn_about_target("http://10.1.2.3:8000", "k", False)
    warn_about_target("http://127.0.0.1:8000", "k", False)  # loopback: nobody on the path
    warn_about_target("https://10.1.2.3:8000", "k", False)  # encrypted
    warn_about_target("http://10.1.2.3:8000", None, False)  # no key to leak
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["qbench: warning: the API key goes in clear text (http://) to 10.1.2.3; use https:// or an "
                     "SSH tunnel unless the network is yours"]


# ------------------------------------------------------------------ TLS


def test_tls_without_the_ca_fails_clearly(tls_url):
    for argv in (["run", "-c", "1", "--requests", "2", "--max-tokens", "4"], ["probe"]):
        r = run_qbench(*argv, "--url", tls_url)
        assert r.returncode == 1, r.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in r.stderr and "give --ca-cert FILE" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_tls_with_ca_cert_works_for_load_and_side_channels(tls_url, certs):
    ca = str(certs / "ca.pem")
    r = run_qbench("run", "--url", tls_url, "--ca-cert", ca, "-c", "2", "--requests", "4", "--max-tokens", "4",
                   "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["completed"] == 4
    r = run_qbench("probe", "--url", tls_url, "--ca-cert", ca, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["metrics_schema"] == "v1" and d["models"]  # /metrics and /v1/models over the same trust


def test_tls_with_insecure_works_and_warns(tls_url):
    r = run_qbench("run", "--url", tls_url, "--insecure", "-c", "1", "--requests", "2", "--max-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["completed"] == 2
    assert "WARNING: --insecure: the server's TLS certificate is NOT checked" in r.stderr


async def test_every_client_honours_the_same_trust(tls_url, certs):
    ca = str(certs / "ca.pem")
    samples: list = []
    errors: list = []
    poller = MetricsPoller(tls_url, None, 0.05, on_sample=samples.append, on_error=errors.append, ca_cert=ca)
    task = asyncio.create_task(poller.run())
    _, models = await discover(tls_url, {}, need_model=True, ca_cert=ca)
    trusting = RequestSpec(url=tls_url, model=models[0], max_tokens=4, ca_cert=ca)
    untrusting = RequestSpec(url=tls_url, model=models[0], max_tokens=4)
    async with make_client(trusting, ssl.create_default_context()) as c:  # the spec's trust wins
        ok = await stream_request(c, trusting, "hi", segment=0, concurrency=1, worker=0)
    async with make_client(untrusting) as c:
        bad = await stream_request(c, untrusting, "hi", segment=0, concurrency=1, worker=0)
    while not samples and not errors:
        await asyncio.sleep(0.02)
    poller.stop()
    await task
    assert ok.ok and samples and samples[0].schema == "v1" and not errors
    assert not bad.ok and "CERTIFICATE_VERIFY_FAILED" in bad.error
