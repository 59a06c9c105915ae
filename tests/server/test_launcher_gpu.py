"""gpu.sample_gpus: () without NVML, one GpuSample per GPU with it (a stand-in pynvml module), never raises.
What the dashboard makes of these samples: tests/tui/test_seams.py."""
from __future__ import annotations

import sys
import types

import pytest

from qbench_tui.server import gpu


@pytest.fixture(autouse=True)
def fresh_nvml_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(gpu._state, "init", None)


def test_no_pynvml_means_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert gpu.sample_gpus() == ()


def test_samples_with_fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetName = lambda h: b"NVIDIA H200" if h == 0 else "NVIDIA H200"
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=87, memory=40)
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2 * 2**30, total=141 * 2**30, free=0)

    def power(h: int) -> int:
        if h == 1:
            raise RuntimeError("not supported")
        return 412_500

    fake.nvmlDeviceGetPowerUsage = power
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    rows = gpu.sample_gpus()
    assert rows == (
        gpu.GpuSample(index=0, name="NVIDIA H200", util_pct=87.0, mem_used_mib=2048.0, mem_total_mib=144384.0,
                      power_w=412.5),
        gpu.GpuSample(index=1, name="NVIDIA H200", util_pct=87.0, mem_used_mib=2048.0, mem_total_mib=144384.0,
                      power_w=None),
    )


def test_a_query_a_gpu_lacks_leaves_only_that_field_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetName = lambda h: "Tesla T4"

    def unsupported(h: int) -> None:
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    fake.nvmlDeviceGetUtilizationRates = unsupported
    fake.nvmlDeviceGetMemoryInfo = unsupported
    fake.nvmlDeviceGetPowerUsage = lambda h: 70_000
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu.sample_gpus() == (gpu.GpuSample(index=0, name="Tesla T4", power_w=70.0),)


def test_init_failure_and_count_failure_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")

    def boom(*a: object) -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = boom
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu.sample_gpus() == ()
    monkeypatch.setitem(gpu._state, "init", types.SimpleNamespace(nvmlDeviceGetCount=boom))
    assert gpu.sample_gpus() == ()
