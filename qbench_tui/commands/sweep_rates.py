"""`qbench sweep` over request rates: `--request-rates R1,R2,...` (each level an open loop at that rate) and
`--auto --request-rate START` (the ladder over rates, engine/rate_ladder.py). The flags' checks, the levels' plans
and the ladder's plans; sweep.py runs them as it runs concurrency levels.

Why `--auto --request-rate START` rather than a flag of its own: `--request-rate` is what `qbench run` calls an
open loop's rate, so the axis is named the same way in both commands, and with `--auto` it is where the ladder
starts, as `--start` is for concurrency. `--max-concurrency` keeps its `qbench run --request-rate` meaning here:
the cap on requests in flight (a request due while the cap is full goes out late, which the schedule lag shows)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from .common import Usage


@dataclass(frozen=True)
class RateSweep:
    """What the flags asked for: fixed `rates`, or the ladder (`ladder` set), at `burstiness`, capped at `cap`
    in flight (0: no cap)."""

    rates: tuple[float, ...]
    burstiness: float
    cap: int
    ladder: object | None = None  # engine/rate_ladder.RateLadderSpec

    def describe(self) -> str:
        arrivals = "Poisson arrivals" if self.burstiness == 1 else f"gamma arrivals, burstiness {self.burstiness:g}"
        cap = f"at most {self.cap} in flight" if self.cap else "no cap on requests in flight"
        if self.ladder is None:
            return f"open loop at {', '.join(f'{r:g}' for r in self.rates)} req/s ({arrivals}, {cap})"
        lad = self.ladder
        return (f"auto ladder over request rates from {lad.start:g} req/s, x{lad.growth:g} up to {lad.max_rate:g} "
                f"req/s then bisection, budget {lad.budget_s:g} s, knee = lowest rate kept up within "
                f"{lad.share:.0%} of the peak ({arrivals}, {cap})")


def _given(cfg, key: str) -> bool:
    return cfg.source(key) != "default"


def check_rates(args: argparse.Namespace, cfg) -> RateSweep | None:
    """The open-loop sweep the flags and TOML ask for, None for a concurrency sweep, or Usage with one line."""
    from ..engine.rate_ladder import RateLadderSpec

    sw = cfg.sweep
    if args.request_rate is not None and not args.request_rate > 0:
        raise Usage(f"--request-rate must be a positive number of requests/s, got {args.request_rate:g}")
    rates, start = sw.request_rates, sw.request_rate
    if not rates and not start:
        for key, flag in (("sweep.burstiness", "--burstiness"), ("sweep.max_request_rate", "--max-request-rate")):
            if _given(cfg, key):
                raise Usage(f"{flag} needs --request-rates R1,R2,... or --auto --request-rate START")
        return None
    if rates and start:
        raise Usage("give --request-rates R1,R2,... (fixed rates) or --auto --request-rate START (the ladder), "
                    "not both")
    if _given(cfg, "sweep.levels"):
        raise Usage("--levels are concurrencies and --request-rates / --request-rate are rates: sweep one axis")
    if _given(cfg, "sweep.mode") and sw.mode == "wave":
        raise Usage("--mode wave sends C at once: it does not apply to request rates (an open loop)")
    if rates and sw.auto:
        raise Usage("--auto chooses the rates itself: give --auto --request-rate START, or --request-rates without "
                    "--auto")
    if start and not sw.auto:
        raise Usage("--request-rate START is where the rate ladder starts: add --auto, or give fixed rates with "
                    "--request-rates R1,R2,...")
    if sw.auto and _given(cfg, "sweep.start"):
        raise Usage("--auto --start N is the concurrency ladder and --auto --request-rate R the rate ladder: "
                    "give one of them")
    if _given(cfg, "sweep.max_request_rate") and not sw.auto:
        raise Usage("--max-request-rate needs --auto --request-rate START")
    if not sw.auto and sw.duration <= 0 and sw.requests <= 0:
        raise Usage("--request-rates needs --duration S or --requests N (per rate)")
    cap = sw.max_concurrency if _given(cfg, "sweep.max_concurrency") else 0
    if not sw.auto:
        return RateSweep(tuple(rates), sw.burstiness, cap)
    if sw.max_request_rate < start:
        raise Usage(f"--max-request-rate {sw.max_request_rate:g} is below the ladder's start {start:g}: raise "
                    "--max-request-rate or lower --request-rate")
    return RateSweep((), sw.burstiness, cap, RateLadderSpec(start=start, max_rate=sw.max_request_rate,
                                                            budget_s=sw.budget, share=sw.knee_share))


def level_plan(setup: RateSweep, cfg, rate: float, hold_s: float | None = None, auto_level_s: float = 10.0):
    """The open-loop LevelPlan at `rate`: --duration or --requests per level (the ladder: AUTO_LEVEL_S without
    either); a hold runs `hold_s` seconds."""
    from ..headless import LevelPlan

    sw = cfg.sweep
    if hold_s:
        duration, requests = hold_s, None
    else:
        duration = sw.duration or (None if sw.requests or setup.ladder is None else auto_level_s)
        requests = sw.requests or None
    return LevelPlan(setup.cap, "rate", duration, requests, sw.warmup, rate=rate, burstiness=setup.burstiness,
                     seed=cfg.load.seed)


def add_rate_arguments(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("open loop (request rates instead of concurrencies)")
    o.add_argument("--request-rates", metavar="R1,R2,...",
                   help="comma-separated offered rates in requests/s, each level an open loop at that rate")
    o.add_argument("--request-rate", type=float, metavar="R",
                   help="--auto: the rate ladder's first rate (x2 while the server keeps up, then bisection)")
    o.add_argument("--max-request-rate", type=float, metavar="R", help="--auto --request-rate: the highest rate "
                                                                       "(default 1024)")
    o.add_argument("--burstiness", type=float, metavar="B", help="gamma shape of the arrivals: 1 = Poisson "
                                                                 "(default), <1 burstier")
    # --max-concurrency (the saturation group's) caps requests in flight in an open loop, as in `qbench run`


def rate_overrides(args: argparse.Namespace) -> dict:
    return {"sweep.request_rates": args.request_rates, "sweep.request_rate": args.request_rate,
            "sweep.max_request_rate": args.max_request_rate, "sweep.burstiness": args.burstiness}
