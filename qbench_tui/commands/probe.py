"""`qbench probe`: one look at a server (version, models, KV/prefix cache, queue, preemptions)."""
from __future__ import annotations

import argparse
import json

from .common import EXIT_FAIL, EXIT_OK, Usage, add_tls, err, tls_hint, warn_about_target


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..config import ConfigError, check_ca_file, check_url, resolve_api_key
    from ..engine.server_poll import ServerUnreachable, probe

    try:
        url, note = check_url(args.url)
        ca_cert = check_ca_file(args.ca_cert) if args.ca_cert else ""
    except ConfigError as e:
        raise Usage(str(e)) from None
    if note:
        err(note)
    api_key, _ = resolve_api_key(args.api_key)
    warn_about_target(url, api_key, bool(args.insecure))
    try:
        d = asyncio.run(probe(url, api_key, ca_cert=ca_cert, insecure=bool(args.insecure)))
    except ServerUnreachable as e:
        err(tls_hint(str(e)))
        return EXIT_FAIL
    if not d.get("models"):
        # no model listed: a proxy that wants a key (or refused this one) says so on /v1/models; discover names
        # the status and where the key goes, as `run` and `sweep` do
        from ..headless import Unreachable, discover

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            asyncio.run(discover(url, headers, ca_cert=ca_cert, insecure=bool(args.insecure)))
        except Unreachable as e:
            err(tls_hint(str(e)))
            return EXIT_FAIL
    if args.json:
        print(json.dumps(d, indent=2))
        return EXIT_OK
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    print(f"server        {url}")
    print(f"vLLM version  {d.get('vllm_version') or 'unknown'}")
    print(f"models        {', '.join(d.get('models') or []) or '-'}")
    if d.get("metrics_schema") == "none":
        print("metrics       no server metrics (not vLLM, or /metrics disabled)")
        return EXIT_OK
    print(f"metrics       schema {d['metrics_schema']}, {d.get('engines')} engine(s)")
    print(f"KV cache      {pct(d.get('kv_cache_usage'))} used")
    print(f"prefix cache  hit rate {pct(d.get('prefix_cache_hit_rate'))} "
          f"({d.get('prefix_cache_hits')} / {d.get('prefix_cache_queries')} tokens, lifetime)")
    print(f"requests      {d.get('num_requests_running')} running, {d.get('num_requests_waiting')} waiting, "
          f"{d.get('num_preemptions')} preemptions")
    print(f"tokens        {d.get('prompt_tokens')} prompt, {d.get('generation_tokens')} generated (lifetime)")
    for e, x in (d.get("per_engine") or {}).items():
        print(f"  engine {e:<4} KV {pct(x['kv_cache_usage'])}, {x['num_requests_running']} running, "
              f"{x['num_requests_waiting']} waiting, {x['num_preemptions']} preemptions, "
              f"{x['generation_tokens']} generated")
    return EXIT_OK


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True)
    p.add_argument("--api-key")
    add_tls(p)
    p.add_argument("--json", action="store_true")
