"""`qbench run`: one level, summarised like `vllm bench serve` (or its --save-result keys with --json), saved as
`sweep` saves its levels (.txt, .json, .requests.jsonl under --out)."""
from __future__ import annotations

import argparse
import json

from .common import (
    EXIT_FAIL,
    Target,
    Unreachable,
    Usage,
    add_load,
    add_target,
    config_from,
    err,
    fleet_parts,
    print_failures,
    resolve_model,
    spec_and_prompts,
)


def open_loop_plan(args: argparse.Namespace):
    """The open-loop level `--request-rate` / `--trace` asks for, with the trace's prompts, or (None, None).
    Usage (one line) for what cannot be."""
    from ..engine.arrivals import ArrivalError, check_rate
    from ..engine.trace import TraceError, load_trace
    from ..headless import LevelPlan

    rate, trace = args.request_rate, args.trace
    if rate is None and trace is None:
        for flag, v in (("--burstiness", args.burstiness), ("--time-scale", args.time_scale)):
            if v is not None:
                raise Usage(f"{flag} needs {'--request-rate' if flag == '--burstiness' else '--trace'}")
        return None, None
    if rate is not None and trace is not None:
        raise Usage("give --request-rate or --trace, not both (a trace brings its own times)")
    if args.concurrency is not None:
        raise Usage("an open loop has no concurrency of its own: give --max-concurrency N to cap it, not -c")
    if args.mode == "wave":
        raise Usage("--mode wave sends C at once: it does not apply to --request-rate / --trace")
    cap = args.max_concurrency
    if cap is not None and cap < 1:
        raise Usage(f"--max-concurrency must be >= 1, got {cap}")
    try:
        if trace is not None:
            reqs = load_trace(trace, args.time_scale if args.time_scale is not None else 1.0)
            return LevelPlan(cap or 0, "rate", trace_times=[r.at_s for r in reqs]), reqs
        check_rate(rate, args.burstiness if args.burstiness is not None else 1.0)
    except (ArrivalError, TraceError) as e:
        raise Usage(str(e)) from None
    if args.duration is None and args.requests is None:
        raise Usage("--request-rate needs --duration S or --requests N")
    return LevelPlan(cap or 0, "rate", args.duration, args.requests, args.warmup or 0.0, rate=rate,
                     burstiness=args.burstiness if args.burstiness is not None else 1.0), None


def run(args: argparse.Namespace) -> int:

    open_plan, trace = open_loop_plan(args)
    if open_plan is None and (args.concurrency is None or args.concurrency < 1):
        raise Usage("--concurrency N (N >= 1) is required (or --request-rate R for an open loop)")
    if open_plan is None and args.max_concurrency is not None:
        raise Usage("--max-concurrency caps an open loop: give --request-rate R or --trace FILE with it")
    if args.duration is None and args.requests is None and args.mode == "steady" and open_plan is None:
        raise Usage("steady mode needs --duration S or --requests N")
    cfg = config_from(args, {"sweep.out": args.out})

    from ..config import resolve_api_key
    from ..engine.knee import find_knee
    from ..headless import LevelPlan, run_plan
    from ..report.bench_block import bench_block
    from .results import RunFiles, check_out, exit_code, measure, report_stop, run_meta

    api_key, key_source = resolve_api_key(args.api_key)
    target = Target(args, cfg)
    check_out(cfg.sweep.out)  # before a server is launched or any load starts
    with target as url:
        model, version = resolve_model(url, api_key, cfg.load.model, cfg)
        spec, prompts = spec_and_prompts(cfg, url, model, api_key)
        if trace is not None:
            from . import workload

            try:
                prompts = workload.build_trace_prompts(cfg, trace, url, model, api_key)
            except workload.Usage as e:
                raise Usage(str(e)) from None
        mode = args.mode if open_plan is None else "rate"
        meta = run_meta(cfg, target, url, model, version, key_source,
                        (args.concurrency or open_plan.concurrency,), mode)
        if trace is not None:
            meta.prompt_source = f"trace:{args.trace} ({len(trace)} requests)"
        files = RunFiles(cfg.sweep.out, meta, lambda lvs: find_knee(lvs, cfg.sweep.knee_share))
        plan = open_plan or LevelPlan(args.concurrency, args.mode, args.duration, args.requests, args.warmup or 0.0)

        try:
            async def go(stop):
                async with fleet_parts(cfg, spec, plan.concurrency or 1, api_key) as kw:
                    return await run_plan(spec, prompts, [plan], lambda lv, recs: files.add_level(lv),
                                          should_stop=lambda: target.died() or files.error, on_record=files.record,
                                          stop=stop, **kw)

            try:
                (levels, stopped), signum = measure(go, files)
            except (Usage, Unreachable):
                files.close()
                files.discard_if_empty()
                raise
        finally:
            files.close()
        report_stop(stopped, signum, levels, meta)
        saved = files.save()  # final before a launched server is stopped (a second Ctrl-C may come then)
    if not saved and files.error != stopped:
        err(files.error or "results not saved")
    if not levels:
        return exit_code(stopped, signum, levels, cfg.load.max_error_rate)
    lv = levels[0]
    if args.json:
        print(json.dumps(lv.to_json(), indent=2))
    else:
        print(bench_block(lv, model=model, url=url, version=version))
        if lv.interrupted:
            print("INTERRUPTED: summarised from the requests that finished before the stop")
        elif lv.window is not None and not lv.window.rule.startswith("wave"):
            print(lv.window.describe())
        print_failures(lv)
        from ..report.files import conversation_lines

        for line in conversation_lines(lv):
            print(line)
        print(files.saved_lines())
    code = exit_code(stopped, signum, levels, cfg.load.max_error_rate)
    return EXIT_FAIL if code == 0 and not saved else code


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_target(p, many=True)
    p.add_argument("--concurrency", "-c", type=int)
    p.add_argument("--mode", choices=("steady", "wave"), default="steady")
    p.add_argument("--duration", type=float, metavar="S")
    p.add_argument("--requests", type=int, metavar="N")
    p.add_argument("--warmup", type=float, metavar="S", default=0.0)
    p.add_argument("--out", metavar="DIR", help="results folder (default ./results)")
    p.add_argument("--json", action="store_true")
    o = p.add_argument_group("open loop (instead of -c)")
    o.add_argument("--request-rate", type=float, metavar="R",
                   help="send R requests/s whatever the server's pace (gamma arrivals, as vllm bench serve)")
    o.add_argument("--burstiness", type=float, metavar="B", help="gamma shape: 1 = Poisson (default), <1 burstier")
    o.add_argument("--max-concurrency", type=int, metavar="N",
                   help="at most N in flight; a request due while N are running goes out late (schedule lag)")
    o.add_argument("--trace", metavar="FILE", help="replay a JSONL trace (timestamp ms, input_length, "
                                                   "output_length, optional hash_ids) at its own times")
    o.add_argument("--time-scale", type=float, metavar="X", help="--trace: multiply its gaps by X (0.5: twice as "
                                                                 "fast)")
    add_load(p)
