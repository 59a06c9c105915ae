"""`qbench report RESULT.json`: the write-up of one run (report/writeup.py) as text, markdown or one HTML file.

Reading a results file lives here because it needs the engine's level model and verdict (LevelResult.from_json,
Knee.from_json, find_knee), which the report layer may not import. A qbench file's own "saturation" is its verdict
(the sweep judged it on the ladder's levels, a hold excluded); a file without one (vllm bench serve's, older
files) is judged by the same find_knee the sweep uses.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import EXIT_OK, Usage

FORMATS = ("txt", "md", "html")
_SUFFIX = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".txt": "txt"}


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="write here (.md / .html / .txt pick the format) "
                                                          "instead of standard output")
    p.add_argument("--format", choices=FORMATS, help="txt (default on standard output), md or html (one "
                                                     "self-contained file: inline SVG charts, no network)")


def add_cost(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cost")
    g.add_argument("--gpu-cost-per-hour", type=float, metavar="USD",
                   help="price of one GPU-hour: adds cost per million output tokens at each level and at the "
                        "recommended levels (also [report] gpu_cost_per_hour)")
    g.add_argument("--gpus", type=int, metavar="N", help="GPUs the price covers (default: the server config's "
                   "tensor x pipeline x data parallel sizes, else the GPUs NVML saw, else 1; also [report] gpus)")
    g.add_argument("--config", metavar="FILE", help="TOML config whose [report] section gives the two above")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("result", metavar="RESULT.json",
                   help="a results .json from qbench sweep, or a `vllm bench serve --save-result` file")
    add_output(p)
    add_cost(p)


def read_run(path: str, label: str = ""):
    """One results file as a report.document.Run, or Usage with one line saying what is wrong with it."""
    from ..engine.knee import Knee, find_knee
    from ..engine.result import LevelResult
    from ..report import vllm_bench
    from ..report.document import Run
    from ..report.files import SCHEMA_VERSION

    p = Path(path)
    if p.name.endswith(".requests.jsonl"):
        raise Usage(f"{path}: a per-request log; give the results file beside it "
                    f"({p.name[:-len('.requests.jsonl')]}.json)")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Usage(f"{path}: no such file") from None
    except IsADirectoryError:
        raise Usage(f"{path}: a directory; give a results .json file") from None
    except UnicodeDecodeError:
        raise Usage(f"{path}: not a results file (not UTF-8 text)") from None
    except OSError as e:
        raise Usage(f"{path}: cannot read: {e.strerror}") from None
    if not text.strip():
        raise Usage(f"{path}: empty file")
    try:
        objs = vllm_bench.split_runs(text)
    except json.JSONDecodeError as e:
        end = len(text.rstrip())
        if e.pos >= end - 1 or "Unterminated" in e.msg:
            raise Usage(f"{path}: truncated JSON: it ends before the data does (line {e.lineno}, column "
                        f"{e.colno}); was the run or the copy cut short?") from None
        raise Usage(f"{path}: not JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    doc = objs[0]
    if len(objs) == 1 and isinstance(doc, dict) and doc.get("tool") == "qbench-tui":
        if (doc.get("schema_version") or 0) > SCHEMA_VERSION:
            raise Usage(f"{path}: written by a newer qbench (schema {doc.get('schema_version')}, this one reads "
                        f"{SCHEMA_VERSION}); upgrade qbench")
        if not isinstance(doc.get("levels"), list):
            raise Usage(f"{path}: a qbench file without levels")
    else:
        try:
            doc = vllm_bench.to_results(objs)
        except vllm_bench.NotVllmBench as e:
            raise Usage(f"{path}: {e}") from None
    try:
        levels = [LevelResult.from_json(lv) for lv in doc["levels"]]
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise Usage(f"{path}: a level cannot be read ({type(e).__name__}: {e})") from None
    if not levels:
        raise Usage(f"{path}: no level in it finished: nothing to report")
    levels.sort(key=lambda lv: lv.max_concurrency or 0)  # a ladder measures out of order; reports read by C
    try:
        knee = Knee.from_json(doc.get("saturation")) if doc.get("saturation") else find_knee(levels)
    except (TypeError, AttributeError) as e:
        raise Usage(f"{path}: its saturation object cannot be read ({e})") from None
    return Run(path=path, doc=doc, levels=levels, knee=knee, label=label)


def output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.output:
        return _SUFFIX.get(Path(args.output).suffix.lower(), "txt")
    return "txt"


def cost_from(args: argparse.Namespace, run) -> object | None:
    """The Cost for `run` from the flags, else the config's [report]; None when no price was given."""
    from ..config import ConfigError, check_flag, load_config
    from ..report.cost import cost_for

    try:
        check_flag("--gpu-cost-per-hour", args.gpu_cost_per_hour)
        check_flag("--gpus", args.gpus)
        cfg = load_config(args.config, {"report.gpu_cost_per_hour": args.gpu_cost_per_hour,
                                        "report.gpus": args.gpus})
    except ConfigError as e:
        raise Usage(str(e)) from None
    rc = cfg.report
    said = "given by --gpus" if cfg.source("report.gpus") == "cli" else f"[report] gpus in {cfg.path}"
    label = run.doc.get("server_config") or ""
    if not label and cfg.server.flags:  # a server qbench did not launch, described by the config given here
        from ..server.argv import config_label

        label = config_label(cfg.server)
    return cost_for(rc.gpu_cost_per_hour, rc.gpus, said, label, run.doc.get("environment"))


def render(doc, fmt: str) -> str:
    if fmt == "html":
        from ..report.html import render_html

        return render_html(doc)
    from ..report.document import render_text

    return render_text(doc, markdown=fmt == "md")


def emit(text: str, args: argparse.Namespace, fmt: str) -> None:
    if not args.output:
        sys.stdout.write(text)
        return
    from ..report.files import atomic_write

    try:
        atomic_write(args.output, text)
    except OSError as e:
        raise Usage(f"{args.output}: cannot write: {e.strerror}") from None
    print(f"wrote {args.output} ({fmt})", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..report.writeup import build_report

    r = read_run(args.result)
    fmt = output_format(args)
    emit(render(build_report(r, cost_from(args, r)), fmt), args, fmt)
    return EXIT_OK
