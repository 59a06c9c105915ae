"""Pilot tests: every key and palette action reaches the engine as the right Command."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

from textual.command import CommandList, CommandPalette
from textual.widgets import Input

from qbench_tui.engine.snapshot import (
    EngineStatus,
    Pause,
    ResetWindow,
    Resume,
    Save,
    ServerConfigChanged,
    ServerView,
    SetConcurrency,
    Stop,
)
from qbench_tui.tui.restart import RestartPhase
from qbench_tui.tui.screens.concurrency_input import ConcurrencyInput, parse_concurrency
from qbench_tui.tui.screens.dashboard import DashboardScreen
from qbench_tui.tui.screens.help import HelpScreen
from qbench_tui.tui.screens.restart_server import RestartServer
from qbench_tui.tui.screens.startup import StartupScreen
from qbench_tui.tui.widgets.charts import TimeChart
from qbench_tui.tui.widgets.fmt import dur
from qbench_tui.tui.widgets.panels import Field, GpuPanel, LatencyBlock, StatusLine, ThroughputPanel
from qbench_tui.tui.widgets.segments import SegmentTable

from .conftest import build_app, notes, settle, until
from .fakes import FakeEngine, FakeServer, sample_snapshot


def field(app, selector: str) -> str:
    return app.screen.query_one(selector, Field).text


def conc_sent(eng: FakeEngine) -> list[int]:
    return [c.n for c in eng.sent if isinstance(c, SetConcurrency)]


async def test_start_sends_concurrency_then_pause():
    app, eng, calls = build_app(start_concurrency=16, start_paused=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert calls == [1]
        assert eng.sent[:2] == [SetConcurrency(16), Pause()]
        assert "PAUSED" in field(app, "#state")


async def test_start_running_sends_only_concurrency():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert eng.sent == [SetConcurrency(8)]
        assert "RUNNING" in field(app, "#state")
        assert "target [b reverse] 8 [/]" in field(app, "#conc")


async def test_step_keys_change_concurrency():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("up", "plus", "down", "pageup", "shift+up", "pagedown", "shift+down", "minus")
        await pilot.pause()
        assert conc_sent(eng) == [8, 9, 10, 9, 19, 29, 19, 9, 8]
        assert app.target == 8
        assert "target [b reverse] 8 [/]" in field(app, "#conc")


async def test_concurrency_clamps_at_zero_without_sending():
    app, eng, _ = build_app(start_concurrency=5)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("pagedown")  # 5 -> 0
        await pilot.press("down")  # already 0: nothing to send
        await pilot.pause()
        assert conc_sent(eng) == [5, 0]


async def test_typed_concurrency_applies():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConcurrencyInput)
        await pilot.press("backspace", *"128", "enter")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)
        assert conc_sent(eng) == [8, 128]


async def test_typed_concurrency_rejects_bad_input():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("c")
        await pilot.pause()
        inp = app.screen.query_one(Input)
        for bad, why in (("abc", "not a whole number"), ("5000", "between 0 and 4096"), ("-3", "between 0 and 4096")):
            inp.value = bad
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, ConcurrencyInput), bad
            assert why in str(app.screen.query_one("#conc-error").render()), bad
        # arrows inside the modal must not move the concurrency
        await pilot.press("up", "down")
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)
        assert conc_sent(eng) == [8]


def test_parse_concurrency_table():
    cases = {"0": 0, " 64 ": 64, "4096": 4096, "4097": None, "": None, "1.5": None, "x": None, "-1": None}
    for text, want in cases.items():
        got, why = parse_concurrency(text)
        assert got == want, text
        assert (why == "") == (want is not None), text


async def test_space_pauses_and_resumes():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("space")
        await pilot.pause()
        assert eng.sent[-1] == Pause()
        assert "PAUSED" in field(app, "#state")
        await pilot.press("space")
        await pilot.pause()
        assert eng.sent[-1] == Resume()
        assert "RUNNING" in field(app, "#state")


async def test_reset_window():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("r")
        await pilot.pause()
        assert eng.sent[-1] == ResetWindow()


async def test_save_sends_save_and_shows_paths():
    app, eng, _ = build_app(out_dir="out/x")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("s")
        await settle(app, pilot)
        assert eng.sent[-1] == Save("out/x")
        assert app.saved_paths == ("out/x/qbench_fake.txt", "out/x/qbench_fake.json")
        assert any("out/x/qbench_fake.txt" in n and "out/x/qbench_fake.json" in n for n in notes(app))


async def test_help_opens_and_closes():
    app, _, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        body = str(app.screen.query_one("#help-body").render())
        for word in ("concurrency +1", "pause", "reset", "save", "quit", "palette"):
            assert word in body
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)


async def test_quit_saves_stops_closes_and_stops_server():
    server = FakeServer(state="ready")
    app, eng, _ = build_app(server=server, out_dir="res")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("q")
        await pilot.pause()
    assert eng.sent[-2:] == [Save("res"), Stop()]
    assert eng.closed
    assert server.stopped >= 1
    assert app.saved_paths == ("res/qbench_fake.txt", "res/qbench_fake.json")


async def test_ctrl_c_quits_cleanly():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("ctrl+c")
        await pilot.pause()
    assert eng.sent[-2:] == [Save("results"), Stop()]  # ctrl+c saves, as q does
    assert eng.closed and app.return_code == 0


async def test_unmount_closes_engine_even_without_quit_key():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.exit()
        await pilot.pause()
    assert eng.closed


async def test_palette_has_every_action_and_they_work():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        cmds = {c.title: c for c in app.get_system_commands(app.screen)}
        for title in ("Concurrency +1", "Concurrency -1", "Concurrency +10", "Concurrency -10", "Set concurrency…",
                      "Pause / resume", "Reset window", "Save results", "Cycle latency histogram / curve",
                      "Auto ladder: find the knee", "Help: qbench keys", "Quit"):
            assert title in cmds, title
        cmds["Concurrency +10"].callback()
        cmds["Concurrency -1"].callback()
        cmds["Pause / resume"].callback()
        cmds["Reset window"].callback()
        cmds["Save results"].callback()
        await pilot.pause()
        assert eng.sent[1:] == [SetConcurrency(18), SetConcurrency(17), Pause(), ResetWindow(), Save("results")]
        cmds["Help: qbench keys"].callback()
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)


async def test_palette_ui_runs_a_command():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("ctrl+p")
        for _ in range(200):
            if isinstance(app.screen, CommandPalette) and app.screen.query(CommandList):
                break
            await pilot.pause(0.05)
        await pilot.press(*"Concurrency +10")
        commands = app.screen.query_one(CommandList)
        for _ in range(200):  # the palette searches asynchronously
            if commands.option_count and "Concurrency +10" in str(commands.get_option_at_index(0).prompt):
                break
            await pilot.pause(0.05)
        await pilot.press("enter")
        for _ in range(200):
            if len(conc_sent(eng)) == 2:
                break
            await pilot.pause(0.05)
        assert conc_sent(eng) == [8, 18]


async def test_engine_state_wins_once_our_commands_are_applied():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        # something other than this face moved the engine (a RunLevel, a sweep): its word is what shows
        eng.push(replace(sample_snapshot(), target_concurrency=40, status=EngineStatus.PAUSED))
        await settle(app, pilot)
        assert app.target == 40 and app.paused
        assert "target [b reverse] 40 [/]" in field(app, "#conc") and "PAUSED" in field(app, "#state")
        await pilot.press("up")
        await pilot.pause()
        assert conc_sent(eng)[-1] == 41


async def test_intent_shows_until_the_engine_acknowledges_it(clock):
    """A busy engine answers late: what was asked for stays on screen however long that takes (the old code
    reverted to the engine's stale target a second after the last key), and the engine's word returns with the ack."""
    app, eng, _ = build_app()
    app.clock = clock
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        eng.hold()
        await pilot.press("up", "up", "space")
        await pilot.pause()
        clock.t += 60
        eng.push(replace(sample_snapshot(), target_concurrency=8))  # snapshots keep coming, from before the keys
        await settle(app, pilot, ticks=4)
        assert app.snapshot is not None and app.snapshot.target_concurrency == 8
        assert "target [b reverse] 10 [/]" in field(app, "#conc") and "PAUSED" in field(app, "#state")
        eng.release()
        await settle(app, pilot)
        assert app.snapshot.ack == app.control.last_seq and not app.control.pending
        assert "target [b reverse] 10 [/]" in field(app, "#conc") and "PAUSED" in field(app, "#state")
        # the engine refusing part of it (here: moving the target itself) now shows as the engine says
        eng.push(replace(sample_snapshot(), target_concurrency=12, status=EngineStatus.PAUSED))
        await settle(app, pilot)
        assert "target [b reverse] 12 [/]" in field(app, "#conc")


# ------------------------------------------------------------------ panels


async def test_no_server_metrics_for_schema_none():
    eng = FakeEngine(sample_snapshot(schema="none"))
    app, _, _ = build_app(eng, start_concurrency=64)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        assert "no server metrics" in field(app, "#srv-kv")
        assert not app.screen.query_one(GpuPanel).display


async def test_server_error_and_gpu_panel_shown():
    snap = sample_snapshot()
    snap = replace(snap, server=replace(snap.server, error="GET /metrics: connection refused"))
    app, _, _ = build_app(FakeEngine(snap), start_concurrency=64)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        assert "connection refused" in field(app, "#srv-error")
        assert app.screen.query_one(GpuPanel).display
        assert "H200" in str(app.screen.query_one(GpuPanel).border_title)
        assert "util [b] 97%[/]" in field(app, "#gpu-text")
        assert "timeout: 3" in field(app, "#fail-text")
        assert "queue full" in field(app, "#fail-text")


async def test_unreachable_server_says_so():
    snap = replace(sample_snapshot(), server=ServerView())
    app, _, _ = build_app(FakeEngine(snap))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert "no server metrics" in field(app, "#srv-kv")
        assert "unreachable" in field(app, "#srv-error")


async def test_simulated_is_visible():
    app, _, _ = build_app(simulated=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert "SIMULATED" in app.sub_title
        assert "SIMULATED" in field(app, "#sim-badge")
    app, _, _ = build_app(FakeEngine(sample_snapshot(simulated=True)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert "SIMULATED" in app.sub_title


async def test_client_limited_warning():
    app, _, _ = build_app(FakeEngine(replace(sample_snapshot(), client_limited=True, loop_lag_ms=12.0)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert "CLIENT-LIMITED" in field(app, "#health")
        assert app.screen.query_one(StatusLine).has_class("-limited")
        assert "12.0 ms" in field(app, "#health")


async def test_engine_message_is_notified():
    app, eng, _ = build_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        eng.push(replace(sample_snapshot(), message="server died: load paused"))
        await settle(app, pilot)
        assert "server died" in field(app, "#notice")
        assert any("server died" in n for n in notes(app))


async def test_segment_rows_update_in_place():
    app, eng, _ = build_app(start_concurrency=64)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        table = app.screen.query_one(SegmentTable)
        assert table.row_count == 3
        keys_before = list(table.rows)
        base = sample_snapshot()
        last = replace(base.segments[-1], seconds=40.0, tok_s=3400.0)
        eng.push(replace(base, segments=base.segments[:-1] + (last,)))
        await settle(app, pilot)
        assert list(table.rows) == keys_before  # same row objects: no clear-and-re-add
        assert table.get_cell("3", "tok_s") == "3,400.0"
        assert table.cell_updates == 2  # seconds and tok/s only
        new = replace(last, segment=4, concurrency=96)
        eng.push(replace(base, segments=base.segments[:-1] + (last, new)))
        await settle(app, pilot)
        assert table.row_count == 4
        assert table.get_cell("4", "level") == "96"
        assert "flags" not in table.columns  # one server config so far: no column for it
        # after a restart with other flags, the table says which flags each level ran under
        segs = tuple(replace(r, server_config="max_num_seqs=256") for r in base.segments[:-1] + (last, new))
        other = replace(new, segment=5, concurrency=96, server_config="max_num_seqs=128")
        eng.push(replace(base, segments=segs + (other,)))
        await settle(app, pilot)
        assert "flags" in table.columns and table.row_count == 5
        assert table.get_cell("4", "flags") == "max_num_seqs=256"
        assert table.get_cell("5", "flags") == "max_num_seqs=128"


async def test_chart_redraws_at_most_once_a_second_and_only_on_change(clock):
    app, eng, _ = build_app(start_concurrency=64)
    app.clock = clock
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot, ticks=3)
        tp = app.screen.query_one(ThroughputPanel)
        first = tp.draws
        assert first >= 1
        await settle(app, pilot, ticks=3)  # no new data
        assert tp.draws == first
        base = sample_snapshot()
        eng.push(replace(base, tok_s_history=base.tok_s_history + (5000.0,)))
        await settle(app, pilot)
        assert tp.draws == first  # changed, but less than a second of (fake) time passed
        clock.t += 1.5
        eng.push(replace(base, tok_s_history=base.tok_s_history + (5000.0, 5100.0)))
        await settle(app, pilot)
        assert tp.draws == first + 1
        chart = app.screen.query_one("#tp-chart", TimeChart)
        assert chart.drawn_lengths() and all(n <= chart.size.width for n in chart.drawn_lengths())


async def test_narrow_screen_shows_one_latency_histogram_and_l_cycles():
    app, _, _ = build_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        visible = [b.title for b in app.screen.query(LatencyBlock) if b.styles.display != "none"]
        assert visible == ["TTFT"]
        await pilot.press("l")
        await pilot.pause()
        visible = [b.title for b in app.screen.query(LatencyBlock) if b.styles.display != "none"]
        assert visible == ["ITL"]
        assert not app.screen.query_one("#side").display or app.screen.query_one("#side").styles.display == "none"


async def test_wide_screen_shows_all_histograms():
    app, _, _ = build_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        visible = [b.title for b in app.screen.query(LatencyBlock) if b.styles.display != "none"]
        assert visible == ["TTFT", "ITL", "E2E latency"]


async def test_evolving_engine_follows_target():
    eng = FakeEngine(evolve=True, period=0.0)
    app, _, _ = build_app(eng, start_concurrency=32)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot, ticks=6)
        assert app.snapshot is not None and app.snapshot.in_flight == 32
        await pilot.press("space")
        await settle(app, pilot, ticks=8)
        assert app.snapshot.in_flight == 0
        assert "in flight [b]0[/]" in field(app, "#conc")


# ------------------------------------------------------------------ startup screen


async def test_startup_then_ready_creates_engine():
    server = FakeServer()
    app, eng, calls = build_app(server=server)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert isinstance(app.screen, StartupScreen)
        assert calls == []
        assert "process started" in field(app, "#startup-phases")
        server.advance(kv_tokens=123_456, max_conc=30.1)
        await settle(app, pilot, ticks=6)  # ready seen, engine started, a log-tail tick (every 4th)
        assert calls == [1]
        assert isinstance(app.screen, DashboardScreen)
        assert eng.sent[0] == SetConcurrency(8)
        assert "Application startup complete" in field(app, "#log-text")


async def test_startup_shows_phases_kv_and_log(clock):
    server = FakeServer()
    server.add_phase("loading weights", 1.0, log="INFO Loading weights from hub")
    server._kv_tokens, server._max_conc = 98_304, 12.5
    app, _, calls = build_app(server=server)
    app.clock = clock
    async with app.run_test(size=(120, 40)) as pilot:
        clock.t += 7.25
        await settle(app, pilot)
        # the current phase ticks on the screen's own timer: 7.25 - 1.0
        assert await until(pilot, lambda: "6.2 s…" in field(app, "#startup-phases")), field(app, "#startup-phases")
        phases = field(app, "#startup-phases")
        assert "loading weights" in phases
        assert "1.0 s" in phases  # "process started" took 1.0 s
        assert "98,304" in field(app, "#startup-kv") and "12.5x" in field(app, "#startup-kv")
        assert "Loading weights from hub" in field(app, "#startup-log-text")
        assert calls == []


async def test_startup_failure_keeps_exit_code_and_log_on_screen():
    server = FakeServer()
    app, _, calls = build_app(server=server)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        server.fail(returncode=137, error="CUDA out of memory")
        await settle(app, pilot)
        assert isinstance(app.screen, StartupScreen)
        assert await until(pilot, lambda: app.screen.has_class("-failed"))
        status = field(app, "#startup-status")
        assert "137" in status and "CUDA out of memory" in status and "failed" in status
        assert "OutOfMemoryError" in field(app, "#startup-log-text")
        assert app.screen.has_class("-failed")
        await settle(app, pilot)
        assert isinstance(app.screen, StartupScreen) and calls == []
        await pilot.press("q")
        await pilot.pause()
    assert calls == []
    assert server.stopped >= 1
    assert app.return_code == 1


async def test_startup_cancel_stops_server_and_exits():
    server = FakeServer()
    app, _, calls = build_app(server=server)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("escape")
        await pilot.pause()
    assert server.stopped >= 1
    assert server.state == "stopped"
    assert calls == []


async def test_engine_factory_failure_is_shown_not_fatal():
    def broken():
        raise RuntimeError("could not spawn engine")

    from qbench_tui.tui.app import QBenchApp

    app = QBenchApp(broken)
    async with app.run_test(size=(120, 40)) as pilot:
        await app.workers.wait_for_complete()
        await settle(app, pilot)
        assert "could not spawn engine" in app.engine_error
        await pilot.press("up")  # no engine: a notice, not a crash
        await pilot.pause()
        assert any("could not spawn engine" in n for n in notes(app))
        await pilot.press("q")
        await pilot.pause()
    assert app.closed


async def test_engine_poll_failure_is_shown_not_fatal():
    class Dying(FakeEngine):
        def poll(self):
            raise EOFError("engine pipe closed")

    eng = Dying()
    app, _, _ = build_app(eng)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert "engine pipe closed" in app.engine_error
        await pilot.press("q")
        await pilot.pause()
    assert eng.closed


def test_fakes_link_and_control_rules_import_no_textual():
    code = (
        "import sys, tests.tui.fakes, qbench_tui.tui.link, qbench_tui.tui.control, qbench_tui.tui.restart; "
        "assert 'textual' not in sys.modules, 'textual imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))


def test_no_fake_engine_in_the_package():
    import importlib.util

    assert importlib.util.find_spec("qbench_tui.tui.fake_engine") is None  # test doubles live under tests/


async def test_server_dying_under_load_is_notified():
    server = FakeServer(state="ready")
    app, eng, _ = build_app(server=server)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        server.fail(returncode=-9, error="killed")
        await settle(app, pilot, ticks=5)
        assert any("server failed (exit code -9) killed" in n for n in notes(app))
        assert any("load paused, results saved" in n for n in notes(app))
        sent = [type(c).__name__ for c in eng.sent]
        assert "Pause" in sent and "Save" in sent
        assert "failed" in str(app.screen.query_one("#log").border_title)
        assert "OutOfMemoryError" in field(app, "#log-text")


async def test_quit_while_engine_starts_closes_the_late_engine():
    import threading

    release = threading.Event()
    eng = FakeEngine()

    def slow_factory():
        release.wait(10)
        return eng

    from qbench_tui.tui.app import QBenchApp

    app = QBenchApp(slow_factory)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("q")
        await pilot.pause()
    release.set()
    for _ in range(200):  # the factory thread finishes after the app is gone
        if eng.closed:
            break
        await __import__("asyncio").sleep(0.05)
    assert eng.closed
    assert eng.sent == []  # never driven: no load started after quitting


async def test_restart_server_with_other_flags_pauses_relabels_and_resumes():
    server = FakeServer(state="ready", restartable=True, config_label="max_num_seqs=256")
    app, eng, _ = build_app(server=server)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert eng.sent[0] == ServerConfigChanged("max_num_seqs=256")  # segments know the flags from the start
        await pilot.press("F")
        await pilot.pause()
        assert isinstance(app.screen, RestartServer)
        assert "max_num_seqs=256" in str(app.screen.query_one("#restart-now").render())
        app.screen.query_one(Input).value = "max_num_seqs=128 --no-enable-prefix-caching"
        await pilot.press("enter")
        # restart() has returned; the worker now waits, in a thread, for the new server to be ready
        assert await until(pilot, lambda: app.restart_flow.phase is RestartPhase.STARTING)
        assert server.restarts == [{"max_num_seqs": 128, "enable_prefix_caching": False}]
        assert isinstance(app.screen, StartupScreen) and server.state == "starting"
        assert Pause() in eng.sent and Resume() not in eng.sent
        await settle(app, pilot, ticks=3)
        assert isinstance(app.screen, StartupScreen)  # still starting: the load stays paused
        n_before = len(eng.sent)
        server.advance()
        await settle(app, pilot, ticks=3)
        assert isinstance(app.screen, DashboardScreen)
        label = "max_num_seqs=128 enable_prefix_caching=False"
        assert eng.sent[n_before:n_before + 2] == [ServerConfigChanged(label), Resume()]
        assert any("server restarted" in n for n in notes(app))
        assert not any("server stopped" in n for n in notes(app))  # the restart's stop is not a death
        assert app.restart_flow.phase is RestartPhase.IDLE


async def test_a_poll_tick_before_the_startup_screen_composed_is_harmless():
    """The cause of a flaky restart test: F pushes the startup screen, and a poll tick landing before that screen
    had composed painted into it, found no widgets (NoMatches) and took the app down; the test then saw only that
    the timer had stopped. Here the tick is forced into that window instead of left to CPU contention."""
    server = FakeServer(state="ready", restartable=True)
    app, _, _ = build_app(server=server)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.restart_server({"max_num_seqs": 64})
        assert isinstance(app.startup, StartupScreen) and not app.startup.is_mounted
        app._tick()  # before the screen's compose: must neither raise nor touch its widgets
        await settle(app, pilot, ticks=3)
        assert app.is_running and isinstance(app.screen, StartupScreen)
        assert "starting" in field(app, "#startup-status")
        server.advance()
        await settle(app, pilot, ticks=3)
        assert isinstance(app.screen, DashboardScreen)


async def test_restart_server_refuses_bad_flags_and_plain_urls():
    server = FakeServer(state="ready", restartable=True)
    app, eng, _ = build_app(server=server)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("F")
        await pilot.pause()
        app.screen.query_one(Input).value = "port=9000"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, RestartServer)
        assert "port cannot change" in str(app.screen.query_one("#restart-error").render())
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen) and server.restarts == [] and Pause() not in eng.sent
    app2, _, _ = build_app(server=FakeServer(state="ready"))  # attached by URL: nothing to restart
    async with app2.run_test(size=(120, 40)) as pilot:
        await settle(app2, pilot)
        await pilot.press("F")
        await pilot.pause()
        assert isinstance(app2.screen, DashboardScreen)
        assert any("needs a server qbench launched" in n for n in notes(app2))


async def test_ttft_block_shows_the_servers_own_ttft_beside_the_clients():
    snap = sample_snapshot()
    snap = replace(snap, server=replace(snap.server, ttft_mean=0.0123))
    app, eng, _ = build_app(FakeEngine(base=snap, evolve=False))
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        sub = str(app.screen.query_one("#lat-ttft").border_subtitle)
        assert sub == (f"server mean 12.3 ms · client mean {dur(snap.ttft.mean)} "
                       f"(+{dur(snap.ttft.mean - 0.0123)} outside the engine)")
    app2, _, _ = build_app(FakeEngine(base=sample_snapshot(), evolve=False))  # no server histogram: no claim
    async with app2.run_test(size=(160, 48)) as pilot:
        await settle(app2, pilot)
        assert str(app2.screen.query_one("#lat-ttft").border_subtitle) == ""
