"""GPU samples through NVML (the optional `nvidia-ml-py` package, imported as `pynvml`).

Optional on purpose: qbench runs on machines with no GPU and no NVML. Every failure returns () so a caller can
sample on a timer without guarding it.
"""
from __future__ import annotations

import threading
from typing import Any

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


def sample_gpus() -> tuple[dict, ...]:
    """One dict per GPU: index, name, util_pct, mem_used_mib, mem_total_mib, power_w (None when unknown).
    () when NVML or a GPU is not there. Never raises."""
    try:
        nv = _nvml()
        if nv is None:
            return ()
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            row: dict[str, Any] = {"index": i, "name": _text(nv.nvmlDeviceGetName(h)), "util_pct": None,
                                   "mem_used_mib": None, "mem_total_mib": None, "power_w": None}
            try:
                row["util_pct"] = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
            except Exception:
                pass
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                row["mem_used_mib"] = mem.used / 2**20
                row["mem_total_mib"] = mem.total / 2**20
            except Exception:
                pass
            try:
                row["power_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0  # milliwatts
            except Exception:
                pass
            out.append(row)
        return tuple(out)
    except Exception:
        return ()
