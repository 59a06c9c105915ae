"""Secrets never printed: which flag and variable names hold one, and their values hidden as *** in argv, in a
copyable command line and in log text."""
from __future__ import annotations

import re
import shlex
from typing import Any

# A name is secret when any part is one of _SECRET_PARTS or its last part is one of _SECRET_LAST, so --api-key,
# --hf-token and HF_TOKEN are hidden but --max-num-batched-tokens and --long-prefill-token-threshold are not.
_SECRET_PARTS = ("secret", "password", "passwd", "apikey", "credential", "credentials")
_SECRET_LAST = ("key", "token", "pass", "pat", "auth")
_SECRET_FLAGS = ("--api-key", "--hf-token")
# what qbench itself may send or vLLM may read: hidden in a launched server's output even when not in its argv
SECRET_ENV = ("QBENCH_API_KEY", "OPENAI_API_KEY", "VLLM_API_KEY", "HF_TOKEN")


def is_secret_name(name: str) -> bool:
    parts = [p for p in re.split(r"[-_.\s]+", name.lower()) if p]
    return bool(parts) and (parts[-1] in _SECRET_LAST or any(p in _SECRET_PARTS for p in parts))


def _is_secret_flag(arg: str) -> bool:
    if not arg.startswith("--"):
        return False
    name = arg.split("=", 1)[0]
    return name in _SECRET_FLAGS or is_secret_name(name)


def secrets_in(argv: list[str] | tuple[str, ...], env: Any = ()) -> list[str]:
    """Values that must never be printed: secret flag values from argv, secret-named env values."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if _is_secret_flag(arg):
            if "=" in arg:
                out.append(arg.split("=", 1)[1])
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out.append(argv[i + 1])
                i += 1
        i += 1
    items = env.items() if isinstance(env, dict) else env
    out.extend(v for k, v in items if is_secret_name(k))
    return [s for s in out if s]


def redact_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("--"):
            out.append("***")
            hide_next = False
            continue
        hide_next = False
        if _is_secret_flag(arg):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=***")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out


def command_line(argv: list[str] | tuple[str, ...], env: Any = ()) -> str:
    """A copyable shell line for `argv` (with env assignments in front), secrets shown as ***."""
    items = env.items() if isinstance(env, dict) else env
    prefix = [f"{k}={'***' if is_secret_name(k) else shlex.quote(v)}" for k, v in items]
    return " ".join(prefix + [shlex.quote(a) if a != "***" else a for a in redact_argv(argv)])


def redact_text(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if len(s) >= 4:  # short values would blank out ordinary text
            text = text.replace(s, "***")
    return text
