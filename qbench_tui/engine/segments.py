"""One measured segment per concurrency level visited, kept compact so a long session stays flat in memory.

TTFT, TPOT and E2EL keep one float per request (exact percentiles) up to EXACT_LIMIT values, then fold into the
log histogram (engine/histogram.py); ITL has one value per token, which over a ten-minute soak is tens of millions
of floats, so it is binned from the start. Binned percentiles are within one 0.5% bin of the exact ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .records import RequestRecord
from .result import LevelResult, ServerLevel
from .stats import ClientTally, Finished, LevelTally, level_result

EXACT_LIMIT = 20_000  # per-request values kept exactly per segment before folding into a histogram


def _tally() -> LevelTally:
    return LevelTally(EXACT_LIMIT, itl_exact=False)  # the limit read now, so a test can lower it


@dataclass
class SegmentStats:
    segment: int
    concurrency: int
    t_start: float  # perf_counter when the segment began
    t_end: float | None = None
    mono_start: float | None = None  # time.monotonic() when it began: its server stats start there
    tally: LevelTally = field(default_factory=_tally)
    server: ServerLevel | None = None  # frozen server stats when the segment closes
    client: ClientTally = field(default_factory=ClientTally)  # the load engine's CPU / loop lag while current
    # Throughput counts what FINISHED while this segment was current (whatever segment the request started in):
    # a rate over the segment's own wall time. Counting the requests that started in it instead would keep
    # adding tokens to a closed segment whose duration no longer grows, inflating its rate.
    explicit: bool = False  # a level asked for (RunLevel), never filtered as a transition
    server_config: str = ""  # the launched server's flags while this segment ran ("" when not known)
    done_in: int = 0
    out_tokens_in: int = 0
    in_tokens_in: int = 0

    def add_throughput(self, r: RequestRecord) -> None:
        if r.ok:
            self.done_in += 1
            self.out_tokens_in += r.out_tokens
            self.in_tokens_in += r.in_tokens

    def add(self, r: RequestRecord) -> None:
        self.tally.add(r)

    @property
    def completed(self) -> int:
        return self.tally.completed

    @property
    def failed(self) -> int:
        return self.tally.failed

    def seconds(self, now: float) -> float:
        return (self.t_end if self.t_end is not None else now) - self.t_start

    def result(self, now: float, server: ServerLevel | None = None) -> LevelResult:
        """This segment as a level; duration = the segment's wall time. `server`: stats of a still open segment
        (a closed one has its own, frozen at close)."""
        return level_result(
            self.tally, self.seconds(now), self.concurrency,
            Finished(self.done_in, self.in_tokens_in, self.out_tokens_in), segment=self.segment, mode="live",
            server=server if self.t_end is None and server is not None else self.server,
            server_config=self.server_config, client=self.client.result(),
        )
