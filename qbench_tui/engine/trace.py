"""Request traces: one JSON object a line with the public Mooncake / Azure-style fields — `timestamp` (milliseconds
from the trace's start), `input_length`, `output_length`, optional `hash_ids` (one id per block of
`TRACE_BLOCK_TOKENS` prompt tokens; equal ids mean an equal prefix block, which is how these traces carry prefix
sharing) — replayed at their own timing or scaled by `--time-scale`.

Each hash id becomes a fixed run of words seeded by the id, so two requests with the same leading ids share that
prefix text exactly (and the server's prefix cache can hit it), and the rest of the prompt is the request's own.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from .datasets import words

TRACE_BLOCK_TOKENS = 512  # Mooncake's block size for hash_ids
_ALIASES = {"timestamp": ("timestamp", "ts"), "input_length": ("input_length", "input_len", "ContextTokens"),
            "output_length": ("output_length", "output_len", "GeneratedTokens")}


class TraceError(ValueError):
    pass


@dataclass(frozen=True)
class TraceRequest:
    at_s: float  # send time from the trace's start, scaled
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...] = ()


def _field(obj: dict, name: str, where: str):
    for key in _ALIASES[name]:
        if key in obj:
            return obj[key]
    raise TraceError(f"{where}: missing \"{name}\"")


def _number(v, name: str, where: str, integer: bool) -> float:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool) or v != v or v in (float("inf"), float("-inf")):
        raise TraceError(f"{where}: \"{name}\" must be a{'n integer' if integer else ' number'}, got {v!r}")
    return v


def load_trace(path: str, time_scale: float = 1.0, limit: int | None = None) -> list[TraceRequest]:
    """The trace's requests in order. One line naming the file and line for anything wrong: unreadable, not JSON,
    missing or non-numeric fields, negative lengths, timestamps that go backwards."""
    if not time_scale > 0 or time_scale == float("inf"):
        raise TraceError(f"--time-scale must be a positive number, got {time_scale:g}")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TraceError(f"{p}: cannot read the trace: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{p}: the trace is not UTF-8 text") from None
    out: list[TraceRequest] = []
    t0: float | None = None
    last = float("-inf")
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"{where}: not valid JSON: {e.msg}") from None
        if not isinstance(obj, dict):
            raise TraceError(f"{where}: expected a JSON object per line")
        ts = _number(_field(obj, "timestamp", where), "timestamp", where, integer=False)
        n_in = int(_number(_field(obj, "input_length", where), "input_length", where, integer=True))
        n_out = int(_number(_field(obj, "output_length", where), "output_length", where, integer=True))
        if n_in < 1 or n_out < 1:
            raise TraceError(f"{where}: input_length and output_length must be >= 1, got {n_in} and {n_out}")
        if ts < last:
            raise TraceError(f"{where}: timestamp {ts:g} is before the previous line's {last:g}; "
                             "the trace must be sorted by time")
        last = ts
        ids = obj.get("hash_ids") or []
        if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in ids):
            raise TraceError(f"{where}: \"hash_ids\" must be a list of integers")
        t0 = ts if t0 is None else t0
        out.append(TraceRequest((ts - t0) / 1000.0 * time_scale, n_in, n_out, tuple(ids)))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise TraceError(f"{p}: no requests in the trace")
    return out


def block_text(hash_id: int, tokens: int = TRACE_BLOCK_TOKENS) -> str:
    """The words standing for one hash id: the same id gives the same text in every request."""
    return " ".join(words(random.Random(f"trace-block:{hash_id}"), tokens))


def trace_prompt(req: TraceRequest, index: int) -> str:
    """About input_length words: the shared blocks its hash ids name, then its own words. (Sized by word count,
    about a token each; the achieved lengths are saved from the server's usage.)"""
    shared = [block_text(h) for h in req.hash_ids]
    have = len(req.hash_ids) * TRACE_BLOCK_TOKENS
    if have > req.input_length and shared:
        # the last block is partial in the trace too
        keep = req.input_length - (len(shared) - 1) * TRACE_BLOCK_TOKENS
        shared[-1] = " ".join(shared[-1].split()[:max(0, keep)])
        have = req.input_length
    own = " ".join(words(random.Random(f"trace-own:{index}"), max(0, req.input_length - have)))
    return " ".join(x for x in (*shared, own) if x)


def trace_prompts(reqs: list[TraceRequest]):
    """prompts(i) for a trace: the i-th request's prompt with its own output length."""
    from .prompts import Sized

    def prompt(i: int) -> Sized:
        r = reqs[i % len(reqs)]
        return Sized(trace_prompt(r, i), r.output_length)

    return prompt
