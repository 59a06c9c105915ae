"""Launch and supervise `vllm serve`: the checks before a launch, the log file, the secrets hidden in it, restart
with other flags. Starting, readiness and stopping are supervisor.ChildServer's; the lifetime rules (own session,
PDEATHSIG, watchdog, signal handlers) are proctree's; argv and flag overrides are argv.py's.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qbench_tui.config import ServerConfig
from qbench_tui.server.argv import apply_overrides, build_argv, config_label, find_executable
from qbench_tui.server.net import free_port_near, port_in_use, url_for
from qbench_tui.server.secrets import SECRET_ENV, command_line, redact_text, secrets_in
from qbench_tui.server.supervisor import ChildServer, LaunchError

__all__ = ["LaunchError", "LaunchedServer"]


class LaunchedServer(ChildServer):
    """A `vllm serve` child qbench owns (a ServerHandle): checks before launch, phases and KV cache size from its
    log, the log in log_dir/vllm_<time>.log with secrets hidden, restart with other flags."""

    what = "vLLM"
    restartable = True
    timeout_hint = "Raise startup_timeout / --startup-timeout if it is still loading."

    def __init__(self, server: ServerConfig, log_dir: str | Path) -> None:
        super().__init__(url_for(server.host, server.port), server.startup_timeout)
        self.log_dir = Path(log_dir)
        self._log_file: Any = None
        self.log_path: Path | None = None
        self._secrets: list[str] = []
        self._configure(server)

    def _configure(self, server: ServerConfig) -> None:
        self.server = server
        self.argv = build_argv(server)
        self.url = url_for(server.host, server.port)
        self.startup_timeout = server.startup_timeout
        self.command_line = command_line(self.argv, server.env)
        self.config_label = config_label(server)
        known = secrets_in(self.argv, server.env) + self._secrets  # keep add_secret()'s
        known += [os.environ[n] for n in SECRET_ENV if os.environ.get(n)]
        self._secrets = list(dict.fromkeys(known))

    def add_secret(self, value: str | None) -> None:
        """Hide `value` (e.g. the --api-key qbench sends) in the log file and tail from now on."""
        if value:
            self._secrets.append(value)

    # -- ChildServer hooks ---------------------------------------------------------------------------------

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        if not self.server.model:
            self._refuse("no model to serve: set [server] model in the config")
        exe = find_executable(self.server.vllm_bin)
        if exe is None:
            self._refuse(f"vllm executable not found: {self.server.vllm_bin} "
                         "(install vLLM or set vllm_bin / --vllm-bin)")
        if port_in_use(self.server.host, self.server.port):
            alt = free_port_near(self.server.host, self.server.port)
            hint = f" (e.g. --port {alt})" if alt else ""
            self._refuse(f"port {self.server.port} on {self.server.host} is already in use: stop what "
                         f"is using it or choose another port{hint}")
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self._new_log_path()
            self._log_file = open(self.log_path, "a", encoding="utf-8", errors="replace")
        except OSError as e:
            self._refuse(f"cannot write the vLLM log in {self.log_dir}: {e.strerror or e}")
        self._log_file.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {self.command_line}\n")
        self._log_file.flush()
        env = dict(os.environ)
        env.update(dict(self.server.env))
        env.setdefault("PYTHONUNBUFFERED", "1")  # log lines as they happen, not in 8 KiB lumps
        return [exe] + self.argv[1:], env

    def _new_log_path(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.log_dir / f"vllm_{stamp}.log"
        n = 2
        while path.exists():
            path = self.log_dir / f"vllm_{stamp}-{n}.log"
            n += 1
        return path

    def _spawn_failed(self) -> None:
        self._close_log()

    def _redact(self, line: str) -> str:
        return redact_text(line, self._secrets)

    def _on_line(self, line: str, t: float) -> None:
        f = self._log_file
        if f is not None:
            try:
                f.write(line + "\n")
                f.flush()
            except (OSError, ValueError):
                pass

    def _after_stop(self) -> None:
        self._close_log()

    def _close_log(self) -> None:
        f, self._log_file = self._log_file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def _where(self) -> str:
        return f" ({self.log_path})"

    def _reconfigure(self, overrides: Mapping[str, Any]) -> None:
        """{"max_num_seqs": 128}; None removes a flag; model/port/... set the field."""
        self._configure(apply_overrides(self.server, dict(overrides)))

    def __enter__(self) -> LaunchedServer:
        super().__enter__()
        return self
