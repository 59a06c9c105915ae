"""proctree.LoopSignals: a real signal to this process reaches the callback on the loop, nothing is raised, an
ignored signal stays ignored, and the handlers from before come back."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from qbench_tui.server.proctree import STOP_SIGNALS, LoopSignals, exit_status


def test_exit_status_follows_the_shell_convention():
    assert exit_status(signal.SIGINT) == 130
    assert exit_status(signal.SIGTERM) == 143
    assert exit_status(signal.SIGHUP) == 129


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_calls_back_on_the_loop_without_raising(sig):
    seen: list[tuple[int, bool]] = []

    async def main() -> LoopSignals:
        loop = asyncio.get_running_loop()

        def on(signum: int) -> None:
            seen.append((signum, asyncio.get_running_loop() is loop))

        with LoopSignals(on) as ls:
            os.kill(os.getpid(), sig)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
        return ls

    before = signal.getsignal(sig)
    ls = asyncio.run(main())
    assert seen == [(sig, True)]
    assert ls.received == sig
    assert signal.getsignal(sig) == before  # put back


def test_an_ignored_signal_stays_ignored():
    prev = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    seen: list[int] = []
    try:
        async def main() -> None:
            with LoopSignals(seen.append):
                assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
                os.kill(os.getpid(), signal.SIGHUP)  # nohup's promise: this must not stop the run
                await asyncio.sleep(0.05)

        asyncio.run(main())
        assert seen == []
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, prev)
