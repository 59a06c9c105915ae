"""`F`: restarting a launched server with other flags, as one state with explicit transitions.

    IDLE ──begin──► STOPPING ──launched──► STARTING ──finish──► IDLE
                                              │  ▲
                                              └──┘ begin (another try after a failed start)

STOPPING: `restart()` runs in a thread and the old process may still answer "ready", so readiness means nothing yet.
STARTING: the new process was launched (or the launch raised); "ready" now means the new flags are serving.
While a restart is under way the server's "stopped"/"failed" is expected, not a death to report.
No Textual here: the app drives it, the rules are tested as plain data.
"""
from __future__ import annotations

from enum import Enum


class RestartPhase(Enum):
    IDLE = "idle"
    STOPPING = "stopping"
    STARTING = "starting"


class RestartFlow:
    def __init__(self) -> None:
        self.phase = RestartPhase.IDLE
        self.resume = False  # resume the load once the new server is ready: it was running when F was pressed

    @property
    def active(self) -> bool:
        return self.phase is not RestartPhase.IDLE

    @property
    def stopping(self) -> bool:
        return self.phase is RestartPhase.STOPPING

    def begin(self, load_running: bool) -> None:
        if self.phase is RestartPhase.STOPPING:
            raise RuntimeError("a restart is already stopping the server")
        if self.phase is RestartPhase.IDLE:  # another try after a failed start keeps the first attempt's intent
            self.resume = load_running
        self.phase = RestartPhase.STOPPING

    def launched(self) -> None:
        self._expect(RestartPhase.STOPPING)
        self.phase = RestartPhase.STARTING

    def finish(self) -> bool:
        """The new server is ready: back to IDLE; True when the load should resume."""
        self._expect(RestartPhase.STARTING)
        self.phase = RestartPhase.IDLE
        resume, self.resume = self.resume, False
        return resume

    def _expect(self, phase: RestartPhase) -> None:
        if self.phase is not phase:
            raise RuntimeError(f"restart: {self.phase.value}, expected {phase.value}")
