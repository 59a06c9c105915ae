"""`qbench replay SESSION.json --url URL`: a dashboard session's timeline (every concurrency change, pause and
restart, with times) re-run headless, each stretch at one concurrency a level held as long as it was, so a setting
found by hand can be measured again or put in CI. The requests are the session's (its prompt source, max tokens,
endpoint, ignore_eos, unique prefix, temperature) unless a flag says otherwise. Normal results files come out."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .common import (
    EXIT_FAIL,
    Target,
    Usage,
    add_load,
    add_target,
    config_from,
    err,
    print_failures,
    resolve_model,
    spec_and_prompts,
)

# the session's methodology keys that choose what is sent, and the flag each fills when not given
_SENT = {"max_tokens": "max_tokens", "endpoint": "endpoint", "ignore_eos": "ignore_eos",
         "unique_prefix": "unique_prefix", "temperature": "temperature"}


def read_session(path: str):
    """(the saved document, its replay steps); Usage with one line when the file cannot be replayed."""
    from ..engine.replay import ReplayError, read_timeline

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise Usage(f"{path}: cannot read it: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Usage(f"{path}: not a qbench results file (not valid JSON: {e})") from None
    if not isinstance(data, dict) or "levels" not in data:
        raise Usage(f"{path}: not a qbench results file")
    try:
        return data, read_timeline(data, path)
    except ReplayError as e:
        raise Usage(str(e)) from None


def _session_load(args: argparse.Namespace, data: dict) -> None:
    """The session's own request settings, where no flag overrides them."""
    m = data.get("methodology") or {}
    for key, attr in _SENT.items():
        if getattr(args, attr, None) is None and m.get(key) is not None:
            setattr(args, attr, m[key])
    if args.prompt is None and args.prompts_file is None and args.prompt_len is None:
        src = str(m.get("prompt_source") or "fixed")
        if src == "fixed" and m.get("prompt"):
            args.prompt = m["prompt"]
        elif (syn := re.match(r"synthetic:(\d+)", src)):
            args.prompt_len = int(syn.group(1))
        elif src.startswith("file:"):
            f = src[5:].split(" (")[0]
            if not Path(f).is_file():
                raise Usage(f"the session read its prompts from {f}, which is not here: give --prompts FILE")
            args.prompts_file = f


def run(args: argparse.Namespace) -> int:
    from ..engine.replay import ReplayError, steps

    data, timeline = read_session(args.session)
    try:
        todo = steps(timeline, args.speed)
    except ReplayError as e:
        raise Usage(str(e)) from None
    if not any(s.kind == "level" for s in todo):
        raise Usage(f"{args.session}: the timeline has nothing under load to replay")
    _session_load(args, data)
    cfg = config_from(args, {"sweep.out": args.out})

    from ..config import resolve_api_key
    from ..engine.knee import find_knee
    from ..headless import LevelPlan, run_plan
    from ..report.files import classic_table, verdict_lines
    from .results import RunFiles, check_out, exit_code, measure, report_stop, run_meta

    api_key, key_source = resolve_api_key(args.api_key)
    target = Target(args, cfg)
    check_out(cfg.sweep.out)
    plans = [LevelPlan(s.concurrency, s.mode, duration=s.duration_s, settle=False, rate=s.rate,
                       burstiness=s.burstiness) if s.kind == "level"
             else LevelPlan(0, "wait", duration=s.duration_s) for s in todo if s.kind != "note"]
    with target as url:
        model, version = resolve_model(url, api_key, cfg.load.model, cfg)
        spec, prompts = spec_and_prompts(cfg, url, model, api_key)
        meta = run_meta(cfg, target, url, model, version, key_source,
                        [p.concurrency for p in plans if p.mode == "steady"], "replay")
        rates = sum(p.mode == "rate" for p in plans)
        meta.notes.append(f"replay of {args.session}" + (f" at --speed {args.speed:g}" if args.speed != 1 else "")
                          + ": each stretch at one concurrency held as long as it was, measured from its start")
        meta.notes += [s.note for s in todo if s.kind == "note"]
        # a knee within one loop: closed-loop levels when there are any (find_knee keeps those), else the rates
        files = RunFiles(cfg.sweep.out, meta, lambda lvs: find_knee(lvs, cfg.sweep.knee_share))
        print(f"qbench replay {args.session} -> {url}: {sum(p.mode == 'steady' for p in plans)} closed-loop "
              f"and {rates} open-loop level(s), "
              f"{sum(p.duration or 0 for p in plans):.0f} s", file=sys.stderr)
        for s in todo:
            if s.kind == "note":
                print(f"  note: {s.note}", file=sys.stderr)

        def on_level(lv, recs) -> None:
            files.add_level(lv)
            print(f"  level {lv.max_concurrency}: {lv.completed} ok, {lv.failed} failed, {lv.duration_s:.2f} s, "
                  f"{lv.output_throughput or 0.0:.1f} tok/s", file=sys.stderr)
            print_failures(lv)

        try:
            (_, stopped), signum = measure(lambda stop: run_plan(
                spec, prompts, plans, on_level, should_stop=lambda: target.died() or files.error,
                on_record=files.record, stop=stop), files)
        finally:
            files.close()
        report_stop(stopped, signum, files.levels, meta)
        saved = files.save()
    if not saved and files.error != stopped:
        err(files.error or "results not saved")
    print(classic_table(files.levels) if files.levels else "(no level finished)")
    lines = verdict_lines(files.verdict())
    if lines:
        print("\n" + "\n".join(lines))
    print("\n" + files.saved_lines())
    code = exit_code(stopped, signum, files.levels, cfg.load.max_error_rate)
    return EXIT_FAIL if code == 0 and not saved else code


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", metavar="SESSION.json", help="a results .json saved by the dashboard")
    add_target(p)
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="compress every wait and level by X (default 1: as the session ran)")
    p.add_argument("--out", metavar="DIR", help="results folder (default ./results)")
    add_load(p)
