"""Two or more runs side by side: per concurrency level the same metrics with B's (C's, ...) difference relative to
A, the knees and causes next to each other, the curves overlaid, and `--fail-if` bounds on those differences (the
CI gate). The metric names are the results files' own level keys (vllm bench serve's), so a bound reads as the
files do: `output_throughput<-5%,p99_ttft_ms>+10%`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .cost import Cost, usd
from .document import Bullets, Document, Heading, Run, Section, Table, lat, tok
from .environment import gpu_lines
from .levels import CAUSE_NAMES, level_charts

_LAT_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E"}
# (key, label) in table order; throughputs first, then each latency's statistics
METRICS: tuple[tuple[str, str], ...] = (
    ("output_throughput", "output tok/s"), ("request_throughput", "requests/s"),
    ("total_token_throughput", "total tok/s"), ("request_goodput", "goodput req/s"),
    *((f"{stat}_{m}_ms", f"{name} {'p50' if stat == 'median' else stat} ms")
      for m, name in _LAT_NAMES.items() for stat in ("mean", "median", "p90", "p99")),
)
KNOWN = {k for k, _ in METRICS}
# what the per-level tables show (every METRICS key can still be bounded by --fail-if)
SHOWN = ("output_throughput", "request_throughput", "total_token_throughput", "request_goodput",
         *(f"{stat}_{m}_ms" for m in ("ttft", "itl", "e2el") for stat in ("median", "p90", "p99")), "median_tpot_ms")
_TERM = re.compile(r"^\s*([a-z0-9_]+)\s*([<>])\s*([+-]?\d+(?:\.\d+)?)\s*(%?)\s*$", re.I)


class CompareError(ValueError):
    """Input a comparison cannot use (unknown metric, no common levels); str(e) is the one-line message."""


def canonical(metric: str) -> str:
    """The files' key for a metric: p50_* is the files' median_*."""
    m = metric.strip().lower()
    return "median_" + m[4:] if m.startswith("p50_") else m


@dataclass(frozen=True, slots=True)
class Bound:
    metric: str
    op: str  # "<": fails when the change falls below pct; ">": when it rises above
    pct: float
    text: str

    def breached(self, change_pct: float) -> bool:
        return change_pct < self.pct if self.op == "<" else change_pct > self.pct


def parse_fail_if(text: str) -> tuple[Bound, ...]:
    out = []
    for term in (t for t in text.split(",") if t.strip()):
        m = _TERM.match(term)
        if not m:
            raise CompareError(f"--fail-if: cannot read {term.strip()!r}: write METRIC<-N% or METRIC>+N%, "
                               "e.g. output_throughput<-5%,p99_ttft_ms>+10%")
        metric = canonical(m.group(1))
        if metric not in KNOWN:
            raise CompareError(f"--fail-if: unknown metric {m.group(1)!r}: use one of "
                               f"{', '.join(k for k, _ in METRICS)} (p50_* = median_*)")
        if not m.group(4):
            raise CompareError(f"--fail-if: {term.strip()!r} needs a % (a bound on B's change relative to A)")
        out.append(Bound(metric, m.group(2), float(m.group(3)), term.strip()))
    if not out:
        raise CompareError("--fail-if: empty: write e.g. output_throughput<-5%")
    return tuple(out)


def values(run: Run, c: float | int | None) -> dict[str, float | None]:
    """The level's metrics by the files' keys (None: not measured); request_goodput from the file's own level."""
    lv = run.level(c)
    if lv is None:
        return {}
    d = lv.to_json()
    key = "request_rate" if run.rate_axis else "max_concurrency"
    raw = next((x for x in run.doc.get("levels") or [] if isinstance(x, dict) and x.get(key) == c), {})
    d["request_goodput"] = raw.get("request_goodput")
    return {k: d.get(k) for k in KNOWN}


def change(a: float | None, b: float | None) -> float | None:
    """B relative to A, in percent; None when either is missing or A is 0."""
    return None if a is None or b is None or a == 0 else (b / a - 1) * 100


def concurrencies(run: Run) -> list:
    """The run's finished levels on its axis: concurrencies, or offered rates for a sweep over request rates."""
    return sorted({run.x(lv) for lv in run.levels if run.x(lv) is not None and lv.completed})


def common_levels(runs: list[Run]) -> list[int]:
    """Levels A shares with at least one other run; CompareError when some run shares none with A."""
    base = set(concurrencies(runs[0]))
    if len({r.rate_axis for r in runs}) > 1:
        rated = next(r for r in runs if r.rate_axis)
        closed = next(r for r in runs if not r.rate_axis)
        raise CompareError(f"no common levels: {rated.label} is a sweep over request rates, {closed.label} over "
                           "concurrencies; compare runs made along the same axis")
    for r in runs[1:]:
        if not base & set(concurrencies(r)):
            raise CompareError(f"no common levels: {runs[0].label} has {_list(concurrencies(runs[0]))}, "
                               f"{r.label} has {_list(concurrencies(r))}; compare runs made at the same "
                               + ("request rates" if r.rate_axis else "concurrencies"))
    return sorted(base & set().union(*(set(concurrencies(r)) for r in runs[1:])))


def _list(cs: list) -> str:
    return ", ".join(f"{c:g}" for c in cs) or "no finished level"


def check_metrics(runs: list[Run], bounds: tuple[Bound, ...]) -> None:
    """A bound on a metric a file never measured is a usage error, not a silent pass."""
    for b in bounds:
        for r in runs:
            if all(values(r, c).get(b.metric) is None for c in concurrencies(r)):
                raise CompareError(f"--fail-if: {b.metric} is not in {r.label}"
                                   + (" (vllm bench serve saves it only when --percentile-metrics / "
                                      "--metric-percentiles ask for it)" if r.tool != "qbench-tui" else ""))


def gate(runs: list[Run], bounds: tuple[Bound, ...]) -> list[str]:
    """Every breach of every bound, each later run against the first, at every level they share (one line each)."""
    out = []
    base = runs[0]
    for r in runs[1:]:
        for c in sorted(set(concurrencies(base)) & set(concurrencies(r))):
            va, vb = values(base, c), values(r, c)
            for b in bounds:
                x = change(va.get(b.metric), vb.get(b.metric))
                if x is None:
                    out.append(f"{r.label} {base.name(c)}: {b.metric} cannot be compared (A {_num(va.get(b.metric))}, "
                               f"B {_num(vb.get(b.metric))}); bound {b.text}")
                elif b.breached(x):
                    out.append(f"{r.label} {base.name(c)}: {b.metric} {_num(va.get(b.metric))} -> "
                               f"{_num(vb.get(b.metric))} "
                               f"({x:+.1f}%), bound {b.text}")
    return out


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:,.2f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1f}%"


def _runs_section(runs: list[Run]) -> Section:
    items = []
    for r in runs:
        d = r.doc
        gpu = "; ".join(f"{k} {v}" for k, v in gpu_lines(d.get("environment")) if k != "GPU driver")
        items.append(f"{r.label} = {r.path}: {r.tool}{' (SIMULATED)' if r.simulated else ''}, model {d.get('model')}, "
                     f"vLLM {d.get('vllm_version') or 'unknown'}, server flags {d.get('server_config') or 'unknown'}; "
                     f"{gpu}; levels {_list(concurrencies(r))}")
    blocks: list = [Bullets(items)]
    diffs = []
    for key, name in (("max_tokens", "max tokens"), ("prompt_source", "prompts"), ("mode", "mode"),
                      ("ignore_eos", "ignore_eos"), ("unique_prefix", "unique prefix")):
        seen = [(r.doc.get("methodology") or {}).get(key) for r in runs]
        if len({repr(s) for s in seen if s is not None}) > 1:
            diffs.append(f"{name} " + " vs ".join(str(s) for s in seen))
    if len({str(r.doc.get("model")) for r in runs}) > 1:
        diffs.append("models " + " vs ".join(str(r.doc.get("model")) for r in runs))
    if diffs:
        blocks.append("Not like for like: " + "; ".join(diffs) + ". Differences below mix these in.")
    return Section("Runs", blocks)


def _level_table(runs: list[Run], c: float | int, costs: list[Cost | None]) -> Table:
    head = ["metric", runs[0].label] + [x for r in runs[1:] for x in (r.label, f"vs {runs[0].label}")]
    vals = [values(r, c) for r in runs]
    rows = []
    names = dict(METRICS)
    for key in SHOWN:
        name = names[key]
        if all(v.get(key) is None for v in vals):
            continue
        row = [name, _num(vals[0].get(key))]
        for v in vals[1:]:
            row += [_num(v.get(key)), _pct(change(vals[0].get(key), v.get(key)))]
        rows.append(row)
    fails = [r.level(c) for r in runs]
    row = ["failed", str(fails[0].failed) if fails[0] else "-"]
    for f in fails[1:]:
        row += [str(f.failed) if f else "-", ""]
    rows.append(row)
    if any(costs):
        per = [cost.per_million(v.get("output_throughput")) if cost else None for cost, v in zip(costs, vals)]
        row = ["$ per M out tok", usd(per[0]) if per[0] is not None else "-"]
        for p in per[1:]:
            row += [usd(p) if p is not None else "-", _pct(change(per[0], p))]
        rows.append(row)
    return Table(head, rows)


def _knees(runs: list[Run], costs: list[Cost | None]) -> list:
    def at(r: Run, c: float | int | None, cost: Cost | None) -> str:
        lv = r.level(c)
        if c is None or lv is None:
            return "-"
        s = f"{r.name(c)}: {tok(lv.output_throughput)} tok/s, E2E p99 {lat(lv.e2el.p99_s)}"
        return s + (f", {usd(cost.per_million(lv.output_throughput))}/M tok" if cost else "")

    rows = [["peak output tok/s"] + [f"{tok(r.knee.peak_output_throughput)} at {r.name(r.knee.at('peak'))}"
                                     for r in runs],
            ["knee"] + [r.name(r.knee.at("knee")) if r.knee.saturated else "none found" for r in runs],
            ["limit"] + [CAUSE_NAMES.get(r.knee.cause_kind or "", "-") if r.knee.saturated else "-" for r in runs],
            ["interactive"] + [at(r, r.knee.at("interactive"), c) for r, c in zip(runs, costs)],
            ["batch"] + [at(r, r.knee.at("batch"), c) for r, c in zip(runs, costs)]]
    if any(r.knee.slo for r in runs):
        rows.append(["goodput (SLO)"] + [
            (f"{r.name(r.knee.at('goodput'))}, {tok(r.knee.goodput_output_throughput)} tok/s"
             if r.knee.at("goodput") is not None else "none met it") + f" ({r.knee.slo})" if r.knee.slo
            else "no SLO" for r in runs])
    why = [f"{r.label}: {r.knee.cause if r.knee.saturated else r.knee.summary}" for r in runs]
    return [Table(["", *(r.label for r in runs)], rows), Bullets(why)]


def build_compare(runs: list[Run], costs: list[Cost | None] | None = None,
                  bounds: tuple[Bound, ...] = (), breaches: list[str] | None = None) -> Document:
    costs = costs or [None] * len(runs)
    common = common_levels(runs)
    doc = Document(title="Comparison: " + " vs ".join(r.label for r in runs),
                   banner=("SIMULATED runs among these: their numbers come from qbench's simulator"
                           if any(r.simulated for r in runs) else ""))
    doc.sections.append(_runs_section(runs))
    per: list = []
    only = [f"{r.label} only: {_list(sorted(set(concurrencies(r)) - set(common)))}" for r in runs
            if set(concurrencies(r)) - set(common)]
    if only:
        per.append("Levels not in common (left out): " + "; ".join(only) + ".")
    for c in common:
        per += [Heading(f"Rate {c:g} req/s" if runs[0].rate_axis else f"Concurrency {c}"),
                _level_table(runs, c, costs)]
    doc.sections.append(Section("Per level", per))
    doc.sections.append(Section("Saturation side by side", _knees(runs, costs)))
    doc.sections.append(Section("Curves", list(level_charts(runs, key_suffix="-overlay"))))
    if bounds:
        doc.sections.append(Section("Gate", [
            f"--fail-if {','.join(b.text for b in bounds)}: each later run against {runs[0].label}, at every level "
            "they share.",
            Bullets([f"FAIL {line}" for line in breaches]) if breaches else "PASS: every bound held."]))
    return doc
