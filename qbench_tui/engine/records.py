"""What one request produced, and what the next request should send.

Timing fields are time.perf_counter() seconds (same clock as vllm bench serve); `wall_start`
is time.time() only for humans reading the JSONL.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_REASON = 200  # characters of a failure reason kept in a record (a server's error page can be megabytes)


def one_line(s: str, limit: int = MAX_REASON) -> str:
    """A failure reason as the records hold it: whitespace collapsed, at most `limit` characters."""
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


@dataclass(slots=True)
class RequestRecord:
    ok: bool
    segment: int  # measured segment the request STARTED in
    concurrency: int  # target concurrency when it started
    worker: int
    start: float  # perf_counter at send
    end: float = 0.0  # perf_counter of the last data event (usage chunk included), or of the failure
    ttft: float | None = None  # seconds from start to first event with non-empty choices
    itl: list[float] = field(default_factory=list)  # gaps between consecutive content events (s)
    out_tokens: int = 0  # usage.completion_tokens, or counted content events when `tokens_estimated`
    in_tokens: int = 0  # usage.prompt_tokens (0 when unknown)
    tokens_estimated: bool = False
    error: str = ""  # failure reason: "HTTP 400: <server message>", "stream error: ...", "read timeout", ...
    status: int | None = None  # HTTP status (None when no response)
    wall_start: float = 0.0  # time.time() at send
    warmup: bool = False  # steady mode: started during warm-up, excluded from statistics
    retry_after: float | None = None  # seconds an error response's Retry-After asked for (engine/backoff.py)
    scheduled: float | None = None  # open loop: perf_counter when it was due (engine/open_loop.py); None: closed
    turn: int = 0  # multi-turn (engine/conversations.py): 1-based turn of its conversation; 0: not a conversation
    conversation: int = -1  # which conversation (-1: none)
    # never sent: the prompt source refused it (e.g. prompt + output over the server's max_model_len); `error`
    # says why. Counted in a level's `refused`, not in `failed`, and never fed to the error budget
    refused: bool = False
    endpoint: str = ""  # several endpoints (engine/targets.py): the base URL it went to; "": the only one

    @property
    def e2el(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        """(E2EL - TTFT) / (out - 1), only when out_tokens > 1, as vllm bench serve."""
        if not self.ok or self.ttft is None or self.out_tokens <= 1:
            return None
        return (self.e2el - self.ttft) / (self.out_tokens - 1)

    def to_json(self) -> dict:
        """One JSONL line. Never contains request headers (no API key can leak from here)."""
        return {
            "ok": self.ok,
            "segment": self.segment,
            "concurrency": self.concurrency,
            "worker": self.worker,
            "wall_start": round(self.wall_start, 6),
            "start": round(self.start, 6),
            "e2el_s": round(self.e2el, 6),
            "ttft_s": None if self.ttft is None else round(self.ttft, 6),
            "tpot_s": None if self.tpot is None else round(self.tpot, 6),
            "itl_s": [round(x, 6) for x in self.itl],
            "out_tokens": self.out_tokens,
            "in_tokens": self.in_tokens,
            "tokens_estimated": self.tokens_estimated,
            "status": self.status,
            "error": self.error,
            "warmup": self.warmup,
            "retry_after_s": self.retry_after,
            "schedule_lag_s": None if self.scheduled is None else round(max(0.0, self.start - self.scheduled), 6),
            "turn": self.turn,
            "conversation": self.conversation,
            "refused": self.refused,
            **({"endpoint": self.endpoint} if self.endpoint else {}),
        }


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """Everything needed to build one request body (the prompt is picked per request by the engine)."""

    url: str  # base URL, e.g. http://127.0.0.1:8001
    model: str
    endpoint: str = "chat"  # "chat" -> /v1/chat/completions, "completions" -> /v1/completions
    max_tokens: int = 200
    temperature: float | None = 0.0
    ignore_eos: bool = False
    min_tokens: int | None = None
    api_key: str | None = None  # sent as Bearer; never written anywhere
    connect_timeout: float = 10.0
    read_timeout: float = 600.0  # a stall longer than this between bytes fails the request
    ca_cert: str = ""  # https: a PEM file of CAs trusted besides the system's
    insecure: bool = False  # https: no certificate check at all
    # the error budget (engine/budget.py): stop when the level's failed share is clearly above this (1.0: rule
    # off), or after this many failures in a row with no success (0: automatic, from the concurrency)
    max_error_rate: float = 1.0
    max_consecutive_failures: int = 0
