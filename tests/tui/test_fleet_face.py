"""The dashboard under several endpoints: a real session (tests/tui/inprocess.py) against a real simulator and a
dead port draws a row per endpoint on the 80x24 screen, the dead one dead with its reason; one endpoint keeps
the panel hidden; a fleet that cannot be reaches the face as one line and exit status 2."""
from __future__ import annotations

import asyncio

from qbench_tui.config import FleetConfig
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import SessionConfig
from qbench_tui.engine.snapshot import EndpointRow
from qbench_tui.server.net import free_port
from qbench_tui.tui.widgets.endpoints import EndpointsPanel, endpoint_lines, short_names

from .conftest import build_app, settle, until
from .fakes import FakeEngine, sample_snapshot
from .inprocess import InProcessEngine


def _text(app) -> list[str]:
    return str(app.screen.query_one("#ep-text").render()).splitlines()


async def _run(link: InProcessEngine, app, check) -> None:
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await check(pilot)
            await pilot.press("q")
    finally:
        link.close()
        await asyncio.wait_for(link.task, 30)


async def test_a_row_per_endpoint_the_dead_one_dead_with_its_reason(sim_proc, tmp_path):
    a = sim_proc("h200-fast", "--model", "m")
    dead = f"http://127.0.0.1:{free_port()}"
    spec = RequestSpec(url=a.url, model="m", max_tokens=16)
    link = InProcessEngine(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path), window_s=5,
                                         fleet=FleetConfig(urls=(a.url, dead))))
    app, _, _ = build_app(link, start_concurrency=4, out_dir=str(tmp_path))  # type: ignore[arg-type]

    async def check(pilot) -> None:
        def ready() -> bool:
            s = app.snapshot
            return s is not None and len(s.endpoints) == 2 and not s.endpoints[1].alive \
                and s.endpoints[0].completed > 0
        assert await until(pilot, ready, 60), app.snapshot
        await settle(app, pilot)
        panel = app.screen.query_one(EndpointsPanel)
        assert panel.display and app.screen.has_class("-fleet")
        assert panel.border_title == "Endpoints · 2 · 1 dead"
        lines = _text(app)
        names = short_names([a.url, dead])
        assert lines[1].startswith(f"● {names[0]}") and "%" in lines[1]
        assert lines[2].startswith(f"✘ {names[1]}") and "dead: connect error" in lines[2]
        assert panel.region.width > 0 and panel.region.bottom <= 24  # on the 80x24 screen, not pushed off it

    await _run(link, app, check)
    assert app.saved_paths  # quitting saved; the saved levels' endpoints: tests/engine/test_live_fleet.py


async def test_one_endpoint_keeps_the_panel_hidden():
    app, _, _ = build_app(FakeEngine(sample_snapshot()))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert not app.screen.query_one(EndpointsPanel).display and not app.screen.has_class("-fleet")


async def test_a_fleet_that_cannot_be_is_one_line_and_exit_2(sim_proc, tmp_path):
    a = sim_proc("h200-fast", "--model", "m")
    spec = RequestSpec(url=a.url, model="m", max_tokens=16)
    link = InProcessEngine(SessionConfig(spec=spec, prompt="hi", out_dir=str(tmp_path),
                                         fleet=FleetConfig(urls=(a.url, a.url))))
    app, _, _ = build_app(link, out_dir=str(tmp_path))  # type: ignore[arg-type]

    async def check(pilot) -> None:
        assert await until(pilot, lambda: app.snapshot is not None and app.snapshot.exit_code == 2), app.snapshot
        await settle(app, pilot)
        why = str(app.screen.query_one("#why").render())
        assert "given twice" in why

    await _run(link, app, check)
    code, line = app.exit_status()
    assert code == 2 and "given twice" in line


def test_rows_fit_and_many_endpoints_are_counted():
    rows = tuple(EndpointRow(f"http://10.0.0.{k}:8000", alive=k != 3, in_flight=k, share=0.2, out_tok_s=12_345.0,
                             ttft_p50=0.045, why="" if k != 3 else "timed out") for k in range(1, 7))
    lines = endpoint_lines(rows, room=4)
    assert len(lines) == 1 + 4  # the header, three rows, "+3 more"
    assert "10.0.0.1:8000" in lines[1] and "12.3k" in lines[1] and "45ms" in lines[1]
    assert "dead: timed out" in lines[3]
    assert lines[4].endswith("+3 more[/]")
    assert short_names(["http://h:1/a", "http://h:1/b"]) == ["h:1/a", "h:1/b"]


def test_the_url_wait_takes_any_endpoint_that_answers(sim_proc):
    """A dead first endpoint is the load's to show dead: the dashboard does not wait for it to come up."""
    import threading
    from types import SimpleNamespace

    from qbench_tui.commands.live import _url_waiter
    from qbench_tui.config import LoadConfig

    a = sim_proc("h200-fast", "--model", "m")
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = SimpleNamespace(load=LoadConfig(), fleet=FleetConfig(urls=(dead, a.url)))
    found: list[str] = []
    seen: list = []
    _url_waiter(dead, None, cfg, found)(seen.append, threading.Event())
    assert found == ["m"] and seen == []  # no retry was needed
