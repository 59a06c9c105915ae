"""What the control bar shows for target concurrency, pause, the loop's mode and its rate: the engine owns them.

The face numbers every command it sends (`seq`); each Snapshot names the last one the engine applied (`ack`).
Until the engine has applied a command, the face shows what it asked for (a key press must show at once, and the
engine answers only at its next 4 Hz snapshot); from then on it shows what the engine says, whatever moved it.
No clock: a slow engine never has its state overruled by a timeout, and a quick one never flickers back.
No Textual here, so the rule is tested as plain data.
"""
from __future__ import annotations

from dataclasses import replace

from qbench_tui.engine.snapshot import (
    AutoLadder,
    Command,
    EngineStatus,
    Pause,
    Resume,
    SetConcurrency,
    SetMode,
    SetRate,
    Snapshot,
    StopAuto,
    clamp_concurrency,
    clamp_rate,
)


class LiveControl:
    def __init__(self, target: int, paused: bool) -> None:
        # before the first snapshot the engine has said nothing: what the face will ask for is all there is
        self._engine_target = clamp_concurrency(target)
        self._engine_paused = paused
        self._engine_auto = False
        self._seq = 0
        self._target: tuple[int, int] | None = None  # (value, seq) asked for and not yet applied
        self._paused: tuple[bool, int] | None = None
        self._auto: tuple[bool, int] | None = None
        self._engine_mode = "closed"
        self._engine_rate = 0.0
        self._mode: tuple[str, int] | None = None
        self._rate: tuple[float, int] | None = None  # 0.0: the engine picks (SetMode open without a rate)

    @property
    def target(self) -> int:
        return self._target[0] if self._target is not None else self._engine_target

    @property
    def paused(self) -> bool:
        return self._paused[0] if self._paused is not None else self._engine_paused

    @property
    def auto(self) -> bool:
        """A ladder runs (Snapshot.auto is not empty), or one was asked for and the engine has not applied it."""
        return self._auto[0] if self._auto is not None else self._engine_auto

    @property
    def mode(self) -> str:
        """"closed" (a concurrency) or "open" (a rate)."""
        return self._mode[0] if self._mode is not None else self._engine_mode

    @property
    def rate(self) -> float:
        """The open loop's rate asked for (requests/s); 0.0 until the engine has said, when it picks the start."""
        return self._rate[0] if self._rate is not None else self._engine_rate

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def pending(self) -> bool:
        return (self._target is not None or self._paused is not None or self._auto is not None
                or self._mode is not None or self._rate is not None)

    def stamp(self, cmd: Command) -> Command:
        """Number a command about to be sent, and remember what it asks for until the engine applies it."""
        self._seq += 1
        cmd = replace(cmd, seq=self._seq)
        if isinstance(cmd, SetConcurrency):
            self._target = (clamp_concurrency(cmd.n), self._seq)
        elif isinstance(cmd, (Pause, Resume)):
            self._paused = (isinstance(cmd, Pause), self._seq)
        elif isinstance(cmd, (AutoLadder, StopAuto)):
            self._auto = (isinstance(cmd, AutoLadder), self._seq)
        elif isinstance(cmd, SetMode):
            self._mode = (cmd.mode, self._seq)
            if cmd.mode == "open":
                self._rate = (clamp_rate(cmd.rate) if cmd.rate else 0.0, self._seq)
            elif cmd.concurrency:
                self._target = (clamp_concurrency(cmd.concurrency), self._seq)
        elif isinstance(cmd, SetRate):
            self._rate = (clamp_rate(cmd.rate), self._seq)
        return cmd

    def seen(self, snap: Snapshot) -> None:
        self._engine_target = snap.target_concurrency
        self._engine_paused = snap.status == EngineStatus.PAUSED
        self._engine_auto = bool(snap.auto)
        self._engine_mode = snap.mode
        if snap.request_rate is not None:  # closed: the open loop's last rate stays what `o` would return to
            self._engine_rate = snap.request_rate
        if self._target is not None and snap.ack >= self._target[1]:
            self._target = None
        if self._paused is not None and snap.ack >= self._paused[1]:
            self._paused = None
        if self._auto is not None and snap.ack >= self._auto[1]:
            self._auto = None
        if self._mode is not None and snap.ack >= self._mode[1]:
            self._mode = None
        if self._rate is not None and snap.ack >= self._rate[1]:
            self._rate = None
