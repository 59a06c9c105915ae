"""`qbench serve CONFIG`: launch `vllm serve` from a config's [server] table and supervise it until Ctrl-C.

Prints the exact command (secrets redacted), each startup phase with its elapsed time, then `ready: URL`.
Exit status: 0 after a clean stop, 1 when vLLM could not start or died, 2 for a bad config.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from qbench_tui.config import ConfigError, load_config
from qbench_tui.server.handle import Phase


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="TOML config whose [server] table says what to serve")
    parser.add_argument("--vllm-bin", default=None, help="vllm executable (default: [server] vllm_bin or `vllm`)")
    parser.add_argument("--port", type=int, default=None, help="port for vLLM (default: [server] port)")
    parser.add_argument("--host", default=None, help="address vLLM listens on (default: [server] host)")
    parser.add_argument("--startup-timeout", type=float, default=None,
                        help="seconds to wait for the first /health 200 (default: [server] startup_timeout)")
    parser.add_argument("--log-dir", default="results", help="where vllm_<time>.log is written (default: results)")


def _phase_line(ph: Phase) -> str:
    return f"[{ph.at:7.1f}s] {ph.name}{': ' + ph.detail if ph.detail else ''}"


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from qbench_tui.server.launcher import LaunchedServer, LaunchError
    from qbench_tui.server.proctree import install_signal_handlers

    out = out or sys.stdout
    err = err or sys.stderr
    overrides = {
        "server.vllm_bin": getattr(args, "vllm_bin", None),
        "server.port": getattr(args, "port", None),
        "server.host": getattr(args, "host", None),
        "server.startup_timeout": getattr(args, "startup_timeout", None),
    }
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"qbench serve: {e}", file=err)
        return 2
    if not cfg.server.model:
        print(f"qbench serve: {cfg.path or 'config'}: [server] needs 'model' (a Hugging Face id or a local path)",
              file=err)
        return 2
    install_signal_handlers()  # SIGTERM / SIGHUP stop vLLM first, then end us with SystemExit
    server = LaunchedServer(cfg.server, getattr(args, "log_dir", None) or "results")
    print(server.command_line, file=out, flush=True)
    try:
        try:
            server.start()
            print(f"log: {server.log_path}", file=out, flush=True)
            server.wait_ready(on_phase=lambda ph: print(_phase_line(ph), file=out, flush=True))
        except LaunchError as e:
            print(f"qbench serve: {e}", file=err, flush=True)
            return 1
        kv = server.kv_cache_tokens()
        conc = server.max_concurrency()
        extra = ""
        if kv is not None:
            extra = f" (KV cache {kv:,} tokens" + (f", max concurrency {conc:.2f}x" if conc else "") + ")"
        print(f"ready: {server.url}{extra} after {server.elapsed():.1f} s; Ctrl-C to stop", file=out, flush=True)
        while server.state == "ready":
            time.sleep(0.5)
        # it died on its own
        tail = "\n".join(server.log_tail(40))
        print(f"qbench serve: {server.error or 'vLLM stopped'}\n--- last log lines ({server.log_path}) ---\n{tail}",
              file=err, flush=True)
        return 1
    except (KeyboardInterrupt, SystemExit):
        print("stopping vLLM ...", file=out, flush=True)
        server.stop()
        print(f"stopped (exit code {server.returncode})", file=out, flush=True)
        return 0
    finally:
        server.stop()
