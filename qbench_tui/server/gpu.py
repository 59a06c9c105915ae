"""GPU samples through NVML (the optional `nvidia-ml-py` package, imported as `pynvml`: `pip install
'qbench-tui[gpu]'`).

Optional on purpose: qbench runs on machines with no GPU and no NVML. Every failure returns () so a caller can
sample on a timer without guarding it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one moment; None where NVML could not say (a field a GPU or driver does not support)."""

    index: int
    name: str = ""
    util_pct: float | None = None  # busy share of the last sample period, 0..100
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    power_w: float | None = None

_lock = threading.Lock()
_state: dict[str, Any] = {"init": None}  # None: not tried; False: unavailable; module: initialised


def _nvml() -> Any:
    with _lock:
        if _state["init"] is None:
            try:
                import pynvml  # type: ignore[import-not-found]

                pynvml.nvmlInit()
                _state["init"] = pynvml
            except Exception:  # not installed, no driver, no GPU: all mean "no samples"
                _state["init"] = False
        return _state["init"] or None


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _sample(nv: Any, i: int) -> GpuSample:
    h = nv.nvmlDeviceGetHandleByIndex(i)
    util = used = total = power = None
    # each query on its own: a GPU without power readings (many consumer cards) still reports the rest
    try:
        util = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
    except Exception:
        pass
    try:
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        used, total = mem.used / 2**20, mem.total / 2**20
    except Exception:
        pass
    try:
        power = nv.nvmlDeviceGetPowerUsage(h) / 1000.0  # milliwatts
    except Exception:
        pass
    return GpuSample(index=i, name=_text(nv.nvmlDeviceGetName(h)), util_pct=util, mem_used_mib=used,
                     mem_total_mib=total, power_w=power)


def sample_gpus() -> tuple[GpuSample, ...]:
    """One GpuSample per GPU; () when NVML or a GPU is not there. Never raises."""
    try:
        nv = _nvml()
        if nv is None:
            return ()
        return tuple(_sample(nv, i) for i in range(nv.nvmlDeviceGetCount()))
    except Exception:
        return ()
