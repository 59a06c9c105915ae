"""Contract tests across the face's seams: the real producer's output through the real consumer.

Two defects shipped because each side was tested against its own fixture: the GPU panel read names the sampler never
wrote, and the knee the engine computed every second was never drawn. Here the sampler (with a stand-in NVML) and a
real EngineSession feed the real dashboard.
"""
from __future__ import annotations

import asyncio
import sys
import types
from dataclasses import replace

import pytest

from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import SessionConfig
from qbench_tui.engine.snapshot import RunLevel
from qbench_tui.server import gpu
from qbench_tui.tui.widgets.panels import GpuPanel
from tests.fakes.scripted_sse import Scenario, ScriptedSSEServer

from .conftest import build_app, settle, until
from .fakes import FakeEngine, sample_snapshot
from .inprocess import InProcessEngine


@pytest.fixture
def stand_in_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pynvml` as nvidia-ml-py shapes it: two H200s, the second without power readings."""
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetName = lambda h: b"NVIDIA H200"
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=87 if h == 0 else 12, memory=40)
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2 * 2**30, total=141 * 2**30, free=0)

    def power(h: int) -> int:
        if h == 1:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 412_000  # milliwatts

    fake.nvmlDeviceGetPowerUsage = power
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setitem(gpu._state, "init", None)


def gpu_text(app) -> str:
    return str(app.screen.query_one("#gpu-text").render())  # what the terminal shows, markup resolved


async def test_sampled_gpus_show_utilisation_memory_and_power(stand_in_nvml):
    samples = gpu.sample_gpus()
    base = sample_snapshot()
    app, _, _ = build_app(FakeEngine(replace(base, server=replace(base.server, gpu=samples))))
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        panel = app.screen.query_one(GpuPanel)
        assert panel.display and "NVIDIA H200" in str(panel.border_title)
        lines = gpu_text(app).splitlines()
        assert lines == ["0  util  87%  mem 2.0/141 GiB  412 W", "1  util  12%  mem 2.0/141 GiB"]


async def test_the_knee_verdict_is_on_the_dashboard():
    knee = "no saturation up to concurrency 64: throughput still grows with load (peak 3288 tok/s at 64)"
    eng = FakeEngine(sample_snapshot(verdict=False))
    app, _, _ = build_app(eng)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        line = app.screen.query_one("#knee")
        assert not line.display  # no verdict yet: nothing to say, and no room taken
        eng.push(replace(sample_snapshot(verdict=False), knee=knee))
        await settle(app, pilot)
        assert line.display and str(line.render()) == f"knee {knee}"


async def test_a_real_session_feeds_knee_and_gpus_to_the_dashboard(stand_in_nvml, tmp_path):
    with ScriptedSSEServer(default=Scenario(tokens=5, delay=0.005)) as server:
        spec = RequestSpec(url=server.url, model="m", max_tokens=5)
        link = InProcessEngine(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), window_s=30))
        app, _, _ = build_app(link, start_concurrency=0, out_dir=str(tmp_path))  # type: ignore[arg-type]
        try:
            async with app.run_test(size=(160, 48)) as pilot:
                await settle(app, pilot)
                for c, n in ((2, 8), (4, 16)):  # two levels of one config: enough for a verdict
                    link.send(RunLevel(c, requests=n))
                    assert await until(pilot, lambda: link.session._level_task.done())
                assert await until(pilot, lambda: app.snapshot is not None and bool(app.snapshot.knee)
                                   and bool(app.snapshot.server.gpu)), app.snapshot
                await settle(app, pilot)
                knee = link.session.knee
                assert knee and str(app.screen.query_one("#knee").render()) == f"knee {knee}"
                assert gpu_text(app).splitlines()[0] == "0  util  87%  mem 2.0/141 GiB  412 W"
                await pilot.press("q")
        finally:
            link.close()
            await asyncio.wait_for(link.task, 30)
    # quitting saved the real results, where the app was told to (never into the working tree)
    assert app.saved_paths and all(p.startswith(str(tmp_path)) for p in app.saved_paths)
