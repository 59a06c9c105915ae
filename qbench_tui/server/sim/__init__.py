"""Simulated vLLM server: OpenAI-compatible API, SSE streaming and vLLM /metrics on top of a V1-shaped
scheduler / KV-cache / prefix-cache model that steps in real time.

    from qbench_tui.server.sim import start_in_thread
    with start_in_thread("h200-fast", speed=5) as sim:
        ...  # sim.url, sim.truth(), sim.metrics
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .faults import Faults
from .profile import Profile, list_profiles, load_profile

if TYPE_CHECKING:  # pragma: no cover
    from .runner import SimHandle, SimServer

__all__ = ["Faults", "Profile", "SimHandle", "SimServer", "list_profiles", "load_profile", "start_in_thread"]


def start_in_thread(profile: Profile | str = "h200-fast", host: str = "127.0.0.1", port: int = 0,
                    **kwargs: Any) -> SimHandle:
    """See runner.start_in_thread (imported lazily so `import qbench_tui.server.sim` stays light)."""
    from .runner import start_in_thread as _start

    return _start(profile, host, port, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("SimHandle", "SimServer"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
