"""What is sent beyond one prompt: shaped datasets (engine/datasets.py — random lengths, shared-prefix groups,
sized by the server's /tokenize), the open loop (`qbench run --request-rate`) and request traces (`--trace`).
Flags, their one-line checks (exit 2, nothing started) and building the prompts once the server is up."""
from __future__ import annotations

import argparse
import sys


class Usage(ValueError):
    """A shape or dataset that cannot be: commands.common turns it into its own Usage (exit 2, one line)."""

DATASET_KEYS = ("random_input_len", "random_output_len", "random_range_ratio", "shared_prefix_len", "prefix_groups",
                "num_prompts", "seed")


def add_dataset(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset (vllm bench serve's random dataset; lengths as the server counts them)")
    g.add_argument("--random-input-len", type=int, metavar="N",
                   help="prompts of N tokens by the server's count (chat template included), sized through its "
                        "/tokenize; without /tokenize, about N words (said)")
    g.add_argument("--random-output-len", type=int, metavar="M", help="max_tokens per request drawn around M "
                                                                      "(with --ignore-eos: exactly)")
    g.add_argument("--random-range-ratio", type=float, metavar="R",
                   help="lengths uniform in [L(1-R), L(1+R)], R in [0, 1) (default 0)")
    g.add_argument("--shared-prefix-len", type=int, metavar="N",
                   help="N tokens shared within each prefix group, before each request's own content")
    g.add_argument("--prefix-groups", type=int, metavar="G", help="distinct shared prefixes (default 1)")
    g.add_argument("--num-prompts", type=int, metavar="N", help="distinct prompts in the dataset (default 1000)")
    g.add_argument("--seed", type=int, help="seeds lengths and content (default 0)")


def shape_of(cfg):
    """The dataset's Shape when the config shapes one, else None. Usage (one line) for what cannot be."""
    from ..engine.datasets import DatasetError, Shape

    lc = cfg.load
    if not (lc.random_input_len or lc.random_output_len or lc.shared_prefix_len):
        given = [f"--{k.replace('_', '-')}" for k in ("random_range_ratio", "prefix_groups", "num_prompts")
                 if cfg.source(f"load.{k}") != "default"]
        if given:
            raise Usage(f"{', '.join(given)} shape(s) a dataset: give --random-input-len, --random-output-len or "
                        "--shared-prefix-len too")
        return None
    if lc.prompts_file or lc.prompt_len:
        raise Usage("--random-input-len / --random-output-len / --shared-prefix-len make the prompts: drop "
                    + ("--prompts" if lc.prompts_file else "--prompt-len"))
    shape = Shape(input_len=lc.random_input_len, output_len=lc.random_output_len,
                  range_ratio=lc.random_range_ratio, shared_prefix_len=lc.shared_prefix_len,
                  prefix_groups=lc.prefix_groups, unique_first=lc.unique_prefix, num_prompts=lc.num_prompts,
                  seed=lc.seed)
    try:
        shape.check()
    except DatasetError as e:
        raise Usage(str(e)) from None
    if lc.shared_prefix_len and not lc.random_input_len:
        raise Usage("--shared-prefix-len needs --random-input-len (the whole prompt's length, prefix included)")
    return shape


def describe_shape(shape) -> str:
    from ..engine.datasets import Dataset, Sizing

    return Dataset([""], shape, Sizing(False, ""), []).describe().split("; sizing")[0].replace(
        "1 distinct prompt(s)", f"{shape.num_prompts} distinct prompt(s)")


def _tokenizer(cfg, url: str, model: str, api_key: str | None):
    from ..engine.tokenizer import ServerTokenizer

    lc = cfg.load
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return ServerTokenizer(url, model, headers, chat=lc.endpoint == "chat", ca_cert=lc.ca_cert, insecure=lc.insecure)


def _say_refused(label: str, noun: str, refusals: list, total: int, hint: str) -> None:
    """The refusals, said once before the load starts; all of them refused: nothing to measure (Usage, exit 2)."""
    if not refusals:
        return
    if len(refusals) >= total:
        first = refusals[0].reason.removeprefix("refused before sending: ")
        raise Usage(f"{label}: all {total} {noun} exceed the server's context with their output (the first: "
                    f"{first}): {hint}")
    print(f"  {label}: {len(refusals)} of {total} {noun} exceed the context and will be refused", file=sys.stderr)


def build_dataset_prompts(cfg, shape, url: str, model: str, api_key: str | None):
    """The dataset, sized by the server's /tokenize (before any load starts); its description goes to stderr.
    A prompt the server's context cannot hold with its output is Refused (counted, never sent), said here; all of
    them: Usage."""
    import asyncio

    from ..engine.datasets import build_dataset, refuse_over_context
    from ..engine.prompts import Refused

    async def build():
        async with _tokenizer(cfg, url, model, api_key) as tok:
            ds = await build_dataset(shape, tok.count)
        return ds, tok

    ds, tok = asyncio.run(build())
    print(f"  dataset: {ds.describe()}", file=sys.stderr)
    refuse_over_context(ds, tok.max_model_len, cfg.load.max_tokens)
    _say_refused("dataset", "prompts", [p for p in ds.pool if isinstance(p, Refused)], len(ds.pool),
                 "lower --random-input-len or --max-tokens / --random-output-len")
    return ds


def build_trace_prompts(cfg, reqs, url: str, model: str, api_key: str | None):
    """A trace's prompts sized by the server's /tokenize (engine/trace.size_trace), before the load starts; how it
    was sized and what will be refused go to stderr; every request over the context: Usage."""
    import asyncio

    from ..engine.trace import size_trace

    async def build():
        async with _tokenizer(cfg, url, model, api_key) as tok:
            return await size_trace(reqs, tok.count, lambda: tok.max_model_len), tok

    tp, tok = asyncio.run(build())
    why = tok.error if tok.error and not tok.error.startswith("no /tokenize") else ""
    print(f"  trace: {len(reqs)} requests, sizing {tp.sizing.describe()}" + (f" ({why})" if why else ""),
          file=sys.stderr)
    _say_refused("trace", "requests", [tp.refusals[i] for i in sorted(tp.refusals)], len(reqs),
                 "the trace's lengths do not fit this server")
    return tp


def check_file_prompts(cfg, prompts, url: str, model: str, api_key: str | None):
    """--prompts FILE: entries the server's context cannot hold with their output are Refused (counted, never
    sent), said once on stderr; all of them: Usage. Other sources are returned as they are."""
    import asyncio

    from ..engine.prompts import check_context, load_prompts

    lc = cfg.load
    if not lc.prompts_file:
        return prompts
    size = len(load_prompts(lc.prompts_file))  # read before (common._prompts): the same file, the same pool

    async def check():
        async with _tokenizer(cfg, url, model, api_key) as tok:
            return await check_context(prompts, size, tok, lc.max_tokens)

    checked, _ = asyncio.run(check())
    _say_refused("prompts file", "prompts", [checked.refusals[i] for i in sorted(checked.refusals)], size,
                 "shorten them or lower --max-tokens / their max_tokens")
    return checked
