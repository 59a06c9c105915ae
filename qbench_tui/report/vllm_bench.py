"""`vllm bench serve --save-result` files read as qbench results: plain dicts shaped like qbench's .json, so the
same level model (engine/result.LevelResult.from_json) reads both and a report or comparison cannot tell them apart
except by the `tool` and the notes this reader adds.

vllm bench writes one JSON object per run (`--save-result`) or one per line (`--append-result`); each run is one
level. Its per-level keys are the ones qbench's levels already use (`duration`, `completed`, `failed`,
`output_throughput`, `mean_ttft_ms`, `median_ttft_ms`, `p99_ttft_ms`, ...), which is why the level dict is the run's
own keys, filtered, not a translation. What it does not have, qbench leaves out rather than guesses: no server
metrics, no p90 unless `--metric-percentiles` asked for it, no E2EL unless `--percentile-metrics` included it.
"""
from __future__ import annotations

import json
import time
from typing import Any

TOOL = "vllm bench serve"
# the keys that mark a run of vllm bench serve (benchmarks/serve.py: result_json's setup part + its results)
_MARKS = ("date", "backend", "num_prompts", "request_rate")
_RESULTS = ("duration", "completed", "request_throughput")
_LEVEL_KEYS = ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
               "output_throughput", "total_token_throughput", "request_goodput", "max_output_tokens_per_s",
               "max_concurrent_requests")
_LAT_STATS = ("mean", "median", "std", "p90", "p99", "p50", "p95", "p25", "p75")
_LATS = ("ttft", "tpot", "itl", "e2el")


class NotVllmBench(ValueError):
    """The text is JSON but not a vllm bench serve result; str(e) says what it lacks."""


def looks_like(doc: Any) -> bool:
    """A vllm bench serve result object (not qbench's, whose files say `"tool": "qbench-tui"`)."""
    return (isinstance(doc, dict) and "tool" not in doc and sum(k in doc for k in _MARKS) >= 2
            and all(k in doc for k in _RESULTS))


def split_runs(text: str) -> list[Any]:
    """One object (`--save-result`) or several, one per line (`--append-result`). Raises json.JSONDecodeError
    for text that is neither (a truncated file included)."""
    dec = json.JSONDecoder()
    out: list[Any] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    if not out:
        raise json.JSONDecodeError("empty file", text, 0)
    return out


def _started(date: Any) -> float | None:
    """vllm bench's "date" ("20261202-003000", local time) as an epoch, None when it is not in that form."""
    try:
        return time.mktime(time.strptime(str(date), "%Y%m%d-%H%M%S"))
    except (ValueError, OverflowError):
        return None


def _level(run: dict, notes: list[str]) -> dict[str, Any]:
    lv: dict[str, Any] = {k: run[k] for k in _LEVEL_KEYS if k in run}
    for name in _LATS:
        for stat in _LAT_STATS:
            key = f"{stat}_{name}_ms"
            if key in run:
                lv[key] = run[key]
        if f"median_{name}_ms" not in lv and f"p50_{name}_ms" in run:
            lv[f"median_{name}_ms"] = run[f"p50_{name}_ms"]
    conc = run.get("max_concurrency")
    rate = run.get("request_rate")
    if conc is None:
        if rate not in ("inf", None) and rate != float("inf"):
            raise NotVllmBench(f"a vllm bench serve run at a request rate ({rate} req/s) without "
                               "--max-concurrency: it has no concurrency level to report or compare")
        conc = run.get("num_prompts")
        notes.append(f"vllm bench serve ran without --max-concurrency: all {conc} prompts at once, taken as "
                     f"concurrency {conc}")
    lv["max_concurrency"] = conc
    lv["mode"] = "vllm-bench"
    lv["failures"] = _failures(run)
    lv["server"] = None
    return lv


def _failures(run: dict) -> dict[str, int]:
    """Reasons only where the file kept them (`--save-detailed` keeps "errors"); else the count alone."""
    errors = [e for e in run.get("errors") or () if e]
    if errors:
        counts: dict[str, int] = {}
        for e in errors:
            line = str(e).strip().splitlines()[0][:200] if str(e).strip() else "error"
            counts[line] = counts.get(line, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    failed = run.get("failed") or 0
    return {"reason not saved (vllm bench serve keeps errors only with --save-detailed)": failed} if failed else {}


def _prompts(run: dict) -> str:
    """What the file says of its prompts: their number and mean lengths (the dataset's name is not saved)."""
    done = run.get("completed") or 0
    text = f"vllm bench serve dataset, {run.get('num_prompts')} prompts per run"
    if done and run.get("total_input_tokens") is not None and run.get("total_output_tokens") is not None:
        text += (f", {run['total_input_tokens'] / done:.0f} input and {run['total_output_tokens'] / done:.0f} "
                 "output tokens per request on average")
    return text


def to_results(runs: list[Any]) -> dict[str, Any]:
    """The runs of one file as a qbench-shaped results document (levels ordered by concurrency). Raises
    NotVllmBench naming what is missing."""
    if not all(looks_like(r) for r in runs):
        bad = next(r for r in runs if not looks_like(r))
        if not isinstance(bad, dict):
            raise NotVllmBench(f"a JSON {type(bad).__name__}, not a results object")
        missing = [k for k in _RESULTS if k not in bad]
        raise NotVllmBench("neither a qbench results file nor a vllm bench serve result"
                           + (f" (no {', '.join(missing)})" if missing else ""))
    notes: list[str] = []
    levels = [_level(r, notes) for r in runs]
    levels.sort(key=lambda lv: lv["max_concurrency"] or 0)
    first = runs[0]
    models = sorted({str(r.get("model_id")) for r in runs})
    pct = sorted({k.split("_", 1)[0] for r in runs for k in r if k.endswith("_ttft_ms")} - {"mean", "std", "median"})
    lat_metrics = [m for m in _LATS if any(f"mean_{m}_ms" in r for r in runs)]
    if "e2el" not in lat_metrics:
        notes.append("no end-to-end latency in the file (vllm bench serve saves E2EL only when "
                     "--percentile-metrics includes e2el): the knee and the latency trend need it")
    return {
        "tool": TOOL,
        "simulated": False,
        "url": None,
        "model": models[0] if len(models) == 1 else ", ".join(models),
        "vllm_version": None,
        "server_config": None,
        "started": _started(first.get("date")),
        "methodology": {
            "prompt_source": _prompts(first),
            "levels": [lv["max_concurrency"] for lv in levels],
            "mode": "vllm-bench",
            "endpoint": first.get("backend") or first.get("endpoint_type"),
            "request_rate": first.get("request_rate"),
            "burstiness": first.get("burstiness"),
            "percentiles": pct,
            "latency_metrics": lat_metrics,
            "label": first.get("label"),
            "tokenizer": first.get("tokenizer_id"),
        },
        "levels": levels,
        "saturation": None,
        "notes": notes,
        "environment": {},
    }
