"""What a face needs from a server qbench launched (real vLLM or the simulator).

The launcher implements this; the dashboard's startup screen and log panel read it. Nothing here blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Phase:
    name: str  # "process started", "loading weights", "weights loaded", "compiling", "KV cache", "API server", "ready"
    at: float  # seconds since launch when the phase was first seen
    detail: str = ""  # e.g. "5.2 GiB", "KV cache 123,456 tokens, max concurrency 30.1x"


class ServerHandle(Protocol):
    url: str  # http://127.0.0.1:PORT
    command_line: str  # the exact command, secrets redacted, copyable

    @property
    def state(self) -> str: ...  # "starting" | "ready" | "failed" | "stopped"

    @property
    def returncode(self) -> int | None: ...

    @property
    def error(self) -> str: ...  # why it failed ("" when fine)

    def phases(self) -> list[Phase]: ...

    def log_tail(self, n: int = 40) -> list[str]: ...

    def kv_cache_tokens(self) -> int | None: ...

    def max_concurrency(self) -> float | None: ...

    def stop(self) -> None: ...  # SIGINT, wait, SIGTERM, wait, SIGKILL to the whole group; idempotent
