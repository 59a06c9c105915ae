"""The dashboard's entries in the command palette (ctrl+p): every key's action, by name.

A function of the App's actions rather than a method, so app.py stays about the App's life cycle; it reads the
App only through the attributes named here."""
from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from textual.app import SystemCommand

from qbench_tui.engine.snapshot import MAX_CONCURRENCY


def dashboard_commands(app: Any) -> Iterable[SystemCommand]:
    for delta in (1, -1, 10, -10):
        verb = "Raise" if delta > 0 else "Lower"
        yield SystemCommand(f"Concurrency {delta:+d}", f"{verb} the target concurrency by {abs(delta)}",
                            partial(app.action_change_concurrency, delta))
    yield SystemCommand("Set concurrency…", f"Type a target concurrency (0..{MAX_CONCURRENCY})",
                        app.action_ask_concurrency)
    if app.control.auto:
        yield SystemCommand("Stop the auto ladder", "Stop finding the knee; keep the levels measured",
                            app.action_toggle_auto)
    else:
        yield SystemCommand("Auto ladder: find the knee", "Grow the concurrency from the target, each level "
                            "held until steady, until throughput stops growing", app.action_toggle_auto)
    if app.control.mode == "open":
        yield SystemCommand("Closed loop", "Back to a target concurrency (the one held before)",
                            app.action_toggle_mode)
    else:
        yield SystemCommand("Open loop: a request rate", "Send requests at a rate (gamma arrivals) whatever the "
                            "server's pace; the step keys change the rate", app.action_toggle_mode)
    yield SystemCommand("Pause / resume", "Pause or resume the load", app.action_toggle_pause)
    yield SystemCommand("Reset window", "Restart the rolling window", app.action_reset_window)
    yield SystemCommand("Save results", f"Write results to {app.out_dir}/ now", app.action_save)
    if app.server is not None and app.server.restartable:
        yield SystemCommand("Restart server with other flags…", "Pause, restart vllm serve with changed flags, "
                            "resume", app.action_restart_server)
    yield SystemCommand("Cycle latency histogram / curve", "Show the next latency histogram or the saturation "
                        "curve (narrow screens)", app.action_cycle_latency)
    yield SystemCommand("Help: qbench keys", "Show every qbench key", app.action_show_help)
