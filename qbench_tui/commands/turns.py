"""`--turns K` / `--think-time S`: multi-turn conversations (engine/conversations.py) for `qbench run` and `qbench
sweep` (closed loop, wave and steady). Flags, their one-line checks (exit 2, nothing started), and the
conversation source built once the server is up (its max_model_len, through /tokenize, refuses a turn that would
not fit)."""
from __future__ import annotations

import argparse
import sys

_SUPPORTED = ("qbench_tui.commands.run", "qbench_tui.commands.sweep")


class Usage(ValueError):
    """A conversation setting that cannot be: commands.common turns it into its own Usage (exit 2, one line)."""


def add_turns(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("conversations (qbench run / sweep, closed loop)")
    g.add_argument("--turns", type=int, metavar="K",
                   help="each user holds K-turn conversations: every next request resends the history and the "
                        "answer streamed back (default 1: single requests)")
    g.add_argument("--think-time", type=float, metavar="S",
                   help="seconds a user waits between turns, not in flight (default 0)")


def check(args: argparse.Namespace, cfg) -> None:
    """What needs no server: a command without conversations, an open loop, think time without turns."""
    lc = cfg.load
    if lc.turns <= 1:
        if lc.think_time and cfg.source("load.think_time") != "default":
            raise Usage("--think-time is the wait between turns: give --turns K (K > 1) with it")
        return
    func = getattr(args, "func", None)
    module = getattr(func, "__module__", "") if func is not None else ""
    if module and module not in _SUPPORTED:
        raise Usage(f"--turns {lc.turns}: conversations run in `qbench run` and `qbench sweep` only in this "
                    "round, not here")
    for flag, name in (("--request-rate", "request_rate"), ("--trace", "trace")):
        if getattr(args, name, None) is not None:
            raise Usage(f"--turns {lc.turns} with {flag}: conversations run in a closed loop (-c) only in this "
                        "round; an open loop of conversations is not supported yet")


def fits(turns: int, input_len: int, output_len: int, max_model_len: int | None) -> str | None:
    """Why the last turn of a shaped conversation cannot fit, or None: K·N + (K−1)·M + M tokens at turn K."""
    if not max_model_len or not input_len:
        return None
    need = turns * input_len + turns * output_len
    if need <= max_model_len:
        return None
    return (f"--turns {turns}: the last turn needs {turns} x {input_len} input + {turns - 1} x {output_len} "
            f"answer + {output_len} output = {need} tokens, over the server's max_model_len {max_model_len}: "
            "lower --turns, --random-input-len or the output length")


def conversations(cfg, prompts, url: str, model: str, api_key: str | None):
    """The conversation source over `prompts` (a plain source or a shaped Dataset), told the server's
    max_model_len when /tokenize says it. Usage (one line) when the shaped last turn cannot fit."""
    import asyncio

    from ..engine.conversations import Conversations
    from ..engine.tokenizer import ServerTokenizer

    lc = cfg.load
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def probe() -> ServerTokenizer:
        async with ServerTokenizer(url, model, headers, chat=lc.endpoint == "chat", ca_cert=lc.ca_cert,
                                   insecure=lc.insecure) as tok:
            await tok.count(prompts(0))
        return tok

    tok = asyncio.run(probe())
    mml = tok.max_model_len
    if (why := fits(lc.turns, lc.random_input_len, lc.random_output_len or lc.max_tokens, mml)) is not None:
        raise Usage(why)
    counted = getattr(prompts, "counted", None)  # a Dataset's server counts of its whole prompts
    count = (lambda j: counted[j % len(counted)]) if counted else None
    source = Conversations(prompts, lc.turns, lc.think_time, chat=lc.endpoint == "chat", max_tokens=lc.max_tokens,
                           max_model_len=mml, count=count, seed=lc.seed)
    limit = f"max_model_len {mml}" if mml else f"max_model_len unknown ({tok.error or 'not told'}: a turn over " \
                                               "the context fails at the server instead of being refused)"
    print(f"  {source.describe()}; {limit}", file=sys.stderr)
    return source
