"""Results files: the classic .txt table, the .json (vllm bench serve keys per level) and their names.

Every file is written atomically (temp file + rename) so an interrupted sweep leaves valid files holding the
levels that finished; the sweep rewrites them after each level. A write that fails leaves the previous file as it
was. Every results file gets one mode: 0o666 minus the umask, as any file the user's tools create.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine.knee import Knee
    from ..engine.result import LevelResult

SCHEMA_VERSION = 1
TABLE_HEADER = ("Concurrency", "Total Time (s)", "Avg Latency (s)", "Requests/sec", "Tokens/sec")


# Why 50 MB: a request's JSONL line is ~0.4 kB at 16 output tokens and ~2 kB at the default 200 (its inter-token
# latencies are most of it), so 50 MB holds some 25k default-sized requests, a 10-minute level at 40 requests/s;
# the summaries are tens of kB. With less, an ordinary sweep would likely fill the disk. A floor for sanity, not a
# forecast: a disk that fills anyway stops the run cleanly (engine/recordlog.RecordLog.error).
MIN_FREE_BYTES = 50_000_000


def result_basename(model: str, when: float | None = None, subsecond: bool = False) -> str:
    """`benchmark_<model>_<YYYYmmdd_HHMMSS>`, with `_<milliseconds>` when `subsecond` (a run's unique name:
    engine/recordlog.open_run_log)."""
    when = when if when is not None else time.time()
    stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime(when))
    if subsecond:
        stamp += f"_{int(when * 1000) % 1000:03d}"
    safe = (model or "unknown").replace("/", "_").replace(" ", "_")
    return f"benchmark_{safe}_{stamp}"


def _umask() -> int:
    """The process umask, read without setting it (os.umask() would change it for every thread for a moment)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """The mode a results file gets: what open() gives any new file (mkstemp's 0600 would differ from the .jsonl)."""
    return 0o666 & ~_umask()


def check_results_dir(out_dir: str | Path) -> str | None:
    """None when the results folder exists (it is created if need be), takes a file and has MIN_FREE_BYTES free;
    else the problem, in one line."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"results folder {out}: cannot create it: {e.strerror or e}"
    try:
        fd, probe = tempfile.mkstemp(prefix=".qbench-write-check-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"results folder {out} is not writable: {e.strerror or e} (give --out DIR)"
    try:
        st = os.statvfs(out)
    except OSError:  # no statvfs here: the write check above is what can be said
        return None
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        return (f"results folder {out}: only {free / 1e6:.1f} MB free on its disk, qbench wants at least "
                f"{MIN_FREE_BYTES / 1e6:.0f} MB (free some space or give --out DIR elsewhere)")
    return None


def atomic_write(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@dataclass
class RunMeta:
    """What the results are about. Never holds the API key."""

    url: str
    model: str
    vllm_version: str | None = None
    prompt: str = ""
    prompt_source: str = "fixed"  # "fixed" | "file:<path>" | "synthetic:<N> tokens"
    max_tokens: int = 200
    levels: tuple[int, ...] = ()
    mode: str = "wave"
    endpoint: str = "chat"
    ignore_eos: bool = False
    unique_prefix: bool = False
    temperature: float | None = 0.0
    simulated: bool = False
    server_config: str = ""  # label of the launched server's flags, when qbench launched it
    started: float = field(default_factory=time.time)
    notes: list[str] = field(default_factory=list)  # e.g. "interrupted: server died after level 60"
    # where each setting that is not a default came from ("load.max_tokens": "cli", "api_key": "env:NAME", ...):
    # origins only, never a value, so the API key's stays out of every file
    config_sources: dict[str, str] = field(default_factory=dict)
    ladder: str = ""  # --auto: how the levels were chosen ("auto ladder from 1, x2 up to 1024, ..."); "" = given
    # where it ran: client host, Python/qbench versions, GPUs/driver via NVML when the server is on this machine
    # (report/environment.collect_environment); {} = not collected. Read back by `qbench report`.
    environment: dict[str, Any] = field(default_factory=dict)
    # a dashboard session's control events ({"t_s", "event", ...}: engine/replay.py), for `qbench replay`
    timeline: list[dict[str, Any]] = field(default_factory=list)


def _f(v: Any, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _fms(v: float | None) -> str:
    """Seconds shown as milliseconds."""
    return "-" if v is None else f"{v * 1000:.2f}"


def classic_table(levels: list[LevelResult]) -> str:
    from .rates import is_rate_run, rate_table

    if is_rate_run(levels):  # open-loop levels read along their offered rate (report/rates.py)
        return rate_table(levels)
    widths = [len(h) for h in TABLE_HEADER]
    rows = [
        (str(lv.max_concurrency), _f(lv.duration_s), _f(lv.avg_latency_s),
         _f(lv.request_throughput), _f(lv.output_throughput))
        for lv in levels
    ]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]
    line = lambda cells: " | ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(TABLE_HEADER), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def verdict_lines(knee: Knee) -> list[str]:
    """The verdict (its cause inside), goodput under an SLO and the two recommendations, one line each."""
    lines = [knee.summary] if knee.summary else []
    if knee.slo:
        good = knee.at("goodput")
        where = f"{good:g} req/s" if knee.rate_axis and good is not None else f"C={good}"
        lines.append(f"SLO:         {knee.slo}; goodput "
                     + (f"at {where} ({knee.goodput_output_throughput or 0:.0f} tok/s)"
                        if good is not None else "none: no level met it"))
    return lines + knee.advice()


def _fixed(meta: RunMeta) -> bool:
    """The one fixed prompt (in conversations too: "fixed; conversations of K turns")."""
    return meta.prompt_source.split(";")[0] == "fixed"


def conversation_lines(lv: LevelResult) -> list[str]:
    """Per-turn TTFT and prompt tokens of a level of conversations, each endpoint's share under several, and what
    was refused before sending (the .txt, `qbench run`'s and `sweep`'s summaries). Empty when none applies."""
    lines = []
    if len(lv.turns) > 1:
        lines.append("  Per turn (conversations): turn  requests  TTFT p50 ms  TTFT p99 ms  mean prompt tokens")
        for t in lv.turns:
            tokens = "-" if t.input_tokens_mean is None else f"{t.input_tokens_mean:.0f}"
            lines.append(f"    {t.turn:>4}  {t.requests:>8}  {_fms(t.ttft.p50_s):>11}  {_fms(t.ttft.p99_s):>11}"
                         f"  {tokens:>18}")
    for e in lv.endpoints:  # several endpoints: each one's share, side by side
        lines.append(f"  Endpoint {e.url}: " + (f"DEAD ({e.down.removeprefix('dead: ')}); " if e.down else "")
                     + f"{e.completed} ok, {e.failed} failed, {e.output_throughput or 0.0:.1f} tok/s, "
                     f"TTFT p50 {_fms(e.ttft.p50_s)} ms, p99 {_fms(e.ttft.p99_s)} ms"
                     + (f"; {next(iter(e.failures))}" if e.failures and not e.down else ""))
    if lv.refused:
        lines.append(f"  Refused before sending: {lv.refused}")
        reasons = list(lv.refused_reasons.items())
        lines += [f"    {n}x: {reason}" for reason, n in reasons[:5]]
        if len(reasons) > 5:
            lines.append(f"    … {len(reasons) - 5} more reason(s): {sum(n for _, n in reasons[5:])} request(s)")
    return lines


def render_txt(meta: RunMeta, levels: list[LevelResult], knee: Knee | None = None) -> str:
    sim = "  (SIMULATED server: numbers come from qbench's simulator, not a real model)" if meta.simulated else ""
    lines = [
        "qbench-tui benchmark results" + (" — SIMULATED" if meta.simulated else ""),
        "=" * 60,
        "Environment",
        f"  URL:            {meta.url}{sim}",
        f"  Model:          {meta.model}",
        f"  vLLM version:   {meta.vllm_version or 'unknown'}",
    ]
    if meta.server_config:
        lines.append(f"  Server config:  {meta.server_config}")
    lines += [
        f"  Started:        {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(meta.started))}",
        "",
        "Methodology",
        f"  Prompt:         {meta.prompt!r}" + meta.prompt_source[5:] if _fixed(meta) else
        f"  Prompts:        {meta.prompt_source}",
        f"  Max tokens:     {meta.max_tokens}" + ("  (ignore_eos)" if meta.ignore_eos else ""),
        f"  Levels:         {', '.join(str(c) for c in meta.levels)}"
        + (f"  ({meta.ladder})" if meta.ladder else ""),
        f"  Mode:           {meta.mode}" + ("  (exactly C requests fired at once per level; total time = first "
                                            "start to last end)" if meta.mode == "wave" else
                                            "  (open loop: each request sent when due whatever the server's pace; "
                                            "Lag = how late it went out)" if meta.mode == "rate" else
                                            "  (closed loop at C; each level measured once settled: see its window)"),
        f"  Endpoint:       /v1/{'chat/completions' if meta.endpoint == 'chat' else 'completions'} (streaming)",
    ]
    if meta.unique_prefix:
        lines.append("  Unique prefix:  yes (a random prefix per request defeats prefix caching)")
    # a ladder measures out of order (refinement comes back down): its table reads by concurrency
    shown = sorted(levels, key=lambda lv: lv.max_concurrency or 0) if meta.ladder else levels
    if meta.mode == "rate":
        shown = sorted(levels, key=lambda lv: lv.request_rate or 0.0)
    lines += ["", "Results", classic_table(shown), ""]
    for lv in shown:
        srv = lv.server
        name = (f"Rate {lv.request_rate:g} req/s" if lv.request_rate else f"Concurrency {lv.max_concurrency}")
        lines.append(f"{name}: {lv.completed} ok, {lv.failed} failed"
                     + (f"  [server: {lv.server_config}]" if lv.server_config and
                        len({x.server_config for x in levels}) > 1 else ""))
        if lv.interrupted:
            lines.append("  INTERRUPTED: summarised from the requests that finished before the stop, first start "
                         "to last end (not a settled measurement; left out of the verdict)")
        for title, d in (("TTFT ms ", lv.ttft), ("ITL ms  ", lv.itl)):
            lines.append(f"  {title} mean {_fms(d.mean_s)}  p50 {_fms(d.p50_s)}  p90 {_fms(d.p90_s)}"
                         f"  p99 {_fms(d.p99_s)}")
        lines.append(f"  TPOT ms  mean {_fms(lv.tpot.mean_s)}  p50 {_fms(lv.tpot.p50_s)}  p99 {_fms(lv.tpot.p99_s)}")
        if srv:
            hit, kv = srv.prefix_cache_hit_rate, srv.max_kv_cache_usage
            lines.append(
                "  Server   prefix-cache hit rate " + ("-" if hit is None else f"{hit:.1%}")
                + "  max KV usage " + ("-" if kv is None else f"{kv:.1%}")
                + f"  preemptions {_f(srv.preemptions, 0)}"
                + f"  generation tokens {_f(srv.generation_tokens, 0)}")
            if srv.mean_ttft_s is not None:
                lines.append(f"  Server   own TTFT mean {_fms(srv.mean_ttft_s)} ms "
                             f"(client {_fms(lv.ttft.mean_s)} ms;"
                             f" the rest is network, the API server and streaming)"
                             + (f"  queue mean {_fms(srv.mean_queue_s)} ms"
                                if srv.mean_queue_s is not None else ""))
        for reason, n in lv.failures.items():
            lines.append(f"  failed {n}x: {reason}")
        lines += conversation_lines(lv)
    if knee:
        lines += ["", "Saturation"] + [f"  {line}" for line in verdict_lines(knee)]
    if meta.notes:
        lines += ["", "Notes"] + [f"  {n}" for n in meta.notes]
    return "\n".join(lines) + "\n"


def render_json(meta: RunMeta, levels: list[LevelResult], knee: Knee | None = None) -> str:
    d = {
        "schema_version": SCHEMA_VERSION,
        "tool": "qbench-tui",
        "simulated": meta.simulated,
        "url": meta.url,
        "model": meta.model,
        "vllm_version": meta.vllm_version,
        "server_config": meta.server_config or None,
        "started": meta.started,
        "methodology": {
            "prompt": meta.prompt if _fixed(meta) else None,
            "prompt_source": meta.prompt_source,
            "max_tokens": meta.max_tokens,
            "levels": list(meta.levels),
            "mode": meta.mode,
            "endpoint": meta.endpoint,
            "ignore_eos": meta.ignore_eos,
            "unique_prefix": meta.unique_prefix,
            "temperature": meta.temperature,
        },
        "levels": [lv.to_json() for lv in levels],
        "saturation": None if knee is None else knee.to_json(),
        "notes": meta.notes,
        "config_sources": dict(meta.config_sources),
        "environment": dict(meta.environment),
    }
    if meta.timeline:
        d["timeline"] = list(meta.timeline)
    return json.dumps(d, indent=2) + "\n"


def write_results(out_dir: str | Path, base: str, meta: RunMeta, levels: list[LevelResult],
                  knee: Knee | None = None) -> tuple[Path, Path]:
    out = Path(out_dir)
    txt, js = out / f"{base}.txt", out / f"{base}.json"
    atomic_write(txt, render_txt(meta, levels, knee))
    atomic_write(js, render_json(meta, levels, knee))
    return txt, js
