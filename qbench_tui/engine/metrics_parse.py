"""vLLM /metrics: one Prometheus text page -> one ServerSample.

Names are resolved through one alias table (V1 names first, V0 fallbacks), so the same code reads vLLM 0.5 through
0.13+ pages; series of the same name from several engines (data parallelism) are summed, usage gauges maxed.
Matching is done on *sample* names, not family names: prometheus_client strips `_total` from counter
families but not from histograms (`vllm:iteration_tokens_total`), and an untyped fragment keeps `_total` on its
family too, so the sample name is the one thing that is stable across page shapes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# canonical name -> vLLM names, most preferred first. Counters are listed without `_total`.
ALIASES: dict[str, tuple[str, ...]] = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prefix_cache_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
    "prefix_cache_hit_rate_gauge": ("vllm:gpu_prefix_cache_hit_rate",),  # V0 only: a ratio, not a counter
    "num_requests_running": ("vllm:num_requests_running",),
    "num_requests_waiting": ("vllm:num_requests_waiting",),
    "num_preemptions": ("vllm:num_preemptions",),
    "prompt_tokens": ("vllm:prompt_tokens",),
    "generation_tokens": ("vllm:generation_tokens",),
    "request_success": ("vllm:request_success",),
    # histogram sums and counts (V0 and V1 alike): their deltas give the server's own mean over any window, exact
    # where a quantile from the coarse buckets (10 -> 20 -> 40 ms) would not be
    "ttft_sum": ("vllm:time_to_first_token_seconds_sum",),
    "ttft_count": ("vllm:time_to_first_token_seconds_count",),
    "queue_time_sum": ("vllm:request_queue_time_seconds_sum",),
    "queue_time_count": ("vllm:request_queue_time_seconds_count",),
}
# canonical name -> (info metric, label): CacheConfig is exposed as labels of a constant-1 gauge.
INFO_LABELS: dict[str, tuple[str, str]] = {
    "num_gpu_blocks": ("vllm:cache_config_info", "num_gpu_blocks"),
    "block_size": ("vllm:cache_config_info", "block_size"),
}
COUNTERS = frozenset({"prefix_cache_queries", "prefix_cache_hits", "num_preemptions", "prompt_tokens",
                      "generation_tokens", "request_success"})
_HIST_PARTS = frozenset({"ttft_sum", "ttft_count", "queue_time_sum", "queue_time_count"})  # counters, no _total
# Gauges where summing series would be wrong: a usage fraction or a ratio. Multiprocess mode exposes one series
# per pid with only one carrying the real value (PR #28792), and data parallelism one per engine: max fits both.
_MAX_GAUGES = frozenset({"kv_cache_usage", "prefix_cache_hit_rate_gauge"})
_V1_MARKERS = frozenset({"vllm:kv_cache_usage_perc", "vllm:prefix_cache_queries"})
# canonical alias name -> ServerSample field, where they differ
_FIELD = {"num_requests_running": "num_running", "num_requests_waiting": "num_waiting"}

# sample name as exposed -> (canonical, alias rank)
_LOOKUP: dict[str, tuple[str, int]] = {}
for _canon, _names in ALIASES.items():
    for _rank, _name in enumerate(_names):
        _LOOKUP[_name] = (_canon, _rank)
        if _canon in COUNTERS:
            _LOOKUP[_name + "_total"] = (_canon, _rank)

_SAMPLE_LINE = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*(\{.*\})?[ \t]+\S+([ \t]+\S+)?[ \t]*$")
# docs elide labels as `{a="1",...}`: dropping the elision keeps the labels that are there
_ELLIPSIS = re.compile(r",?[ \t]*(?:\.\.\.|…)[ \t]*(?=[,}])")
_META_LINE = re.compile(r"^#[ \t]+(?:HELP|TYPE)[ \t]+([A-Za-z_:][A-Za-z0-9_:]*)")


class MetricsParseError(ValueError):
    """The /metrics body is not Prometheus text we can read."""


@dataclass(frozen=True, slots=True)
class ServerSample:
    t: float  # time.monotonic() at scrape
    schema: str  # "v1" | "v0" | "none"
    engines: int  # distinct `engine` label values; 1 without the label; 0 when there are no vLLM metrics
    kv_cache_usage: float | None = None  # 0..1, max over engines
    num_running: float | None = None
    num_waiting: float | None = None
    prefix_cache_queries: float | None = None  # tokens, lifetime counter
    prefix_cache_hits: float | None = None
    prefix_cache_hit_rate_gauge: float | None = None  # V0 only
    num_preemptions: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    request_success: float | None = None  # all finished_reason values
    ttft_sum: float | None = None  # seconds, lifetime: the server's TTFT histogram (arrival -> first token out)
    ttft_count: float | None = None
    queue_time_sum: float | None = None  # seconds spent WAITING before the scheduler ran the request
    queue_time_count: float | None = None
    num_gpu_blocks: float | None = None
    block_size: float | None = None
    start_time: float | None = None  # process_start_time_seconds; a change means the server restarted


def _norm(name: str) -> str:
    # Some relabelling pipelines rewrite `vllm:` to `vllm_`; fold both onto the colon form.
    return "vllm:" + name[5:] if name.startswith("vllm_") else name


_OURS = ("vllm:", "vllm_", "process_start_time_seconds")
_OURS_META = tuple(f"# {k} {n}" for k in ("HELP", "TYPE") for n in _OURS)


def _only_ours(text: str) -> str:
    """The page without the families nothing here reads (python_gc_*, process_* but the start time, the API
    server's http_* histograms: a bucket series per handler). The headless client scrapes twice a second and
    prometheus_client's parser was 7.6% of its CPU at C=1000 on the simulator's all-vLLM page (py-spy, H7's
    bench/cost_per_token.py); on a 759-line page shaped like a real server's (the simulator's 441 vLLM lines +
    prometheus_client's default process/GC families + instrumentator-style http_* histograms for 6 handlers) the
    parse took 12.6 ms whole and 7.4 ms filtered (1.7x), the same sample. "" when nothing is left (then the
    whole page is parsed, so a page that is not Prometheus text is still named as such)."""
    keep = [line for line in text.splitlines() if line.startswith(_OURS) or line.startswith(_OURS_META)]
    return "\n".join(keep) + "\n" if keep else ""


def _strict_samples(text: str) -> tuple[list[tuple[str, dict, float]], set[str]]:
    samples: list[tuple[str, dict, float]] = []
    families: set[str] = set()
    for fam in text_string_to_metric_families(text):
        families.add(fam.name)
        for s in fam.samples:
            samples.append((s.name, s.labels, s.value))
    return samples, families


def _lenient_samples(text: str) -> tuple[list[tuple[str, dict, float]], set[str]]:
    """Line by line, skipping what does not parse: doc excerpts carry `$ curl …` and `...` lines, and a proxy may
    truncate a page mid-line. Each sample line is parsed on its own, so its name keeps any `_total`."""
    samples: list[tuple[str, dict, float]] = []
    families: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = _META_LINE.match(line)
            if m:
                families.add(m.group(1))
            continue
        if not _SAMPLE_LINE.match(line):
            continue
        for candidate in (line, _ELLIPSIS.sub("", line)):
            try:
                got, _ = _strict_samples(candidate + "\n")
            except Exception:
                continue
            samples.extend(got)
            break
    return samples, families


def _info_number(v: str | None) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)
    except ValueError:  # "None" for an unset CacheConfig field
        return None
    return x if math.isfinite(x) else None


def parse_metrics(text: str, t: float, engine: str | None = None) -> ServerSample:
    """Read one /metrics page. Empty or non-vLLM pages give schema "none"; unreadable ones raise MetricsParseError.
    `engine`: only that data-parallel engine's series (its `engine` label), for a per-engine view."""
    if not text.strip():
        return ServerSample(t=t, schema="none", engines=0)
    ours = _only_ours(text)
    if ours:
        text = ours
    try:
        samples, families = _strict_samples(text)
    except Exception as e:  # the parser raises ValueError, IndexError, TypeError… depending on the damage
        samples, families = _lenient_samples(text)
        if not samples and not families:
            first = text.strip().splitlines()[0][:80]
            raise MetricsParseError(f"not Prometheus text ({type(e).__name__}: {e}; first line {first!r})") from e

    # canonical -> {alias rank -> [values]}
    found: dict[str, dict[int, list[float]]] = {}
    info: dict[str, float | None] = {}
    engines: set[str] = set()
    names = {_norm(f) for f in families}
    start_time: float | None = None
    for name, labels, value in samples:
        if name.endswith("_created"):
            continue  # creation timestamps, a gauge family of their own in prometheus_client
        if name == "process_start_time_seconds":
            start_time = value if start_time is None else min(start_time, value)
            continue
        name = _norm(name)
        if not name.startswith("vllm:"):
            continue
        if engine is not None and labels.get("engine", engine) != engine:
            continue
        names.add(name)
        if "engine" in labels:
            engines.add(labels["engine"])
        hit = _LOOKUP.get(name)
        if hit is not None:
            if not math.isnan(value):
                found.setdefault(hit[0], {}).setdefault(hit[1], []).append(value)
            continue
        for canon, (metric, label) in INFO_LABELS.items():
            if name == metric and canon not in info:  # first engine's config: they are identical under DP
                info[canon] = _info_number(labels.get(label))

    if not any(n.startswith("vllm:") for n in names):
        return ServerSample(t=t, schema="none", engines=0, start_time=start_time)
    v1 = bool(engines) or any(n in _V1_MARKERS or n.removesuffix("_total") in _V1_MARKERS for n in names)
    values: dict[str, float | None] = {}
    for canon in ALIASES:
        by_rank = found.get(canon)
        if not by_rank:
            values[_FIELD.get(canon, canon)] = None
            continue
        # Only the most preferred name present: 0.10 exposes both V1 names and their deprecated twins.
        vals = by_rank[min(by_rank)]
        values[_FIELD.get(canon, canon)] = max(vals) if canon in _MAX_GAUGES else math.fsum(vals)
    return ServerSample(
        t=t, schema="v1" if v1 else "v0", engines=max(1, len(engines)), start_time=start_time,
        num_gpu_blocks=info.get("num_gpu_blocks"), block_size=info.get("block_size"), **values,
    )


def per_engine(text: str, t: float) -> dict[str, ServerSample]:
    """Each data-parallel engine's own sample ({} for a page with one engine or none): the summed view's parts."""
    ids = sorted(set(_ENGINE_LABEL.findall(text)), key=lambda e: (len(e), e))
    if len(ids) < 2:
        return {}
    return {e: parse_metrics(text, t, engine=e) for e in ids}


_ENGINE_LABEL = re.compile(r'^vllm:[^{\n]*\{[^}\n]*\bengine="([^"\n]+)"', re.M)
