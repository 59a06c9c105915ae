"""`qbench tui` and `qbench demo`: wire a server (attached, launched or simulated), the engine process and the
dashboard together. The UI process only draws; the engine and the simulator each run in their own process.

A server given by URL may not be up yet: the dashboard starts at once and waits for it, retrying with a growing
delay and saying so on the control bar, rather than waiting before the screen opens. So the user sees why nothing
runs, and q leaves at any time (exit 1, naming what the server last did). The exit status and its one line on
stderr come from tui/outcome.py once the screen is restored."""
from __future__ import annotations

import argparse
import re
import ssl
import threading

from .common import Usage, add_load, add_target, config_from, err, request_spec


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _retriable(e: Exception) -> str | None:
    """Worth waiting for: nothing listening yet, or a proxy whose upstream is down (5xx). Not: an answer no wait
    changes (a key refused, a wrong base URL) or a TLS failure (a certificate does not fix itself)."""
    from ..engine.server_wait import connect_reason

    msg = str(e)
    if msg.startswith("cannot reach "):  # headless.discover's words for a transport failure
        cause = e.__context__ or e
        chain = [cause, cause.__context__, cause.__cause__]
        if any(isinstance(c, ssl.SSLError) for c in chain) or "SSL" in msg or "certificate" in msg:
            return None
        return connect_reason(cause)
    m = re.search(r"answered HTTP (5\d\d)", msg)
    return f"HTTP {m.group(1)}" if m else None


def _url_waiter(url: str, api_key: str | None, cfg, found: list[str]):
    """The dashboard's wait for a server given by URL: /v1/models until it answers (headless.discover's checks,
    so a missing key is named at once); the models it lists are kept in `found` for the engine factory. Under
    several endpoints the first that answers will do: a dead one is the load's to show dead, not a reason to
    wait forever."""
    urls = [u.rstrip("/") for u in cfg.fleet.urls] or [url]

    def wait(say, stop) -> None:
        import asyncio

        from ..engine.server_wait import wait_until_up
        from ..headless import discover

        lc = cfg.load

        def attempt():
            errors = []
            for u in urls:
                try:
                    return asyncio.run(discover(u, _headers(api_key), need_model=not lc.model, ca_cert=lc.ca_cert,
                                                insecure=lc.insecure))
                except Exception as e:
                    errors.append(e)
            raise errors[0]

        _, models = wait_until_up(attempt, _retriable, url=url, say=say, stop=stop)
        found[:] = models

    return wait


def _engine_factory(args, cfg, url_fn, api_key, simulated: bool, server_label: str = "", key_source: str = "none",
                    found: list[str] | None = None):
    def factory():
        import asyncio

        from ..engine.process import EngineProcess
        from ..engine.session import SessionConfig
        from ..headless import discover

        url = url_fn().rstrip("/")
        model = cfg.load.model
        lc = cfg.load
        if not model and found:
            model = found[0]
        elif not model:
            _, models = asyncio.run(discover(url, _headers(api_key), ca_cert=lc.ca_cert, insecure=lc.insecure))
            model = models[0] if models else ""
        spec = request_spec(cfg, url, model, api_key)
        sc = SessionConfig(spec=spec, prompt=lc.prompt, prompts_file=lc.prompts_file, prompt_len=lc.prompt_len,
                           unique_prefix=lc.unique_prefix, window_s=lc.window_s, out_dir=cfg.sweep.out,
                           simulated=simulated, server_config=server_label,
                           config_sources=(*cfg.sources, ("api_key", key_source)),
                           fleet=cfg.fleet, planned_concurrency=cfg.load.concurrency or 0)
        return EngineProcess(sc, quiet=True)

    return factory


def _cfg(args: argparse.Namespace):
    extra = {"sweep.out": getattr(args, "out", None), "load.window_s": getattr(args, "window", None),
             "sweep.max_concurrency": getattr(args, "max_concurrency", None),
             "sweep.budget": getattr(args, "budget", None), "sweep.slo": getattr(args, "slo", None),
             "load.concurrency": getattr(args, "concurrency", None)}
    cfg = config_from(args, extra)
    _auto_ladder(cfg)  # a bad --slo is a usage error before any server starts
    _open_loop(args)  # so is a bad --request-rate / --burstiness
    from ..report.files import check_results_dir

    problem = check_results_dir(cfg.sweep.out)  # an unwritable or full results folder: before any server starts
    if problem:
        raise Usage(problem)
    return cfg


def _open_loop(args: argparse.Namespace) -> tuple[float | None, float, int]:
    """(--request-rate, --burstiness, --max-concurrency as the open loop's cap, 0: none), checked as `qbench run`
    checks them. The burstiness and cap shape every open loop, the one `o` starts too."""
    from ..engine.arrivals import ArrivalError, check_rate

    rate, burst = getattr(args, "request_rate", None), getattr(args, "burstiness", None)
    cap = getattr(args, "max_concurrency", None)
    if cap is not None and cap < 1:
        raise Usage(f"--max-concurrency must be >= 1, got {cap}")
    try:
        check_rate(rate if rate is not None else 1.0, burst if burst is not None else 1.0)
    except ArrivalError as e:
        raise Usage(str(e)) from None
    return rate, burst if burst is not None else 1.0, cap or 0


def _auto_ladder(cfg):
    """What `a` starts: the [sweep] ladder settings (or --max-concurrency/--budget/--slo), the start is the current
    target at the moment `a` is pressed."""
    from ..engine.slo import SloError, parse_slo
    from ..engine.snapshot import AutoLadder

    sw = cfg.sweep
    try:
        slo = parse_slo(sw.slo) if sw.slo else ()
    except SloError as e:
        raise Usage(str(e)) from None
    return AutoLadder(max_concurrency=sw.max_concurrency, budget_s=sw.budget, slo=slo, hold=sw.hold > 0)


def _run_app(factory, server, cfg, args, simulated: bool, title: str, wait_server=None) -> int:
    import signal

    from ..tui.app import QBenchApp
    from ..tui.terminal import GuardedTerminal

    rate, burstiness, cap = _open_loop(args)
    app = QBenchApp(factory, server=server, title=title, simulated=simulated, out_dir=cfg.sweep.out,
                    start_concurrency=cfg.load.concurrency, start_paused=bool(getattr(args, "paused", False)),
                    auto_ladder=_auto_ladder(cfg), wait_server=wait_server, start_rate=rate or 0.0,
                    burstiness=burstiness, rate_cap=cap)
    term = GuardedTerminal()
    try:
        with term:
            app.run()
    except OSError:
        if not term.gone:
            raise
    finally:
        app.close_all()  # blocking fallback; a no-op when the app already shut everything down
        if server is not None:
            server.stop()
    if term.gone and app.outcome.signum is None:
        app.outcome.signum = signal.SIGHUP  # the terminal went before its SIGHUP was handled: a hangup all the same
    code, reason = app.exit_status()
    if not code and app.return_code:  # Textual's own failure (a panic): not a clean session either
        code = int(app.return_code)
    try:  # after SIGHUP the terminal may be gone: the files are what matters, and they are written
        if app.saved_paths:
            print("saved: " + "\n       ".join(app.saved_paths))
        if reason:
            err(reason)
    except OSError:
        pass
    return code


def run_demo(args: argparse.Namespace) -> int:
    from ..config import resolve_api_key

    cfg = _cfg(args)
    api_key, key_source = resolve_api_key(getattr(args, "api_key", None))
    from ..server.sim_child import SimServer

    sim = SimServer(args.profile)
    sim.start()
    factory = _engine_factory(args, cfg, lambda: sim.url, api_key, simulated=True,
                              server_label=f"simulator profile {args.profile}", key_source=key_source)
    return _run_app(factory, sim, cfg, args, True, f"qbench demo — SIMULATED vLLM ({args.profile})")


def run_tui(args: argparse.Namespace) -> int:
    from ..config import resolve_api_key

    cfg = _cfg(args)
    api_key, key_source = resolve_api_key(getattr(args, "api_key", None))
    given = [x for x in (getattr(args, "url", None), getattr(args, "launch", None), getattr(args, "sim", None)) if x]
    if len(given) > 1:
        raise Usage("give one of --url, --launch or --sim")
    if getattr(args, "sim", None):
        from ..server.sim_child import SimServer

        sim = SimServer(args.sim)
        sim.start()
        factory = _engine_factory(args, cfg, lambda: sim.url, api_key, True, f"simulator profile {args.sim}",
                                  key_source=key_source)
        return _run_app(factory, sim, cfg, args, True, f"qbench — SIMULATED vLLM ({args.sim})")
    if getattr(args, "launch", None):
        from ..server.launcher import LaunchedServer, LaunchError

        server = LaunchedServer(cfg.server, cfg.sweep.out)
        server.add_secret(api_key)  # the client's key is often the server's too: never in its log or command line
        try:
            server.start()
        except LaunchError as e:
            raise Usage(str(e)) from None

        def wait() -> None:
            try:
                server.wait_ready()
            except LaunchError:
                pass  # the startup screen shows state "failed", the exit code and the log tail

        threading.Thread(target=wait, daemon=True, name="vllm-ready").start()
        factory = _engine_factory(args, cfg, lambda: server.url, api_key, False, server.config_label,
                                  key_source=key_source)
        return _run_app(factory, server, cfg, args, False, f"qbench — {cfg.server.model}")
    url = getattr(args, "url", None) or cfg.load.url
    if not url:
        raise Usage("no server: give --url URL, --launch CONFIG or --sim PROFILE (or run `qbench demo`)")
    found: list[str] = []
    factory = _engine_factory(args, cfg, lambda: url, api_key, False, key_source=key_source, found=found)
    return _run_app(factory, None, cfg, args, False, f"qbench — {url}",
                    wait_server=_url_waiter(url.rstrip("/"), api_key, cfg, found))


def add_arguments(p: argparse.ArgumentParser, demo: bool) -> None:
    if demo:
        p.add_argument("--profile", default="qwen2.5-14b-awq-32gb", help="simulator profile")
        p.add_argument("--config", metavar="FILE")
        p.add_argument("--api-key")
        from .fleet import add_fleet

        add_fleet(p)  # one simulator: client shards, the exporter, metrics from elsewhere (several --url: `tui`)
    else:
        add_target(p, many=True)
        p.add_argument("--sim", metavar="PROFILE", help="start the simulator with PROFILE and attach to it")
    p.add_argument("--concurrency", "-c", type=int, help="starting concurrency")
    p.add_argument("--paused", action="store_true", help="start with the load paused")
    p.add_argument("--out", metavar="DIR", help="results folder (default ./results)")
    p.add_argument("--window", type=float, metavar="S", help="rolling window seconds (default 5)")
    p.add_argument("--max-concurrency", type=int, metavar="N",
                   help="`a` (auto ladder): highest level (default 1024); open loop: at most N in flight")
    p.add_argument("--budget", type=float, metavar="S", help="`a` (auto ladder): time budget in seconds (default 900)")
    p.add_argument("--slo", metavar="SPEC", help="`a` (auto ladder): e.g. ttft_p99=2s,itl_p99=100ms (goodput)")
    p.add_argument("--request-rate", type=float, metavar="R",
                   help="start in open loop at R requests/s (gamma arrivals); `o` switches loops, the arrows the rate")
    p.add_argument("--burstiness", type=float, metavar="B", help="open loop: gamma shape, 1 = Poisson (default)")
    add_load(p)
