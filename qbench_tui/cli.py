"""`qbench` entry point. Sub-commands import what they need lazily so `qbench --help` stays fast."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_ERRORS = 0, 1, 2, 3
DEFAULT_PROMPT = "Write a short paragraph explaining why GPUs are good for AI."


class Usage(Exception):
    """Bad usage: message to stderr, exit 2, nothing started."""


def _err(msg: str) -> None:
    print(f"qbench: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- argument groups


def _add_target(p: argparse.ArgumentParser, launch: bool = True) -> None:
    p.add_argument("--url", help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8001")
    if launch:
        p.add_argument("--launch", metavar="CONFIG", help="launch `vllm serve` from CONFIG's [server], then run")
        p.add_argument("--vllm-bin", help="vllm executable (default: `vllm` on PATH or [server] vllm_bin)")
    p.add_argument("--config", metavar="FILE", help="TOML config ([server], [load], [sweep]); flags win")
    p.add_argument("--api-key", help="Bearer token (default: $QBENCH_API_KEY or $OPENAI_API_KEY); never written out")


def _add_load(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load")
    g.add_argument("--model", help="model id (default: first id from /v1/models)")
    g.add_argument("--endpoint", choices=("chat", "completions"), help="chat (default) or completions")
    g.add_argument("--prompt", help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    g.add_argument("--prompts", metavar="FILE", dest="prompts_file",
                   help=".txt (one per line), .jsonl (prompt or messages, optional per-line output_tokens "
                        "as in vllm bench serve's custom dataset) or ShareGPT .json")
    g.add_argument("--prompt-len", type=int, metavar="N", help="synthetic prompt of about N tokens")
    g.add_argument("--unique-prefix", action="store_true", default=None,
                   help="random per-request prefix so prefix caching cannot help")
    g.add_argument("--max-tokens", type=int, metavar="N", help="max output tokens per request (default 200)")
    g.add_argument("--ignore-eos", action="store_true", default=None, help="always generate max-tokens tokens")
    g.add_argument("--temperature", type=float)
    g.add_argument("--timeout", type=float, metavar="S", help="read stall that fails a request (default 600)")
    g.add_argument("--max-error-rate", type=float, metavar="R", help="exit 3 when the failed share exceeds R")


_LOAD_KEYS = ("url", "model", "endpoint", "prompt", "prompts_file", "prompt_len", "unique_prefix", "max_tokens",
              "ignore_eos", "temperature", "timeout", "max_error_rate")


def _config_from(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    from .config import ConfigError, load_config

    overrides = {f"load.{k}": getattr(args, k, None) for k in _LOAD_KEYS}
    overrides.update(extra or {})
    if getattr(args, "vllm_bin", None):
        overrides["server.vllm_bin"] = args.vllm_bin
    path = getattr(args, "config", None) or getattr(args, "launch", None)
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        raise Usage(str(e)) from None


def _spec_and_prompts(cfg, url: str, model: str, api_key: str | None):
    from .engine.prompts import PromptError, make_prompt_source
    from .engine.records import RequestSpec

    lc = cfg.load
    try:
        prompts = make_prompt_source(lc.prompt, lc.prompts_file, lc.prompt_len, lc.unique_prefix)
    except PromptError as e:
        raise Usage(str(e)) from None
    spec = RequestSpec(url=url.rstrip("/"), model=model, endpoint=lc.endpoint, max_tokens=lc.max_tokens,
                       temperature=lc.temperature, ignore_eos=lc.ignore_eos, api_key=api_key,
                       read_timeout=lc.timeout)
    return spec, prompts


def _prompt_source(cfg) -> str:
    from .engine.prompts import describe_source

    return describe_source(cfg.load.prompts_file, cfg.load.prompt_len)


class _Target:
    """The server to measure: given by URL, or launched from a config for the duration of the command."""

    def __init__(self, args: argparse.Namespace, cfg) -> None:
        self.args, self.cfg, self.server = args, cfg, None
        self.simulated = False
        if getattr(args, "launch", None):
            if args.url:
                raise Usage("give either --url or --launch, not both")
        elif not (args.url or cfg.load.url):
            raise Usage("no server: give --url URL (or --launch CONFIG; `qbench demo` runs without a GPU)")

    def __enter__(self) -> str:
        if getattr(self.args, "launch", None):
            from .server.launcher import LaunchedServer, LaunchError

            out = getattr(self.args, "out", None) or self.cfg.sweep.out
            self.server = LaunchedServer(self.cfg.server, out)
            print(f"launching: {self.server.command_line}", file=sys.stderr)
            try:
                self.server.start()
                self.server.wait_ready(on_phase=lambda ph: print(
                    f"  [{ph.at:6.1f}s] {ph.name}{': ' + ph.detail if ph.detail else ''}", file=sys.stderr))
            except LaunchError as e:
                self.server.stop()
                raise Unreachable(str(e)) from None
            return self.server.url
        return (self.args.url or self.cfg.load.url).rstrip("/")

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()

    def died(self) -> str | None:
        if self.server is not None and not self.server.alive():
            tail = "\n".join(self.server.log_tail(40))
            return f"server died (exit code {self.server.returncode})\n{tail}"
        return None


class Unreachable(Exception):
    pass


def _resolve_model(url: str, api_key: str | None, model: str) -> tuple[str, str | None]:
    import asyncio

    from .headless import Unreachable as HU
    from .headless import discover

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        version, models = asyncio.run(discover(url, headers))
    except HU as e:
        raise Unreachable(str(e)) from None
    if not model:
        if not models:
            raise Unreachable(f"{url}/v1/models lists no model; give --model")
        model = models[0]
    return model, version


# ---------------------------------------------------------------- commands


def cmd_probe(args: argparse.Namespace) -> int:
    import asyncio

    from .config import resolve_api_key
    from .engine.server_poll import ServerUnreachable, probe

    api_key, _ = resolve_api_key(args.api_key)
    try:
        d = asyncio.run(probe(args.url.rstrip("/"), api_key))
    except ServerUnreachable as e:
        _err(str(e))
        return EXIT_FAIL
    if args.json:
        print(json.dumps(d, indent=2))
        return EXIT_OK
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    print(f"server        {args.url}")
    print(f"vLLM version  {d.get('vllm_version') or 'unknown'}")
    print(f"models        {', '.join(d.get('models') or []) or '-'}")
    if d.get("metrics_schema") == "none":
        print("metrics       no server metrics (not vLLM, or /metrics disabled)")
        return EXIT_OK
    print(f"metrics       schema {d['metrics_schema']}, {d.get('engines')} engine(s)")
    print(f"KV cache      {pct(d.get('kv_cache_usage'))} used")
    print(f"prefix cache  hit rate {pct(d.get('prefix_cache_hit_rate'))} "
          f"({d.get('prefix_cache_hits')} / {d.get('prefix_cache_queries')} tokens, lifetime)")
    print(f"requests      {d.get('num_requests_running')} running, {d.get('num_requests_waiting')} waiting, "
          f"{d.get('num_preemptions')} preemptions")
    print(f"tokens        {d.get('prompt_tokens')} prompt, {d.get('generation_tokens')} generated (lifetime)")
    return EXIT_OK


def _run_async(coro):
    """uvloop when installed (uvicorn[standard] brings it): ~20% less client CPU per token at C=256 and the
    first read ~0.6 ms after the server's write instead of ~1.5 ms (bench/fidelity.py)."""
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def _error_exit(levels: list, max_error_rate: float) -> int:
    done = sum(lv.completed for lv in levels)
    failed = sum(lv.failed for lv in levels)
    if done == 0:
        _err(f"every request failed ({failed})" if failed else "no request completed")
        return EXIT_FAIL
    if failed / (done + failed) > max_error_rate:
        _err(f"error rate {failed / (done + failed):.1%} exceeds --max-error-rate {max_error_rate:.1%}")
        return EXIT_ERRORS
    return EXIT_OK


def _print_failures(lv) -> None:
    for reason, n in lv.failures.items():
        print(f"  failed {n}x: {reason}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:

    if args.concurrency is None or args.concurrency < 1:
        raise Usage("--concurrency N (N >= 1) is required")
    if args.duration is None and args.requests is None and args.mode == "steady":
        raise Usage("steady mode needs --duration S or --requests N")
    cfg = _config_from(args)

    from .config import resolve_api_key
    from .headless import LevelPlan, run_plan
    from .report.bench_block import bench_block

    api_key, _ = resolve_api_key(args.api_key)
    target = _Target(args, cfg)
    with target as url:
        model, version = _resolve_model(url, api_key, cfg.load.model)
        spec, prompts = _spec_and_prompts(cfg, url, model, api_key)
        plan = LevelPlan(args.concurrency, args.mode, args.duration, args.requests, args.warmup or 0.0)
        levels, stopped = _run_async(run_plan(spec, prompts, [plan], should_stop=target.died))
    if stopped:
        _err(stopped)
    if not levels:
        return EXIT_FAIL
    lv = levels[0]
    if args.json:
        print(json.dumps(lv.to_json(), indent=2))
    else:
        print(bench_block(lv, model=model, url=url, version=version))
        _print_failures(lv)
    return EXIT_FAIL if stopped else _error_exit(levels, cfg.load.max_error_rate)


def cmd_sweep(args: argparse.Namespace) -> int:

    extra = {"sweep.levels": args.levels, "sweep.mode": args.mode, "sweep.duration": args.duration,
             "sweep.requests": args.requests, "sweep.warmup": args.warmup, "sweep.out": args.out}
    cfg = _config_from(args, extra)  # validate before anything is imported or started

    from .config import resolve_api_key
    from .engine.recordlog import RecordLog
    from .headless import LevelPlan, run_plan
    from .report.files import RunMeta, classic_table, result_basename, write_results
    from .sweep import find_knee

    sw = cfg.sweep
    api_key, key_source = resolve_api_key(args.api_key)
    target = _Target(args, cfg)
    levels: list = []
    meta = None
    paths: list[Path] = []
    try:
        with target as url:
            model, version = _resolve_model(url, api_key, cfg.load.model)
            spec, prompts = _spec_and_prompts(cfg, url, model, api_key)
            meta = RunMeta(url=url, model=model, vllm_version=version, prompt=cfg.load.prompt,
                           prompt_source=_prompt_source(cfg), max_tokens=cfg.load.max_tokens, levels=sw.levels,
                           mode=sw.mode, endpoint=cfg.load.endpoint, ignore_eos=cfg.load.ignore_eos,
                           unique_prefix=cfg.load.unique_prefix, temperature=cfg.load.temperature,
                           simulated=bool(version and "sim" in version),
                           server_config=target.server.config_label if target.server else "",
                           config_sources={**dict(cfg.sources), "api_key": key_source})
            base = result_basename(model, meta.started)
            out = Path(sw.out)
            records = RecordLog(out / f"{base}.requests.jsonl")
            paths = [out / f"{base}.txt", out / f"{base}.json", records.path]
            plans = [LevelPlan(c, sw.mode, sw.duration or None, sw.requests or None, sw.warmup) for c in sw.levels]
            if not args.json:
                print(f"qbench sweep {url}  model {model}  mode {sw.mode}  levels {list(sw.levels)}"
                      + ("  [SIMULATED]" if meta.simulated else ""), file=sys.stderr)

            def on_level(lv, recs) -> None:
                levels.append(lv)
                for r in recs:
                    records.add(r, level=lv.max_concurrency)
                records.flush()
                write_results(out, base, meta, levels, find_knee(levels))
                if not args.json:
                    print(f"  level {lv.max_concurrency}: {lv.completed} ok, {lv.failed} failed, "
                          f"{lv.duration_s:.2f} s, {lv.output_throughput or 0.0:.1f} tok/s", file=sys.stderr)
                    _print_failures(lv)

            try:
                _, stopped = _run_async(run_plan(spec, prompts, plans, on_level, should_stop=target.died))
            finally:
                records.close()
            if stopped:
                meta.notes.append(f"stopped early: {stopped.splitlines()[0]}")
                _err(stopped)
    except KeyboardInterrupt:
        if meta is not None:
            meta.notes.append(f"interrupted by the user after {len(levels)} level(s)")
        _err("interrupted")
    if meta is not None and paths:
        knee = find_knee(levels)
        write_results(paths[0].parent, paths[0].name[:-4], meta, levels, knee)
        if args.json:
            print(paths[1].read_text())
        else:
            print(classic_table(levels) if levels else "(no level finished)")
            if knee.summary:
                print(f"\n{knee.summary}")
            print(f"\nsaved: {paths[0]}\n       {paths[1]}\n       {paths[2]}")
    if meta is not None and len(levels) < len(meta.levels):
        return EXIT_FAIL
    return _error_exit(levels, cfg.load.max_error_rate)


def cmd_sim(args: argparse.Namespace) -> int:
    from .server.sim.cli import run

    return run(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.serve_cli import run

    return run(args)


def cmd_tui(args: argparse.Namespace) -> int:
    from .live import run_tui

    return run_tui(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .live import run_demo

    return run_demo(args)


# ---------------------------------------------------------------- parser


def _levels(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be integers separated by commas, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"levels must be positive integers, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qbench", description="Find how much load a vLLM deployment takes, and why "
                                "it stops there. Without a sub-command: the live dashboard (`qbench tui`).")
    from . import __version__

    p.add_argument("--version", action="version", version=f"qbench-tui {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sp = sub.add_parser("probe", help="one look at a server: version, models, KV/prefix cache, queue")
    sp.add_argument("--url", required=True)
    sp.add_argument("--api-key")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_probe)

    sr = sub.add_parser("run", help="one concurrency level, summary like vllm bench serve")
    _add_target(sr)
    sr.add_argument("--concurrency", "-c", type=int)
    sr.add_argument("--mode", choices=("steady", "wave"), default="steady")
    sr.add_argument("--duration", type=float, metavar="S")
    sr.add_argument("--requests", type=int, metavar="N")
    sr.add_argument("--warmup", type=float, metavar="S", default=0.0)
    sr.add_argument("--json", action="store_true")
    _add_load(sr)
    sr.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="the classic benchmark: levels 40,60,80 -> table + results files")
    _add_target(sw)
    sw.add_argument("--levels", type=_levels, help="comma-separated concurrency levels (default 40,60,80)")
    sw.add_argument("--mode", choices=("wave", "steady"))
    sw.add_argument("--duration", type=float, metavar="S", help="steady mode: seconds per level")
    sw.add_argument("--requests", type=int, metavar="N", help="steady mode: requests per level")
    sw.add_argument("--warmup", type=float, metavar="S", help="steady mode: warm-up excluded from each level")
    sw.add_argument("--out", metavar="DIR", help="results folder (default ./results)")
    sw.add_argument("--json", action="store_true")
    _add_load(sw)
    sw.set_defaults(func=cmd_sweep)

    ss = sub.add_parser("sim", help="run the simulated vLLM server (no GPU)")
    try:
        from .server.sim.cli import add_arguments as sim_args

        sim_args(ss)
    except ImportError:  # pragma: no cover - the simulator ships with the package
        pass
    ss.set_defaults(func=cmd_sim)

    sv = sub.add_parser("serve", help="launch `vllm serve` from a config and supervise it until Ctrl-C")
    try:
        from .server.serve_cli import add_arguments as serve_args

        serve_args(sv)
    except ImportError:  # pragma: no cover
        pass
    sv.set_defaults(func=cmd_serve)

    for name, helptext, func in (("tui", "the live dashboard (default)", cmd_tui),
                                 ("demo", "the dashboard on the built-in simulator: no GPU needed", cmd_demo)):
        st = sub.add_parser(name, help=helptext)
        if name == "tui":
            _add_target(st)
            st.add_argument("--sim", metavar="PROFILE", help="start the simulator with PROFILE and attach to it")
        else:
            st.add_argument("--profile", default="qwen2.5-14b-awq-32gb", help="simulator profile")
            st.add_argument("--config", metavar="FILE")
            st.add_argument("--api-key")
        st.add_argument("--concurrency", "-c", type=int, help="starting concurrency")
        st.add_argument("--paused", action="store_true", help="start with the load paused")
        st.add_argument("--out", metavar="DIR", help="results folder (default ./results)")
        st.add_argument("--window", type=float, metavar="S", help="rolling window seconds (default 60)")
        _add_load(st)
        st.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["tui", *argv]
    args = parser.parse_args(argv)
    try:
        from .server.proctree import install_signal_handlers

        install_signal_handlers()
    except ImportError:  # pragma: no cover
        pass
    try:
        return args.func(args)
    except Usage as e:
        _err(str(e))
        return EXIT_USAGE
    except Unreachable as e:
        _err(str(e))
        return EXIT_FAIL
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
