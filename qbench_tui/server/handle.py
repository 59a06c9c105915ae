"""What a face needs from a server qbench launched (real vLLM or the simulator): the one protocol that the
vLLM launcher, the simulator child and the test doubles all satisfy (tests/server/test_handle_protocol.py).

The dashboard's startup screen, log panel and restart flow read it; headless commands use wait_ready/alive/stop.
Only wait_ready and stop block; everything else returns at once. What wait_ready and restart raise is a
RuntimeError (supervisor.LaunchError for the real servers, its message the whole story: exit code, log tail).
The real ones: supervisor.ChildServer and its subclasses launcher.LaunchedServer and sim_child.SimServer.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable


class ServerState(str, Enum):
    """A str mixin so `state == "ready"` and JSON dumps keep working for callers that compare text."""

    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Phase:
    name: str  # "process started", "loading weights", "weights loaded", "compiling", "KV cache", "API server", "ready"
    at: float  # seconds since launch when the phase was first seen
    detail: str = ""  # e.g. "5.2 GiB", "KV cache 123,456 tokens, max concurrency 30.1x"


@runtime_checkable
class ServerHandle(Protocol):
    url: str  # http://127.0.0.1:PORT (IPv6 hosts bracketed)
    command_line: str  # the exact command, secrets redacted, copyable

    @property
    def state(self) -> ServerState: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def error(self) -> str: ...  # why it failed ("" when fine)

    @property
    def config_label(self) -> str: ...  # the flags that matter for a measurement ("" when not known)

    @property
    def restartable(self) -> bool: ...  # restart() can change flags (a launched vLLM); False for the simulator

    def phases(self) -> list[Phase]: ...

    def log_tail(self, n: int = 40) -> list[str]: ...

    def kv_cache_tokens(self) -> int | None: ...

    def max_concurrency(self) -> float | None: ...

    def alive(self) -> bool: ...  # the process is running (ready or not)

    def wait_ready(self, timeout: float | None = None,
                   on_phase: Callable[[Phase], None] | None = None) -> None: ...  # raises when it fails/times out

    def restart(self, overrides: Mapping[str, Any]) -> None: ...  # stop, apply flags, start; raises if not restartable

    def stop(self) -> None: ...  # SIGINT, wait, SIGTERM, wait, SIGKILL to the whole group; idempotent
