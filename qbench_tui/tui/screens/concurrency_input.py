"""`c`: type a concurrency. Dismisses with the number, or None when cancelled."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from qbench_tui.engine.snapshot import MAX_CONCURRENCY, clamp_concurrency


def parse_concurrency(text: str) -> tuple[int | None, str]:
    """-> (value, "") or (None, why). Typed values are refused, not clamped: 5000 is more likely a typo than a wish
    for the maximum."""
    s = text.strip()
    if not s:
        return None, "enter a number"
    try:
        n = int(s)
    except ValueError:
        return None, f"not a whole number: {s!r}"
    if clamp_concurrency(n) != n:
        return None, f"must be between 0 and {MAX_CONCURRENCY}"
    return n, ""


class ConcurrencyInput(ModalScreen["int | None"]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: int) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="conc-box") as box:
            box.border_title = "Set concurrency"
            box.border_subtitle = "enter to apply · esc to cancel"
            yield Input(value=str(self.current), placeholder=f"0..{MAX_CONCURRENCY}", id="conc-input")
            yield Static("", id="conc-error")

    def on_mount(self) -> None:
        inp = self.query_one(Input)
        inp.cursor_blink = False  # stable snapshots; a blinking cursor adds nothing here
        inp.focus()
        inp.select_all()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        value, why = parse_concurrency(event.value)
        if value is None:
            self.query_one("#conc-error", Static).update(f"[$error]{escape(why)}[/]")
            return
        self.dismiss(value)

    @on(Input.Changed)
    def changed(self) -> None:
        self.query_one("#conc-error", Static).update("")

    def action_cancel(self) -> None:
        self.dismiss(None)
