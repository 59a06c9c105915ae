"""`qbench run`: one level, summarised like `vllm bench serve` (or its --save-result keys with --json)."""
from __future__ import annotations

import argparse
import json

from .common import (
    EXIT_FAIL,
    Target,
    Usage,
    add_load,
    add_target,
    config_from,
    err,
    error_exit,
    print_failures,
    resolve_model,
    run_async,
    spec_and_prompts,
)


def run(args: argparse.Namespace) -> int:

    if args.concurrency is None or args.concurrency < 1:
        raise Usage("--concurrency N (N >= 1) is required")
    if args.duration is None and args.requests is None and args.mode == "steady":
        raise Usage("steady mode needs --duration S or --requests N")
    cfg = config_from(args)

    from ..config import resolve_api_key
    from ..headless import LevelPlan, run_plan
    from ..report.bench_block import bench_block

    api_key, _ = resolve_api_key(args.api_key)
    target = Target(args, cfg)
    with target as url:
        model, version = resolve_model(url, api_key, cfg.load.model, cfg)
        spec, prompts = spec_and_prompts(cfg, url, model, api_key)
        plan = LevelPlan(args.concurrency, args.mode, args.duration, args.requests, args.warmup or 0.0)
        levels, stopped = run_async(run_plan(spec, prompts, [plan], should_stop=target.died))
    if stopped:
        err(stopped)
    if not levels:
        return EXIT_FAIL
    lv = levels[0]
    if args.json:
        print(json.dumps(lv.to_json(), indent=2))
    else:
        print(bench_block(lv, model=model, url=url, version=version))
        if lv.window is not None and not lv.window.rule.startswith("wave"):
            print(lv.window.describe())
        print_failures(lv)
    return EXIT_FAIL if stopped else error_exit(levels, cfg.load.max_error_rate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_target(p)
    p.add_argument("--concurrency", "-c", type=int)
    p.add_argument("--mode", choices=("steady", "wave"), default="steady")
    p.add_argument("--duration", type=float, metavar="S")
    p.add_argument("--requests", type=int, metavar="N")
    p.add_argument("--warmup", type=float, metavar="S", default=0.0)
    p.add_argument("--json", action="store_true")
    add_load(p)
