"""`qbench` entry point: the parser and the exit-status mapping. Each sub-command lives in qbench_tui/commands/ and
imports what it needs lazily, so `qbench --help` stays fast and never imports Textual."""
from __future__ import annotations

import argparse
import sys

from .commands import live, probe, run, sweep
from .commands.common import EXIT_FAIL, EXIT_USAGE, Unreachable, Usage, err


def _cmd_sim(args: argparse.Namespace) -> int:
    from .server.sim.cli import run as run_sim

    return run_sim(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server.serve_cli import run as run_serve

    return run_serve(args)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .server.serve_cli import add_arguments as serve_args
    from .server.sim.cli import add_arguments as sim_args

    p = argparse.ArgumentParser(prog="qbench", description="Find how much load a vLLM deployment takes, and why "
                                "it stops there. Without a sub-command: the live dashboard (`qbench tui`).")
    p.add_argument("--version", action="version", version=f"qbench-tui {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sp = sub.add_parser("probe", help="one look at a server: version, models, KV/prefix cache, queue")
    probe.add_arguments(sp)
    sp.set_defaults(func=probe.run)

    sr = sub.add_parser("run", help="one concurrency level, summary like vllm bench serve")
    run.add_arguments(sr)
    sr.set_defaults(func=run.run)

    sw = sub.add_parser("sweep", help="the classic benchmark: levels 40,60,80 -> table + results files")
    sweep.add_arguments(sw)
    sw.set_defaults(func=sweep.run)

    from .commands import compare, replay, report

    rp = sub.add_parser("report", help="the write-up of a results file: analysis, recommendations, charts, cost")
    report.add_arguments(rp)
    rp.set_defaults(func=report.run)

    cp = sub.add_parser("compare", help="two or more results files side by side (qbench or vllm bench serve); "
                        "--fail-if gates CI", description=compare.DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_arguments(cp)
    cp.set_defaults(func=compare.run)

    rr = sub.add_parser("replay", help="re-run a dashboard session's timeline headless (levels as long as they were)")
    replay.add_arguments(rr)
    rr.set_defaults(func=replay.run)

    ss = sub.add_parser("sim", help="run the simulated vLLM server (no GPU)")
    sim_args(ss)
    ss.set_defaults(func=_cmd_sim)

    sv = sub.add_parser("serve", help="launch `vllm serve` from a config and supervise it until Ctrl-C")
    serve_args(sv)
    sv.set_defaults(func=_cmd_serve)

    st = sub.add_parser("tui", help="the live dashboard (default)")
    live.add_arguments(st, demo=False)
    st.set_defaults(func=live.run_tui)

    sd = sub.add_parser("demo", help="the dashboard on the built-in simulator: no GPU needed")
    live.add_arguments(sd, demo=True)
    sd.set_defaults(func=live.run_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["tui", *argv]
    args = parser.parse_args(argv)
    from .server.proctree import install_signal_handlers

    install_signal_handlers()
    try:
        return args.func(args)
    except Usage as e:
        err(str(e))
        return EXIT_USAGE
    except Unreachable as e:
        err(str(e))
        return EXIT_FAIL
    except KeyboardInterrupt:
        err("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
