"""The dashboard's saturation view: the curve against concurrency with the knee, the verdict and the advice in words;
running/waiting and server tok/s over time; the KV cache on a fixed 0-100% scale; why the client is the limit; `a`.

The curve is fed by a real EngineSession measuring a real simulator (the seam the face depends on); the rest by
FakeEngine's Snapshots, which are the real types.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import httpx
import pytest

from qbench_tui.engine.knee import Knee
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import EngineSession, SessionConfig
from qbench_tui.engine.snapshot import (
    AutoLadder,
    CurvePoint,
    Pause,
    RunLevel,
    SetConcurrency,
    StopAuto,
)
from qbench_tui.server.sim import start_in_thread
from qbench_tui.server.sim.profile import load_profile
from qbench_tui.tui.widgets.charts import TimeChart
from qbench_tui.tui.widgets.curve import (
    MARK_HAND,
    MARK_LADDER,
    MARK_UNSTEADY,
    CurveChart,
    CurvePanel,
    thin_ticks,
    verdict_lines,
)
from qbench_tui.tui.widgets.spark import ScaleSpark, column_levels

from .conftest import build_app, notes, settle, until
from .fakes import FakeEngine, sample_curve, sample_snapshot, sample_verdict
from .inprocess import InProcessEngine

MARKS = (MARK_HAND, MARK_LADDER, MARK_UNSTEADY)


def plain(widget) -> list[str]:
    """What the terminal shows of a widget, markup and colours resolved."""
    return str(widget.render()).splitlines()


def chart_text(chart: CurveChart) -> list[str]:
    return re.sub(r"\x1b\[[0-9;]*m", "", chart.plt.build()).splitlines()


def marks(lines: list[str]) -> int:
    return sum(line.count(m) for line in lines for m in MARKS)


def x_labels(lines: list[str]) -> list[str]:
    return lines[-1].split()


def knee_label(lines: list[str]) -> str | None:
    """The x label under the vertical knee line (plotext joins it to the bottom frame with ┴)."""
    frame = next(i for i, line in enumerate(lines) if "└" in line)
    col = lines[frame].find("┴")
    if col < 0:
        return None
    below = lines[frame + 1]
    m = next((m for m in re.finditer(r"\S+", below) if m.start() <= col < m.end()), None)
    return m.group(0) if m else None


# ---------------------------------------------------------------- the seam: a real session's levels on the curve


async def test_a_real_sessions_levels_and_knee_are_drawn_on_the_curve(tmp_path):
    # two batch slots: past C=2 requests only queue, so throughput stays flat while latency grows. The levels are
    # 1, 3 and 8, not 1, 2, 8: at exactly C=2 each slot idles for the client's turnaround between two requests
    # (this process also draws the app and runs the simulator's thread: tens of ms on a busy CI host), which put
    # C=2 just under 90% of C=8 now and then and moved the knee to the top level; from C=3 on a queued request
    # fills the slot at once, so C=3 and C=8 read the same throughput and the knee is at 3 however busy the host
    prof = load_profile("seqs-limited").replace(max_num_seqs=2, answer_dist="fixed", answer_mean=32, answer_min=32)
    sim = start_in_thread(prof, speed=2.0)
    try:
        model = httpx.get(f"{sim.url}/v1/models", timeout=10).json()["data"][0]["id"]
        spec = RequestSpec(url=sim.url, model=model, max_tokens=32, ignore_eos=True)
        link = InProcessEngine(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), window_s=30))
        app, _, _ = build_app(link, start_concurrency=0, out_dir=str(tmp_path))  # type: ignore[arg-type]
        try:
            async with app.run_test(size=(160, 48)) as pilot:
                await settle(app, pilot)
                for c, n in ((1, 4), (3, 12), (8, 24)):
                    link.send(RunLevel(c, requests=n))
                    assert await until(pilot, lambda: link.session._level_task.done(), 60)
                assert await until(pilot, lambda: app.snapshot is not None and len(app.snapshot.curve) == 3
                                   and app.snapshot.verdict is not None and app.snapshot.verdict.saturated,
                                   30), (app.snapshot.curve, app.snapshot.verdict)
                snap = app.snapshot
                panel = app.screen.query_one("#curve", CurvePanel)
                tok = panel.query_one(".curve-tok", CurveChart)
                assert await until(pilot, lambda: tok._drawn is not None and tok._drawn[0][0] == snap.curve, 10)
                lines = chart_text(tok)
                assert marks(lines) == 3  # one point per measured level
                assert x_labels(lines) == ["1", "3", "8"]
                assert knee_label(lines) == str(snap.verdict.knee_concurrency)
                lat = chart_text(panel.query_one(".curve-lat", CurveChart))
                assert marks(lat) >= 3 and x_labels(lat) == ["1", "3", "8"]
                words = "\n".join(plain(panel.query_one(".curve-verdict")))
                assert f"SATURATED past C={snap.verdict.knee_concurrency}" in words
                assert snap.verdict.cause and snap.verdict.cause[:30] in words
                advice = "\n".join(plain(panel.query_one(".curve-advice")))
                assert f"interactive C={snap.verdict.interactive_concurrency}" in advice
                assert f"batch C={snap.verdict.batch_concurrency}" in advice
                await pilot.press("q")
        finally:
            link.close()
            await asyncio.wait_for(link.task, 30)
    finally:
        sim.stop()


# ---------------------------------------------------------------- the curve widget's rules


def test_thin_ticks_keeps_ends_and_drops_labels_that_would_overlap():
    assert thin_ticks([1, 2, 4, 8, 16, 32], 60) == [1, 2, 4, 8, 16, 32]
    assert thin_ticks([32, 40, 48, 64], 6) == [32, 64]  # refinement points crowd: the last level always shows
    assert thin_ticks([], 40) == []
    assert thin_ticks([8], 40) == [8]


def test_verdict_lines_say_what_is_known():
    assert "no level measured yet" in verdict_lines((), None)[0]
    assert "settling" in verdict_lines((), None, auto="auto: level 4 settling 3 s")[0]
    one = verdict_lines(sample_curve()[:1], None)
    assert "one level measured (C=8" in one[0] and one[1:] == ("", "", "")
    assert "3 levels measured" in verdict_lines(sample_curve(), None)[0]
    head, cause, inter, batch = verdict_lines(sample_curve(), sample_verdict())
    assert "SATURATED" in head and "C=32" in head and "3,288" in head
    assert "KV cache is full" in cause
    assert "interactive [b]C=32[/] 2,891 tok/s p99 2.4s" == inter
    assert "batch [b]C=64[/] 3,288 tok/s p99 3.9s" == batch
    none_met = Knee(saturated=False, peak_concurrency=64, peak_output_throughput=3288.1, slo="ttft_p99 <= 50 ms",
                    batch_concurrency=64)
    head, cause, inter, _ = verdict_lines(sample_curve(), none_met)
    assert "not saturated" in head and "no level met the SLO" in inter and "ttft_p99" in inter


async def test_curve_marks_ladder_hand_and_unsteady_points_and_redraws_at_most_once_a_second(clock):
    app, eng, _ = build_app(FakeEngine(sample_snapshot(verdict=True)), start_concurrency=64)
    app.clock = clock
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot, ticks=3)
        tok = app.screen.query_one("#curve .curve-tok", CurveChart)
        lines = chart_text(tok)
        text = "\n".join(lines)
        # sample_curve: 8 by hand, 32 by the ladder, 64 still settling
        assert text.count(MARK_HAND) == 1 and text.count(MARK_LADDER) == 1 and text.count(MARK_UNSTEADY) == 1
        assert knee_label(lines) == "32"
        first = tok.draws
        await settle(app, pilot, ticks=3)
        assert tok.draws == first  # nothing changed: no replot
        more = sample_curve() + (CurvePoint(128, 3300.0, 45.0, 2.6, 6.1, 0.9, auto=True),)
        eng.push(replace(sample_snapshot(verdict=True), curve=more))
        await settle(app, pilot)
        assert tok.draws == first  # changed, but within a second of the last replot
        clock.t += 1.5
        eng.push(replace(sample_snapshot(verdict=True), curve=more, in_flight=60))
        await settle(app, pilot)
        assert tok.draws == first + 1 and marks(chart_text(tok)) == 4
        assert x_labels(chart_text(tok)) == ["8", "32", "64", "128"]


# ---------------------------------------------------------------- folding at 80x24


async def test_narrow_screens_fold_the_curve_into_the_l_cycle():
    app, _, _ = build_app(FakeEngine(sample_snapshot(verdict=True)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        scr = app.screen
        assert not scr.query_one("#curve").display  # no room beside the throughput chart
        assert not scr.query_one("#curve-fold").display
        for _ in range(3):  # TTFT -> ITL -> E2E -> the curve
            await pilot.press("l")
        await pilot.pause()
        fold = scr.query_one("#curve-fold", CurvePanel)
        assert fold.display and not scr.query_one("#latency").display
        assert not scr.query_one("#row-bottom").display  # short: the table's rows go to the curve too
        tok = fold.query_one(".curve-tok", CurveChart)
        assert await until(pilot, lambda: tok.draws > 0)
        assert tok.size.height >= 6 and tok.size.width >= 30  # readable, not a sliver
        assert marks(chart_text(tok)) == 3
        assert "SATURATED" in "\n".join(plain(fold.query_one(".curve-verdict")))
        advice = plain(fold.query_one(".curve-advice"))
        assert len(advice) == 1 and "interactive" in advice[0] and "batch" in advice[0]  # one row, both on it
        await pilot.press("l")
        await pilot.pause()
        assert not fold.display and scr.query_one("#latency").display and scr.query_one("#row-bottom").display


async def test_wide_screens_show_the_curve_beside_the_histograms():
    app, _, _ = build_app(FakeEngine(sample_snapshot(verdict=True)))
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        curve = app.screen.query_one("#curve", CurvePanel)
        assert curve.display and not app.screen.query_one("#curve-fold").display
        assert app.screen.query_one("#latency").display
        assert curve.query_one(".curve-tok", CurveChart).draws >= 1
        assert len(plain(curve.query_one(".curve-advice"))) == 2


# ---------------------------------------------------------------- time series and the KV scale


def test_the_kv_scale_is_fixed_at_0_to_100_percent():
    assert column_levels(0.5, 1.0, 2) == [0, 8]  # half: the bottom row full, the top empty
    assert column_levels(1.0, 1.0, 2) == [8, 8]
    assert column_levels(0.0, 1.0, 2) == [0, 0]
    assert column_levels(0.25, 1.0, 1) == [2]


async def test_kv_chart_is_labelled_0_100_and_a_flat_low_cache_draws_low():
    base = sample_snapshot()
    flat = tuple(0.20 + 0.01 * (i % 2) for i in range(60))  # 20-21%: Textual's Sparkline drew this full height
    app, _, _ = build_app(FakeEngine(replace(base, server=replace(base.server, kv_history=flat))))
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        spark = app.screen.query_one("#srv-kv-spark", ScaleSpark)
        assert spark.size.height == 2
        top, bottom = (spark.render_line(y).text for y in range(2))
        assert top.startswith("100%┤") and bottom.lstrip().startswith("0%┤")
        assert set(top.split("┤", 1)[1]) <= {" "}  # nothing reaches the upper half
        cells = set(bottom.split("┤", 1)[1].strip())
        assert cells and cells <= {"▃"}  # 20-21% of two rows: 3 eighths of the lower one


async def test_server_tok_s_and_running_waiting_are_drawn_over_time():
    app, _, _ = build_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        tp = app.screen.query_one("#tp-chart", TimeChart)
        assert len(tp.drawn_lengths()) == 2  # client and server tok/s
        queue = app.screen.query_one("#srv-queue-chart", TimeChart)
        assert queue.display and len(queue.drawn_lengths()) == 2  # running and waiting
        assert all(0 < n <= queue.size.width for n in queue.drawn_lengths())
    app, _, _ = build_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert not app.screen.query_one("#srv-queue-chart").display  # short: folded, the numbers stay


# ---------------------------------------------------------------- why the client is the limit


@pytest.mark.parametrize(("cpu", "lag", "why"), [
    (7.0, 31.0, "loop lag 31 ms ≥ 20 ms"),
    (97.0, 1.0, "client CPU 97% of a core ≥ 90%"),
    (97.0, 31.0, "client CPU 97% of a core ≥ 90% and loop lag 31 ms ≥ 20 ms"),
    (7.0, 1.0, ""),
])
async def test_the_client_limited_badge_says_why(tmp_path, cpu, lag, why):
    session = EngineSession(SessionConfig(spec=RequestSpec(url="http://127.0.0.1:9", model="m"), prompt="hi",
                                          out_dir=str(tmp_path)), emit=lambda s: None)
    session.health.cpu_pct, session.health.lag_max = cpu, lag  # what the client health measured last
    snap = session.snapshot()
    assert snap.client_limited == bool(why) and snap.client_limited_why == why
    app, _, _ = build_app(FakeEngine(replace(sample_snapshot(), client_limited=snap.client_limited,
                                             client_limited_why=snap.client_limited_why,
                                             client_cpu_pct=cpu, loop_lag_ms=lag)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        health = "".join(plain(app.screen.query_one("#health")))
        if why:
            assert health.startswith(" CLIENT-LIMITED  " + why.split(" and ")[0][:20])
        else:
            assert "CLIENT-LIMITED" not in health


# ---------------------------------------------------------------- `a`


async def test_a_starts_the_ladder_from_the_target_and_a_again_stops_it():
    eng = FakeEngine()
    app, _, _ = build_app(eng, start_concurrency=12, auto_ladder=AutoLadder(max_concurrency=256, budget_s=300))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("a")
        await settle(app, pilot)
        assert eng.commands(AutoLadder) == [AutoLadder(start=12, max_concurrency=256, budget_s=300)]
        auto = "".join(plain(app.screen.query_one("#auto")))
        assert "AUTO" in auto and "C=12" in auto  # the engine's progress, on the control bar
        assert app.screen.has_class("-curve")  # narrow: starting a ladder brings its curve into view
        await pilot.press("a")
        await settle(app, pilot)
        assert isinstance(eng.sent[-1], StopAuto)
        assert not app.screen.query_one("#auto").display


async def test_a_at_zero_starts_at_one_and_the_help_and_palette_offer_it():
    eng = FakeEngine()
    app, _, _ = build_app(eng, start_concurrency=0)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        cmds = {c.title: c for c in app.get_system_commands(app.screen)}
        cmds["Auto ladder: find the knee"].callback()
        await settle(app, pilot)
        assert eng.commands(AutoLadder)[-1].start == 1
        cmds = {c.title: c for c in app.get_system_commands(app.screen)}
        assert "Stop the auto ladder" in cmds and "Auto ladder: find the knee" not in cmds
        cmds["Stop the auto ladder"].callback()
        await settle(app, pilot)
        assert isinstance(eng.sent[-1], StopAuto)
        await pilot.press("question_mark")
        await pilot.pause()
        assert "auto ladder" in str(app.screen.query_one("#help-body").render())


async def test_a_hand_on_the_level_or_pause_stops_the_ladder_first():
    eng = FakeEngine()
    app, _, _ = build_app(eng, start_concurrency=8)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        await pilot.press("a")
        await settle(app, pilot)
        await pilot.press("up")
        await settle(app, pilot)
        assert eng.sent[-2:] == [StopAuto(), SetConcurrency(9)]
        assert any("auto ladder stopped: a level set by hand" in n for n in notes(app))
        await pilot.press("a")
        await settle(app, pilot)
        await pilot.press("space")
        await settle(app, pilot)
        assert eng.sent[-2:] == [StopAuto(), Pause()]
        await pilot.press("up")  # no ladder now: a plain change
        await settle(app, pilot)
        assert isinstance(eng.sent[-1], SetConcurrency) and not isinstance(eng.sent[-2], StopAuto)


async def test_the_ladder_shows_as_asked_until_the_engine_says_otherwise():
    eng = FakeEngine()
    app, _, _ = build_app(eng, start_concurrency=8)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        eng.hold()
        await pilot.press("a")
        await settle(app, pilot)
        assert "starting…" in "".join(plain(app.screen.query_one("#auto")))
        eng.release()
        await settle(app, pilot)
        assert "C=8" in "".join(plain(app.screen.query_one("#auto")))
        assert "ladder: grow: C=8" in str(app.screen.query_one("#curve").border_title)
