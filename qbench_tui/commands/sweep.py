"""`qbench sweep`: the classic benchmark, levels in order (or chosen by `--auto`'s ladder, engine/ladder.py) ->
table, verdict and recommendations, .txt, .json and .requests.jsonl."""
from __future__ import annotations

import argparse
import sys

from .auto_plans import AutoPlans, RateAutoPlans
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
from .sweep_rates import add_rate_arguments, check_rates, level_plan, rate_overrides

AUTO_LEVEL_S = 10.0  # --auto: seconds measured per level once it is steady, unless --duration/--requests say


def check_auto(args: argparse.Namespace, cfg, open_loop: bool = False):
    """The ladder's settings and SLO from flags + TOML, or Usage with one line. Returns (LadderSpec | None, slo):
    None for a sweep over rates too (`open_loop`: sweep_rates.check_rates has checked its own flags)."""
    from ..engine.ladder import LadderSpec
    from ..engine.slo import SloError, parse_slo

    sw = cfg.sweep
    try:
        slo = parse_slo(sw.slo) if sw.slo else ()
    except SloError as e:
        raise Usage(str(e)) from None
    if not 0 < sw.knee_share <= 1:
        raise Usage(f"--knee-share must be between 0 and 1 (the share of the peak throughput), got {sw.knee_share}")
    if not sw.auto:
        given = [f for f, v in (("--start", args.start),
                                ("--max-concurrency", None if open_loop else args.max_concurrency),
                                ("--budget", args.budget), ("--hold", args.hold)) if v is not None]
        if given:
            raise Usage(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --auto")
        return None, slo
    if open_loop:
        return None, slo
    if cfg.source("sweep.levels") != "default":
        raise Usage("--auto chooses the levels itself: give either --auto or --levels, not both")
    if cfg.source("sweep.mode") != "default" and sw.mode != "steady":
        raise Usage("--auto measures steady levels (each held until steady): --mode wave does not apply")
    if sw.max_concurrency < sw.start:
        raise Usage(f"--max-concurrency {sw.max_concurrency} is below the ladder's start {sw.start}: "
                    "raise --max-concurrency or lower --start")
    return LadderSpec(start=sw.start, max_concurrency=sw.max_concurrency, budget_s=sw.budget,
                      share=sw.knee_share), slo


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
             "sweep.requests": args.requests, "sweep.warmup": args.warmup, "sweep.out": args.out,
             "sweep.auto": args.auto, "sweep.start": args.start, "sweep.max_concurrency": args.max_concurrency,
             "sweep.budget": args.budget, "sweep.slo": args.slo, "sweep.hold": args.hold,
             "sweep.knee_share": args.knee_share, **rate_overrides(args)}
    cfg = config_from(args, extra)  # validate before anything is imported or started
    rates = check_rates(args, cfg)
    ladder, slo = check_auto(args, cfg, open_loop=rates is not None)

    from ..config import resolve_api_key
    from ..engine.knee import find_knee
    from ..engine.slo import describe
    from ..headless import LevelPlan, run_plan
    from ..report.files import classic_table, conversation_lines, render_json, verdict_lines
    from .results import RunFiles, check_out, exit_code, measure, report_stop, run_meta

    sw = cfg.sweep
    auto: AutoPlans | RateAutoPlans | None = None
    api_key, key_source = resolve_api_key(args.api_key)
    target = Target(args, cfg)
    check_out(sw.out)  # before a server is launched or any load starts
    with target as url:
        model, version = resolve_model(url, api_key, cfg.load.model, cfg)
        spec, prompts = spec_and_prompts(cfg, url, model, api_key)
        meta = run_meta(cfg, target, url, model, version, key_source, sw.levels, sw.mode)
        say = (lambda line: None) if args.json else (lambda line: print(f"  {line}", file=sys.stderr))
        if rates is not None:
            meta.mode, meta.levels, meta.ladder = "rate", (), rates.describe()
            what = meta.ladder
            if rates.ladder is None:
                plans = [level_plan(rates, cfg, r) for r in rates.rates]
            else:
                auto = RateAutoPlans(rates.ladder, lambda r, hold: level_plan(rates, cfg, r, hold, AUTO_LEVEL_S),
                                     sw.hold, slo, say)
                plans = auto
                if slo:
                    meta.ladder += f", SLO {describe(slo)}"
        elif ladder is None:
            plans = [LevelPlan(c, sw.mode, sw.duration or None, sw.requests or None, sw.warmup)
                     for c in sw.levels]
            what = f"mode {sw.mode}  levels {list(sw.levels)}"
        else:
            auto = AutoPlans(ladder, lambda c, hold: LevelPlan(
                c, "steady", hold or (sw.duration or (None if sw.requests else AUTO_LEVEL_S)),
                None if hold else (sw.requests or None), sw.warmup), sw.hold, slo, say)
            plans = auto
            meta.mode, meta.levels = "steady", ()
            meta.ladder = (f"auto ladder from {ladder.start}, x{ladder.growth:g} up to {ladder.max_concurrency}"
                           f" then bisection, budget {ladder.budget_s:g} s, knee = lowest level within "
                           f"{ladder.share:.0%} of the peak" + (f", SLO {describe(slo)}" if slo else ""))
            what = meta.ladder
        files = RunFiles(sw.out, meta, lambda lvs: find_knee(auto.ladder_levels(lvs) if auto else lvs,
                                                             sw.knee_share, slo))
        if not args.json:
            print(f"qbench sweep {url}  model {model}  {what}"
                  + ("  [SIMULATED]" if meta.simulated else ""), file=sys.stderr)

        def on_level(lv, recs) -> None:
            if auto and rates is None:
                meta.levels = tuple(x.max_concurrency or 0 for x in [*files.levels, lv])
            files.add_level(lv)
            if not args.json:
                print(f"  {level_name(lv)}: {lv.completed} ok, {lv.failed} failed, "
                      f"{lv.duration_s:.2f} s, {lv.output_throughput or 0.0:.1f} tok/s"
                      + (f", {lv.request_throughput or 0.0:.2f} req/s achieved"
                         + ("; BEHIND SCHEDULE" if lv.behind_schedule else "") if lv.request_rate else "")
                      + ("; INTERRUPTED (what finished before the stop)" if lv.interrupted else
                         f"; {lv.window.describe()}" if _windowed(lv) else ""), file=sys.stderr)
                print_failures(lv)
                for line in conversation_lines(lv):
                    print(f"  {line.strip()}", file=sys.stderr)

        try:
            top = max(sw.levels) if not auto else sw.max_concurrency  # the shards are sized for the most load

            async def go(stop):
                async with fleet_parts(cfg, spec, top, api_key) as kw:
                    return await run_plan(spec, prompts, plans, on_level,
                                          should_stop=lambda: target.died() or files.error,
                                          on_record=files.record, stop=stop, **kw)

            try:
                (_, stopped), signum = measure(go, files)
            except (Usage, Unreachable):
                files.close()
                files.discard_if_empty()
                raise
        finally:
            files.close()
        report_stop(stopped, signum, files.levels, meta)
        if auto and auto.done is not None:
            meta.notes.append(f"ladder: {auto.done.why}")
            if auto.hold_at is not None and len(files.levels) > (auto.n_ladder or 0):
                at = f"{auto.hold_at:g} req/s" if rates is not None else f"concurrency {auto.hold_at}"
                meta.notes.append(f"the last level is the hold at {at} for {sw.hold:g} s "
                                  "(not part of the ladder's verdict)")
        saved = files.save()  # final before a launched server is stopped (a second Ctrl-C may come then)
    levels = files.levels
    if not saved and files.error != stopped:
        err(files.error or "results not saved")
    knee = files.verdict()
    if args.json:
        print(render_json(meta, levels, knee), end="")
    else:
        if rates is not None:
            from ..report.rates import rate_table

            shown = sorted(levels, key=lambda lv: lv.request_rate or 0.0)
            print(rate_table(shown) if levels else "(no level finished)")
        else:
            shown = sorted(levels, key=lambda lv: lv.max_concurrency or 0) if auto else levels
            print(classic_table(shown) if levels else "(no level finished)")
        lines = verdict_lines(knee)
        if lines:
            print("\n" + "\n".join(lines))
        print("\n" + files.saved_lines())
    code = exit_code(stopped, signum, levels, cfg.load.max_error_rate)
    return EXIT_FAIL if code == 0 and not saved else code


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_target(p, many=True)
    p.add_argument("--levels", type=parse_levels, help="comma-separated concurrency levels (default 40,60,80)")
    p.add_argument("--mode", choices=("wave", "steady"))
    p.add_argument("--duration", type=float, metavar="S", help="steady mode: seconds per level")
    p.add_argument("--requests", type=int, metavar="N", help="steady mode: requests per level")
    p.add_argument("--warmup", type=float, metavar="S", help="steady mode: warm-up excluded from each level")
    p.add_argument("--out", metavar="DIR", help="results folder (default ./results)")
    a = p.add_argument_group("saturation")
    a.add_argument("--auto", action="store_true", default=None,
                   help="find the knee by itself: levels x2 from --start while throughput grows, then bisection "
                        "near the knee, each held until steady (instead of --levels)")
    a.add_argument("--start", type=int, metavar="N", help="--auto: the first level (default 1)")
    a.add_argument("--max-concurrency", type=int, metavar="N",
                   help="--auto: the highest level (default 1024); with request rates: the cap on requests in flight")
    a.add_argument("--budget", type=float, metavar="S", help="--auto: seconds for the whole ladder (default 900)")
    a.add_argument("--hold", type=float, metavar="S",
                   help="--auto: then stay S seconds at the level found (a demo or soak at the knee)")
    a.add_argument("--slo", metavar="OBJ", help="e.g. ttft_p99=2s,itl_p99=100ms,e2el_p90=30s: goodput is the "
                                                "largest level meeting it (the results' names; s, ms or us)")
    a.add_argument("--knee-share", type=float, metavar="R",
                   help="the knee: the lowest level within R of the peak throughput (default 0.9)")
    add_rate_arguments(p)
    p.add_argument("--json", action="store_true")
    add_load(p)


def level_name(lv) -> str:
    """How progress lines name a level: its offered rate in an open loop, else its concurrency."""
    if lv.request_rate:
        return f"rate {lv.request_rate:g} req/s" + (f" (cap {lv.max_concurrency})" if lv.max_concurrency else "")
    return f"level {lv.max_concurrency}"


def _windowed(lv) -> bool:
    """A steady level measured over a settled window (a wave's "window" is the whole wave)."""
    return lv.window is not None and not lv.window.rule.startswith("wave")
