"""Where each request's prompt comes from: one fixed prompt, a file, or a synthetic prompt of N tokens.

`--unique-prefix` puts a random per-request prefix FIRST — in a system message of its own, before anything a chat
template adds — so that no two requests share a cached block (prefix caching hashes from the start of the prompt,
so a suffix would not defeat it).
"""
from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple, Protocol


class Sized(NamedTuple):
    """A prompt that carries its own output length: a .jsonl line with "output_tokens" (vllm bench serve's custom
    dataset) or "max_tokens". Replaying the same file through both tools sends the same requests."""
    prompt: str | list
    max_tokens: int


class Refused(NamedTuple):
    """What a prompt source returns for a request it will not send (the engine records it as refused, unsent):
    e.g. a trace entry whose prompt and output cannot fit the server's max_model_len. `reason` is one line."""

    reason: str


Prompt = str | list | Sized  # a plain prompt, a list of chat messages, or either with its own max_tokens

# Words of about one token each for common BPE tokenizers, so "N words" is roughly "N tokens".
WORDS = (
    "the of and to in is was for on are with as by at from that this be it an or not have has but were "
    "which their one all there can been would more will other when time two about into only new some could "
    "these may first any then like now over such our out also most used where after made many before must "
    "through back years much way well down should because each just those people how too little state good "
    "very make world still own see men work long get here between both life being under never day same "
    "another know while last might us great old year off come since against go came right take three"
).split()


class PromptError(ValueError):
    pass


def synthetic_prompt(n_tokens: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(max(1, n_tokens)))


def load_prompts(path: str) -> list[Prompt]:
    """.txt: one prompt per line; .jsonl: {"prompt": ...} or {"messages": [...]} per line, optionally with
    "output_tokens" or "max_tokens" (that request's max_tokens, over --max-tokens);
    .json: ShareGPT ([{"conversations": [{"from": "human", "value": ...}, ...]}, ...]) or a list of strings."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise PromptError(f"{p}: cannot read prompts file: {e.strerror or e}") from None
    prompts: list[Prompt] = []
    if p.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptError(f"{p}:{i}: not valid JSON: {e.msg}") from None
            if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                item: Prompt = obj["messages"]
            elif isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                item = obj["prompt"]
            else:
                raise PromptError(f"{p}:{i}: expected an object with \"prompt\" (string) or \"messages\" (list)")
            key = "output_tokens" if "output_tokens" in obj else "max_tokens" if "max_tokens" in obj else None
            if key is not None:
                n = obj[key]
                if n is None or (isinstance(n, int) and not isinstance(n, bool) and n == -1):
                    pass  # vllm's custom datasets write null/-1 for "use the default"
                elif isinstance(n, int) and not isinstance(n, bool) and n > 0:
                    item = Sized(item, n)
                else:
                    raise PromptError(f"{p}:{i}: \"{key}\" must be a positive integer, got {n!r}")
            prompts.append(item)
    elif p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PromptError(f"{p}: not valid JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise PromptError(f"{p}: expected a JSON list (ShareGPT format)")
        for item in data:
            if isinstance(item, str):
                prompts.append(item)
            elif isinstance(item, dict) and isinstance(item.get("conversations"), list):
                first = next((c for c in item["conversations"]
                              if isinstance(c, dict) and c.get("from") in ("human", "user")), None)
                if first and isinstance(first.get("value"), str) and first["value"].strip():
                    prompts.append(first["value"])
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise PromptError(f"{p}: no prompts found")
    return prompts


def describe_source(prompts_file: str = "", prompt_len: int = 0) -> str:
    """The reports' "prompt source": fixed, synthetic, or a file (saying how many of its lines set their own
    max_tokens, since the report's "Max tokens" is then only the default for the others)."""
    if prompts_file:
        try:
            sized = [p.max_tokens for p in load_prompts(prompts_file) if isinstance(p, Sized)]
        except PromptError:
            sized = []
        if sized:
            return f"file:{prompts_file} ({len(sized)} with own max_tokens {min(sized)}-{max(sized)})"
        return f"file:{prompts_file}"
    if prompt_len:
        return f"synthetic:{prompt_len} tokens"
    return "fixed"


def make_prompt_source(prompt: str, prompts_file: str = "", prompt_len: int = 0, unique_prefix: bool = False,
                       seed: int = 0) -> Callable[[int], Prompt]:
    """Returns prompts(i) -> the prompt for the i-th request (deterministic for a given seed)."""
    if prompts_file:
        pool: list[Prompt] = load_prompts(prompts_file)
    elif prompt_len > 0:
        pool = [synthetic_prompt(prompt_len, seed)]
    else:
        if not prompt:
            raise PromptError("the prompt is empty")
        pool = [prompt]

    if not unique_prefix:
        return lambda i: pool[i % len(pool)]

    def unique(i: int) -> Prompt:
        rng = random.Random(f"{seed}:{i}")
        prefix = f"[{rng.getrandbits(64):016x}] " + " ".join(rng.choice(WORDS) for _ in range(24)) + "\n"
        base = pool[i % len(pool)]
        if isinstance(base, Sized):
            return Sized(_prefixed(prefix, base.prompt), base.max_tokens)
        return _prefixed(prefix, base)

    return unique


def _prefixed(prefix: str, base: str | list) -> list:
    """The unique part in a system message FIRST: a chat template puts its default system prompt (Qwen's is ~20
    tokens, the same for every request) before a user message, so a tag inside the user message still left a
    shared cached block (58% prefix hits on the default prompt). On the completions endpoint the messages are
    joined into one text, the tag first (request.build_request)."""
    tag = prefix.strip()
    if isinstance(base, str):
        return [{"role": "system", "content": tag}, {"role": "user", "content": base}]
    msgs = [dict(m) for m in base]
    if msgs and msgs[0].get("role") == "system" and isinstance(msgs[0].get("content"), str):
        msgs[0]["content"] = f"{tag}\n{msgs[0]['content']}"
        return msgs
    return [{"role": "system", "content": tag}, *msgs]


def over_context(n_in: int, n_out: int, max_model_len: int | None) -> Refused | None:
    """The Refused for a request whose prompt and output the server's context cannot hold, else None."""
    if not max_model_len or n_in + n_out <= max_model_len:
        return None
    return Refused(f"refused before sending: {n_in:,} prompt + {n_out:,} output tokens > max_model_len "
                   f"{max_model_len:,}")


def _bound(prompt: Prompt) -> int:
    """More tokens than any tokenizer makes of this content: byte-level BPE makes at most one a byte,
    SentencePiece at most a byte and a word marker; the JSON of a message list over-counts its structure."""
    p = prompt.prompt if isinstance(prompt, Sized) else prompt
    return 2 * len((p if isinstance(p, str) else json.dumps(p)).encode())


class ContextChecked:
    """A prompt source whose pool entries the server's context cannot hold come back Refused (numbers in the
    reason), the rest as the source gives them. `refused` counts the pool entries refused."""

    def __init__(self, source: Callable[[int], Prompt], size: int, refusals: dict[int, Refused]) -> None:
        self.source, self.size, self.refusals = source, size, refusals
        self.refused = len(refusals)

    def __call__(self, i: int) -> Prompt | Refused:
        return self.refusals.get(i % self.size) or self.source(i)


class Counts(Protocol):
    """What check_context needs of the server's tokenizer (engine/tokenizer.ServerTokenizer)."""

    max_model_len: int | None

    def count(self, prompt: Prompt) -> Awaitable[int | None]: ...


async def check_context(source: Callable[[int], Prompt], size: int, tok: Counts, max_tokens: int, *,
                        parallel: int = 16) -> tuple[ContextChecked, int | None]:
    """The source with its over-context entries refused, and the server's max_model_len (None: unknown, nothing
    refused). The pool's first pass is what is checked (a --unique-prefix tag moves a count by a token or two).
    Only entries that COULD exceed the context are counted (`_bound`), so a large file costs a few calls."""
    empty = await tok.count("")  # the template's own tokens; its answer also carries max_model_len
    max_model_len = tok.max_model_len if empty is not None else None
    if not max_model_len:
        return ContextChecked(source, size, {}), None
    sem = asyncio.Semaphore(parallel)

    async def one(i: int) -> tuple[int, Refused | None]:
        p = source(i)
        out = p.max_tokens if isinstance(p, Sized) else max_tokens
        if (empty or 0) + _bound(p) + out <= max_model_len:
            return i, None
        async with sem:
            n = await tok.count(p)
        return i, None if n is None else over_context(n, out, max_model_len)

    done = await asyncio.gather(*(one(i) for i in range(size)))
    return ContextChecked(source, size, {i: r for i, r in done if r is not None}), max_model_len
