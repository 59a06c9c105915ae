"""Per-request records appended to a JSONL file as they finish, flushed at least once a second, and the run's
unique name.

Writes happen on the engine loop but only as buffered appends; a flush is one write() per second (after an add,
or from a timer on the loop when no record arrives), so a crash loses at most the last second of records and no
per-request syscall sits on the timing path. A write that fails (disk full, the folder gone) never raises into the
load: `error` says what happened in one line, the file is cut back to its last whole record, and every later add
or flush does nothing, so a parser never meets a cut line.
"""
from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

from ..report.files import result_basename
from .records import RequestRecord


def _mount_of(path: Path) -> str:
    p = path.resolve()
    if not p.is_dir():
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


def write_error(e: OSError, path: Path) -> str:
    """One line for a failed results write, naming the disk when it is full."""
    why = e.strerror or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"results disk full: {why} ({path}, on {_mount_of(path)})"
    return f"results file write failed: {why} ({path})"


class RecordLog:
    def __init__(self, path: str | Path, flush_interval: float = 1.0, *, exclusive: bool = False) -> None:
        """`exclusive`: the file must not exist yet (a run never appends into another run's file)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (os.O_EXCL if exclusive else 0)
        # 0o666 minus the umask: the mode every results file gets (report/files.atomic_write does the same)
        self._fd = os.open(self.path, flags, 0o666)
        self._size = os.fstat(self._fd).st_size  # bytes on disk that end in a whole line
        self._buf: list[str] = []
        self._interval = flush_interval
        self._last = time.monotonic()
        self._timer: Any = None
        self.count = 0  # records added
        self.written = 0  # records on disk
        self.error: str | None = None

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def add(self, rec: RequestRecord, **extra: object) -> None:
        if self.error is not None or self._fd < 0:
            return
        obj = rec.to_json()
        if extra:
            obj.update(extra)
        self._buf.append(json.dumps(obj, separators=(",", ":")))
        self.count += 1
        if time.monotonic() - self._last >= self._interval:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._buf or self._fd < 0 or self.error is not None:
            return
        data = ("\n".join(self._buf) + "\n").encode()
        lines = len(self._buf)
        self._buf.clear()
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as e:
            self._fail(e, data[:done])
            return
        self._size += done
        self.written += lines

    def _fail(self, e: OSError, partial: bytes) -> None:
        """Keep the whole lines that reached the disk; cut the rest off so the file ends in a whole record."""
        keep = partial.rfind(b"\n") + 1
        self._size += keep
        self.written += partial[:keep].count(b"\n")
        self.error = write_error(e, self.path)
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:  # nothing more can be done about a file that cannot even be shortened
            pass
        self._close_fd()

    def start_timer(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Flush every interval on the running loop even when no record arrives (a level whose requests are all
        long still reaches the disk each second)."""
        loop = loop or asyncio.get_running_loop()

        def tick() -> None:
            self.flush()
            self._timer = None
            if self._fd >= 0 and self.error is None:
                self._timer = loop.call_later(self._interval, tick)

        self.stop_timer()
        self._timer = loop.call_later(self._interval, tick)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_fd(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def close(self) -> None:
        self.stop_timer()
        self.flush()
        self._close_fd()


def open_run_log(out_dir: str | Path, model: str, when: float) -> tuple[str, RecordLog]:
    """A run base name nobody else holds, and its `<base>.requests.jsonl` created exclusively.

    The name has a sub-second stamp; two runs in the same millisecond (or one whose files are already there) get
    -2, -3, ... The .jsonl is the claim: created with O_EXCL, so two processes can never share one, and a base
    whose .txt / .json exist already is skipped too."""
    out = Path(out_dir)
    stem = result_basename(model, when, subsecond=True)
    for n in range(1, 1000):
        base = stem if n == 1 else f"{stem}-{n}"
        if (out / f"{base}.txt").exists() or (out / f"{base}.json").exists():
            continue
        try:
            return base, RecordLog(out / f"{base}.requests.jsonl", exclusive=True)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "999 runs already hold this name", str(out / stem))
