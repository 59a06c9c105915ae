"""What the report and the comparison both read from a run's levels: the digest of its server and failure numbers
(Facts), the quantisation its flags or model name declare, its tables and its charts against concurrency."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .charts import Chart, Mark, Series
from .cost import Cost, usd
from .document import Run, Table, ms, num
from .files import TABLE_HEADER
from .rates import RATE_HEADER, rate_row

# the write-up's own thresholds for what it points out (the knee's rules stay in engine/knee.py)
HIGH_HIT = 0.5  # prefix-cache hit rate above which the numbers flatter distinct prompts
LOW_HIT = 0.1
KV_FULL = 0.9  # as the knee's kv_cache cause
KV_LOW = 0.5  # below this peak KV usage: no memory pressure
FLAT = 0.10  # a latency change under 10% reads as flat (the knee's LATENCY_RISE)
TTFT_RISE = 1.5  # TTFT growth worth a sentence of its own (the knee's PREFILL_TTFT_RISE)
CAUSE_NAMES = {"client": "the load client", "kv_cache": "the KV cache", "max_num_seqs": "the max_num_seqs limit",
               "prefix_cache": "prefix-cache misses", "prefill": "prefill compute", "compute": "decode compute"}
_QUANT = re.compile(r"(awq|gptq|fp8|int8|int4|w4a16|w8a8|w4a8|gguf|bnb|nvfp4|mxfp4|bitsandbytes)", re.I)


@dataclass
class Facts:
    """What the analysis, the takeaways and the next tests all read, computed once from the levels."""

    hit: float | None = None  # token-weighted over the levels with server stats
    hits: list[float] = field(default_factory=list)  # per level
    kv: float | None = None
    kv_at: int | None = None
    preemptions: float = 0.0
    preempt_at: list[int] = field(default_factory=list)
    failed: int = 0
    requests: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    no_server: str = ""  # why there are no server stats ("" when there are)
    not_steady: list[int] = field(default_factory=list)
    quant: str = ""  # the quantisation named by the flags or the model name ("" = none named)


def facts(run: Run) -> Facts:
    f = Facts(quant=quantisation(run)[0])
    q = h = 0.0
    for lv in run.levels:
        c = run.x(lv) or 0
        f.failed += lv.failed
        f.requests += lv.completed + lv.failed
        for reason, n in lv.failures.items():
            f.reasons[reason] = f.reasons.get(reason, 0) + n
        if not lv.steady:
            f.not_steady.append(c)
        s = lv.server
        if s is None:
            continue
        if s.prefix_cache_queries and s.prefix_cache_hits is not None:
            q, h = q + s.prefix_cache_queries, h + s.prefix_cache_hits
        if s.prefix_cache_hit_rate is not None:
            f.hits.append(s.prefix_cache_hit_rate)
        if s.max_kv_cache_usage is not None and (f.kv is None or s.max_kv_cache_usage > f.kv):
            f.kv, f.kv_at = s.max_kv_cache_usage, c
        if s.preemptions:
            f.preemptions += s.preemptions
            f.preempt_at.append(c)
    f.hit = h / q if q else None
    if not any(lv.server for lv in run.levels):
        why = sorted({lv.server_metrics for lv in run.levels if lv.server_metrics} - {"v0", "v1"})
        f.no_server = ("vllm bench serve does not read the server's /metrics" if run.tool != "qbench-tui"
                       else "; ".join(why) or "the server's /metrics were not read")
    f.reasons = dict(sorted(f.reasons.items(), key=lambda kv: -kv[1]))
    return f


def quantisation(run: Run) -> tuple[str, str]:
    """(the scheme, where that came from); ("", why none) when nothing names one."""
    label = run.doc.get("server_config") or ""
    if m := re.search(r"(?:^|\s)-{0,2}quantization[= ](\S+)", label):
        return m.group(1), "the server's --quantization"
    if m := _QUANT.search(str(run.doc.get("model") or "")):
        return m.group(1).upper(), "from the model name"
    return "", "none named by the model name or the server flags"


def latency_table(run: Run, cost: Cost | None) -> Table:
    head = ["req/s" if run.rate_axis else "C", "ok", "failed", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms",
            "ITL p99 ms", "E2E p50 ms", "E2E p99 ms"] + (["$ per M out tok"] if cost else [])
    rows = [[f"{run.x(lv):g}" if run.rate_axis else str(lv.max_concurrency), str(lv.completed), str(lv.failed),
             ms(lv.ttft.p50_s), ms(lv.ttft.p99_s),
             ms(lv.itl.p50_s), ms(lv.itl.p99_s), ms(lv.e2el.p50_s), ms(lv.e2el.p99_s)]
            + ([usd(cost.per_million(lv.output_throughput))] if cost else []) for lv in run.levels]
    return Table(head, rows)


def results_table(run: Run) -> Table:
    """The classic columns, as the .txt has them (report/files.py); a rate run's as report/rates.py lays them."""
    if run.rate_axis:
        return Table(list(RATE_HEADER), [list(rate_row(lv)) for lv in run.levels])
    return Table(list(TABLE_HEADER), [
        [str(lv.max_concurrency), num(lv.duration_s), num(lv.avg_latency_s), num(lv.request_throughput),
         num(lv.output_throughput)] for lv in run.levels])


def level_charts(runs: list[Run], key_suffix: str = "") -> list[Chart]:
    """Output tok/s and E2E latency (p50 solid, p99 dashed) against concurrency, one line per run, knees marked;
    against the offered request rate when the (first) run is a rate sweep."""
    tput, latency, marks_t, marks_l = [], [], [], []
    many = len(runs) > 1
    rated = bool(runs) and runs[0].rate_axis
    for run in runs:
        pts = [lv for lv in run.levels if lv.completed]
        xs = tuple(float(run.x(lv) or 0) for lv in pts)
        tput.append(Series(run.label if many else "output tok/s", xs, tuple(lv.output_throughput for lv in pts),
                           group=run.label))
        pre = f"{run.label} " if many else ""
        latency.append(Series(f"{pre}E2E p50", xs, tuple(lv.e2el.p50_s for lv in pts), group=run.label))
        latency.append(Series(f"{pre}E2E p99", xs, tuple(lv.e2el.p99_s for lv in pts), dashed=True,
                              group=run.label))
        k = run.knee
        at = k.at("knee")
        lv = run.level(at) if k.saturated else None
        if lv is not None:
            name = f"knee {run.name(at)}" + (f" ({run.label})" if many else "")
            marks_t.append(Mark(name, float(at or 0), lv.output_throughput or 0.0))
            if lv.e2el.p50_s is not None:
                marks_l.append(Mark(name, float(at or 0), lv.e2el.p50_s))
    axis, xlabel = ("request rate", "request rate (req/s)") if rated else ("concurrency", "concurrency")
    return [Chart(f"Output throughput vs {axis}", "output tok/s", tuple(tput), tuple(marks_t), xlabel=xlabel,
                  key=f"throughput{key_suffix}"),
            Chart(f"End-to-end latency vs {axis}", "seconds", tuple(latency), tuple(marks_l), xlabel=xlabel,
                  key=f"latency{key_suffix}")]
