"""Request traces: one JSON object a line with the public Mooncake / Azure-style fields — `timestamp` (milliseconds
from the trace's start), `input_length`, `output_length`, optional `hash_ids` (one id per block of
`TRACE_BLOCK_TOKENS` prompt tokens; equal ids mean an equal prefix block, which is how these traces carry prefix
sharing) — replayed at their own timing or scaled by `--time-scale`.

Each hash id becomes a fixed run of words seeded by the id, so two requests with the same leading ids share that
prefix text exactly (and the server's prefix cache can hit it), and the rest of the prompt is the request's own.
With the server's /tokenize (size_trace), a block is TRACE_BLOCK_TOKENS tokens by the server's tokens per word and
each whole prompt is fitted to its input_length by the server's count, as engine/datasets.py fits its prompts; a
request that cannot fit the server's context with its output is Refused (counted, never sent). Without /tokenize:
one word a token, the template not counted.
"""
from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .datasets import Count, Fit, Sizing, calibrate, fit_words, words
from .prompts import Refused, Sized

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


@lru_cache(maxsize=8192)  # a trace reuses its blocks (that is its prefix sharing): made once, joined per request
def block_words(hash_id: int, n: int = TRACE_BLOCK_TOKENS) -> tuple[str, ...]:
    """The n words standing for one hash id: the same id gives the same text in every request."""
    return tuple(words(random.Random(f"trace-block:{hash_id}"), n))


def block_text(hash_id: int, tokens: int = TRACE_BLOCK_TOKENS) -> str:
    return " ".join(block_words(hash_id, tokens))


def stream(req: TraceRequest, index: int, k: int, block_n: int = TRACE_BLOCK_TOKENS) -> list[str]:
    """The first k words of a request's content: its hash ids' blocks of block_n words each, then its own words
    (the trace's last block is partial in the same way: cut where the length ends)."""
    out: list[str] = []
    for h in req.hash_ids:
        if len(out) >= k:
            break
        out.extend(block_words(h, block_n))
    if len(out) < k:
        out.extend(words(random.Random(f"trace-own:{index}"), k - len(out)))
    return out[:k]


def trace_prompt(req: TraceRequest, index: int) -> str:
    """The approximation without the server's count: input_length words (about a token each), template not
    counted."""
    return " ".join(stream(req, index, req.input_length))


def trace_prompts(reqs: list[TraceRequest]):
    """prompts(i) for a trace, approximately sized (trace_prompt): the i-th request's prompt with its own output
    length. size_trace sizes them by the server's count."""
    def prompt(i: int) -> Sized:
        r = reqs[i % len(reqs)]
        return Sized(trace_prompt(r, i), r.output_length)

    return prompt


@dataclass
class TracePrompts:
    """prompts(i) for a sized trace: request i's content rendered from its sizing (k words, the last maybe
    swapped) at send time — a trace of thousands of long prompts is not held as text — with its own output
    length, or Refused when the server's context cannot hold it."""

    reqs: list[TraceRequest]
    fits: list[Fit]
    block_n: int  # words per hash-id block: TRACE_BLOCK_TOKENS tokens by the server's tokens per word
    sizing: Sizing
    refusals: dict[int, Refused]
    max_model_len: int | None = None

    def content(self, i: int) -> str:
        r, f = self.reqs[i], self.fits[i]
        return " ".join(f.chosen(lambda k: stream(r, i, k, self.block_n)))

    def __call__(self, i: int) -> Sized | Refused:
        i %= len(self.reqs)
        if (no := self.refusals.get(i)) is not None:
            return no
        return Sized(self.content(i), self.reqs[i].output_length)

    @property
    def counted(self) -> list[int | None]:
        return [f.got for f in self.fits]


async def size_trace(reqs: list[TraceRequest], count: Count | None, max_model_len=lambda: None, *,
                     parallel: int = 16) -> TracePrompts:
    """Each request's prompt at its input_length by the server's count (count: its /tokenize; None: the
    approximation), hash-id blocks shared word for word between the requests that name them; a request whose
    prompt and output exceed max_model_len() (the server's, known once it has counted) is Refused with the
    numbers. Count calls: 2 to calibrate, then 1 + the fixes (usually 1-2) per request, `parallel` at once."""
    from .prompts import over_context

    per_word, overhead, exact = await calibrate(count, lambda text: text)
    block_n = max(1, round(TRACE_BLOCK_TOKENS / per_word))
    sizing = Sizing(exact, "server /tokenize" if exact else
                    "approximation: 1 word ~ 1 token, chat template not counted (the server has no /tokenize)")
    sem = asyncio.Semaphore(parallel)

    async def one(i: int) -> Fit:
        r = reqs[i]
        k = max(1, round((r.input_length - overhead) / per_word))
        if not exact:
            return Fit(k, None, None)

        def take(n: int) -> list[str]:
            return stream(r, i, n, block_n)

        async with sem:
            return await fit_words(count, lambda ws: " ".join(ws), take, r.input_length, k,  # type: ignore[arg-type]
                                   per_word)

    fits = list(await asyncio.gather(*(one(i) for i in range(len(reqs)))))
    limit = max_model_len()
    refusals: dict[int, Refused] = {}
    for i, (r, f) in enumerate(zip(reqs, fits)):
        if f.got is not None:
            sizing.targets += 1
            sizing.hit += f.got == r.input_length
            sizing.worst_miss = max(sizing.worst_miss, abs(f.got - r.input_length))
        n_in = f.got if f.got is not None else r.input_length
        if (no := over_context(n_in, r.output_length, limit)) is not None:
            refusals[i] = no
    return TracePrompts(reqs, fits, block_n, sizing, refusals, limit)
