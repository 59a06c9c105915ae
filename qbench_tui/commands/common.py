"""What the sub-commands share: exit codes, the usage error, argument groups, argv + TOML -> Config, the target
server (a URL, or one launched for the command), model discovery, the event loop and the error-rate exit."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import LoadConfig

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_ERRORS = 0, 1, 2, 3


class Usage(Exception):
    """Bad usage: message to stderr, exit 2, nothing started."""


def err(msg: str) -> None:
    print(f"qbench: {msg}", file=sys.stderr)


def add_target(p: argparse.ArgumentParser, launch: bool = True) -> None:
    p.add_argument("--url", help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8001")
    if launch:
        p.add_argument("--launch", metavar="CONFIG", help="launch `vllm serve` from CONFIG's [server], then run")
        p.add_argument("--vllm-bin", help="vllm executable (default: `vllm` on PATH or [server] vllm_bin)")
    p.add_argument("--config", metavar="FILE", help="TOML config ([server], [load], [sweep]); flags win")
    p.add_argument("--api-key", help="Bearer token (default: $QBENCH_API_KEY or $OPENAI_API_KEY); never written out")


def add_load(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load")
    g.add_argument("--model", help="model id (default: first id from /v1/models)")
    g.add_argument("--endpoint", choices=("chat", "completions"), help="chat (default) or completions")
    g.add_argument("--prompt", help=f"the prompt (default: {LoadConfig().prompt!r})")
    g.add_argument("--prompts", metavar="FILE", dest="prompts_file",
                   help=".txt (one per line), .jsonl (prompt or messages, optional per-line output_tokens "
                        "as in vllm bench serve's custom dataset) or ShareGPT .json")
    g.add_argument("--prompt-len", type=int, metavar="N", help="synthetic prompt of about N tokens")
    g.add_argument("--unique-prefix", action="store_true", default=None,
                   help="random per-request prefix so prefix caching cannot help")
    g.add_argument("--max-tokens", type=int, metavar="N", help="max output tokens per request (default 200)")
    g.add_argument("--ignore-eos", action="store_true", default=None, help="always generate max-tokens tokens")
    g.add_argument("--temperature", type=float)
    g.add_argument("--timeout", type=float, metavar="S", help="read stall that fails a request (default 600)")
    g.add_argument("--max-error-rate", type=float, metavar="R", help="exit 3 when the failed share exceeds R")


LOAD_KEYS = ("url", "model", "endpoint", "prompt", "prompts_file", "prompt_len", "unique_prefix", "max_tokens",
              "ignore_eos", "temperature", "timeout", "max_error_rate")


def config_from(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    from ..config import ConfigError, load_config

    overrides = {f"load.{k}": getattr(args, k, None) for k in LOAD_KEYS}
    overrides.update(extra or {})
    if getattr(args, "vllm_bin", None):
        overrides["server.vllm_bin"] = args.vllm_bin
    path = getattr(args, "config", None) or getattr(args, "launch", None)
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        raise Usage(str(e)) from None


def spec_and_prompts(cfg, url: str, model: str, api_key: str | None):
    from ..engine.prompts import PromptError, make_prompt_source
    from ..engine.records import RequestSpec

    lc = cfg.load
    try:
        prompts = make_prompt_source(lc.prompt, lc.prompts_file, lc.prompt_len, lc.unique_prefix)
    except PromptError as e:
        raise Usage(str(e)) from None
    spec = RequestSpec(url=url.rstrip("/"), model=model, endpoint=lc.endpoint, max_tokens=lc.max_tokens,
                       temperature=lc.temperature, ignore_eos=lc.ignore_eos, api_key=api_key,
                       read_timeout=lc.timeout)
    return spec, prompts


def prompt_source(cfg) -> str:
    from ..engine.prompts import describe_source

    return describe_source(cfg.load.prompts_file, cfg.load.prompt_len)


class Unreachable(Exception):
    """The server under test cannot be reached or used: message to stderr, exit 1."""


class Target:
    """The server to measure: given by URL, or launched from a config for the duration of the command."""

    def __init__(self, args: argparse.Namespace, cfg) -> None:
        self.args, self.cfg, self.server = args, cfg, None
        self.simulated = False
        if getattr(args, "launch", None):
            if args.url:
                raise Usage("give either --url or --launch, not both")
        elif not (args.url or cfg.load.url):
            raise Usage("no server: give --url URL (or --launch CONFIG; `qbench demo` runs without a GPU)")

    def __enter__(self) -> str:
        if getattr(self.args, "launch", None):
            from ..server.launcher import LaunchedServer, LaunchError

            out = getattr(self.args, "out", None) or self.cfg.sweep.out
            self.server = LaunchedServer(self.cfg.server, out)
            print(f"launching: {self.server.command_line}", file=sys.stderr)
            try:
                self.server.start()
                self.server.wait_ready(on_phase=lambda ph: print(
                    f"  [{ph.at:6.1f}s] {ph.name}{': ' + ph.detail if ph.detail else ''}", file=sys.stderr))
            except LaunchError as e:
                self.server.stop()
                raise Unreachable(str(e)) from None
            return self.server.url
        return (self.args.url or self.cfg.load.url).rstrip("/")

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()

    def died(self) -> str | None:
        if self.server is not None and not self.server.alive():
            tail = "\n".join(self.server.log_tail(40))
            return f"server died (exit code {self.server.returncode})\n{tail}"
        return None


def resolve_model(url: str, api_key: str | None, model: str) -> tuple[str, str | None]:
    import asyncio

    from ..headless import Unreachable as HU
    from ..headless import discover

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        version, models = asyncio.run(discover(url, headers))
    except HU as e:
        raise Unreachable(str(e)) from None
    if not model:
        if not models:
            raise Unreachable(f"{url}/v1/models lists no model; give --model")
        model = models[0]
    return model, version


def run_async(coro):
    """uvloop when installed (uvicorn[standard] brings it): ~20% less client CPU per token at C=256 and the
    first read ~0.6 ms after the server's write instead of ~1.5 ms (bench/fidelity.py)."""
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def error_exit(levels: list, max_error_rate: float) -> int:
    done = sum(lv.completed for lv in levels)
    failed = sum(lv.failed for lv in levels)
    if done == 0:
        err(f"every request failed ({failed})" if failed else "no request completed")
        return EXIT_FAIL
    if failed / (done + failed) > max_error_rate:
        err(f"error rate {failed / (done + failed):.1%} exceeds --max-error-rate {max_error_rate:.1%}")
        return EXIT_ERRORS
    return EXIT_OK


def print_failures(lv) -> None:
    for reason, n in lv.failures.items():
        print(f"  failed {n}x: {reason}", file=sys.stderr)

