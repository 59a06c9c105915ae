"""Loopback addresses for servers qbench starts: a free port, whether one is taken, the URL to reach a host.

The one place these rules live, so the launcher, the simulator child, the tests and the bench scripts agree
(they once had seven free_port copies and three URL formatters that disagreed on IPv6).
"""
from __future__ import annotations

import socket
import urllib.error
import urllib.request


def _bind_addr(host: str, port: int) -> tuple[int, tuple] | None:
    bind_host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return None
    family, _, _, _, addr = infos[0]
    return family, addr


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` right now (the OS picks it; IPv6 hosts work too)."""
    found = _bind_addr(host, 0)
    if found is None:
        raise OSError(f"cannot resolve {host!r}")
    family, addr = found
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(addr)
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port (we try to bind it, as the server will)."""
    found = _bind_addr(host, port)
    if found is None:
        return False  # an unresolvable host is the server's error to report, in its own words
    family, addr = found
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR like uvicorn: a port in TIME_WAIT is free for the server, a listening one is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError:
            return True
    return False


def free_port_near(host: str, port: int) -> int | None:
    """The next free port above `port` (a suggestion for a user whose port is taken), or None."""
    for p in range(port + 1, min(port + 50, 65535)):
        if not port_in_use(host, p):
            return p
    return None


def url_for(host: str, port: int) -> str:
    """How a client on this machine reaches a server listening on host:port. A wildcard address is reached on
    loopback of the same family; an IPv6 literal is bracketed (http://[::1]:8000)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def health_ok(url: str, timeout: float) -> bool:
    """True on a 200 from url/health."""
    # no proxies: a corporate http_proxy must not see (or break) a loopback health check
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
