"""`vllm serve` argv from a ServerConfig, the short label of its flags, and the flag overrides a restart takes."""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from qbench_tui.config import SERVER_OWN_KEYS, ServerConfig
from qbench_tui.server.secrets import is_secret_name, redact_argv


def _flag(key: str) -> str:
    return "--" + key.strip().lstrip("-").replace("_", "-")


def build_argv(server: ServerConfig) -> list[str]:
    """`vllm serve MODEL --host H --port P` + [server] flags (vLLM's spelling) + extra_args verbatim."""
    argv = [server.vllm_bin, "serve", server.model, "--host", server.host, "--port", str(server.port)]
    for key, value in server.flags:
        flag = _flag(key)
        if isinstance(value, bool):
            # argparse.BooleanOptionalAction: --enable-prefix-caching / --no-enable-prefix-caching
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            argv.append(flag)
            argv.extend(str(v) for v in value)
        else:
            argv.extend((flag, str(value)))
    argv.extend(server.extra_args)
    return argv


def find_executable(vllm_bin: str) -> str | None:
    if os.sep in vllm_bin or (os.altsep and os.altsep in vllm_bin):
        p = Path(vllm_bin).expanduser()
        return str(p) if p.is_file() and os.access(p, os.X_OK) else None
    return shutil.which(vllm_bin)


def config_label(server: ServerConfig) -> str:
    """A short description of the vLLM flags, to label measurements taken under this server config."""
    parts = []
    for key, value in server.flags:
        name = key.replace("-", "_")
        if isinstance(value, bool):
            parts.append(name if value else f"no_{name}")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{name}={','.join(str(v) for v in value)}")
        elif is_secret_name(name):
            parts.append(f"{name}=***")
        else:
            parts.append(f"{name}={value}")
    extra = redact_argv(list(server.extra_args))
    return " ".join(parts + extra) or "default"


def _norm(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


_FIXED_ON_RESTART = {"host": "the load is pointed at this address", "port": "the load is pointed at this port",
                     "model": "the load asks for this model by name", "vllm_bin": "restart qbench to change it"}
_FLAG_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")


def _scalar(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_flag_overrides(text: str) -> dict[str, Any]:
    """What a user types to restart a launched server with other flags, as apply_overrides() takes it:
    `max_num_seqs=128 --enforce-eager --no-enable-prefix-caching gpu_memory_utilization=0.85 quantization=`
    (key=value sets, `key=` removes, --flag is true, --no-flag false). Raises ValueError naming the bad part."""
    try:
        parts = shlex.split(text)
    except ValueError as e:
        raise ValueError(f"cannot split {text!r}: {e}") from None
    out: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if eq:
            k = _norm(key)
            v: Any = None if value == "" else _scalar(value)
        elif part.startswith("--no-"):
            k, v = _norm(part[len("--no-"):]), False
        elif part.startswith("-"):
            k, v = _norm(part), True
        else:
            raise ValueError(f"{part!r}: expected key=value, --flag or --no-flag")
        if not _FLAG_NAME.fullmatch(k):
            raise ValueError(f"{part!r}: {k!r} is not a flag name")
        if k in _FIXED_ON_RESTART:
            raise ValueError(f"{k} cannot change on a restart: {_FIXED_ON_RESTART[k]}")
        out[k] = v
    if not out:
        raise ValueError("no flags given")
    return out


def apply_overrides(server: ServerConfig, overrides: dict[str, Any]) -> ServerConfig:
    """`server` with flags changed ({"max_num_seqs": 128, "enforce-eager": True}; None removes a flag).
    Keys that are ServerConfig's own fields (port, model, ...) set the field instead."""
    flags = dict(server.flags)
    own: dict[str, Any] = {}
    for key, value in overrides.items():
        k = _norm(key)
        if k in SERVER_OWN_KEYS:
            if k in ("extra_args",) and isinstance(value, (list, tuple)):
                value = tuple(str(v) for v in value)
            elif k == "env" and isinstance(value, dict):
                value = tuple((str(a), str(b)) for a, b in value.items())
            own[k] = value
            continue
        existing = next((fk for fk in flags if _norm(fk) == k), None)
        if value is None:
            if existing is not None:
                del flags[existing]
        else:
            flags[existing if existing is not None else k] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(server, flags=tuple(flags.items()), **own)
