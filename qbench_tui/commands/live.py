"""`qbench tui` and `qbench demo`: wire a server (attached, launched or simulated), the engine process and the
dashboard together. The UI process only draws; the engine and the simulator each run in their own process."""
from __future__ import annotations

import argparse
import threading

from .common import Usage, add_load, add_target, config_from, request_spec


def _engine_factory(args, cfg, url_fn, api_key, simulated: bool, server_label: str = "", key_source: str = "none"):
    def factory():
        import asyncio

        from ..engine.process import EngineProcess
        from ..engine.session import SessionConfig
        from ..headless import discover

        url = url_fn().rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        model = cfg.load.model
        lc = cfg.load
        if not model:
            _, models = asyncio.run(discover(url, headers, ca_cert=lc.ca_cert, insecure=lc.insecure))
            model = models[0] if models else ""
        spec = request_spec(cfg, url, model, api_key)
        sc = SessionConfig(spec=spec, prompt=lc.prompt, prompts_file=lc.prompts_file, prompt_len=lc.prompt_len,
                           unique_prefix=lc.unique_prefix, window_s=lc.window_s, out_dir=cfg.sweep.out,
                           simulated=simulated, server_config=server_label,
                           config_sources=(*cfg.sources, ("api_key", key_source)))
        return EngineProcess(sc, quiet=True)

    return factory


def _cfg(args: argparse.Namespace):
    extra = {"sweep.out": getattr(args, "out", None), "load.window_s": getattr(args, "window", None),
             "sweep.max_concurrency": getattr(args, "max_concurrency", None),
             "sweep.budget": getattr(args, "budget", None), "sweep.slo": getattr(args, "slo", None),
             "load.concurrency": getattr(args, "concurrency", None)}
    cfg = config_from(args, extra)
    _auto_ladder(cfg)  # a bad --slo is a usage error before any server starts
    return cfg


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


def _run_app(factory, server, cfg, args, simulated: bool, title: str) -> int:
    from ..tui.app import QBenchApp

    app = QBenchApp(factory, server=server, title=title, simulated=simulated, out_dir=cfg.sweep.out,
                    start_concurrency=cfg.load.concurrency, start_paused=bool(getattr(args, "paused", False)),
                    auto_ladder=_auto_ladder(cfg))
    try:
        app.run()
    finally:
        app.close_all()  # blocking fallback; a no-op when the app already shut everything down
        if server is not None:
            server.stop()
    if app.saved_paths:
        print("saved: " + "\n       ".join(app.saved_paths))
    return int(app.return_code or 0)


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
    factory = _engine_factory(args, cfg, lambda: url, api_key, False, key_source=key_source)
    return _run_app(factory, None, cfg, args, False, f"qbench — {url}")


def add_arguments(p: argparse.ArgumentParser, demo: bool) -> None:
    if demo:
        p.add_argument("--profile", default="qwen2.5-14b-awq-32gb", help="simulator profile")
        p.add_argument("--config", metavar="FILE")
        p.add_argument("--api-key")
    else:
        add_target(p)
        p.add_argument("--sim", metavar="PROFILE", help="start the simulator with PROFILE and attach to it")
    p.add_argument("--concurrency", "-c", type=int, help="starting concurrency")
    p.add_argument("--paused", action="store_true", help="start with the load paused")
    p.add_argument("--out", metavar="DIR", help="results folder (default ./results)")
    p.add_argument("--window", type=float, metavar="S", help="rolling window seconds (default 5)")
    p.add_argument("--max-concurrency", type=int, metavar="N", help="`a` (auto ladder): highest level (default 1024)")
    p.add_argument("--budget", type=float, metavar="S", help="`a` (auto ladder): time budget in seconds (default 900)")
    p.add_argument("--slo", metavar="SPEC", help="`a` (auto ladder): e.g. ttft_p99=2s,itl_p99=100ms (goodput)")
    add_load(p)
