"""What every child process of qbench sets up first (the engine process, a client shard): die with its parent,
leave Ctrl-C and SIGHUP to it, run on the faster loop."""
from __future__ import annotations

import signal

from ..server.proctree import set_pdeathsig


def die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies, even by SIGKILL, so no engine outlives qbench."""
    set_pdeathsig(signal.SIGTERM)


def child_signals_and_loop() -> None:
    """A child of the face or of the engine (the engine itself, a client shard): Ctrl-C and SIGHUP belong to its
    parent, which stops it in order (a closed terminal sends SIGHUP to the whole foreground group, and a child
    that died of it would leave nothing to save); and the faster loop, when installed (uvicorn[standard] brings
    uvloop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
