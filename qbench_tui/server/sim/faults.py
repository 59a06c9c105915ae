"""Fault injection settings for the simulator (all off by default).

Per-request faults are drawn from their own seeded RNG in arrival order, so a given seed and request order gives the
same faulty requests every run.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, fields

METRICS_MODES = ("ok", "garbage", "missing")


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0  # fraction of completion requests answered 500 (vLLM's error body)
    cut_rate: float = 0.0  # fraction of streams whose connection is dropped mid-way (no [DONE])
    stream_error_rate: float = 0.0  # fraction of streams that emit an in-stream error event, then [DONE]
    stall_rate: float = 0.0  # fraction of streams that pause mid-way ...
    stall_seconds: float = 2.0  # ... for this long (wall seconds; tokens keep being generated meanwhile)
    crash_after: float = 0.0  # > 0: the process exits hard (os._exit) this many seconds after it started listening
    refuse_seconds: float = 0.0  # slow start: connections refused this long (port bound, not listening) ...
    unhealthy_seconds: float = 0.0  # ... then /health (and completions) answer 503 this long, then ready
    metrics: str = "ok"  # ok | garbage (200 with unparsable text) | missing (404)
    rate_limit_rate: float = 0.0  # fraction of completion requests answered 429, as a rate-limiting proxy would ...
    retry_after: float = 1.0  # ... with `Retry-After: <this>` (seconds)

    def __post_init__(self) -> None:
        for name in ("error_rate", "cut_rate", "stream_error_rate", "stall_rate", "rate_limit_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {v}")
        if self.metrics not in METRICS_MODES:
            raise ValueError(f"metrics fault must be one of {METRICS_MODES}, got {self.metrics!r}")
        for name in ("stall_seconds", "crash_after", "refuse_seconds", "unhealthy_seconds", "retry_after"):
            if not getattr(self, name) >= 0:  # NaN too
                raise ValueError(f"{name} must be >= 0")

    @property
    def any_stream_fault(self) -> bool:
        return bool(self.cut_rate or self.stream_error_rate or self.stall_rate)

    def cli_args(self) -> list[str]:
        """The `qbench sim` flags that reproduce these settings (only the non-default ones)."""
        out: list[str] = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                out += [f"--{f.name.replace('_', '-')}" if f.name != "metrics" else "--metrics-fault", str(v)]
        return out

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Faults:
        kw = {}
        for f in fields(cls):
            key = "metrics_fault" if f.name == "metrics" else f.name
            if hasattr(args, key) and getattr(args, key) is not None:
                kw[f.name] = getattr(args, key)
        return cls(**kw)


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("fault injection")
    g.add_argument("--error-rate", type=float, default=0.0, metavar="F",
                   help="fraction of requests answered HTTP 500 in vLLM's error format")
    g.add_argument("--cut-rate", type=float, default=0.0, metavar="F",
                   help="fraction of streams cut mid-way (connection closed without [DONE])")
    g.add_argument("--stream-error-rate", type=float, default=0.0, metavar="F",
                   help="fraction of streams that send an in-stream error event then [DONE]")
    g.add_argument("--stall-rate", type=float, default=0.0, metavar="F",
                   help="fraction of streams that pause mid-way for --stall-seconds")
    g.add_argument("--stall-seconds", type=float, default=2.0, metavar="S")
    g.add_argument("--crash-after", type=float, default=0.0, metavar="S",
                   help="exit hard S seconds after listening (simulated engine death)")
    g.add_argument("--refuse-seconds", type=float, default=0.0, metavar="S1",
                   help="slow start: refuse connections for S1 seconds (port bound, not listening)")
    g.add_argument("--unhealthy-seconds", type=float, default=0.0, metavar="S2",
                   help="slow start: then answer /health 503 for S2 seconds")
    g.add_argument("--metrics-fault", choices=METRICS_MODES, default="ok",
                   help="serve /metrics normally, as unparsable garbage, or 404")
    g.add_argument("--rate-limit-rate", type=float, default=0.0, metavar="F",
                   help="fraction of requests answered HTTP 429 with Retry-After (a rate-limiting proxy)")
    g.add_argument("--retry-after", type=float, default=1.0, metavar="S",
                   help="the Retry-After seconds those 429s carry (default 1)")


class FaultPlan:
    """Per-request decisions (seeded)."""

    __slots__ = ("error", "cut_at", "error_at", "stall_at")

    def __init__(self, error: bool = False, cut_at: int = -1, error_at: int = -1, stall_at: int = -1):
        self.error = error
        self.cut_at = cut_at  # drop the connection after this many tokens were sent
        self.error_at = error_at  # send the in-stream error after this many tokens
        self.stall_at = stall_at  # pause after this many tokens

    @property
    def any(self) -> bool:
        return self.error or self.cut_at >= 0 or self.error_at >= 0 or self.stall_at >= 0


NO_FAULT = FaultPlan()


class FaultDice:
    def __init__(self, faults: Faults, seed: int = 0):
        self.faults = faults
        self.rng = random.Random(seed * 7919 + 1)
        # its own stream: turning rate limiting on leaves the other faults' choices as they were for a seed
        self.limit_rng = random.Random(seed * 7919 + 2)

    def rate_limited(self) -> bool:
        f = self.faults.rate_limit_rate
        return bool(f) and self.limit_rng.random() < f

    def plan(self, expected_tokens: int, stream: bool) -> FaultPlan:
        f = self.faults
        if not (f.error_rate or (stream and f.any_stream_fault)):
            return NO_FAULT
        r = self.rng.random
        if f.error_rate and r() < f.error_rate:
            return FaultPlan(error=True)
        if not stream:
            return NO_FAULT
        mid = max(1, expected_tokens // 2)
        cut = mid if f.cut_rate and r() < f.cut_rate else -1
        err = mid if f.stream_error_rate and r() < f.stream_error_rate else -1
        stall = max(1, expected_tokens // 3) if f.stall_rate and r() < f.stall_rate else -1
        return FaultPlan(cut_at=cut, error_at=err, stall_at=stall)
