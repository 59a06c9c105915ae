"""`qbench compare A.json B.json [...]`: runs side by side (report/compare.py), qbench's results and vllm bench
serve's alike, and `--fail-if` as a CI gate (exit 3 when a bound is broken)."""
from __future__ import annotations

import argparse

from .common import EXIT_ERRORS, EXIT_OK, Usage, err
from .report import add_cost, add_output, cost_from, emit, output_format, read_run, render

DESCRIPTION = """\
Files: results .json from `qbench sweep`, or `vllm bench serve --save-result` files (one run per file, or several
with --append-result); each run is a level, matched to the others by concurrency. The first file is the baseline A.

--fail-if "output_throughput<-5%,p99_ttft_ms>+10%": exit 3 when a later file's value CHANGED relative to A beyond
the bound at ANY concurrency level the two have in common (per level, not an average over levels). Metrics are the
level keys of the files: output_throughput, request_throughput, total_token_throughput, request_goodput, and
{mean,median,p90,p99}_{ttft,tpot,itl,e2el}_ms (p50_* = median_*). A metric missing from a file is an error (exit 2).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", metavar="FILE", help="two or more results files; the first is the baseline")
    add_output(p)
    p.add_argument("--fail-if", metavar="BOUNDS",
                   help='e.g. "output_throughput<-5%%,p99_ttft_ms>+10%%": exit 3 when B regresses against A beyond '
                        "a bound at any level in common (see above)")
    add_cost(p)


def _labels(n: int) -> list[str]:
    """A, B, C, ... (Z, then A2, B2): results files' names are long, and the runs section says which is which."""
    return [chr(ord("A") + i % 26) + (str(i // 26 + 1) if i >= 26 else "") for i in range(n)]


def run(args: argparse.Namespace) -> int:
    from ..report.compare import CompareError, build_compare, check_metrics, common_levels, gate, parse_fail_if

    if len(args.results) < 2:
        raise Usage("compare needs at least two results files")
    try:
        bounds = parse_fail_if(args.fail_if) if args.fail_if is not None else ()
    except CompareError as e:
        raise Usage(str(e)) from None
    same = {p for p in args.results if args.results.count(p) > 1}
    if same:
        raise Usage(f"the same file given twice: {', '.join(sorted(same))}")
    labels = _labels(len(args.results))
    runs = [read_run(p, label) for p, label in zip(args.results, labels)]
    costs = [cost_from(args, r) for r in runs]
    try:
        common_levels(runs)
        check_metrics(runs, bounds)
    except CompareError as e:
        raise Usage(str(e)) from None
    breaches = gate(runs, bounds) if bounds else []
    fmt = output_format(args)
    emit(render(build_compare(runs, costs, bounds, breaches), fmt), args, fmt)
    if breaches:
        for line in breaches:
            err(f"regression: {line}")
        return EXIT_ERRORS
    return EXIT_OK
