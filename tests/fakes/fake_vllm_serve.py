"""A stand-in for `vllm serve` (run through the `vllm` shell wrapper beside this file).

Accepts `serve MODEL --host H --port P [anything]`, prints vLLM-like startup lines (colour codes and
`(APIServer pid=N) INFO MM-DD HH:MM:SS [file.py:N]` prefixes included) with small delays, then serves HTTP on
H:P: qbench's simulator (`python -m qbench_tui.server.sim`, profile FAKE_VLLM_PROFILE, default tiny-cpu) when it is
importable (FAKE_VLLM_SERVER=auto, the default, or sim), else a minimal built-in server with /health, /v1/models,
/version and /metrics (FAKE_VLLM_SERVER=builtin: what the launcher tests use, for speed).

FAKE_VLLM_MODE, comma-separated:
  missing_model        print vLLM's error for a model path that does not exist, exit 1
  exit_during_startup  print some lines, then exit 3
  hang                 never become ready (startup-timeout tests)
  crash_after=S        serve, then die (exit 9) S seconds after the first /health request
  ignore_sigint        SIGINT does nothing: stop() must escalate to SIGTERM
  ignore_sigterm       SIGTERM does nothing either (with ignore_sigint: only SIGKILL works)
  slow_start           0.5 s between startup lines
  engine_child         start an "EngineCore" child that sleeps and has no parent-death watch (like vLLM's);
                       stopped on SIGINT, left behind on SIGTERM (always, with FAKE_VLLM_ORPHAN_CHILD=1)
Other knobs: FAKE_VLLM_DELAY (seconds between lines, default 0.02), FAKE_VLLM_ARGV_FILE (write argv as JSON),
FAKE_VLLM_ECHO_ENV (a variable name whose value is printed, to test env passing and log redaction),
FAKE_VLLM_PIDFILE (append "role pid" lines for every process this fake starts), FAKE_VLLM_NOISE (print N filler
lines early, to test log tails).
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODES = {m.split("=", 1)[0]: (m.split("=", 1)[1] if "=" in m else "")
         for m in os.environ.get("FAKE_VLLM_MODE", "").replace(" ", "").split(",") if m}
DELAY = 0.5 if "slow_start" in MODES else float(os.environ.get("FAKE_VLLM_DELAY", "0.02"))
PID = os.getpid()
GOT_SIGTERM = False


def log(msg: str, who: str = "APIServer", level: str = "INFO", src: str = "api_server.py:1896") -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    colour = "\x1b[1;36m" if who == "APIServer" else "\x1b[1;33m"
    print(f"{colour}({who} pid={PID})\x1b[0;0m {level} {stamp} [{src}] {msg}", flush=True)
    time.sleep(DELAY)


def engine(msg: str, src: str = "core.py:93", level: str = "INFO") -> None:
    log(msg, who="EngineCore_DP0", src=src, level=level)


def parse(argv: list[str]) -> dict:
    if not argv or argv[0] != "serve" or len(argv) < 2:
        print("usage: vllm serve MODEL [--host H] [--port P] ...", file=sys.stderr)
        sys.exit(2)
    opts = {"model": argv[1], "host": "0.0.0.0", "port": 8000, "served": argv[1], "max_model_len": 1024}
    rest = argv[2:]
    for i, a in enumerate(rest):
        nxt = rest[i + 1] if i + 1 < len(rest) else ""
        if a == "--host":
            opts["host"] = nxt
        elif a == "--port":
            opts["port"] = int(nxt)
        elif a == "--served-model-name":
            opts["served"] = nxt
        elif a == "--max-model-len":
            opts["max_model_len"] = int(nxt)
    return opts


class Handler(BaseHTTPRequestHandler):
    served = "fake"
    max_model_len = 1024
    first_health = threading.Event()

    def log_message(self, *args: object) -> None:  # quiet: access logs would only slow the tests
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, b"", "application/json")
            Handler.first_health.set()
        elif path == "/v1/models":
            data = {"object": "list", "data": [{"id": self.served, "object": "model", "owned_by": "vllm",
                                                "max_model_len": self.max_model_len}]}
            self._send(200, json.dumps(data).encode(), "application/json")
        elif path == "/version":
            self._send(200, b'{"version":"0.0.0+fake"}', "application/json")
        elif path == "/metrics":
            name = self.served
            text = (
                "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                "# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{engine="0",model_name="{name}"}} 0.0\n'
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
                "# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{engine="0",model_name="{name}"}} 0.0\n'
                "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
                "# TYPE vllm:kv_cache_usage_perc gauge\n"
                f'vllm:kv_cache_usage_perc{{engine="0",model_name="{name}"}} 0.0\n'
            )
            self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._send(404, b'{"detail":"Not Found"}', "application/json")


def sim_available() -> bool:
    if os.environ.get("FAKE_VLLM_SERVER", "auto") == "builtin":
        return False
    if {"ignore_sigint", "ignore_sigterm", "crash_after"} & MODES.keys():
        return False  # uvicorn would replace our signal handling, and the crash timer lives in the built-in one
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.util.find_spec("qbench_tui.server.sim.__main__") is not None
    except (ImportError, ValueError):
        return False


def serve_builtin(opts: dict) -> None:
    Handler.served, Handler.max_model_len = opts["served"], opts["max_model_len"]
    httpd = ThreadingHTTPServer((opts["host"], opts["port"]), Handler)
    httpd.daemon_threads = True
    log(f"Starting vLLM server on http://{opts['host']}:{opts['port']}", src="api_server.py:1912")
    log("Available routes are:", src="launcher.py:34")
    print(f"\x1b[1;36m(APIServer pid={PID})\x1b[0;0m INFO:     Started server process [{PID}]", flush=True)
    print(f"\x1b[1;36m(APIServer pid={PID})\x1b[0;0m INFO:     Waiting for application startup.", flush=True)
    print(f"\x1b[1;36m(APIServer pid={PID})\x1b[0;0m INFO:     Application startup complete.", flush=True)
    if "crash_after" in MODES:
        after = float(MODES["crash_after"] or "1")

        def crash() -> None:
            Handler.first_health.wait()  # count from readiness as the client saw it, so tests do not race
            time.sleep(after)
            engine("EngineCore encountered a fatal error.", src="core.py:710", level="ERROR")
            os._exit(9)

        threading.Thread(target=crash, daemon=True).start()
    try:
        httpd.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        print(f"\x1b[1;36m(APIServer pid={PID})\x1b[0;0m INFO:     Shutting down", flush=True)
    finally:
        httpd.server_close()


def serve_sim(opts: dict) -> None:
    import runpy

    log(f"Starting vLLM server on http://{opts['host']}:{opts['port']}", src="api_server.py:1912")
    sys.argv = ["qbench_tui.server.sim", "--host", opts["host"], "--port", str(opts["port"]),
                "--profile", os.environ.get("FAKE_VLLM_PROFILE", "tiny-cpu"), "--model", opts["served"]]
    runpy.run_module("qbench_tui.server.sim", run_name="__main__", alter_sys=True)


def main() -> int:
    argv = sys.argv[1:]
    if os.environ.get("FAKE_VLLM_ARGV_FILE"):
        Path(os.environ["FAKE_VLLM_ARGV_FILE"]).write_text(json.dumps(argv))
    pidfile = os.environ.get("FAKE_VLLM_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as f:
            f.write(f"api {PID}\n")
    if "ignore_sigint" in MODES:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "ignore_sigterm" in MODES:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def on_term(*_: object) -> None:  # like vLLM: SIGTERM shuts down the way Ctrl-C does
            global GOT_SIGTERM
            GOT_SIGTERM = True
            print(f"(APIServer pid={PID}) INFO: received SIGTERM", flush=True)
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_term)
    opts = parse(argv)
    child = None
    try:
        log("vLLM API server version 0.0.0+fake")
        log(f"non-default args: {json.dumps(argv[2:])}", src="utils.py:253")
        for i in range(int(os.environ.get("FAKE_VLLM_NOISE", "0"))):
            print(f"noise line {i}", flush=True)
        echo = os.environ.get("FAKE_VLLM_ECHO_ENV")
        if echo:
            log(f"env {echo}={os.environ.get(echo, '')}", src="envs.py:1")
        if "missing_model" in MODES:
            model = opts["model"]
            print("Traceback (most recent call last):", flush=True)
            print('  File "/venv/lib/python3.11/site-packages/vllm/transformers_utils/config.py", line 412, '
                  "in get_config", flush=True)
            print("    raise ValueError(", flush=True)
            print(f"ValueError: Invalid repository ID or local directory specified: '{model}'.", flush=True)
            print("Please verify the following requirements:", flush=True)
            print("1. Provide a valid Hugging Face repository ID.", flush=True)
            print("2. Specify a local directory that contains a recognized configuration file.", flush=True)
            return 1
        if "engine_child" in MODES:
            child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
            if pidfile:
                with open(pidfile, "a") as f:
                    f.write(f"engine {child.pid}\n")
        engine(f"Initializing a V1 LLM engine (v0.0.0+fake) with config: model='{opts['model']}'")
        engine(f"Starting to load model {opts['model']}...", src="gpu_model_runner.py:2602")
        engine("Loading weights took 0.01 seconds", src="default_loader.py:267")
        engine("Model loading took 0.01 GiB and 0.05 seconds", src="gpu_model_runner.py:2653")
        if "exit_during_startup" in MODES:
            engine("EngineCore failed to start.", src="core.py:719", level="ERROR")
            print("RuntimeError: Engine core initialization failed. See root cause above.", flush=True)
            return 3
        engine("torch.compile takes 0.02 s in total", src="monitor.py:34")
        engine("GPU KV cache size: 8,192 tokens", src="kv_cache_utils.py:1087")
        engine("Maximum concurrency for 1,024 tokens per request: 8.00x", src="kv_cache_utils.py:1091")
        if "hang" in MODES:
            while True:
                time.sleep(0.2)
        engine("init engine (profile, create kv cache, warmup model) took 0.10 seconds", src="core.py:210")
        if sim_available():
            serve_sim(opts)
        else:
            serve_builtin(opts)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        # Ctrl-C: stop the "EngineCore" like vLLM does. SIGTERM (also what PR_SET_PDEATHSIG sends) leaves it
        # behind, like an API server that could not clean up: the launcher's group kill / watchdog must.
        if child is not None and not GOT_SIGTERM and os.environ.get("FAKE_VLLM_ORPHAN_CHILD") != "1":
            child.kill()
            child.wait()


if __name__ == "__main__":
    sys.exit(main())
