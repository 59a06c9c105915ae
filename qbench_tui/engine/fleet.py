"""What a load needs past one endpoint and one client process, built from the [fleet] config before the load and
closed after it in every path (headless run_plan and the dashboard's session alike): the server-metrics source
(`--metrics-url` replicas summed, `--prometheus`; several endpoints without either: each one's own /metrics), the
client exporter (`--metrics-port`), the endpoints' Targets, and client shards (local processes or Ray actors)."""
from __future__ import annotations

import contextlib
import os


class FleetUsage(ValueError):
    """The flags ask what cannot be (exit 2 at the command)."""


class FleetUnreachable(RuntimeError):
    """Prometheus or the Ray cluster does not answer (exit 1 at the command)."""


def procs_for(fl, concurrency: int) -> int:
    from .shards import default_procs

    if fl.client_procs:
        return fl.client_procs
    if fl.ray:
        return 2  # a cluster was asked for: at least two shards, one per node while they last (SPREAD)
    return default_procs(concurrency)


@contextlib.asynccontextmanager
async def open_parts(fl, spec, concurrency: int, headers: dict[str, str], say=lambda line: None):
    """run_plan's (and LoadEngine's) fleet keyword arguments: metrics_source, exporter, sender, targets — only
    those the config asks for. FleetUsage / FleetUnreachable for what it asks and cannot be."""
    from . import promql
    from .metrics_sources import MetricsSourceError
    from .targets import Targets

    kw: dict = {}
    stack = contextlib.AsyncExitStack()
    async with stack:
        # several endpoints and no source named: each endpoint's own /metrics, summed
        metrics_urls = fl.metrics_urls or (fl.urls if len(fl.urls) > 1 and not fl.prometheus else ())
        try:
            source = await promql.open_metrics_source(metrics_urls, fl.prometheus, fl.prometheus_selector,
                                                      headers=headers, ca_cert=spec.ca_cert, insecure=spec.insecure)
        except (MetricsSourceError, promql.PrometheusError) as e:
            raise FleetUsage(str(e)) from None
        except promql.PrometheusUnreachable as e:
            raise FleetUnreachable(str(e)) from None
        if source is not None:
            kw["metrics_source"] = source  # run_plan's ServerWatch closes it
            say(f"server metrics: {'Prometheus ' + fl.prometheus if fl.prometheus else ', '.join(metrics_urls)}")
        if fl.urls:
            try:
                kw["targets"] = Targets(list(fl.urls), fl.balance)
            except ValueError as e:
                raise FleetUsage(str(e)) from None
            say(f"{len(fl.urls)} endpoints, {fl.balance}: {', '.join(fl.urls)}")
        if fl.metrics_port:
            from .exporter import ClientMetrics

            m = ClientMetrics()
            try:
                port = m.serve(fl.metrics_port, fl.metrics_host)
            except OSError as e:
                raise FleetUsage(f"--metrics-port {fl.metrics_port}: cannot listen on {fl.metrics_host}: "
                            f"{e.strerror or e}") from None
            stack.callback(m.close)
            kw["exporter"] = m
            say(f"client metrics on http://{fl.metrics_host}:{port}/metrics")
        procs = procs_for(fl, concurrency)
        if fl.ray:
            from .ray_shards import RayShardPool, RayUnavailable

            pool = RayShardPool(spec, procs, fl.ray)
            try:
                await pool.start()
            except RayUnavailable as e:
                raise FleetUnreachable(str(e)) from None
            stack.push_async_callback(pool.close)
            kw["sender"] = pool.send
            say(f"{procs} client shard(s) on Ray {fl.ray}: nodes {', '.join(pool.nodes)}")
        elif procs > 1:
            from .shards import ShardPool

            pool = ShardPool(spec, procs)
            await pool.start()
            stack.push_async_callback(pool.close)
            kw["sender"] = pool.send
            say(f"{procs} client processes (of {os.cpu_count()} cores)")
        yield kw
