"""`qbench sim`: a simulated vLLM server (OpenAI API, SSE, /metrics) driven by a scheduler/KV model."""
from __future__ import annotations

import argparse
import asyncio
import sys

from .faults import Faults, add_fault_arguments
from .profile import list_profiles, load_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port (printed in the banner)")
    parser.add_argument("--profile", default="qwen2.5-14b-awq-32gb", metavar="NAME|FILE",
                        help=f"built-in profile ({', '.join(list_profiles())}) or a TOML file")
    parser.add_argument("--model", default=None, help="served model name (default: the profile's model)")
    parser.add_argument("--metrics-schema", choices=("v1", "v0"), default="v1",
                        help="v1: vLLM 0.13 metric names; v0: old gpu_* names, no engine label")
    parser.add_argument("--seed", type=int, default=0, help="seeds answer lengths and fault decisions")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="run the performance model this many times faster than real time")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile field, e.g. --set max_num_seqs=16 (repeatable)")
    parser.add_argument("--record-truth", default=None, metavar="FILE",
                        help="append per-request server-side chunk send times (JSONL)")
    parser.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--list-profiles", action="store_true", help="print the built-in profiles and exit")
    add_fault_arguments(parser)


def _profile_from_args(args: argparse.Namespace):
    prof = load_profile(args.profile)
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    return prof.replace(**overrides) if overrides else prof


def run(args: argparse.Namespace) -> int:
    from .runner import SimServer  # uvicorn import only when actually serving

    if getattr(args, "list_profiles", False):
        for name in list_profiles():
            print(f"{name:24} {load_profile(name).description}")
        return 0
    try:
        profile = _profile_from_args(args)
        faults = Faults.from_args(args)
        if args.speed <= 0:
            raise ValueError("--speed must be > 0")
        server = SimServer(profile, args.host, args.port, model_name=args.model,
                           metrics_schema=args.metrics_schema, speed=args.speed, seed=args.seed,
                           record_truth=args.record_truth, faults=faults, hard_crash=True,
                           log_level=args.log_level,
                           on_listening=lambda s: print(s.banner(), flush=True))
    except (ValueError, OSError) as e:
        print(f"qbench sim: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        runner(server.serve())
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qbench sim", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
