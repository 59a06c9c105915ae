"""`?`: every key in one place."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from qbench_tui.engine.snapshot import MAX_CONCURRENCY

# (keys, what) - the single source for the help screen; the bindings live on DashboardScreen
KEYS: tuple[tuple[str, str], ...] = (
    ("↑ / +", "concurrency +1 (open loop: rate ×1.1)"),
    ("↓ / -", "concurrency -1 (open loop: rate ÷1.1)"),
    ("PgUp / shift+↑", "concurrency +10 (open loop: rate ×2)"),
    ("PgDn / shift+↓", "concurrency -10 (open loop: rate ÷2)"),
    ("c", f"type a concurrency (0..{MAX_CONCURRENCY})"),
    ("o", "open loop (a request rate) / closed loop"),
    ("a", "auto ladder: find the knee from here"),
    ("", "a again, ↑/↓/c or space stops it"),
    ("space", "pause / resume the load"),
    ("r", "reset the rolling window"),
    ("l", "next histogram, then the curve (narrow)"),
    ("s", "save results now (.txt, .json, records)"),
    ("F", "restart a launched server with new flags"),
    ("ctrl+p", "command palette (all actions)"),
    ("?", "this help"),
    ("q / ctrl+c", "save, stop the load and the server, quit"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        width = max(len(k) for k, _ in KEYS) + 2
        body = "\n".join(f"[b]{k.ljust(width)}[/]{what}" for k, what in KEYS)
        with Vertical(id="help-box") as box:
            box.border_title = "qbench keys"
            box.border_subtitle = "esc to close"
            yield Static(body, id="help-body")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
