"""SVG snapshots of the dashboard at 80x24 and 160x48, fed by FakeEngine's fixed Snapshot.

Regenerate with `.venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update` on Python 3.11 (the version the
committed SVGs were made with: rendering details may differ between versions), then check they pass without it.
"""
from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from qbench_tui.engine.snapshot import EngineStatus

from .conftest import FakeClock, build_app, settle
from .fakes import FakeEngine, FakeServer, sample_snapshot

pytestmark = pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="snapshots were generated on Python 3.11")


async def _ready(pilot) -> None:
    app = pilot.app
    await settle(app, pilot, ticks=2)  # first snapshot applied, charts drawn
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


def _app(snapshot=None, **kw):
    app, _, _ = build_app(FakeEngine(snapshot if snapshot is not None else sample_snapshot()),
                          start_concurrency=64, **kw)
    return app


# sweep.find_knee's words for sample_snapshot's levels 32 -> 64
KNEE = ("saturated past concurrency 32: going to 64 changed output tok/s by +14% for +100% concurrency while mean "
        "latency rose +8%. Peak 3288 tok/s at 64. Why: the KV cache is full (max usage 78%, 12 preemptions): requests "
        "wait for blocks or are recomputed; more GPU memory, a shorter max_model_len or a smaller max_num_seqs help")


def test_dashboard_160x48(snap_compare):
    # the live knee verdict under the segment table (the other dashboards have none: the line stays hidden)
    assert snap_compare(_app(replace(sample_snapshot(), knee=KNEE)), terminal_size=(160, 48), run_before=_ready)


def test_dashboard_80x24(snap_compare):
    assert snap_compare(_app(), terminal_size=(80, 24), run_before=_ready)


def test_dashboard_simulated_light_160x48(snap_compare):
    async def light(pilot):
        pilot.app.theme = "textual-light"
        await _ready(pilot)

    assert snap_compare(_app(sample_snapshot(simulated=True)), terminal_size=(160, 48), run_before=light)


def test_dashboard_no_metrics_client_limited_80x24(snap_compare):
    snap = replace(sample_snapshot(schema="none"), client_limited=True, loop_lag_ms=14.0)
    assert snap_compare(_app(snap), terminal_size=(80, 24), run_before=_ready)


def test_dashboard_paused_with_log_160x48(snap_compare):
    server = FakeServer(state="ready")
    server.advance()
    app = _app(replace(sample_snapshot(gpu=False), status=EngineStatus.PAUSED), server=server, start_paused=True)
    assert snap_compare(app, terminal_size=(160, 48), run_before=_ready)


def test_help_80x24(snap_compare):
    async def help_(pilot):
        await _ready(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(_app(), terminal_size=(80, 24), run_before=help_)


def test_concurrency_input_error_80x24(snap_compare):
    async def typed(pilot):
        await _ready(pilot)
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("backspace", *"9999", "enter")  # out of range: stays open with a message
        await pilot.pause()

    assert snap_compare(_app(), terminal_size=(80, 24), run_before=typed)


def test_startup_failed_120x40(snap_compare):
    server = FakeServer()
    server.add_phase("loading weights", 1.0, log="INFO Loading weights")
    server.add_phase("weights loaded", 9.5, "5.2 GiB", log="INFO Loading weights took 8.50 s")
    server.fail(returncode=1, error="CUDA out of memory")
    app, _, _ = build_app(server=server)
    app.clock = FakeClock(50.0)  # elapsed times stay put
    assert snap_compare(app, terminal_size=(120, 40), run_before=_ready)


def test_startup_in_progress_120x40(snap_compare):
    server = FakeServer()
    server.add_phase("loading weights", 1.0, log="INFO Loading weights")
    app, _, _ = build_app(server=server)
    app.clock = FakeClock(50.0)
    assert snap_compare(app, terminal_size=(120, 40), run_before=_ready)
