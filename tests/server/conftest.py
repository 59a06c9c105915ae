"""`sim_server`: start simulated vLLM servers on 127.0.0.1 for a test; all are stopped at teardown.

    def test_x(sim_server):
        sim = sim_server("h200-fast", speed=5, error_rate=0.5)     # subprocess (default)
        httpx.get(sim.url + "/health")
        sim = sim_server(profile_obj, in_thread=True)               # same process, background thread
        sim.truth()                                                  # thread mode: in-memory ground truth

Arguments: profile (name, TOML path or Profile), speed, seed, metrics_schema, model, record_truth (file path),
overrides ({field: value} -> --set), in_thread, wait (seconds to wait for /health 200), and Faults fields as keyword
arguments (error_rate, cut_rate, stream_error_rate, stall_rate, stall_seconds, crash_after, refuse_seconds,
unhealthy_seconds, metrics). With refuse_seconds > 0 the subprocess gets a pre-picked free port and the factory
returns at once (so a test can watch connections being refused); otherwise it returns once /health says 200.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from qbench_tui.server.net import free_port
from tests.sim_process import SimProcess, wait_until  # noqa: F401 - re-exported


@pytest.fixture
def sim_server():
    started: list[Any] = []
    tmpdir = tempfile.TemporaryDirectory(prefix="qbench-sim-")

    def factory(profile: Any = "h200-fast", *, in_thread: bool = False, speed: float = 1.0, seed: int = 0,
                metrics_schema: str = "v1", model: str | None = None, record_truth: str | None = None,
                overrides: dict[str, Any] | None = None, wait: float = 30.0, **faults: Any):
        from qbench_tui.server.sim.faults import Faults
        from qbench_tui.server.sim.profile import Profile, load_profile

        Faults(**faults)  # validate early, with a clear error
        if in_thread:
            from qbench_tui.server.sim import start_in_thread

            prof = load_profile(profile)
            if overrides:
                prof = prof.replace(**overrides)
            handle = start_in_thread(prof, "127.0.0.1", 0, model_name=model, metrics_schema=metrics_schema,
                                     speed=speed, seed=seed, record_truth=record_truth, **faults)
            started.append(handle)
            return handle
        if isinstance(profile, Profile):
            path = Path(tmpdir.name) / f"{profile.name}-{len(started)}.toml"
            path.write_text(profile.to_toml())
            profile = str(path)
        args = ["--speed", str(speed), "--seed", str(seed), "--metrics-schema", metrics_schema,
                *Faults(**faults).cli_args()]
        if model:
            args += ["--model", model]
        if record_truth:
            args += ["--record-truth", str(record_truth)]
        for k, v in (overrides or {}).items():
            args += ["--set", f"{k}={v}"]
        # A slow start refuses connections before it prints its banner, so its port is picked here (the test
        # watches it from the first moment); otherwise the simulator binds port 0 itself and no race is possible.
        slow = float(faults.get("refuse_seconds", 0) or 0) > 0
        proc = SimProcess(str(profile), port=free_port() if slow else 0, extra=args, startup_timeout=wait)
        started.append(proc)
        proc.start()
        if not slow:
            proc.wait_ready()
        return proc

    try:
        yield factory
    finally:
        for s in reversed(started):
            try:
                s.stop()
            except Exception:
                pass
        tmpdir.cleanup()
