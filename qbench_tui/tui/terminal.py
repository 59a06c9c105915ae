"""A terminal that may vanish under the dashboard (a dropped SSH session, a killed tmux session).

Textual 8 writes the screen from a thread to sys.__stderr__. Once the terminal has gone, a write there raises EIO,
that thread dies, and the app's own teardown then blocks for ever putting escape codes into the dead thread's full
queue: the process hung after the results were saved, with its engine and server already stopped. So the dashboard
runs with a stderr whose writes cannot fail: once one fails, output is dropped and `gone` says the terminal left.
No Textual here."""
from __future__ import annotations

import sys
from typing import Any


class _Guarded:
    """A text stream whose write/flush swallow OSError (EIO, EPIPE) from then on; everything else is the stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except OSError:
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except OSError:
                self.gone = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class GuardedTerminal:
    """Context manager: sys.stderr and sys.__stderr__ guarded while the dashboard runs, put back after."""

    def __init__(self) -> None:
        self._saved: tuple[Any, Any] | None = None
        self._guard: _Guarded | None = None

    @property
    def gone(self) -> bool:
        return self._guard is not None and self._guard.gone

    def __enter__(self) -> GuardedTerminal:
        self._saved = (sys.stderr, sys.__stderr__)
        if sys.__stderr__ is not None:
            self._guard = _Guarded(sys.__stderr__)
            sys.__stderr__ = self._guard  # type: ignore[misc]  # what Textual's driver writes to
            if sys.stderr is self._saved[1]:
                sys.stderr = self._guard  # Rich's error console: a panic's traceback into a dead terminal
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            sys.stderr, sys.__stderr__ = self._saved  # type: ignore[misc]
