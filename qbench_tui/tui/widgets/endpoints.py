"""The endpoints panel: under several endpoints (`qbench tui --url A --url B`), a row each: alive or dead (and
why), requests in flight, its share of the rolling window's output tokens and that share as tokens/s, and the
TTFT p50 of its own requests in the window. With one endpoint Snapshot.endpoints is empty and the panel stays
hidden, so the single-endpoint layout is what it was."""
from __future__ import annotations

from urllib.parse import urlsplit

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape

from qbench_tui.engine.snapshot import EndpointRow, Snapshot
from qbench_tui.tui.widgets.fmt import dur_short
from qbench_tui.tui.widgets.panels import Field

NAME_W = 13


def short_names(urls: list[str]) -> list[str]:
    """Each endpoint as few characters as tell them apart: ":port" when they share a host, else host:port (the
    path too when the host and port do not differ)."""
    parts = [urlsplit(u) for u in urls]
    hosts = {p.hostname for p in parts}
    if len(hosts) == 1:
        names = [f":{p.port}" if p.port else (p.path or "/") for p in parts]
    else:
        names = [p.netloc for p in parts]
    if len(set(names)) < len(names):  # the same host and port under different paths
        names = [f"{p.netloc}{p.path}" for p in parts]
    return names


def _tok(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 10_000 else f"{x:.0f}"


def endpoint_lines(rows: tuple[EndpointRow, ...], room: int = 8) -> list[str]:
    """The panel's text: a header, then a row per endpoint (at most `room` of them, the rest counted)."""
    names = short_names([r.url for r in rows])
    out = [f"[$text-muted]  {'endpoint':<{NAME_W}} {'in':>3} {'share':>5} {'tok/s':>6} {'TTFT50':>6}[/]"]
    shown = rows if len(rows) <= room else rows[:room - 1]
    for r, name in zip(shown, names):
        n = escape(f"{name:<{NAME_W}.{NAME_W}}")
        if not r.alive:
            why = escape(r.why or "no answer")
            out.append(f"[b $error]✘[/] {n} [$error]dead: {why}[/] [$text-muted]({r.in_flight} in flight)[/]")
            continue
        ttft = dur_short(r.ttft_p50) or "—"
        out.append(f"[$success]●[/] {n} {r.in_flight:>3} {r.share:>5.0%} {_tok(r.out_tok_s):>6} {ttft:>6}")
    if len(shown) < len(rows):
        dead = sum(not r.alive for r in rows[len(shown):])
        out.append(f"[$text-muted]  +{len(rows) - len(shown)} more" + (f" ({dead} dead)" if dead else "") + "[/]")
    return out


class EndpointsPanel(Vertical):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.border_title = "Endpoints"
        self.display = False  # until a snapshot reports several endpoints

    def compose(self) -> ComposeResult:
        yield Field("", id="ep-text")

    def show(self, snap: Snapshot) -> None:
        rows = snap.endpoints
        if bool(rows) != self.display:
            self.display = bool(rows)
            self.screen.set_class(bool(rows), "-fleet")
        if not rows:
            return
        dead = sum(not r.alive for r in rows)
        self.border_title = f"Endpoints · {len(rows)}" + (f" · {dead} dead" if dead else "")
        room = max(1, self.content_size.height - 1) if self.content_size.height else 8
        self.query_one("#ep-text", Field).set("\n".join(endpoint_lines(rows, room)))
