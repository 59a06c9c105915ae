"""Shaped prompts: lengths drawn like `vllm bench serve`'s random dataset, content unique from its first token,
shared-prefix groups — each prompt sized so the SERVER counts the tokens asked for.

Lengths: input from the integers [floor(L(1-r)), ceil(L(1+r))], output likewise with at least 1 (vllm's
`get_sampling_params`), so `--random-input-len 32 --random-range-ratio 0.5` draws from the same ranges in both
tools (not the same draws: vllm's numpy generator is not reproduced, a seeded stdlib one is enough).

Sizing: what the server counts is the chat template (or BOS) plus the content, so a word count alone misses by the
template (qbench sent 54 tokens for `--prompt-len 32` where the server's own count should have been 32). With the
server's `/tokenize` (vLLM has it; so does the simulator), each prompt of the pool is counted as the server will
count it, messages and template included, and words are added or taken away until the count is the target (a few
calls per prompt, before the load starts). Without it: one word of the list below is about one token for common BPE
tokenizers and the template is unknown; `Sizing.exact` says which, and the achieved lengths (usage.prompt_tokens)
are saved either way.

The pool has `num_prompts` distinct prompts (vllm bench serve's default: 1000) used in turn; a longer run repeats
them, which the dataset description says.
"""
from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .prompts import WORDS, Prompt, Refused, Sized

_SWAPS = ("a", "of", "the", "from", "which", "through", "against", "between")  # 1 to 7 letters
# one token each for BPE vocabularies (common, space-led) and 4 characters with their space (the simulator's token)
_FILL = ("the", "and", "for", "was", "are", "but", "not", "had")
MAX_PAD_STEPS = 3
Count = Callable[[Prompt], Awaitable[int | None]]  # the server's token count of what would be sent (None: unknown)
MAX_FIX_STEPS = 8  # count calls per prompt beyond the first; the step halves, so 8 reach ±1 from a 2x first guess


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class Shape:
    """What the user asked for. input_len 0: no sizing (the prompt as given)."""

    input_len: int = 0
    output_len: int = 0  # 0: --max-tokens for every request
    range_ratio: float = 0.0
    shared_prefix_len: int = 0  # tokens of content shared within a group, before each request's own content
    prefix_groups: int = 1
    unique_first: bool = False  # content unique from its first token (defeats the prefix cache on chat too)
    num_prompts: int = 1000
    seed: int = 0

    def check(self) -> None:
        if not 0.0 <= self.range_ratio < 1.0:
            raise DatasetError(f"--random-range-ratio must be within [0, 1), got {self.range_ratio:g}")
        for name in ("input_len", "output_len", "shared_prefix_len"):
            if getattr(self, name) < 0:
                raise DatasetError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.prefix_groups < 1:
            raise DatasetError(f"--prefix-groups must be >= 1, got {self.prefix_groups}")
        if self.num_prompts < 1:
            raise DatasetError(f"--num-prompts must be >= 1, got {self.num_prompts}")
        if self.shared_prefix_len and self.input_len and self.input_len <= self.shared_prefix_len:
            raise DatasetError(f"--random-input-len {self.input_len} leaves no room after --shared-prefix-len "
                               f"{self.shared_prefix_len}: each request needs content of its own")

    @property
    def shaped(self) -> bool:
        return bool(self.input_len or self.output_len or self.shared_prefix_len)


def _flag(name: str) -> str:
    return {"input_len": "random-input-len", "output_len": "random-output-len"}.get(name, name.replace("_", "-"))


def length_bounds(n: int, ratio: float, at_least: int = 0) -> tuple[int, int]:
    lo, hi = math.floor(n * (1 - ratio)), math.ceil(n * (1 + ratio))
    return max(lo, at_least), max(hi, at_least)


def sample_lengths(shape: Shape, n: int) -> tuple[list[int], list[int]]:
    """(input lengths, output lengths) of n requests; 0 where the shape leaves that length alone."""
    rng = random.Random(f"lengths:{shape.seed}")
    ins = outs = [0] * n
    if shape.input_len:
        lo, hi = length_bounds(shape.input_len, shape.range_ratio)
        ins = [rng.randint(lo, hi) for _ in range(n)]
    if shape.output_len:
        lo, hi = length_bounds(shape.output_len, shape.range_ratio, at_least=1)
        outs = [rng.randint(lo, hi) for _ in range(n)]
    return ins, outs


def words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(max(0, n))]


@dataclass
class Sizing:
    """How the pool was sized: exact (the server's /tokenize) or approximate, and how close it came."""

    exact: bool
    source: str  # "server /tokenize" | "approximation: ..."
    targets: int = 0  # prompts with a target length
    hit: int = 0  # of those, counted by the server at exactly the target
    worst_miss: int = 0  # the largest |count - target| left

    def describe(self) -> str:
        if not self.targets:
            return self.source
        return (f"{self.source}: {self.hit}/{self.targets} prompts at exactly the target length"
                + (f", the rest within {self.worst_miss} token(s)" if self.hit < self.targets else ""))


@dataclass
class Dataset:
    """The pool, used in turn: prompts(i) -> pool[i % len(pool)]."""

    pool: list[Prompt | Refused]  # Refused: over the server's context (refuse_over_context)
    shape: Shape
    sizing: Sizing
    counted: list[int | None]  # the server's count of each pool prompt (None: not counted)

    def __call__(self, i: int) -> Prompt | Refused:
        return self.pool[i % len(self.pool)]

    def describe(self) -> str:
        s = self.shape
        parts = []
        if s.input_len:
            lo, hi = length_bounds(s.input_len, s.range_ratio)
            parts.append(f"input {s.input_len} tokens" + (f" ({lo}-{hi})" if hi > lo else ""))
        if s.output_len:
            lo, hi = length_bounds(s.output_len, s.range_ratio, 1)
            parts.append(f"output {s.output_len} tokens" + (f" ({lo}-{hi})" if hi > lo else ""))
        if s.shared_prefix_len:
            parts.append(f"{s.prefix_groups} shared prefix group(s) of {s.shared_prefix_len} tokens")
        if s.unique_first:
            parts.append("unique from the first token")
        parts.append(f"{len(self.pool)} distinct prompt(s), repeated in turn")
        return "random: " + ", ".join(parts) + f"; sizing {self.sizing.describe()}"


def _compose(prefix: str, own: str, tag: str, lead: bool = True) -> Prompt:
    """A system message FIRST holding the unique tag and the group's prefix — empty when neither — so the
    template's default system prompt (Qwen's is ~20 tokens, shared by every request) neither pads a short prompt
    past its length nor comes before the unique part; groups then share nothing but the template's first tokens.
    On the completions endpoint the messages are joined into one text (request.build_request), the tag first."""
    head = " ".join(x for x in (tag, prefix) if x)
    if head or lead:
        return [{"role": "system", "content": head}, {"role": "user", "content": own}]
    return own


async def build_dataset(shape: Shape, count: Count | None, *, parallel: int = 16) -> Dataset:
    """The pool for `shape`, sized by `count` (the server's /tokenize; None: approximate)."""
    shape.check()
    n = shape.num_prompts
    ins, outs = sample_lengths(shape, n)
    tag0 = "[0000000000000000]" if shape.unique_first else ""
    # calibration: tokens per word of content, from two counts; then what the server adds around the content
    # (template, tag, the group's prefix) from a third, once the prefix has its length in tokens
    per_word, _, exact = await calibrate(count, lambda text: _compose("", text, tag0))
    n_prefix = round(shape.shared_prefix_len / per_word)
    prefixes = [" ".join(words(random.Random(f"prefix:{shape.seed}:{g}"), n_prefix))
                for g in range(shape.prefix_groups)] if shape.shared_prefix_len else [""]
    overhead = float(shape.shared_prefix_len)
    if exact and shape.shared_prefix_len:  # each group's prefix N tokens by the server's count, so its whole
        base = await count(_compose("", "the", tag0))  # type: ignore[misc]  # blocks are what was asked for

        async def fit_prefix(g: int) -> str:
            r = random.Random(f"prefix:{shape.seed}:{g}")
            ws = words(r, n_prefix + 16)

            def take(n: int) -> list[str]:
                return _take(ws, r, n)

            fit = await fit_words(count, lambda ch: _compose(" ".join(ch), "the", tag0), take,  # type: ignore[arg-type]
                                  (base or 0) + shape.shared_prefix_len, max(1, n_prefix), per_word)
            return " ".join(fit.chosen(take))

        if base is not None:
            prefixes = list(await asyncio.gather(*(fit_prefix(g) for g in range(shape.prefix_groups))))
    if exact:
        c = await count(_compose(prefixes[0], "the", tag0))  # type: ignore[misc]
        exact = c is not None
        overhead = (c or 0) - per_word
    sizing = Sizing(exact, "server /tokenize" if exact else
                    "approximation: 1 word ~ 1 token, chat template not counted (the server has no /tokenize)")

    async def one(i: int) -> tuple[Prompt, int | None]:
        r = random.Random(f"{shape.seed}:{i}")
        tag = f"[{r.getrandbits(64):016x}]" if shape.unique_first else ""
        prefix = prefixes[i % len(prefixes)]
        target = ins[i]
        ws = words(r, 2 * max(target, 1) + 16)
        if not target:  # only the output length (or the grouping) is shaped: a short request of its own
            return _compose(prefix, " ".join(ws[:24]), tag, lead=False), None
        k = max(1, round((target - overhead) / per_word))

        def render(chosen: list[str]) -> Prompt:
            return _compose(prefix, " ".join(chosen), tag)

        def take(n: int) -> list[str]:
            return _take(ws, r, n)

        if not exact:
            return render(take(k)), None
        fit = await fit_words(count, render, take, target, k, per_word)  # type: ignore[arg-type]
        return render(fit.chosen(take)), fit.got

    sem = asyncio.Semaphore(parallel)

    async def bounded(i: int) -> tuple[Prompt, int | None]:
        async with sem:
            return await one(i)

    made = await asyncio.gather(*(bounded(i) for i in range(n)))
    pool: list[Prompt | Refused] = []
    counted: list[int | None] = []
    for i, (p, got) in enumerate(made):
        pool.append(Sized(p, outs[i]) if outs[i] else p)
        counted.append(got)
        if ins[i]:
            sizing.targets += 1
            if got is not None:
                miss = abs(got - ins[i])
                sizing.hit += miss == 0
                sizing.worst_miss = max(sizing.worst_miss, miss)
    return Dataset(pool, shape, sizing, counted)


def _take(ws: list[str], r: random.Random, k: int) -> list[str]:
    while len(ws) < k:
        ws.extend(words(r, k))
    return ws[:k]


@dataclass(frozen=True)
class Fit:
    """A prompt's content as sized: the first k words of its word stream, the last one swapped for `alt` when
    that landed closer, then `pad` filler words; `got` the server's count (None: it could not count)."""

    k: int
    alt: str | None
    got: int | None
    pad: int = 0

    def chosen(self, take: Callable[[int], list[str]]) -> list[str]:
        ws = list(take(self.k))
        if self.alt is not None and ws:
            ws[-1] = self.alt
        return ws + _fill(self.pad)


def _fill(n: int) -> list[str]:
    return [_FILL[i % len(_FILL)] for i in range(n)]


async def fit_words(count: Count, render: Callable[[list[str]], Prompt], take: Callable[[int], list[str]],
                    target: int, k: int, per_word: float) -> Fit:
    """The number of words of a stream (take(n): its first n) whose rendered prompt the server counts at
    `target` tokens, from a first guess k: usually 2-3 count calls, at most 1 + MAX_FIX_STEPS + len(_SWAPS)."""
    tried: dict[int, int] = {}  # k -> the server's count
    for _ in range(MAX_FIX_STEPS + 1):
        got = await count(render(take(k)))
        if got is None:
            break
        tried[k] = got
        miss = got - target
        if miss == 0:
            return Fit(k, None, got)
        nk = max(1, k - (round(miss / per_word) or (1 if miss > 0 else -1)))
        if nk in tried:  # a step overshot back: bisect between the closest counts below and above the target
            under = max((j for j in tried if tried[j] < target), default=None)
            over = min((j for j in tried if tried[j] > target), default=None)
            if under is None or over is None or over - under < 2:  # k and k+1 straddle it: no word count reaches it
                break
            nk = (under + over) // 2
        k = nk
    if not tried:
        return Fit(k, None, None)
    over = min((k for k in tried if tried[k] > target), key=lambda k: tried[k], default=None)
    under = max((k for k in tried if tried[k] < target), key=lambda k: tried[k], default=None)
    best = min(tried, key=lambda k: (abs(tried[k] - target), tried[k] < target))
    fit = Fit(best, None, tried[best])
    # a word of several tokens (a small BPE vocabulary splits "years" in 4) jumps over the target: the words below
    # it, then one-token fillers for what is missing (MAX_PAD_STEPS calls at most)
    if under is not None:
        pad = target - tried[under]
        for _ in range(MAX_PAD_STEPS):
            n = await count(render(take(under) + _fill(pad)))
            if n is None:
                break
            if abs(n - target) < abs(fit.got - target):  # type: ignore[operator]
                fit = Fit(under, None, n, pad)
            if n == target or pad + target - n < 1:
                break
            pad += target - n
        if fit.got == target:
            return fit
    # the last word in another length: a few characters too many or too few (the simulator counts characters)
    # leave the count a token off. The closest count above first, its last word shorter, then the closest below,
    # its last word longer, nearest lengths first; len(_SWAPS) calls at most
    budget = len(_SWAPS)
    for side in (x for x in (over, under) if x is not None):
        chosen = take(side)
        last, shorter = len(chosen[-1]), tried[side] > target
        for w in sorted((w for w in _SWAPS if (len(w) < last if shorter else len(w) > last)),
                        key=lambda w: abs(len(w) - last)):
            if budget <= 0:
                return fit
            budget -= 1
            n = await count(render([*chosen[:-1], w]))
            if n is not None and abs(n - target) < abs(fit.got - target):  # type: ignore[operator]
                fit = Fit(side, w, n)
                if n == target:
                    return fit
    return fit


async def calibrate(count: Count | None, render: Callable[[str], Prompt]) -> tuple[float, float, bool]:
    """(tokens per word of content, tokens the server adds around it, exact): two counts of `render`ed content
    of 1 and 200 words; (1.0, 0.0, False) when the server cannot count."""
    if count is not None:
        c0 = await count(render("the"))
        c1 = await count(render(" ".join(words(random.Random("calibrate"), 200))))
        if c0 is not None and c1 is not None and c1 > c0:
            per_word = (c1 - c0) / 199
            return per_word, c0 - per_word, True
    return 1.0, 0.0, False


def refuse_over_context(ds: Dataset, max_model_len: int | None, max_tokens: int) -> int:
    """Pool prompts whose counted length and output the server's context cannot hold become Refused (the numbers
    in the reason): the engine records them refused, never sent. Returns how many."""
    from .prompts import over_context

    n = 0
    for i, (p, got) in enumerate(zip(ds.pool, ds.counted)):
        if got is None or isinstance(p, Refused):
            continue
        if (no := over_context(got, p.max_tokens if isinstance(p, Sized) else max_tokens, max_model_len)):
            ds.pool[i] = no
            n += 1
    return n
