"""What the sub-commands share: exit codes, the usage error, argument groups, argv + TOML -> Config, the target
server (a URL, or one launched for the command), model discovery, the event loop and the error-rate exit."""
from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from typing import Any

from ..config import LoadConfig

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_ERRORS = 0, 1, 2, 3


class Usage(Exception):
    """Bad usage: message to stderr, exit 2, nothing started."""


def err(msg: str) -> None:
    print(f"qbench: {msg}", file=sys.stderr)


def add_target(p: argparse.ArgumentParser, launch: bool = True, many: bool = False) -> None:
    """many: --url repeatable (several endpoints under one load, commands/fleet.py) and the fleet flags."""
    if many:
        p.add_argument("--url", action="append", help="base URL of an OpenAI-compatible server, e.g. "
                                                      "http://127.0.0.1:8001; repeat it to spread the load")
    else:
        p.add_argument("--url", help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8001")
    if launch:
        p.add_argument("--launch", metavar="CONFIG", help="launch `vllm serve` from CONFIG's [server], then run")
        p.add_argument("--vllm-bin", help="vllm executable (default: `vllm` on PATH or [server] vllm_bin)")
    p.add_argument("--config", metavar="FILE", help="TOML config ([server], [load], [sweep]); flags win")
    p.add_argument("--api-key", help="Bearer token (default: $QBENCH_API_KEY or $OPENAI_API_KEY); never written out")
    add_tls(p)
    if many:
        from .fleet import add_fleet

        add_fleet(p)


def add_tls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-cert", metavar="FILE", help="https: also trust the CA certificate(s) in this PEM file")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="https: do not check the server's certificate at all (warns)")


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
    g.add_argument("--max-error-rate", type=float, metavar="R",
                   help="exit 3 when the failed share exceeds R; the load also stops once a level's recent "
                        "requests fail clearly more often than R")
    g.add_argument("--max-consecutive-failures", type=int, metavar="N",
                   help="stop the load after N failures in a row with no success (default 0: automatic, "
                        "max(20, 2 x concurrency))")
    from .turns import add_turns
    from .workload import add_dataset

    add_dataset(p)
    add_turns(p)


LOAD_KEYS = ("url", "model", "endpoint", "prompt", "prompts_file", "prompt_len", "unique_prefix", "max_tokens",
              "ignore_eos", "temperature", "timeout", "max_error_rate", "max_consecutive_failures", "ca_cert",
              "insecure", "random_input_len", "random_output_len", "random_range_ratio", "shared_prefix_len",
              "prefix_groups", "num_prompts", "seed", "turns", "think_time")
# flags some commands have that no config key holds: checked here so that every command refuses them alike
_OTHER_NUMBERS = {"duration": True, "warmup": False, "requests": True}  # name: must be > 0 (else >= 0)


def config_from(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    from ..config import ConfigError, check_flag, load_config
    from . import fleet

    fleet_overrides = fleet.overrides(args)  # first: a repeated --url leaves args.url its first
    overrides = {f"load.{k}": getattr(args, k, None) for k in LOAD_KEYS}
    overrides.update(fleet_overrides)
    overrides.update(extra or {})
    if getattr(args, "vllm_bin", None):
        overrides["server.vllm_bin"] = args.vllm_bin
    path = getattr(args, "config", None) or getattr(args, "launch", None)
    try:
        for name, positive in _OTHER_NUMBERS.items():
            if f"load.{name}" not in overrides and f"sweep.{name}" not in overrides:
                check_flag(f"--{name}", getattr(args, name, None), positive)
        cfg = load_config(path, overrides)
    except ConfigError as e:
        raise Usage(str(e)) from None
    for note in cfg.notes:
        err(note)
    if getattr(args, "url", None):
        args.url = cfg.load.url  # the checked form, for every later reader of args
    from ..config import resolve_api_key

    warn_about_target(cfg.load.url, resolve_api_key(getattr(args, "api_key", None))[0], cfg.load.insecure)
    _prompts(cfg.load.prompt, cfg.load.prompts_file, cfg.load.prompt_len, cfg.load.unique_prefix)
    _shape(cfg)  # a shape that cannot be built stops here, before a server is launched
    from . import turns

    try:
        turns.check(args, cfg)
    except turns.Usage as e:
        raise Usage(str(e)) from None
    try:
        fleet.check(args, cfg)
    except fleet.Usage as e:
        raise Usage(str(e)) from None
    return cfg


@contextlib.asynccontextmanager
async def fleet_parts(cfg, spec, concurrency: int, api_key: str | None):
    """commands/fleet.parts with its errors as this module's (Usage: exit 2, Unreachable: exit 1)."""
    from . import fleet

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with fleet.parts(cfg, spec, concurrency, headers, fleet.stderr_say) as kw:
            yield kw
    except fleet.Usage as e:
        raise Usage(str(e)) from None
    except fleet.Unreachable as e:
        raise Unreachable(str(e)) from None


def _shape(cfg):
    from . import workload

    try:
        return workload.shape_of(cfg)
    except workload.Usage as e:
        raise Usage(str(e)) from None


def warn_about_target(url: str, api_key: str | None, insecure: bool) -> None:
    """One line each on stderr for a key that anyone on the path could read."""
    from urllib.parse import urlsplit

    from ..config import is_loopback_host

    if insecure:
        err("WARNING: --insecure: the server's TLS certificate is NOT checked; anyone on the path can pose as "
            "the server and read the API key and the prompts")
    u = urlsplit(url)
    if api_key and u.scheme == "http" and u.hostname and not is_loopback_host(u.hostname):
        err(f"warning: the API key goes in clear text (http://) to {u.hostname}; use https:// or an SSH tunnel "
            "unless the network is yours")


@functools.lru_cache(maxsize=1)
def _prompts(prompt: str, prompts_file: str, prompt_len: int, unique_prefix: bool):
    """The prompt source, made once: read when the config is checked (a bad file stops the command before a
    server is launched or any load starts) and handed to the engine from the same cache."""
    from ..engine.prompts import PromptError, make_prompt_source

    try:
        return make_prompt_source(prompt, prompts_file, prompt_len, unique_prefix)
    except PromptError as e:
        raise Usage(str(e)) from None
    except UnicodeDecodeError:
        raise Usage(_not_utf8(prompts_file)) from None


def _not_utf8(path: str) -> str:
    data = open(path, "rb").read()  # again, whole: a text reader's error offset counts from its last chunk
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return (f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}); "
                "save the file as UTF-8")
    return f"{path}: not UTF-8 text"  # pragma: no cover - the file changed between the two reads


def spec_and_prompts(cfg, url: str, model: str, api_key: str | None):
    """The request spec and the prompt source: a shaped dataset or a plain source, in conversations with
    `--turns K` (commands/turns.py)."""
    from . import turns, workload

    lc = cfg.load
    if (shape := _shape(cfg)) is not None:
        try:
            prompts = workload.build_dataset_prompts(cfg, shape, url, model, api_key)
        except workload.Usage as e:
            raise Usage(str(e)) from None
    else:
        prompts = _prompts(lc.prompt, lc.prompts_file, lc.prompt_len, lc.unique_prefix)
        if lc.prompts_file:
            try:
                prompts = workload.check_file_prompts(cfg, prompts, url, model, api_key)
            except workload.Usage as e:
                raise Usage(str(e)) from None
    if lc.turns > 1:
        try:
            prompts = turns.conversations(cfg, prompts, url, model, api_key)
        except turns.Usage as e:
            raise Usage(str(e)) from None
    return request_spec(cfg, url, model, api_key), prompts


def request_spec(cfg, url: str, model: str, api_key: str | None):
    from ..engine.records import RequestSpec

    lc = cfg.load
    return RequestSpec(url=url.rstrip("/"), model=model, endpoint=lc.endpoint, max_tokens=lc.max_tokens,
                       temperature=lc.temperature, ignore_eos=lc.ignore_eos, api_key=api_key,
                       read_timeout=lc.timeout, ca_cert=lc.ca_cert, insecure=lc.insecure,
                       max_error_rate=lc.max_error_rate, max_consecutive_failures=lc.max_consecutive_failures)


def prompt_source(cfg) -> str:
    from ..engine.prompts import describe_source
    from .workload import describe_shape

    lc = cfg.load
    what = describe_shape(shape) if (shape := _shape(cfg)) is not None else \
        describe_source(lc.prompts_file, lc.prompt_len)
    if lc.turns > 1:
        think = f", think time {lc.think_time:g} s" if lc.think_time else ""
        what += f"; conversations of {lc.turns} turns{think}"
    return what


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
        from .limits import ensure_fds

        levels = cfg.sweep.levels if hasattr(args, "levels") else ()  # sweep: its levels; run: -c
        if short := ensure_fds(max(levels) if levels else (getattr(args, "concurrency", None) or 0)):
            raise Usage(short)

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
            except BaseException:  # Ctrl-C / SIGTERM while it starts: __exit__ will not run, so stop it here
                self.server.stop()
                raise
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


def resolve_model(url: str, api_key: str | None, model: str, cfg) -> tuple[str, str | None]:
    """(model, vLLM version), discovering the model when none was given; discovery trusts what the load trusts."""
    import asyncio

    from ..headless import Unreachable as HU
    from ..headless import discover

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    tls = {"ca_cert": cfg.load.ca_cert, "insecure": cfg.load.insecure}
    try:
        version, models = asyncio.run(discover(url, headers, need_model=not model, **tls))
    except HU as e:
        raise Unreachable(tls_hint(str(e))) from None
    if not model:
        if not models:
            raise Unreachable(f"{url}/v1/models lists no model; give --model")
        model = models[0]
    return model, version


def tls_hint(msg: str) -> str:
    """A failed certificate check, with what to do about it."""
    if "CERTIFICATE_VERIFY_FAILED" in msg:
        return (f"{msg}; the server's TLS certificate is not trusted: give --ca-cert FILE (the CA that signed it) "
                "or --insecure to skip the check")
    return msg


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

