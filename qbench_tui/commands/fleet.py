"""Past one endpoint and one client process (`qbench run` / `sweep`): several `--url`s (or `[[targets]]`), where
the server's numbers come from (`--metrics-url`, `--prometheus`), qbench's own exporter (`--metrics-port`) and
client shards (`--client-procs`, `--ray`). Flags and their one-line checks, and the parts built around a run."""
from __future__ import annotations

import argparse
import contextlib
import sys


class Usage(ValueError):
    """What the fleet flags ask and cannot be: the commands turn it into commands.common.Usage (exit 2)."""


class Unreachable(RuntimeError):
    """Prometheus or the Ray cluster does not answer: commands.common.Unreachable (exit 1, as for the server)."""


FLEET_KEYS = ("balance", "metrics_urls", "prometheus", "prometheus_selector", "metrics_port", "metrics_host",
              "client_procs", "ray")




def add_fleet(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fleet (several endpoints, metrics from elsewhere, client shards)")
    g.add_argument("--balance", choices=("round-robin", "least-busy"),
                   help="with several --url: each request to the next endpoint (default) or to the one with the "
                        "fewest in flight; a dead endpoint is skipped and probed every 5 s")
    g.add_argument("--metrics-url", action="append", dest="metrics_urls", metavar="URL",
                   help="a replica whose /metrics count as the server's (repeatable: summed), e.g. behind a router")
    g.add_argument("--prometheus", metavar="URL", help="read the server's metrics through this Prometheus's PromQL")
    g.add_argument("--prometheus-selector", metavar="SEL", help='label matchers, e.g. namespace="llm"')
    g.add_argument("--metrics-port", type=int, metavar="P", help="serve qbench's own client metrics on P")
    g.add_argument("--metrics-host", metavar="HOST", help="where --metrics-port listens (default 127.0.0.1)")
    g.add_argument("--client-procs", type=int, metavar="N",
                   help="client processes doing the HTTP (default: 1 below C=256, else one per 256 streams, "
                        "keeping a core free)")
    g.add_argument("--ray", metavar="ADDRESS", help="run the client shards as actors on this Ray cluster "
                                                    "(HOST:PORT of its head; needs qbench-tui[ray])")


def overrides(args: argparse.Namespace) -> dict:
    """fleet.* config overrides from the flags; a repeated --url becomes the endpoint list (its first is the
    one models and the tokenizer are asked about), leaving args.url the first."""
    out = {f"fleet.{k}": getattr(args, k, None) for k in FLEET_KEYS}
    urls = getattr(args, "url", None)
    if isinstance(urls, list):
        args.url = urls[0] if urls else None
        if len(urls) > 1:
            out["fleet.urls"] = urls
    if out.get("fleet.metrics_urls") is not None:
        out["fleet.metrics_urls"] = tuple(out["fleet.metrics_urls"])
    return out


def check(args: argparse.Namespace, cfg) -> None:
    """What cannot be, before anything starts."""
    fl = cfg.fleet
    if getattr(args, "client_procs", None) is not None and args.client_procs < 1:
        raise Usage(f"--client-procs must be >= 1, got {args.client_procs}")
    if fl.urls and getattr(args, "launch", None):
        raise Usage("several --url and --launch: give the endpoints, or launch one server")
    if fl.metrics_urls and fl.prometheus:
        raise Usage("--metrics-url and --prometheus are two sources of the same numbers: give one")
    if fl.prometheus_selector and not fl.prometheus:
        raise Usage("--prometheus-selector needs --prometheus URL")


@contextlib.asynccontextmanager
async def parts(cfg, spec, concurrency: int, headers: dict[str, str], say=lambda line: None):
    """engine/fleet.open_parts with its errors as this module's."""
    from ..engine import fleet as engine_fleet

    try:
        async with engine_fleet.open_parts(cfg.fleet, spec, concurrency, headers, say) as kw:
            yield kw
    except engine_fleet.FleetUsage as e:
        raise Usage(str(e)) from None
    except engine_fleet.FleetUnreachable as e:
        raise Unreachable(str(e)) from None


def stderr_say(line: str) -> None:
    print(f"  {line}", file=sys.stderr)
