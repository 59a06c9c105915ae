"""The dashboard in open loop, across the seam: the real session on the real simulator through the real panels.
`o` switches loops, the step keys change the rate (a new segment), the lag drawn is the snapshot's, and `o` again
returns to the concurrency held before; `--request-rate` starts in open loop."""
from __future__ import annotations

import asyncio

from qbench_tui.engine.live_open import step_rate
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import SessionConfig
from qbench_tui.engine.snapshot import SetConcurrency, SetMode, SetRate
from qbench_tui.tui.widgets.fmt import dur
from qbench_tui.tui.widgets.panels import Field
from qbench_tui.tui.widgets.segments import SegmentTable, level_cell

from .conftest import build_app, settle, until
from .inprocess import InProcessEngine


def conc(app) -> str:
    return app.screen.query_one("#conc", Field).text


class Recording(InProcessEngine):
    """The real session, with every command the face sent kept in order."""

    def __init__(self, cfg: SessionConfig) -> None:
        super().__init__(cfg)
        self.sent: list = []

    def send(self, cmd) -> None:
        self.sent.append(cmd)
        super().send(cmd)


async def test_o_and_the_step_keys_drive_a_real_open_loop(sim_proc, tmp_path):
    sim = sim_proc("h200-fast", "--model", "m")
    spec = RequestSpec(url=sim.url, model="m", max_tokens=16)
    link = Recording(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), window_s=30, min_segment_s=0.3))
    app, _, _ = build_app(link, start_concurrency=2, out_dir=str(tmp_path))  # type: ignore[arg-type]
    s = link.session
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(app, pilot)
            assert await until(pilot, lambda: app.snapshot is not None and app.snapshot.req_s > 0
                               and s.completed_total >= 20)
            await pilot.press("o")
            assert isinstance(link.sent[-1], SetMode) and link.sent[-1].mode == "open"
            assert link.sent[-1].rate == 0.0  # no --request-rate: the engine starts from what it measures
            assert await until(pilot, lambda: app.snapshot.mode == "open" and app.snapshot.ack >= app.control.last_seq)
            rate = app.snapshot.request_rate
            assert rate and app.control.rate == rate and app.mode == "open"
            seg = app.snapshot.segment
            await pilot.press("up")
            want = step_rate(rate, 1)
            assert link.sent[-1] == SetRate(want)
            assert f"rate [b reverse] {want:g} r/s [/]" in conc(app)  # the intent, at once
            assert await until(pilot, lambda: app.snapshot.request_rate == want and app.snapshot.segment > seg
                               and app.snapshot.schedule_lag.count >= 20)
            await settle(app, pilot)
            snap = app.snapshot
            lag = snap.schedule_lag
            assert f"lag p50/p99 {dur(lag.p50)}/{dur(lag.p99)}" in conc(app)  # the snapshot's lag, drawn
            assert ("BEHIND SCHEDULE" in conc(app)) == snap.behind_schedule
            assert await until(pilot, lambda: any(r.request_rate == want for r in app.snapshot.segments))
            await settle(app, pilot)
            table = app.screen.query_one(SegmentTable)
            row = next(r for r in app.snapshot.segments if r.request_rate == want)
            assert table.get_cell(str(row.segment), "level") == level_cell(row) and "r/s" in level_cell(row)
            await pilot.press("o")
            assert link.sent[-1] == SetMode("closed", concurrency=2)
            assert await until(pilot, lambda: app.snapshot.mode == "closed" and app.snapshot.in_flight == 2)
            await settle(app, pilot)
            assert app.snapshot.target_concurrency == 2 and "target [b reverse] 2 [/]" in conc(app)
            await pilot.press("up")  # closed again: the arrows are the concurrency's
            assert link.sent[-1] == SetConcurrency(3)
    finally:
        link.close()
        await asyncio.wait_for(link.task, 30)


async def test_request_rate_starts_the_dashboard_in_open_loop():
    app, eng, _ = build_app(start_rate=5.0, burstiness=0.5, rate_cap=3)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert eng.sent[0] == SetMode("open", 5.0, 0.5, 3, 8)  # the target kept for `o`
        assert not any(isinstance(c, SetConcurrency) for c in eng.sent)
