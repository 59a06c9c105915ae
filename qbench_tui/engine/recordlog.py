"""Per-request records appended to a JSONL file, flushed at least once a second.

Writes happen on the engine loop but only as buffered appends; the flush is one write() per second so a
crash loses at most the last second of records, and no per-request syscall sits on the timing path.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .records import RequestRecord


class RecordLog:
    def __init__(self, path: str | Path, flush_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self._buf: list[str] = []
        self._interval = flush_interval
        self._last = time.monotonic()
        self.count = 0

    def add(self, rec: RequestRecord, **extra: object) -> None:
        obj = rec.to_json()
        if extra:
            obj.update(extra)
        self._buf.append(json.dumps(obj, separators=(",", ":")))
        self.count += 1
        if time.monotonic() - self._last >= self._interval:
            self.flush()

    def flush(self) -> None:
        if self._buf and not self._f.closed:
            self._f.write("\n".join(self._buf) + "\n")
            self._buf.clear()
            self._f.flush()
        self._last = time.monotonic()

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()
