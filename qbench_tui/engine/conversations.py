"""Multi-turn conversations (`--turns K`): each next request carries the history and the answer actually streamed
back, the way chat users hit the prefix cache.

Semantics (closed loop): concurrency C is C users; each runs conversations one after another. Turn k's messages are
[u1, a1, u2, a2, ..., uk]: a_i is the text the server streamed for turn i (collected only for conversations:
engine/openai_stream.StreamTiming's `text`), u_i the prompt source's next prompt (the fixed prompt, the next line of
a file, the dataset's next prompt). With `--random-input-len N` the dataset sizes turn 1's whole prompt to N tokens
by the server's count; each later turn's NEW user message is the user part of the dataset's next prompt, so about
N tokens (the template's share of the N less, its own few template tokens more). A user thinks `think_time`
seconds between turns: idle, not in flight; the wait ends at once on stop / pause / a lower target / the level's
end (engine/load.py's `_nap`). A failed turn ends its conversation; the user's next request starts a new one.

Every conversation is unique from its first user message on (a random tag opens it, after any system message, so a
dataset's shared-prefix groups stay shared): the prefix cache can only help a conversation with its own history,
never with another conversation's.

Context: a turn whose history would not fit is not sent. The history is known from the previous turn's usage:
its prompt_tokens, plus its answer as resent — completion_tokens, or the answer's characters / 4 when that is more
(a server may count the text it generated differently when it comes back as a prompt: the simulator does, by
characters; the larger of the two keeps a refusal on the safe side). The new user message is counted by the
dataset (the server's count of its whole prompt, an upper bound) or estimated at 4 characters per token;
`TEMPLATE_TOKENS` per new message cover the chat template. When that plus the turn's max_tokens exceeds the
server's max_model_len, `next` returns `Refused` (counted and named by the engine, never sent) and the
conversation ends.

On the completions endpoint the history is one text: u1 a1, a blank line, u2 a2, ... (the answer continues its
prompt, as it was generated, so the resent text starts with the cached prompt + answer tokens).

Protocol with the engine (engine/load.py): `next(worker)` -> (prompt or Refused, turn, conversation), then
`answered(worker, record, text)` once its record is complete (True: the conversation goes on, think first),
`end(worker)` to drop a worker's conversation (a wave starts fresh ones). State is per worker index.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .prompts import Prompt, Refused, Sized
from .records import RequestRecord

TEMPLATE_TOKENS = 8  # a chat template's tokens around one message (ChatML: <|im_start|>role\n ... <|im_end|>\n)
CHARS_PER_TOKEN = 4  # the estimate for a message no one counted (English text in common BPE tokenizers)


@dataclass
class _Conv:
    id: int
    turn: int = 0  # turns sent so far
    messages: list = field(default_factory=list)  # chat: the history as sent
    text: str = ""  # completions: the history as one text
    history: int = 0  # tokens of the history after the last answer (prompt_tokens + completion_tokens)
    pending: bool = False  # a turn was sent and its answer is not in yet


def _user_text(p: str | list) -> str:
    """A later turn's new user message from a source prompt: its user part (a dataset's system message holds the
    shared prefix and the tag of turn 1's prompt, not a user's words)."""
    if isinstance(p, str):
        return p
    parts = [str(m.get("content", "")) for m in p if isinstance(m, dict) and m.get("role") != "system"]
    return "\n".join(parts) or "\n".join(str(m.get("content", "")) for m in p if isinstance(m, dict))


def _opening(p: str | list, tag: str) -> list:
    """Turn 1's messages: the source prompt with the conversation's tag opening its first user message."""
    msgs = [{"role": "user", "content": p}] if isinstance(p, str) else [dict(m) for m in p]
    for m in msgs:
        if m.get("role") == "user":
            m["content"] = f"{tag} {m.get('content', '')}"
            return msgs
    return [*msgs, {"role": "user", "content": tag}]


class Conversations:
    """The conversation source: `base(j)` is the j-th prompt of the underlying source (u_j)."""

    def __init__(self, base: Callable[[int], Prompt], turns: int, think_time: float = 0.0, *, chat: bool = True,
                 max_tokens: int = 200, max_model_len: int | None = None,
                 count: Callable[[int], int | None] | None = None, seed: int = 0) -> None:
        if turns < 1:
            raise ValueError("turns must be >= 1")
        if not think_time >= 0.0:
            raise ValueError("think_time must be >= 0")
        self.turns, self.think_time = turns, think_time
        self._base, self._chat, self._max_tokens = base, chat, max_tokens
        self.max_model_len = max_model_len
        self._count, self._seed = count, seed
        self._convs: dict[int, _Conv] = {}
        self._ids = 0  # conversations started
        self._j = 0  # source prompts used

    def describe(self) -> str:
        think = f", think time {self.think_time:g} s" if self.think_time else ""
        return f"conversations of {self.turns} turns{think}"

    def active(self, worker: int) -> bool:
        """Whether worker's conversation goes on (its next request is a next turn)."""
        c = self._convs.get(worker)
        return c is not None and not c.pending

    def end(self, worker: int) -> None:
        self._convs.pop(worker, None)

    def next(self, worker: int) -> tuple[Prompt | Refused, int, int]:
        c = self._convs.get(worker)
        if c is None or c.pending:  # none yet, or the last one was cut (its request cancelled): a new one
            c = self._convs[worker] = _Conv(self._ids)
            self._ids += 1
        j = self._j
        self._j += 1
        base = self._base(j)
        max_tokens = self._max_tokens
        if isinstance(base, Sized):
            base, max_tokens = base
        c.turn += 1
        if c.turn == 1:
            tag = f"[{random.Random(f'{self._seed}:conversation:{c.id}').getrandbits(64):016x}]"
            msgs = _opening(base, tag)
            if self._chat:
                c.messages = msgs
            else:  # build_request's join of a message list, so turn 1 reads as the plain source would
                c.text = "\n".join(str(m.get("content", "")) for m in msgs)
        else:
            new = _user_text(base)
            if self.max_model_len:
                counted = self._count(j) if self._count is not None else None
                est = counted if counted is not None else len(new) // CHARS_PER_TOKEN + 1
                need = c.history + est + (2 * TEMPLATE_TOKENS if self._chat else 2) + max_tokens
                if need > self.max_model_len:
                    del self._convs[worker]
                    return (Refused(f"conversation turn {c.turn}: history + new message + max_tokens would "
                                    f"exceed max_model_len {self.max_model_len}"), c.turn, c.id)
            if self._chat:
                c.messages.append({"role": "user", "content": new})
            else:
                c.text += "\n\n" + new
        c.pending = True
        prompt: str | list = list(c.messages) if self._chat else c.text
        return (prompt if max_tokens == self._max_tokens else Sized(prompt, max_tokens)), c.turn, c.id

    def answered(self, worker: int, rec: RequestRecord, text: str) -> bool:
        """The turn's record and the answer's text are in: True when the conversation goes on."""
        c = self._convs.get(worker)
        if c is None:
            return False
        if not rec.ok or c.turn >= self.turns:
            del self._convs[worker]
            return False
        c.pending = False
        if self._chat:
            c.messages.append({"role": "assistant", "content": text})
        else:
            c.text += text
        if rec.in_tokens:
            c.history = rec.in_tokens + max(rec.out_tokens, -(-len(text) // CHARS_PER_TOKEN))
        else:  # no usage: the whole history by the characters estimate
            chars = len(c.text) if not self._chat else sum(len(str(m.get("content", ""))) for m in c.messages)
            c.history = chars // CHARS_PER_TOKEN + TEMPLATE_TOKENS * len(c.messages)
        return True
