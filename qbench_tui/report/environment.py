"""What the report's environment section needs, collected when the run is made (a report written later, on another
machine, could not know it): the client host, Python and qbench versions, and the GPUs, their memory and driver
through NVML (server/gpu.py) — only where the server runs on this machine, since NVML here says nothing about a
remote server's GPUs. Anything not known is "unknown", said so, never guessed."""
from __future__ import annotations

import os
import platform
import socket
from typing import Any
from urllib.parse import urlsplit

UNKNOWN = "unknown"


def server_is_local(url: str, launched: bool) -> bool:
    """The server's GPUs are this machine's: qbench launched it, or the URL is a loopback address."""
    if launched:
        return True
    from ..config import is_loopback_host

    host = urlsplit(url or "").hostname
    return bool(host) and is_loopback_host(host)


def _driver() -> str | None:
    """NVML's driver version; sample_gpus() has initialised NVML by the time this is asked."""
    try:
        import pynvml  # type: ignore[import-not-found]

        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # no NVML, or a driver that does not say: unknown
        return None


def collect_environment(server_local: bool, simulated: bool = False) -> dict[str, Any]:
    """The results file's "environment" object. GPU fields are filled only when `server_local` (see
    server_is_local); a simulated server has no GPU to describe."""
    from .. import __version__

    env: dict[str, Any] = {
        "client_host": socket.gethostname() or UNKNOWN,
        "client_os": f"{platform.system()} {platform.release()} {platform.machine()}".strip() or UNKNOWN,
        "client_cpus": _cpus(),
        "python": platform.python_version(),
        "qbench": __version__,
        "gpus": [],
        "gpu_driver": None,
        "gpu_note": "",
    }
    if simulated:
        env["gpu_note"] = "simulated server: no GPU"
        return env
    if not server_local:
        env["gpu_note"] = "the server is not on this machine: its GPUs are not visible to NVML here"
        return env
    from ..server.gpu import sample_gpus

    gpus = sample_gpus()
    env["gpus"] = [{"index": g.index, "name": g.name or UNKNOWN, "mem_total_mib": g.mem_total_mib} for g in gpus]
    if gpus:
        env["gpu_driver"] = _driver()
    else:
        env["gpu_note"] = ("no GPU seen through NVML (no driver, or nvidia-ml-py not installed: "
                           "pip install 'qbench-tui[gpu]')")
    return env


def _cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use, not what the box has
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count()


def gpu_lines(env: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(label, value) rows for a report: GPU name x count, memory, driver, or "unknown" with why."""
    env = env or {}
    gpus = env.get("gpus") or []
    if not gpus:
        why = env.get("gpu_note") or ("not recorded in this results file" if not env else "")
        return [("GPU", f"{UNKNOWN}" + (f" ({why})" if why else ""))]
    names: dict[str, int] = {}
    for g in gpus:
        names[g.get("name") or UNKNOWN] = names.get(g.get("name") or UNKNOWN, 0) + 1
    mems = {g.get("mem_total_mib") for g in gpus}
    mem = (f"{next(iter(mems)) / 1024:.0f} GiB each" if len(mems) == 1 and None not in mems
           else ", ".join("?" if m is None else f"{m / 1024:.0f} GiB" for m in mems))
    return [("GPU", ", ".join(f"{n} x {name}" for name, n in names.items())),
            ("GPU memory", mem), ("GPU driver", env.get("gpu_driver") or UNKNOWN)]


def client_line(env: dict[str, Any] | None) -> str:
    env = env or {}
    if not env:
        return f"{UNKNOWN} (not recorded in this results file)"
    cpus = env.get("client_cpus")
    return (f"{env.get('client_host') or UNKNOWN} ({env.get('client_os') or UNKNOWN}"
            + (f", {cpus} CPUs" if cpus else "") + f"); Python {env.get('python') or UNKNOWN}, "
            f"qbench {env.get('qbench') or UNKNOWN}")
