"""`F`: restart the launched server with other flags. Dismisses with the overrides, or None when cancelled."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from qbench_tui.server.argv import parse_flag_overrides


class RestartServer(ModalScreen["dict[str, Any] | None"]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, label: str, command_line: str) -> None:
        super().__init__()
        self.label = label
        self.command_line = command_line

    def compose(self) -> ComposeResult:
        with Vertical(id="restart-box") as box:
            box.border_title = "Restart the server with other flags"
            box.border_subtitle = "enter to restart · esc to cancel"
            yield Static(f"[$text-muted]now:[/] {escape(self.label or 'default flags')}", id="restart-now")
            yield Input(placeholder="max_num_seqs=128 --enforce-eager --no-enable-prefix-caching", id="restart-input")
            yield Static("[$text-muted]key=value sets · key= removes · --flag / --no-flag · the load pauses, "
                         "a new segment starts when the server is ready[/]", id="restart-help")
            yield Static("", id="restart-error")

    def on_mount(self) -> None:
        inp = self.query_one(Input)
        inp.cursor_blink = False  # stable snapshots
        inp.focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        try:
            overrides = parse_flag_overrides(event.value)
        except ValueError as e:
            self.query_one("#restart-error", Static).update(f"[$error]{escape(str(e))}[/]")
            return
        self.dismiss(overrides)

    @on(Input.Changed)
    def changed(self) -> None:
        self.query_one("#restart-error", Static).update("")

    def action_cancel(self) -> None:
        self.dismiss(None)
