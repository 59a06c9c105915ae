"""How a dashboard session ends: its exit status and the one line `qbench tui` prints on stderr once the screen
is restored. No Textual here, so the rule is tested as plain data.

0 for a normal session. 1 when the server never answered or died, was unreachable at the end, every request
failed (none completed), the load stopped itself (the error budget, a full results disk) and stayed stopped, a save
failed, or the engine broke. 2 when the session could not start for what its fleet flags ask (Snapshot.exit_code;
1 when Prometheus or the Ray cluster does not answer). A signal wins the status (128 + signum, as a shell reports
it); the line still names whatever else went wrong, so a CI log says both."""
from __future__ import annotations

import signal as _signal
from dataclasses import dataclass

from qbench_tui.engine.snapshot import EngineStatus, Snapshot
from qbench_tui.server.proctree import exit_status


@dataclass
class Outcome:
    signum: int | None = None  # the first stop signal received
    never_up: str = ""  # the server never answered (or answered no retry could change): why
    engine_failed: str = ""  # the engine could not be started
    server_died: str = ""  # a launched or simulated server ended without being told to

    def problems(self, last: Snapshot | None) -> list[str]:
        out = [p for p in (self.never_up, self.engine_failed, self.server_died) if p]
        if last is None:
            return out
        if last.status is EngineStatus.ERROR and last.message:
            out.append(last.message)
        if last.completed_total == 0 and last.failed_total > 0:
            why = f": {last.last_error}" if last.last_error else ""
            out.append(f"every request failed ({last.failed_total:,}){why}")
        if last.paused_why:
            out.append(f"load paused: {last.paused_why}")
        if last.server.error.startswith("server unreachable") and not (self.server_died or self.never_up):
            out.append(f"{last.server.error} (at the end)")
        if last.save_error:
            out.append(last.save_error)
        return out

    def result(self, last: Snapshot | None) -> tuple[int, str]:
        """(exit status, the line for stderr; "" for a clean session)."""
        problems = self.problems(last)
        if self.signum is not None:
            name = _signal.Signals(self.signum).name
            return exit_status(self.signum), "; ".join([f"stopped by {name}", *problems])
        if last is not None and last.exit_code:  # the session could not start: 2 for its flags, 1 unreachable
            return last.exit_code, "; ".join(problems)
        return (1 if problems else 0), "; ".join(problems)
