"""What `qbench run` and `qbench sweep` share around the load: the results folder checked before anything starts,
the three files of a run (`.requests.jsonl` streamed as requests finish, `.txt` / `.json` rewritten after every
level), SIGINT / SIGTERM / SIGHUP turned into a clean stop, and the line and exit status that say how it ended."""
from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from .common import EXIT_FAIL, Usage, err, error_exit, prompt_source, run_async

T = TypeVar("T")


def check_out(out: str | Path) -> None:
    """The results folder takes files and has room, before a server is launched or any load starts."""
    from ..report.files import check_results_dir

    if problem := check_results_dir(out):
        raise Usage(problem)


def run_meta(cfg, target, url: str, model: str, version: str | None, key_source: str, levels, mode: str):
    from ..report.environment import collect_environment, server_is_local
    from ..report.files import RunMeta

    simulated = bool(version and "sim" in version)
    meta = RunMeta(url=url, model=model, vllm_version=version, prompt=cfg.load.prompt,
                   prompt_source=prompt_source(cfg), max_tokens=cfg.load.max_tokens, levels=tuple(levels), mode=mode,
                   endpoint=cfg.load.endpoint, ignore_eos=cfg.load.ignore_eos, unique_prefix=cfg.load.unique_prefix,
                   temperature=cfg.load.temperature, simulated=bool(version and "sim" in version),
                   server_config=target.server.config_label if target.server else "",
                   config_sources={**dict(cfg.sources), "api_key": key_source})
    meta.environment = collect_environment(server_is_local(url, target.server is not None), simulated)
    return meta


class RunFiles:
    """One run's three files under a name no other run holds (engine/recordlog.open_run_log). No write here ever
    raises: `error` names the first failure (a full disk) and the run stops on it; a summary that could not be
    rewritten keeps its previous version."""

    def __init__(self, out_dir: str | Path, meta, verdict: Callable[[list], Any]) -> None:
        from ..engine.recordlog import open_run_log, write_error

        self.out, self.meta, self._verdict = Path(out_dir), meta, verdict
        try:
            self.base, self.log = open_run_log(self.out, meta.model, meta.started)
        except OSError as e:  # the folder changed since check_out: still one line, and no load started
            raise Usage(write_error(e, self.out)) from None
        self.levels: list = []
        self._write_error: str | None = None

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.out / f"{self.base}.txt", self.out / f"{self.base}.json", self.log.path

    @property
    def error(self) -> str | None:
        return self.log.error or self._write_error

    def verdict(self):
        """The knee over the levels that were measured to their end (an interrupted one is not comparable)."""
        return self._verdict([lv for lv in self.levels if not lv.interrupted])

    def record(self, rec, concurrency: int) -> None:
        self.log.add(rec, level=concurrency)

    def add_level(self, lv) -> None:
        self.levels.append(lv)
        self.log.flush()
        self.save()

    def save(self) -> bool:
        from ..engine.recordlog import write_error
        from ..report.files import write_results

        try:
            write_results(self.out, self.base, self.meta, self.levels, self.verdict())
        except OSError as e:
            self._write_error = self._write_error or write_error(e, self.paths[1])
            return False
        return True

    def close(self) -> None:
        self.log.close()

    def discard_if_empty(self) -> None:
        """A run refused before its first request (a fleet flag that cannot be, nothing answering): no file of it
        stays behind, as for any other usage error."""
        if self.levels:
            return
        for path in self.paths:
            try:
                if path.stat().st_size == 0:
                    path.unlink()
            except OSError:
                pass

    def saved_lines(self) -> str:
        txt, js, jl = self.paths
        return f"saved: {txt}\n       {js}\n       {jl}"


def measure(run: Callable[[Any], Awaitable[T]], files: RunFiles | None = None) -> tuple[T, int | None]:
    """run_async(run(stop)) with SIGINT / SIGTERM / SIGHUP setting `stop` on the loop (nothing is raised inside the
    load, where a transport could swallow it) and the records flushed by a timer each second. Returns (what run
    returned, the first stop signal or None)."""
    from ..headless import StopFlag
    from ..server.proctree import LoopSignals

    async def main() -> tuple[T, int | None]:
        stop = StopFlag()

        def on_signal(signum: int) -> None:
            stop.set(f"interrupted by {signal.Signals(signum).name}")

        with LoopSignals(on_signal) as sigs:
            if files is not None:
                files.log.start_timer()
            try:
                return await run(stop), sigs.received
            finally:
                if files is not None:
                    files.log.stop_timer()

    return run_async(main())


def stop_line(reason: str, levels: list) -> str:
    """"interrupted by SIGTERM during level 60: 2 levels finished, level 60 kept as interrupted (812 requests)"."""
    done = [lv for lv in levels if not lv.interrupted]
    cut = next((lv for lv in levels if lv.interrupted), None)
    n = f"{len(done)} level{'' if len(done) == 1 else 's'} finished"
    if cut is not None:
        return (f"{reason} during level {cut.max_concurrency}: {n}, level {cut.max_concurrency} kept as "
                f"interrupted ({cut.completed + cut.failed} requests)")
    if done:
        return f"{reason} after level {done[-1].max_concurrency}: {n}"
    return f"{reason} before any level finished"


def report_stop(stopped: str | None, signum: int | None, levels: list, meta=None) -> None:
    """The stop on stderr, and in the files' notes, in one line with what was kept; a dead server's log tail
    is printed whole but noted by its first line."""
    if not stopped:
        return
    line = stop_line(stopped.splitlines()[0], levels)
    if meta is not None:
        meta.notes.append(line if signum is not None else f"stopped early: {line}")
    err(stopped if "\n" in stopped else line)


def exit_code(stopped: str | None, signum: int | None, levels: list, max_error_rate: float) -> int:
    """128+signal; a stop by the error budget as the failures say (3 over --max-error-rate, 1 when all failed),
    never 0; any other early stop 1; else the error-rate exit."""
    from ..server.proctree import exit_status

    if signum is not None:
        return exit_status(signum)
    if stopped and stopped.startswith("error budget"):  # engine/budget.py's message (LoadEngine.tripped)
        return error_exit(levels, max_error_rate) or EXIT_FAIL
    if stopped:
        return EXIT_FAIL
    return error_exit(levels, max_error_rate)
