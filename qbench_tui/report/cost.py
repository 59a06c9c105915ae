"""What a million output tokens cost at a measured throughput: the GPUs' hourly price over the tokens an hour at that
level produces. The GPU count comes from what the user said, else the server's own parallel sizes (tensor x pipeline
x data), else the GPUs NVML saw on the machine that launched the server, else 1; the report says which."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# [server] keys as the config label spells them (server/argv.config_label: name=value), and vLLM's short flags
_PARALLEL = {"tensor_parallel_size": "tensor", "tp": "tensor", "pipeline_parallel_size": "pipeline",
             "pp": "pipeline", "data_parallel_size": "data", "dp": "data"}
_TERM = re.compile(r"(?:^|\s)-{0,2}([a-z_-]+)(?:=|\s+)(\d+)(?=\s|$)")


@dataclass(frozen=True, slots=True)
class Cost:
    usd_per_gpu_hour: float
    gpus: int
    gpus_from: str  # in words: where the count came from

    @property
    def usd_per_hour(self) -> float:
        return self.usd_per_gpu_hour * self.gpus

    def per_million(self, output_tok_s: float | None) -> float | None:
        """USD per million output tokens at this throughput; None without one."""
        if not output_tok_s or output_tok_s <= 0:
            return None
        return self.usd_per_hour / (output_tok_s * 3600.0) * 1e6

    def describe(self) -> str:
        return (f"{usd(self.usd_per_gpu_hour)} per GPU-hour x {self.gpus} GPU{'s' if self.gpus != 1 else ''} "
                f"({self.gpus_from}) = {usd(self.usd_per_hour)} per hour; cost per million output tokens = that "
                "hour's price over the output tokens an hour at the level's measured throughput")


def usd(v: float | None) -> str:
    if v is None:
        return "-"
    return f"${v:,.2f}" if v >= 1 else f"${v:.3f}" if v >= 0.01 else f"${v:.4f}"


def parallel_gpus(server_config: str) -> tuple[int, str] | None:
    """(GPUs, why) from the parallel sizes in a server config label ("tensor_parallel_size=2 ..." or extra args
    "--tensor-parallel-size 2" / "-tp 2"); None when the label names none."""
    sizes: dict[str, int] = {}
    for m in _TERM.finditer(server_config or ""):
        kind = _PARALLEL.get(m.group(1).replace("-", "_"))
        if kind:
            sizes[kind] = int(m.group(2))
    if not sizes:
        return None
    n = 1
    for v in sizes.values():
        n *= max(1, v)
    parts = " x ".join(f"{k} parallel {v}" for k, v in sizes.items())
    return n, f"the server config's {parts}"


def gpu_count(given: int, given_from: str, server_config: str, environment: dict[str, Any] | None) -> tuple[int, str]:
    if given > 0:
        return given, given_from
    if found := parallel_gpus(server_config):
        return found
    gpus = (environment or {}).get("gpus") or []
    if gpus:
        names = sorted({g.get("name") or "GPU" for g in gpus})
        return len(gpus), f"NVML saw {len(gpus)} x {', '.join(names)} where the server was launched"
    return 1, "assumed 1: no parallel sizes in the server config and no GPU seen by NVML; say --gpus N"


def cost_for(usd_per_gpu_hour: float, gpus: int, gpus_from: str, server_config: str,
             environment: dict[str, Any] | None) -> Cost | None:
    """The run's Cost, or None when no price was given (0)."""
    if usd_per_gpu_hour <= 0:
        return None
    n, why = gpu_count(gpus, gpus_from, server_config, environment)
    return Cost(usd_per_gpu_hour, n, why)
