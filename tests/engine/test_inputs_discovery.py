"""Model discovery that goes wrong, through the real CLI against a real HTTP server on 127.0.0.1: a gateway that
wants a key (as LiteLLM answers), a wrong base URL. Each says the status and what to change, exit 1."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import run_qbench

KEY = "sk-right-key"
LITELLM_401 = {"error": {"message": "Authentication Error, No api key passed in.", "type": "auth_error",
                         "param": "None", "code": "401"}}


class Gateway(BaseHTTPRequestHandler):
    status_without_key = 401  # set per test

    def log_message(self, *a) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        if self.path == "/v1/models" and auth == f"Bearer {KEY}":
            self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})
        elif self.path == "/v1/models" and auth:
            self._send(401, {"error": {"message": "Authentication Error, Invalid proxy server token passed.",
                                       "type": "auth_error", "code": "401"}})
        elif self.path == "/v1/models":
            self._send(self.status_without_key, LITELLM_401 | {"code": str(self.status_without_key)})
        else:
            self._send(404, {"detail": "Not Found"})

    def _send(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def gateway():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    Gateway.status_without_key = 401


@pytest.mark.parametrize("status", [401, 400])  # 400: some LiteLLM versions answer a missing key so
def test_a_run_without_the_key_says_where_the_key_goes(gateway, status):
    Gateway.status_without_key = status
    _, url = gateway
    r = run_qbench("run", "--url", url, "-c", "1", "--requests", "1")
    assert r.returncode == 1
    line = r.stderr.strip()
    assert f"{url}/v1/models answered HTTP {status}" in line and "No api key passed in" in line
    assert "give --api-key KEY or set QBENCH_API_KEY" in line
    assert "lists no model" not in line and "Traceback" not in line


def test_a_wrong_key_is_called_refused(gateway):
    _, url = gateway
    r = run_qbench("sweep", "--url", url, "--levels", "1", env={"QBENCH_API_KEY": "sk-wrong"})
    assert r.returncode == 1
    assert "answered HTTP 401" in r.stderr and "the API key was refused" in r.stderr
    assert "sk-wrong" not in r.stderr


def test_a_wrong_base_url_names_the_404(gateway):
    _, url = gateway
    r = run_qbench("run", "--url", f"{url}/openai", "-c", "1", "--requests", "1", "--api-key", KEY)
    assert r.returncode == 1
    assert f"{url}/openai/v1/models answered HTTP 404: is {url}/openai the server's base URL" in r.stderr
    assert "Or give --model" in r.stderr
