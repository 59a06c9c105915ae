"""A real nginx reverse proxy on 127.0.0.1 for tests: a generated config in a test's folder, no daemon, its own pid,
error log and temp paths (nothing under /etc, /var or /run), in its own process group so stopping it leaves nothing."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from qbench_tui.server import proctree
from qbench_tui.server.net import free_port
from tests.reliability.leftovers import stop_group

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONF = """\
{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream sim {{ server 127.0.0.1:{upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://sim;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering {buffering};
      proxy_read_timeout 60s;
    }}
  }}
}}
"""


def available() -> bool:
    return os.access(NGINX, os.X_OK)


class Nginx:
    def __init__(self, folder: Path, upstream_port: int, buffering: bool) -> None:
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = folder / "nginx.conf"
        # as root the workers would run as nobody, who cannot enter a test's 0700 folder to spill a buffer
        user = "user root root;\n" if os.geteuid() == 0 else ""
        self.conf.write_text(CONF.format(user=user, d=folder, upstream=upstream_port, port=self.port,
                                         buffering="on" if buffering else "off"))
        self.proc: subprocess.Popen | None = None

    @property
    def access_log(self) -> list[str]:
        p = self.dir / "access.log"
        return p.read_text().splitlines() if p.exists() else []

    def start(self, timeout: float = 20.0) -> Nginx:
        out = open(self.dir / "stdout.log", "w")
        # -e: the error log nginx opens before it reads the config (else /var/log/nginx/error.log)
        self.proc = subprocess.Popen([NGINX, "-p", str(self.dir), "-c", str(self.conf),
                                      "-e", str(self.dir / "error.log")],
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=proctree.pdeathsig_preexec())
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited {self.proc.returncode}: {self.errors()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"nginx did not listen within {timeout} s: {self.errors()}")

    def errors(self) -> str:
        p = self.dir / "error.log"
        return " | ".join(p.read_text().splitlines()[-5:]) if p.exists() else ""

    def stop(self) -> None:
        """Fast shutdown of the master and its workers; the whole group is gone when this returns."""
        stop_group(self.proc)
