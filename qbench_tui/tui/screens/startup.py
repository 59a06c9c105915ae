"""Shown while a launched server starts: phases with their durations, KV cache size, log tail, cancel.

The screen repaints itself from the server handle on its own timer, which exists only once the screen is mounted:
the app decides when to leave it (the server is ready), never paints into it (a poll tick landing between
push_screen and compose once found no widgets there and took the app down).
"""
from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import Footer, Header

from qbench_tui.server.handle import ServerHandle, ServerState
from qbench_tui.tui.widgets.panels import Field


def phase_lines(phases, elapsed: float, state: ServerState) -> list[str]:
    """One line per phase: name, when it began, how long it took (the last one ticks while starting)."""
    lines = []
    for i, ph in enumerate(phases):
        if i + 1 < len(phases):
            took, mark = f"{phases[i + 1].at - ph.at:6.1f} s", "[$success]✔[/]"
        elif state == ServerState.STARTING:
            took, mark = f"{max(0.0, elapsed - ph.at):6.1f} s…", "[$warning]◌[/]"
        elif state == ServerState.READY:
            took, mark = "", "[$success]✔[/]"
        else:
            took, mark = "", "[$error]✘[/]"
        detail = f"  [$text-muted]{escape(ph.detail)}[/]" if ph.detail else ""
        lines.append(f" {mark} {escape(ph.name):<18} at {ph.at:6.1f} s  {took:>9}{detail}")
    return lines


class StartupScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.cancel_startup", "Cancel"),
        Binding("q", "app.cancel_startup", "Cancel / quit"),
        Binding("F", "app.restart_server", "Other flags", show=False),
    ]

    def __init__(self, server: ServerHandle, clock: Callable[[], float], period: float = 0.25) -> None:
        super().__init__(id="startup")
        self.server = server
        self.clock = clock
        self.period = period  # elapsed time and phases tick at the app's poll rate
        self.t0 = clock()

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="startup-box", classes="panel") as box:
            box.border_title = "Starting server"
            yield Field("", id="startup-status", relayout=True)
            yield Field("", id="startup-cmd", relayout=True)
            yield Field("", id="startup-phases", relayout=True)
            yield Field("", id="startup-kv", relayout=True)
        with Vertical(id="startup-log", classes="panel") as log:
            log.border_title = "log"
            yield Field("", id="startup-log-text")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_view()
        self.set_interval(self.period, self.refresh_view)

    def restart_clock(self) -> None:
        """Another start on the same screen (a retry after a failed one): elapsed counts from now."""
        self.t0 = self.clock()
        if self.is_mounted:
            self.refresh_view()

    def refresh_view(self) -> None:
        s = self.server
        state = s.state
        elapsed = self.clock() - self.t0
        if state == ServerState.STARTING:
            status = (f"[b $warning]starting[/] {escape(s.url)}  elapsed [b]{elapsed:.1f} s[/]"
                      "   (esc: stop server and exit)")
        elif state == ServerState.READY:
            status = f"[b $success]ready[/] {escape(s.url)}"
        else:
            rc = s.returncode
            retry = " · F: restart with other flags" if s.restartable else ""
            status = (
                f"[b reverse $error] server {escape(str(state))} [/]  exit code [b]{rc if rc is not None else '?'}[/]"
                f"  {escape(s.error)}\n[$text-muted]q: quit{retry}[/]"
            )
        self.query_one("#startup-status", Field).set(status)
        self.query_one("#startup-cmd", Field).set(f"[$text-muted]$ {escape(s.command_line)}[/]")
        self.query_one("#startup-phases", Field).set("\n".join(phase_lines(s.phases(), elapsed, state)))
        kv, mc = s.kv_cache_tokens(), s.max_concurrency()
        parts = []
        if kv is not None:
            parts.append(f"KV cache [b]{kv:,}[/] tokens")
        if mc is not None:
            parts.append(f"max concurrency [b]{mc:.1f}x[/]")
        self.query_one("#startup-kv", Field).set("  ".join(parts))
        height = max(5, self.query_one("#startup-log").size.height - 2)
        self.query_one("#startup-log-text", Field).set("\n".join(escape(x) for x in s.log_tail(height)))
        failed = state in (ServerState.FAILED, ServerState.STOPPED)
        self.set_class(failed, "-failed")
        self.query_one("#startup-box").border_title = f"Server {state}" if failed else "Starting server"
