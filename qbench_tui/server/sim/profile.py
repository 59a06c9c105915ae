"""Simulator profiles: the numbers that shape the simulated vLLM server, loaded from TOML.

A profile file has sections ([server], [cache], [scheduler], [timing], [answer], [tokens]); keys are the field names
of `Profile`. Section names are only for the reader: any key may sit in any section (or at top level).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PROFILES_DIR = Path(__file__).with_name("profiles")

QWEN_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@dataclass(frozen=True)
class Profile:
    name: str = "custom"
    description: str = ""
    # [server]
    model: str = "sim-model"
    max_model_len: int = 4096
    version: str = "0.13.0-sim"
    # vLLM >= 0.2x on CPU clamps prompt+max_tokens over max_model_len instead of answering 400.
    clamp_max_tokens: bool = False
    # [cache]
    block_size: int = 16
    num_gpu_blocks: int = 4096
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    # [scheduler]
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    long_prefill_token_threshold: int = 0  # 0 = no per-request chunk cap
    # [timing] seconds; step = overhead + max(min_forward, prefill*P + decode_seq*D) + ctx*K
    step_overhead_s: float = 0.004
    min_forward_s: float = 0.0
    prefill_per_token_s: float = 0.0001
    decode_per_seq_s: float = 0.0003
    decode_per_ctx_token_s: float = 0.0
    frontend_latency_s: float = 0.0  # HTTP + tokenizer + chat template before the request reaches the queue
    # [answer] output length when EOS is allowed
    answer_dist: str = "normal"  # normal | lognormal | fixed
    answer_mean: float = 125.0
    answer_stddev: float = 25.0
    answer_min: int = 1
    answer_max: int = 0  # 0 = unbounded (max_tokens / max_model_len still apply)
    # [tokens]
    chars_per_token: int = 4
    default_system_prompt: str = ""  # prepended by the chat template when the request has no system message
    vocab_text: str = ""  # words the simulated model "writes"; empty = a built-in paragraph

    def replace(self, **changes: Any) -> Profile:
        prof = dataclasses.replace(self, **_coerce(changes))
        _validate(prof)
        return prof

    @property
    def kv_cache_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    @property
    def max_concurrency(self) -> float:
        """vLLM's 'Maximum concurrency for max_model_len tokens per request'."""
        return self.kv_cache_tokens / self.max_model_len

    def to_toml(self) -> str:
        lines = ["# qbench sim profile (written by Profile.to_toml)"]
        for f in fields(self):
            v = getattr(self, f.name)
            lines.append(f"{f.name} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"


_FIELD_TYPES = {f.name: f.type for f in fields(Profile)}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _FIELD_TYPES:
            raise ValueError(f"unknown profile field {key!r} (known: {', '.join(sorted(_FIELD_TYPES))})")
        typ = _FIELD_TYPES[key]
        if typ == "bool" and isinstance(value, str):
            value = value.strip().lower() in ("1", "true", "yes", "on")
        elif typ == "int":
            value = int(float(value)) if isinstance(value, str) else int(value)
        elif typ == "float":
            value = float(value)
        elif typ == "str":
            value = str(value)
        out[key] = value
    return out


def profile_from_dict(data: dict[str, Any], name: str = "custom") -> Profile:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    flat.setdefault("name", name)
    prof = Profile(**_coerce(flat))
    _validate(prof)
    return prof


def _validate(p: Profile) -> None:
    problems = []
    if p.block_size <= 0 or p.num_gpu_blocks <= 0:
        problems.append("block_size and num_gpu_blocks must be > 0")
    if p.max_num_batched_tokens < p.max_num_seqs:
        problems.append("max_num_batched_tokens must be >= max_num_seqs (as vLLM requires)")
    if p.max_model_len <= 1:
        problems.append("max_model_len must be > 1")
    if p.chars_per_token <= 0:
        problems.append("chars_per_token must be > 0")
    if p.answer_dist not in ("normal", "lognormal", "fixed"):
        problems.append("answer_dist must be normal, lognormal or fixed")
    if problems:
        raise ValueError(f"profile {p.name!r}: " + "; ".join(problems))


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_profile(name_or_path: str | os.PathLike[str] | Profile) -> Profile:
    """A built-in profile by name (see list_profiles()) or a TOML file path."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix == ".toml" or os.sep in text or "/" in text) or not path.exists():
        candidate = PROFILES_DIR / f"{text}.toml"
        if candidate.exists():
            path = candidate
        elif not path.exists():
            raise ValueError(f"unknown simulator profile {text!r}; built-in: {', '.join(list_profiles())}")
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    return profile_from_dict(data, name=path.stem)
