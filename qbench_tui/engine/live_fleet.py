"""The live session past one endpoint and one client process (`qbench tui --url A --url B`, `--client-procs`,
`--metrics-url`, `--prometheus`, `--metrics-port`, `--ray`): the same parts headless runs use (engine/fleet.open_parts),
opened on the engine process's own loop once the session starts (the shard pool's sockets and the Targets live
there) and closed when it stops, whichever way it stops; the server poller that reads a metrics source instead of
one /metrics; and the per-endpoint rows the dashboard draws.

A session whose config asks for none of this never comes here: its engine, poller and window are what they were.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .fleet import FleetUnreachable, FleetUsage, open_parts, procs_for
from .metrics_parse import ServerSample
from .rolling import RollingWindow
from .snapshot import EndpointRow
from .stats import percentile
from .targets import Targets

if TYPE_CHECKING:  # pragma: no cover
    from .session import EngineSession

START_ERRORS = (FleetUsage, FleetUnreachable)


def wants_parts(fl, concurrency: int) -> bool:
    """Whether the [fleet] config asks for anything past one endpoint, its own /metrics and this process."""
    if fl is None:
        return False
    return bool(fl.urls or fl.metrics_urls or fl.prometheus or fl.metrics_port or fl.ray
                or procs_for(fl, concurrency) > 1)


def exit_code(e: BaseException) -> int:
    """The command's exit status for a start-up failure: 2 for what the flags ask and cannot be, 1 unreachable."""
    return 2 if isinstance(e, FleetUsage) else 1


class LiveFleet:
    """open_parts held open across the session: `open()` on the engine loop returns its keyword arguments
    (sender, targets, metrics_source, exporter: those asked for); `close()` ends every part, the metrics source
    included (headless hands that one to its ServerWatch to close; here the session's poller only reads it)."""

    def __init__(self, fl, spec, concurrency: int, headers: dict[str, str]) -> None:
        self._args = (fl, spec, concurrency, headers)
        self._stack = contextlib.AsyncExitStack()
        self.said: list[str] = []  # open_parts' lines ("2 endpoints, round-robin: ...")
        self.parts: dict = {}

    async def open(self) -> dict:
        fl, spec, c, headers = self._args
        self.parts = await self._stack.enter_async_context(open_parts(fl, spec, c, headers, self.said.append))
        source = self.parts.get("metrics_source")
        if source is not None:
            self._stack.push_async_callback(source.aclose)
        return self.parts

    async def close(self) -> None:
        await self._stack.aclose()


class SourcePoller:
    """MetricsPoller's job over a metrics source (engine/metrics_sources.MultiScrape, promql.PromSource): one
    `await source.read()` every `period` seconds, never overlapping, each sample to on_sample and each problem
    line to on_error; never raises out of run()."""

    def __init__(self, source, period: float, on_sample: Callable[[ServerSample], None],
                 on_error: Callable[[str], None]) -> None:
        self.source = source
        self.period = period
        self._on_sample = on_sample
        self._on_error = on_error
        self._wake = asyncio.Event()
        self.polls = 0

    def stop(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._wake.is_set():
            t0 = time.monotonic()
            self.polls += 1
            try:
                s, why = await self.source.read()
            except Exception as e:  # a broken source must never end the session
                s, why = None, f"server metrics: {type(e).__name__}: {e}"
            if s is not None:
                self._on_sample(s)
            if why:
                self._on_error(why)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, self.period - (time.monotonic() - t0)))


def endpoint_rows(targets: Targets, window: RollingWindow, out_tok_s: float) -> tuple[EndpointRow, ...]:
    """A row per endpoint in the order given: Targets' word on alive / in flight / why dead, and the endpoint's
    share of the rolling window (its records' tokens over the window's, times the window's rate)."""
    total = window.out_tokens
    rows = []
    for e in targets.endpoints:
        c = window.endpoint_counts(e.url)
        share = (c.out_tokens / total) if c is not None and total else 0.0
        ttft = percentile(c.ttft, 50) if c is not None and c.ttft else None
        rows.append(EndpointRow(e.url, e.alive, e.in_flight, "" if e.alive else e.why, share, share * out_tok_s,
                                c.completed if c else 0, c.failed if c else 0, ttft, e.sent))
    return tuple(rows)


# ----------------------------------------------------------------------------- the session's side (engine/session.py)


async def start_fleet(s: EngineSession) -> bool:
    """Open the session's parts and put them in place: a LoadEngine with the sender and targets (and the rolling
    window on its timeline: nothing was measured yet), the exporter's gauges, then the commands that came while
    the parts opened. False when they cannot be: the session's status, message and exit_code say why."""
    from .load import LoadEngine
    from .snapshot import EngineStatus

    fleet = s.fleet
    try:
        kw = await fleet.open()
    except START_ERRORS as e:
        s.status, s.message, s.exit_code = EngineStatus.ERROR, str(e), exit_code(e)
        return False
    s.targets, s.exporter = kw.get("targets"), kw.get("exporter")
    s.metrics_source = kw.get("metrics_source")
    if kw.get("sender") is not None or s.targets is not None:
        s.engine = LoadEngine(s.spec, s.prompts, on_record=s._on_record, sender=kw.get("sender"), targets=s.targets)
        s.window = RollingWindow(s.cfg.window_s, timeline=s.engine.timeline, horizon=s.engine.horizon)
    if s.exporter is not None:
        s.exporter.set_gauges(in_flight=lambda: s.engine.in_flight, target=lambda: s.engine.target,
                              loop_lag_s=lambda: s.health.lag_max / 1000.0)
    s.message = "; ".join(fleet.said)
    queued, s.queued = s.queued or [], None
    for cmd in queued:
        s.handle(cmd)
    return True


def server_poller(s: EngineSession):
    """What watches the server: the metrics source the parts opened, else the load URL's own /metrics."""
    from .server_poll import MetricsPoller

    if s.metrics_source is not None:
        return SourcePoller(s.metrics_source, 1.0, s._on_sample, s._on_error)
    return MetricsPoller(s.spec.url, s.spec.api_key, 1.0, s._on_sample, s._on_error, ca_cert=s.spec.ca_cert,
                         insecure=s.spec.insecure)
