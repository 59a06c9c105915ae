"""Open files for the load: every worker holds one connection, so a concurrency in the thousands needs more file
descriptors than the usual soft limit (1024) allows, and would fail mid-level with EMFILE. The soft limit is raised
as far as the hard limit lets it (vLLM raises its own the same way); past that the level is refused, in one line,
before anything starts."""
from __future__ import annotations

import resource

# descriptors besides the connections: stdio, results files, side-channel clients, the event loop, pipes to a
# launched server or the engine process (a headless sweep at C=1 had 18 open); room to spare
RESERVE = 128


def ensure_fds(concurrency: int) -> str:
    """Make room for `concurrency` connections: "" when there is, else why not (the caller refuses the level
    with it, or, as the dashboard whose concurrency is chosen later may, goes on with what it got)."""
    need = concurrency + RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return ""
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError):  # e.g. macOS caps the soft limit below an "unlimited" hard one
        pass
    if soft >= need:
        return ""
    return (f"concurrency {concurrency} needs about {need} open files, but this process may open only {soft} "
            f"(ulimit -n; hard limit {'unlimited' if hard == resource.RLIM_INFINITY else hard}): raise it "
            f"(ulimit -n {need}) or use a concurrency of at most {max(1, soft - RESERVE)}")
