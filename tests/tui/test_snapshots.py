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


def test_dashboard_160x48(snap_compare):
    # the live verdict: under the segment table, and in words beside the curve with the knee drawn
    assert snap_compare(_app(sample_snapshot(verdict=True)), terminal_size=(160, 48), run_before=_ready)


def test_dashboard_80x24(snap_compare):
    assert snap_compare(_app(), terminal_size=(80, 24), run_before=_ready)


def test_dashboard_simulated_light_160x48(snap_compare):
    async def light(pilot):
        pilot.app.theme = "textual-light"
        await _ready(pilot)

    assert snap_compare(_app(sample_snapshot(simulated=True)), terminal_size=(160, 48), run_before=light)


def test_dashboard_no_metrics_client_limited_80x24(snap_compare):
    # the badge says which threshold was crossed (EngineSession's words)
    snap = replace(sample_snapshot(schema="none"), client_limited=True, loop_lag_ms=31.0,
                   client_limited_why="loop lag 31 ms ≥ 20 ms")
    assert snap_compare(_app(snap), terminal_size=(80, 24), run_before=_ready)


def test_dashboard_curve_80x24(snap_compare):
    # narrow and short: `l` past the three histograms folds the curve in, over the segment table's rows too
    async def curve(pilot):
        await _ready(pilot)
        for _ in range(3):
            await pilot.press("l")
        pilot.app.clear_notifications()  # the "showing: …" toasts would cover the chart being checked
        await _ready(pilot)

    assert snap_compare(_app(replace(sample_snapshot(verdict=True), auto="grow: C=64 measuring 4/10 s")),
                        terminal_size=(80, 24), run_before=curve)


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
