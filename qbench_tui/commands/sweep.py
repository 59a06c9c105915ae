"""`qbench sweep`: the classic benchmark, levels in order -> table, .txt, .json and .requests.jsonl."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (
    EXIT_FAIL,
    Target,
    add_load,
    add_target,
    config_from,
    err,
    error_exit,
    print_failures,
    prompt_source,
    resolve_model,
    run_async,
    spec_and_prompts,
)


def parse_levels(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be integers separated by commas, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"levels must be positive integers, got {text!r}")
    return vals


def run(args: argparse.Namespace) -> int:

    extra = {"sweep.levels": args.levels, "sweep.mode": args.mode, "sweep.duration": args.duration,
             "sweep.requests": args.requests, "sweep.warmup": args.warmup, "sweep.out": args.out}
    cfg = config_from(args, extra)  # validate before anything is imported or started

    from ..config import resolve_api_key
    from ..engine.knee import find_knee
    from ..engine.recordlog import RecordLog
    from ..headless import LevelPlan, run_plan
    from ..report.files import RunMeta, classic_table, result_basename, write_results

    sw = cfg.sweep
    api_key, key_source = resolve_api_key(args.api_key)
    target = Target(args, cfg)
    levels: list = []
    meta = None
    paths: list[Path] = []
    try:
        with target as url:
            model, version = resolve_model(url, api_key, cfg.load.model)
            spec, prompts = spec_and_prompts(cfg, url, model, api_key)
            meta = RunMeta(url=url, model=model, vllm_version=version, prompt=cfg.load.prompt,
                           prompt_source=prompt_source(cfg), max_tokens=cfg.load.max_tokens, levels=sw.levels,
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
                    print_failures(lv)

            try:
                _, stopped = run_async(run_plan(spec, prompts, plans, on_level, should_stop=target.died))
            finally:
                records.close()
            if stopped:
                meta.notes.append(f"stopped early: {stopped.splitlines()[0]}")
                err(stopped)
    except KeyboardInterrupt:
        if meta is not None:
            meta.notes.append(f"interrupted by the user after {len(levels)} level(s)")
        err("interrupted")
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
    return error_exit(levels, cfg.load.max_error_rate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_target(p)
    p.add_argument("--levels", type=parse_levels, help="comma-separated concurrency levels (default 40,60,80)")
    p.add_argument("--mode", choices=("wave", "steady"))
    p.add_argument("--duration", type=float, metavar="S", help="steady mode: seconds per level")
    p.add_argument("--requests", type=int, metavar="N", help="steady mode: requests per level")
    p.add_argument("--warmup", type=float, metavar="S", help="steady mode: warm-up excluded from each level")
    p.add_argument("--out", metavar="DIR", help="results folder (default ./results)")
    p.add_argument("--json", action="store_true")
    add_load(p)
