"""Data-parallel engines inside one /metrics: summed as ever, and shown per engine (`qbench probe`), from a real
HTTP server serving a two-engine page in vLLM's V1 layout."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from qbench_tui.engine.metrics_parse import parse_metrics, per_engine
from tests.conftest import run_qbench
from tests.unit.test_metrics import TWO_ENGINES


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):
        body, ctype = {"/metrics": (TWO_ENGINES.encode(), "text/plain; version=0.0.4"),
                       "/version": (b'{"version": "0.13.0"}', "application/json"),
                       "/v1/models": (b'{"data": [{"id": "m"}]}', "application/json")}.get(
            self.path, (b"not found", "text/plain"))
        self.send_response(200 if self.path in ("/metrics", "/version", "/v1/models") else 404)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_per_engine_parts_add_up_to_the_summed_view():
    whole = parse_metrics(TWO_ENGINES, 0.0)
    parts = per_engine(TWO_ENGINES, 0.0)
    assert list(parts) == ["0", "1"]
    assert [p.num_running for p in parts.values()] == [3.0, 4.0]
    assert sum(p.generation_tokens for p in parts.values()) == whole.generation_tokens == 300.0
    assert max(p.kv_cache_usage for p in parts.values()) == whole.kv_cache_usage == 0.5
    assert all(p.engines == 1 for p in parts.values())
    assert per_engine(TWO_ENGINES.replace('engine="1"', 'engine="0"'), 0.0) == {}


def test_probe_shows_each_engine():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        r = run_qbench("probe", "--url", url, "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["engines"] == 2 and d["num_requests_running"] == 7.0
        assert d["per_engine"]["1"] == {"kv_cache_usage": 0.5, "num_requests_running": 4.0,
                                        "num_requests_waiting": 2.0, "num_preemptions": None,
                                        "prompt_tokens": None, "generation_tokens": 200.0}
        r = run_qbench("probe", "--url", url)
        assert "engine 0    KV 20.0%, 3.0 running" in r.stdout and "engine 1    KV 50.0%, 4.0 running" in r.stdout
    finally:
        srv.shutdown()
        srv.server_close()
