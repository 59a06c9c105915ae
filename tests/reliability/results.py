"""Reading back what a run wrote: every line of its requests file parsed, its results file parsed."""
from __future__ import annotations

import json
import time
from pathlib import Path


def records(out: Path) -> list[dict]:
    """Every record of the one run in `out`; a torn or cut line fails here."""
    files = list(out.glob("*.requests.jsonl"))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines()]


def records_so_far(out: Path) -> list[dict]:
    """The whole lines written so far by a run still going (none before its file exists)."""
    files = list(out.glob("*.requests.jsonl"))
    if not files:
        return []
    text = files[0].read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def wait_records(out: Path, pred, timeout: float = 60.0) -> list[dict]:
    """Poll the records written so far until pred(records) holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = records_so_far(out)
        if pred(recs):
            return recs
        time.sleep(0.05)
    raise AssertionError(f"records in {out} never satisfied the condition within {timeout} s")


def results(out: Path) -> dict:
    files = [p for p in out.glob("*.json")]
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def truth(path: Path, at_least: int = 0, timeout: float = 10.0) -> list[dict]:
    """The simulator's --record-truth file: one record per request it served to the end (or cut, or errored).
    It writes a request's line just after the last bytes went out, so a client may be done a moment earlier:
    wait (up to `timeout`) for `at_least` lines."""
    deadline = time.monotonic() + timeout
    while True:
        recs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if len(recs) >= at_least or time.monotonic() > deadline:
            return recs
        time.sleep(0.05)
