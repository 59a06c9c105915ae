"""Waiting for a server that is not up yet (`qbench tui --url` started before vLLM): one try, and on a failure
worth retrying another after a growing delay, each wait reported in words, until it answers, the answer is one no
retry can change (a wrong key, a wrong URL), or the caller stops waiting.

Blocking, for a worker thread: `stop` is a threading.Event, so quitting ends a wait at once rather than after its
delay. No jitter: one waiter per dashboard cannot stampede a server; the load's own backoff is per worker."""
from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0


def delay_for(retry: int, first: float = FIRST_DELAY_S, cap: float = MAX_DELAY_S) -> float:
    """Seconds before retry number `retry` (1, 2, ...): doubling from `first`, never above `cap`."""
    return min(cap, first * 2 ** max(0, retry - 1))


class ServerNotReady(RuntimeError):
    """The server never answered while we waited, or answered in a way no retry changes; str() is the line."""


@dataclass(frozen=True)
class WaitStatus:
    url: str
    reason: str  # the latest failure, short ("connection refused", "HTTP 503")
    retry: int  # the number of the retry about to happen (1 after the first failure)
    delay_s: float  # until that retry
    elapsed_s: float  # since the first try

    @property
    def line(self) -> str:
        return f"waiting for {self.url}: {self.reason}, retry {self.retry} in {self.delay_s:.0f} s"

    @property
    def gave_up(self) -> str:
        tries = f"{self.retry} {'try' if self.retry == 1 else 'tries'}"
        return f"{self.url} never answered: {self.reason} ({tries} in {self.elapsed_s:.0f} s)"


def connect_reason(exc: BaseException) -> str:
    """A transport failure in a few words, from the first OS-level cause in the exception's chain (httpx wraps
    the socket's error in two layers of its own, and "All connection attempts failed" says nothing)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return "host name not resolved"
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(e, ConnectionResetError):
            return "connection reset"
        if isinstance(e, TimeoutError) or "timeout" in type(e).__name__.lower():
            return "timed out"
        if isinstance(e, OSError) and e.strerror:
            return e.strerror.lower()
        e = e.__cause__ or e.__context__
    return str(exc).strip() or type(exc).__name__


def wait_until_up(attempt: Callable[[], T], retriable: Callable[[Exception], str | None], *, url: str,
                  say: Callable[[WaitStatus], None], stop: threading.Event,
                  delay: Callable[[int], float] = delay_for, clock: Callable[[], float] = time.monotonic) -> T:
    """attempt()'s value once it returns. `retriable(exc)`: a short reason to try again, or None to give up at
    once (ServerNotReady with the exception's own words). A stop while waiting raises ServerNotReady too, naming
    what the server did last and how long it was waited for."""
    t0 = clock()
    retry = 0
    while True:
        try:
            return attempt()
        except Exception as e:
            why = retriable(e)
            if why is None:
                raise ServerNotReady(str(e)) from None
            retry += 1
            status = WaitStatus(url, why, retry, delay(retry), clock() - t0)
            say(status)
            if stop.wait(status.delay_s):
                raise ServerNotReady(WaitStatus(url, why, retry, 0.0, clock() - t0).gave_up) from None
