"""The write-up a person used to do by hand after a benchmark, computed from one results file: sections shaped like
that write-up (environment, methodology, results, analysis, key takeaways, recommendations, what to test next) in
which every sentence is built from the levels and the saturation verdict; a sentence whose condition the data does
not meet is left out, not written as a template with blanks.

The levels and the verdict are handed in (engine/result.LevelResult and engine/knee.Knee, read by the command):
this layer sits below the engine, so it reads their fields and never recomputes the knee, its cause or the advice.
"""
from __future__ import annotations

import time
from dataclasses import replace

from .charts import Chart
from .cost import Cost, usd
from .document import Bullets, Document, Heading, Run, Section, Table, lat, rel, tok
from .environment import client_line, gpu_lines
from .levels import (
    CAUSE_NAMES,
    FLAT,
    HIGH_HIT,
    KV_FULL,
    KV_LOW,
    LOW_HIT,
    TTFT_RISE,
    Facts,
    facts,
    latency_table,
    level_charts,
    quantisation,
    results_table,
)


def build_report(run: Run, cost: Cost | None = None) -> Document:
    d = run.doc
    when = d.get("started")
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if when else "date unknown"
    doc = Document(title=f"Benchmark report: {d.get('model') or 'unknown model'} ({stamp})",
                   banner=("SIMULATED server: these numbers come from qbench's simulator, not a real model"
                           if run.simulated else ""))
    if not any(lv.completed for lv in run.levels):
        doc.sections.append(Section("Results", ["No level completed a request: there is nothing to analyse."]))
        return doc
    fx = facts(run)
    doc.sections += [environment(run), methodology(run, cost), results(run, cost), analysis(run, fx),
                     takeaways(run, fx, cost), recommendations(run, cost)]
    nxt = next_tests(run, fx)
    if nxt.blocks:
        doc.sections.append(nxt)
    if d.get("notes"):
        doc.sections.append(Section("Notes", [Bullets([str(n) for n in d["notes"]])]))
    return doc


def environment(run: Run) -> Section:
    d = run.doc
    env = d.get("environment") or {}
    quant, where = quantisation(run)
    flags = d.get("server_config") or (
        "not recorded by vllm bench serve" if run.tool != "qbench-tui" else
        "not known: qbench did not launch this server (with --launch CONFIG the flags are recorded)")
    rows = [f"Model: {d.get('model') or 'unknown'}", f"Quantisation: {quant or 'none'} ({where})",
            f"Server flags: {flags}", f"vLLM version: {d.get('vllm_version') or 'unknown'}",
            *(f"{k}: {v}" for k, v in gpu_lines(env)), f"Client: {client_line(env)}",
            f"Server URL: {d.get('url') or 'not recorded'}"]
    return Section("Environment", [Bullets(rows)])


def methodology(run: Run, cost: Cost | None) -> Section:
    m = run.doc.get("methodology") or {}
    items: list[str] = []
    levels = ", ".join(run.name(run.x(lv)) if run.rate_axis else str(lv.max_concurrency) for lv in run.levels)
    if run.tool == "qbench-tui":
        items.append(f"Prompt: one fixed prompt for every request, {m.get('prompt')!r}"
                     if m.get("prompt_source") == "fixed" else f"Prompts: {m.get('prompt_source')}")
        if m.get("unique_prefix"):
            items.append("Unique prefix: a random prefix per request, so the prefix cache cannot help")
        items.append(f"Token limits: up to {m.get('max_tokens')} output tokens per request"
                     + (", always generated to the limit (ignore_eos)" if m.get("ignore_eos") else
                        ", fewer where the model stops") + f"; temperature {m.get('temperature')}")
        items.append(f"Levels: {levels} ({len(run.levels)} levels)")
        mode = m.get("mode")
        items.append("Mode: wave: exactly C requests fired at once per level; rates run from the first start "
                     "to the last end" if mode == "wave" else
                     "Mode: steady: C requests kept in flight (closed loop), each level measured over a window "
                     "once it is steady" if mode == "steady" else f"Mode: {mode}")
        for rule in sorted({lv.window.rule for lv in run.levels if lv.window and lv.window.rule}):
            items.append(f"Window rule: {rule}")
        win = [lv for lv in run.levels if lv.window and lv.window.settle_s is not None]
        if win:
            items.append("Window per level: " + "; ".join(
                f"{run.name(run.x(lv))} {lv.window.span_s:.1f} s from {lv.window.settle_s:.1f} s"
                + ("" if lv.window.steady else " NOT STEADY") for lv in win))
        items.append(f"Endpoint: /v1/{'chat/completions' if m.get('endpoint') == 'chat' else 'completions'}, "
                     "streaming; TTFT, ITL and E2E latency measured by the client as vllm bench serve does")
    else:
        items.append(f"Measured by vllm bench serve ({m.get('endpoint') or 'backend unknown'}); prompts: "
                     f"{m.get('prompt_source')}")
        items.append(f"Levels: {levels} (its --max-concurrency per run); request rate {m.get('request_rate')}, "
                     f"burstiness {m.get('burstiness')}")
        items.append("Latencies saved: " + (", ".join(m.get("latency_metrics") or []) or "none")
                     + "; percentiles: " + (", ".join(m.get("percentiles") or []) or "none"))
    items.append(f"Cost: {cost.describe()}" if cost else
                 "Cost: not computed (give --gpu-cost-per-hour USD, or gpu_cost_per_hour in a config's [report])")
    return Section("Methodology", [Bullets(items)])


def results(run: Run, cost: Cost | None) -> Section:
    fx = facts(run)
    charts = level_charts([run])
    k = run.knee
    if k.saturated and k.rate_axis:
        charts[0] = _captioned(charts[0], f"The knee ({run.name(k.knee_request_rate)}) is the lowest rate kept up "
                                          f"within {k.knee_share:.0%} of the peak throughput, else the highest one "
                                          "kept up.")
    elif k.saturated:
        charts[0] = _captioned(charts[0], f"The knee (C={k.knee_concurrency}) is the lowest level within "
                                          f"{k.knee_share:.0%} of the peak throughput.")
    return Section("Results", [
        f"{len(run.levels)} levels, {fx.requests} requests, {fx.failed} failed.",
        results_table(run), latency_table(run, cost), *charts])


def _captioned(c: Chart, caption: str) -> Chart:
    return replace(c, caption=caption)


def _done(run: Run) -> list:
    return [lv for lv in run.levels if lv.completed]


def optimal(run: Run) -> list[str]:
    k, pts = run.knee, _done(run)
    if len(pts) < 2 or k.rate_axis:  # over request rates the verdict's own sentence says it (engine/knee.rate_knee)
        return [k.summary]
    peak = run.level(k.peak_concurrency)
    if not k.saturated:
        a, b = pts[-2], pts[-1]
        return [f"No saturation up to C={b.max_concurrency}: from C={a.max_concurrency} to C={b.max_concurrency} "
                f"({rel(a.max_concurrency, b.max_concurrency)} concurrency) output throughput changed "
                f"{rel(a.output_throughput, b.output_throughput)} while mean latency changed "
                f"{rel(a.avg_latency_s, b.avg_latency_s)}. The peak so far is {tok(k.peak_output_throughput)} tok/s "
                f"at C={k.peak_concurrency}; the optimal concurrency lies at or above the highest level measured."]
    kn = run.level(k.knee_concurrency)
    out = [f"Optimal concurrency: C={k.knee_concurrency}, the knee: the lowest level within {k.knee_share:.0%} of "
           f"the peak throughput ({tok(k.peak_output_throughput)} tok/s at C={k.peak_concurrency})."
           if kn is not peak else
           f"Optimal concurrency: C={k.knee_concurrency}, where throughput peaks at {tok(k.peak_output_throughput)} "
           "tok/s."]
    above = [lv for lv in pts if (lv.max_concurrency or 0) > (k.knee_concurrency or 0)]
    if kn is not None and above:
        out.append("Beyond it the added load mostly queues: " + "; ".join(
            f"C={lv.max_concurrency} gives {rel(kn.output_throughput, lv.output_throughput)} tok/s for "
            f"{rel(kn.avg_latency_s, lv.avg_latency_s)} mean latency" for lv in above) + ".")
    after = [lv for lv in pts if peak is not None and (lv.max_concurrency or 0) > (peak.max_concurrency or 0)]
    if peak is not None and after:
        out.append(f"Throughput peaks at C={peak.max_concurrency} and drops beyond it ("
                   + ", ".join(f"{rel(peak.output_throughput, lv.output_throughput)} at C={lv.max_concurrency}"
                               for lv in after) + ").")
    out.append(f"Why: {k.cause}.")
    return [" ".join(out)]


def latency_trend(run: Run) -> list[str]:
    pts = [lv for lv in _done(run) if lv.avg_latency_s]
    if len(pts) < 2:
        return ["Not enough levels with an end-to-end latency to describe a trend."]
    a, b = pts[0], pts[-1]
    cx = (run.x(b) or 1) / (run.x(a) or 1)
    axis = "offered rate" if run.rate_axis else "concurrency"
    lx = (b.avg_latency_s or 0) / (a.avg_latency_s or 1)
    out = [f"From {run.name(run.x(a))} to {run.name(run.x(b))} ({cx:.1f}x the {axis}) mean end-to-end "
           f"latency went {lat(a.avg_latency_s)} -> {lat(b.avg_latency_s)} ({lx:.1f}x), TTFT p50 "
           f"{lat(a.ttft.p50_s)} -> {lat(b.ttft.p50_s)} and ITL p50 {lat(a.itl.p50_s)} -> {lat(b.itl.p50_s)}."]
    tx = (b.output_throughput or 0) / a.output_throughput if a.output_throughput else None
    # concurrency = throughput x latency: the added concurrency comes back as one or the other
    if lx - 1 < FLAT:
        out.append("Latency stayed nearly flat: the server absorbed the added load by batching.")
    elif tx and tx >= lx:
        out.append(f"Throughput grew more than latency ({tx:.1f}x against {lx:.1f}x): batching absorbed most "
                   "of the added load.")
    elif tx:
        out.append(f"Latency grew more than throughput ({lx:.1f}x against {tx:.1f}x): most of the added load "
                   "waited instead of adding throughput.")
    steps = [(x, y, (y.avg_latency_s / x.avg_latency_s - 1)
              - max(0.0, (y.output_throughput or 0) / (x.output_throughput or 1) - 1))
             for x, y in zip(pts, pts[1:]) if x.output_throughput]
    if steps:
        x, y, worst = max(steps, key=lambda s: s[2])
        if worst >= FLAT:
            out.append(f"The steepest rise is from {run.name(run.x(x))} to {run.name(run.x(y))}: "
                       f"{rel(x.avg_latency_s, y.avg_latency_s)} mean latency for "
                       f"{rel(x.output_throughput, y.output_throughput)} tok/s.")
    fx = b.ttft.p50_s / a.ttft.p50_s if a.ttft.p50_s and b.ttft.p50_s else None
    ix = b.itl.p50_s / a.itl.p50_s if a.itl.p50_s and b.itl.p50_s else None
    if fx and ix and fx >= TTFT_RISE and fx - 1 > 2 * max(ix - 1, FLAT):
        out.append(f"TTFT grew {fx:.1f}x against ITL's {ix:.1f}x: new requests wait before their first token "
                   "(queueing for a batch slot or for prefill).")
    elif ix and ix - 1 >= FLAT:
        out.append(f"ITL grew {ix:.1f}x: each decode step takes longer as the batch grows.")
    return [" ".join(out)]


def cache(run: Run, fx: Facts) -> list:
    if fx.no_server:
        return [f"No server-side numbers: {fx.no_server}."]
    rows = [[f"{run.x(lv):g}" if run.rate_axis else str(lv.max_concurrency),
             "-" if not s or s.prefix_cache_hit_rate is None else f"{s.prefix_cache_hit_rate:.1%}",
             "-" if not s or s.max_kv_cache_usage is None else f"{s.max_kv_cache_usage:.1%}",
             "-" if not s or s.preemptions is None else f"{s.preemptions:.0f}",
             "-" if not s or s.max_running is None else f"{s.max_running:.0f}",
             "-" if not s or s.max_waiting is None else f"{s.max_waiting:.0f}"]
            for lv in run.levels for s in [lv.server]]
    says = []
    if fx.hit is None:
        says.append("The server reported no prefix-cache queries (prefix caching off, or no counters).")
    else:
        lo, hi = f"{min(fx.hits):.0%}", f"{max(fx.hits):.0%}"
        span = f" ({lo} to {hi} across levels)" if lo != hi else ""
        says.append(f"Prefix-cache hit rate {fx.hit:.0%} of prompt tokens{span}: " + (
            "the requests share most of their prompt, so prefill is mostly skipped and TTFT is lower than "
            "distinct prompts would see." if fx.hit >= HIGH_HIT else
            "the prompts share almost nothing, so every request's prefill is computed." if fx.hit < LOW_HIT else
            "part of each prompt is shared."))
    if fx.kv is None:
        says.append("KV-cache usage was not reported.")
    elif fx.kv >= KV_FULL:
        says.append(f"KV-cache usage reached {fx.kv:.0%} at C={fx.kv_at}: memory is the limit there.")
    elif fx.kv < KV_LOW:
        says.append(f"KV-cache usage peaked at {fx.kv:.1%} (C={fx.kv_at}): no memory pressure.")
    else:
        says.append(f"KV-cache usage peaked at {fx.kv:.0%} (C={fx.kv_at}): room left, filling as load grows.")
    says.append("No preemptions." if not fx.preemptions else
                f"{fx.preemptions:.0f} preemptions, at C={', '.join(map(str, fx.preempt_at))}: requests were "
                "evicted from the KV cache and recomputed.")
    return [Table(["C", "prefix hit", "max KV", "preemptions", "max running", "max waiting"], rows), " ".join(says)]


def stability(run: Run, fx: Facts) -> list:
    out: list = []
    if not fx.failed:
        out.append(f"No request failed ({fx.requests} requests over {len(run.levels)} levels).")
    else:
        out.append(f"{fx.failed} of {fx.requests} requests failed ({fx.failed / fx.requests:.1%}).")
        out.append(Table(["C", "failed", "reason"], [[str(lv.max_concurrency), str(n), reason]
                                                     for lv in run.levels for reason, n in lv.failures.items()]))
    if fx.not_steady:
        out.append(f"Not steady: C={', '.join(map(str, fx.not_steady))} hit the settle cap; their numbers vary "
                   "more than the steady rule allows.")
    cut = [str(lv.max_concurrency) for lv in run.levels if getattr(lv, "interrupted", False)]
    if cut:
        out.append(f"Interrupted: C={', '.join(cut)} stopped before it ended; its numbers summarise the requests "
                   "that finished.")
    est = sum(lv.tokens_estimated for lv in run.levels)
    if est:
        out.append(f"{est} requests came back without usage: their token counts are estimates.")
    cl = [lv.client for lv in run.levels if lv.client]
    if cl:
        cpu = max(c.cpu_pct or 0.0 for c in cl)
        lag = max(c.max_loop_lag_ms or c.loop_lag_ms or 0.0 for c in cl)
        out.append(f"The load client used up to {cpu:.0f}% of a core, event-loop lag up to {lag:.1f} ms"
                   + ("; the verdict names the client as the limit." if run.knee.cause_kind == "client" else "."))
    return out


def conversations(run: Run) -> list:
    """Multi-turn levels (--turns): TTFT and prompt tokens from the first turn to the last, per level, and the
    turns refused before sending; [] for a run of single requests that refused nothing."""
    out: list[str] = []
    for lv in run.levels:
        if len(lv.turns) < 2:
            continue
        a, b = lv.turns[0], lv.turns[-1]
        grow = (f"; prompts grew from {a.input_tokens_mean:.0f} to {b.input_tokens_mean:.0f} tokens as the history "
                "came back each turn" if a.input_tokens_mean and b.input_tokens_mean else "")
        hit = lv.server.prefix_cache_hit_rate if lv.server else None
        out.append(f"{run.name(run.x(lv))}: TTFT p50 {lat(a.ttft.p50_s)} at turn {a.turn}, {lat(b.ttft.p50_s)} at "
                   f"turn {b.turn} ({b.requests} requests){grow}"
                   + (f"; the prefix cache served {hit:.0%} of prompt tokens." if hit is not None else "."))
    refused = sum(lv.refused for lv in run.levels)
    if refused:
        reasons: dict[str, int] = {}
        for lv in run.levels:
            for reason, n in lv.refused_reasons.items():
                reasons[reason] = reasons.get(reason, 0) + n
        top = max(reasons, key=reasons.__getitem__)
        out.append(f"{refused} requests were refused before sending (never sent, not counted as failures); most: "
                   f"{top} ({reasons[top]}).")
    return [" ".join(out)] if out else []


def analysis(run: Run, fx: Facts) -> Section:
    conv = conversations(run)
    return Section("Analysis", [Heading("Optimal concurrency"), *optimal(run), Heading("Latency trend"),
                                *latency_trend(run), Heading("Cache behaviour"), *cache(run, fx),
                                Heading("Stability"), *stability(run, fx),
                                *([Heading("Conversations"), *conv] if conv else [])])


def _cost_at(cost: Cost | None, run: Run, c: int | None) -> str:
    lv = run.level(c)
    if not cost or lv is None:
        return ""
    return f"; {usd(cost.per_million(lv.output_throughput))} per million output tokens"


def takeaways(run: Run, fx: Facts, cost: Cost | None) -> Section:
    k, pts = run.knee, _done(run)
    peak = run.level(k.at("peak"))
    items = [f"Peak {tok(k.peak_output_throughput)} output tok/s"
             + (f" ({peak.request_throughput or 0:.2f} req/s)" if peak else "")
             + f" at {run.name(k.at('peak'))}{_cost_at(cost, run, k.at('peak'))}."]
    if k.saturated:
        kn = run.level(k.at("knee"))
        items.append(f"Saturated past {run.name(k.at('knee'))}: {CAUSE_NAMES.get(k.cause_kind or '', 'the server')} "
                     "is the limit" + (f" (mean latency at the knee {lat(kn.avg_latency_s)})." if kn else "."))
    elif len(pts) > 1:
        items.append(f"No saturation up to {run.name(run.x(pts[-1]))}: more load still buys throughput.")
    lats = [lv for lv in pts if lv.avg_latency_s]
    if len(lats) > 1:
        items.append(f"Mean latency {lat(lats[0].avg_latency_s)} at {run.name(run.x(lats[0]))}, "
                     f"{lat(lats[-1].avg_latency_s)} at {run.name(run.x(lats[-1]))}.")
    if not fx.no_server:
        parts = []
        if fx.hit is not None:
            parts.append(f"prefix-cache hit rate {fx.hit:.0%}")
        if fx.kv is not None:
            parts.append(f"KV-cache usage at most {fx.kv:.0%}" if fx.kv >= 0.1 else
                         f"KV-cache usage at most {fx.kv:.1%}")
        parts.append(f"{fx.preemptions:.0f} preemptions")
        items.append("Cache: " + ", ".join(parts) + ".")
    items.append("No failed requests." if not fx.failed else
                 f"{fx.failed} failed requests ({fx.failed / max(1, fx.requests):.1%}), mostly: "
                 f"{next(iter(fx.reasons), 'unknown')}.")
    runs = [f"{run.name(c)} for {use}" for c, use in ((k.at("interactive"), "interactive use"),
                                                       (k.at("batch"), "batch")) if c is not None]
    if runs:
        items.append("Run at " + " and ".join(runs) + ".")
    if k.slo and k.at("goodput") is None:
        items.append(f"No level met the SLO ({k.slo}).")
    return Section("Key takeaways", [Bullets(items)])


def recommendations(run: Run, cost: Cost | None) -> Section:
    k = run.knee
    items = []
    if k.interactive_why:
        items.append(f"Interactive: {k.interactive_why}{_cost_at(cost, run, k.at('interactive'))}.")
    if k.batch_why:
        items.append(f"Batch: {k.batch_why}{_cost_at(cost, run, k.at('batch'))}.")
    if k.slo:
        items.append(f"SLO ({k.slo}): " + (f"goodput at {run.name(k.at('goodput'))}, "
                                            f"{tok(k.goodput_output_throughput)} tok/s."
                                            if k.at("goodput") is not None else "no level met it."))
    return Section("Recommendations", [Bullets(items) if items else "No recommendation: no level completed."])


def next_tests(run: Run, fx: Facts) -> Section:
    k, pts = run.knee, _done(run)
    m = run.doc.get("methodology") or {}
    items = []
    if fx.hit is not None and fx.hit >= HIGH_HIT:
        items.append(f"The prefix cache served {fx.hit:.0%} of prompt tokens: repeat with unique prompts "
                     "(--unique-prefix, or --prompts FILE with real traffic) to see what prefill really costs.")
    if (fx.kv is not None and fx.kv >= KV_FULL) or fx.preemptions:
        items.append(f"The KV cache filled (up to {fx.kv or 0:.0%}, {fx.preemptions:.0f} preemptions): try more "
                     "KV memory (--gpu-memory-utilization, --kv-cache-dtype fp8), a shorter --max-model-len or a "
                     "smaller --max-num-seqs, and compare the runs with `qbench compare`.")
    if k.cause_kind == "client":
        items.append("The client set the pace: shard the client (qbench on another machine, or several) and "
                     "measure again.")
    elif k.cause_kind == "max_num_seqs":
        items.append("Running requests flattened at the sequence limit: raise --max-num-seqs"
                     + (f" (the KV cache peaked at {fx.kv:.0%})." if fx.kv is not None else "."))
    elif k.cause_kind == "prefill":
        items.append("Prefill set the pace: try a larger --max-num-batched-tokens, or shorter prompts.")
    if len(pts) < 2:
        items.append("Run at least two levels (e.g. --levels 8,16,32,64) to find the knee.")
    elif not k.saturated:
        items.append(f"Throughput still grew at {run.name(run.x(pts[-1]))}: extend the levels (qbench sweep --auto "
                     f"--start {pts[-1].max_concurrency}) to find the knee.")
    if m.get("mode") == "wave":
        items.append("Wave levels measure one burst per level: `qbench sweep --mode steady --duration 60` measures "
                     "sustained throughput at each level.")
    if fx.not_steady:
        items.append(f"C={', '.join(map(str, fx.not_steady))} never settled: repeat with a longer --duration.")
    if fx.failed:
        items.append(f"{fx.failed} requests failed (mostly: {next(iter(fx.reasons), 'unknown')}): find out why "
                     "before trusting the numbers of the levels they failed at.")
    if fx.quant:
        items.append(f"The model is {fx.quant}-quantised: compare it with FP16 or another quantisation on the same "
                     "levels (`qbench compare A.json B.json`).")
    if fx.no_server and run.tool != "qbench-tui":
        items.append("qbench sweep reads the server's /metrics (KV cache, prefix cache, queue): run it on the "
                     "same levels to see why the server stops where it does.")
    if run.simulated:
        items.append("These numbers are simulated: run the same sweep against the real server.")
    return Section("What to test next", [Bullets(items)] if items else [])
