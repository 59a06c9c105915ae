"""The dashboard's panels. Each has `show(snapshot)`; text is only re-set when it changed, with layout=False,
because every Static here has a fixed height and a relayout per tick would cost more than the whole update."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.reactive import var
from textual.widgets import Static

from qbench_tui.engine.snapshot import EngineStatus, LatencyView, ServerView, Snapshot
from qbench_tui.server.gpu import GpuSample
from qbench_tui.tui.widgets.charts import TimeChart
from qbench_tui.tui.widgets.fmt import bar, dur, ladder_words, num, pct
from qbench_tui.tui.widgets.histogram import HistogramBars
from qbench_tui.tui.widgets.spark import ScaleSpark


class Field(Static):
    """A Static that ignores updates with unchanged text."""

    def __init__(self, text: str = "", *, relayout: bool = False, **kw) -> None:
        super().__init__(text, **kw)
        self._text = text
        self._relayout = relayout  # only for height: auto fields on screens that do not tick

    def set(self, text: str) -> None:
        if text != self._text:
            self._text = text
            self.update(text, layout=self._relayout)

    @property
    def text(self) -> str:
        return self._text


# ---------------------------------------------------------------- concurrency / status bars


class ControlBar(Horizontal):
    """Target, in flight, running/paused, segment, the auto ladder's progress: always visible. Target, paused,
    whether a ladder runs, simulated and whether an engine runs are bound in from the screen (data_bind); the rest
    comes with each Snapshot."""

    target: var[int] = var(0)
    paused: var[bool] = var(False)
    auto: var[bool] = var(False)  # a ladder runs, or was asked for and the engine has not said so yet
    mode: var[str] = var("closed")  # "open": the rate asked for takes the target's place
    rate: var[float] = var(0.0)
    simulated: var[bool] = var(False)
    engine_up: var[bool] = var(False)
    waiting: var[str] = var("")
    engine_failed: var[str] = var("")

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._snap: Snapshot | None = None

    def compose(self) -> ComposeResult:
        yield Field("", id="state")
        yield Field("", id="why")  # beside the state: why the load is not running (waiting, error budget, disk)
        yield Field("", id="conc")
        yield Field("", id="auto")
        yield Field("", id="totals")
        yield Field("[b reverse $warning] SIMULATED [/]", id="sim-badge")

    def on_mount(self) -> None:
        self._paint()

    def show(self, snap: Snapshot) -> None:
        self._snap = snap
        self._paint()

    def _paint(self) -> None:
        if not self.is_mounted:  # a bound value may arrive before compose; on_mount paints then
            return
        snap = self._snap
        why = ""
        if not self.engine_up:
            if self.engine_failed:
                state, why = "[b $error]✘ NO ENGINE[/]", f"[$error]— {escape(self.engine_failed)}[/]"
            elif self.waiting:
                state, why = "[b $warning]◌ WAITING[/]", f"[$warning]— {escape(self.waiting)}[/]"
            else:
                state = "[$text-muted]○ no engine[/]"
        elif snap is not None and snap.status in (EngineStatus.ERROR, EngineStatus.STOPPED):
            state = f"[b $error]■ {EngineStatus(snap.status).value.upper()}[/]"
            if snap.exit_code and snap.message:  # the session never started (a fleet flag): the line is the news
                why = f"[b $error]— {escape(snap.message)}[/]"
        elif self.paused:
            state = "[b $warning]‖ PAUSED[/]"
            if snap is not None and snap.paused_why:  # the engine paused itself: the reason is the news
                why = f"[b $error]— {escape(snap.paused_why)}[/]"
        else:
            state = "[b $success]▶ RUNNING[/]"
        self.query_one("#state", Field).set(state)
        self.query_one("#why", Field).set(why)
        self.set_class(bool(why), "-why")
        in_flight = "—" if snap is None else str(snap.in_flight)
        seg = "—" if snap is None else str(snap.segment)
        failed = f"  [b $error]failed {snap.failed_total:,}[/]" if snap is not None and snap.failed_total else ""
        progress = snap.auto if snap is not None else ""
        ladder = bool(self.auto or progress)
        # while a ladder runs its progress takes the segment's place: the ladder opens the segments itself
        where = "" if ladder else f"  segment [b]{seg}[/]"
        if self.mode == "open":
            held = open_loop_words(self.rate, snap)
        else:
            held = f"target [b reverse] {self.target} [/]"
        self.query_one("#conc", Field).set(f"{held}  in flight [b]{in_flight}[/]{where}{failed}")
        if self.auto and not progress:
            progress = "starting…"
        elif progress and not self.auto:
            progress = "stopping…"
        self.query_one("#auto", Field).set(
            f"[b reverse $accent] AUTO [/] {escape(ladder_words(progress))}" if ladder else "")
        self.set_class(ladder, "-auto")
        if snap is not None:
            self.query_one("#totals", Field).set(f"done {snap.completed_total:,}  t {snap.t:.0f} s")
        self.set_class(self.simulated, "-simulated")

    watch_target = watch_paused = watch_auto = watch_simulated = watch_engine_up = watch_mode = watch_rate = _paint
    watch_waiting = watch_engine_failed = _paint


def rate_text(rate: float) -> str:
    return f"{rate:g} r/s" if rate else "… r/s"


def open_loop_words(rate: float, snap: Snapshot | None) -> str:
    """The open loop's part of the control bar: the rate asked for (the face's intent until acknowledged), the
    cap, and the rolling window's schedule lag, flagged when it breaks LevelResult.behind_schedule's rule."""
    text = f"rate [b reverse] {rate_text(rate)} [/]"
    if snap is None or snap.mode != "open":
        return text
    if snap.rate_cap:
        text += f" ≤{snap.rate_cap}"
    lag = snap.schedule_lag
    if lag.count:
        text += f"  lag p50/p99 {dur(lag.p50)}/{dur(lag.p99)}"
    if snap.behind_schedule:
        text += "  [b reverse $error] BEHIND SCHEDULE [/]"
    return text


class StatusLine(Horizontal):
    """Client health (CPU, loop lag, client-limited warning) and the engine's one-line notice."""

    def compose(self) -> ComposeResult:
        yield Field("", id="health")
        yield Field("", id="notice")

    def show(self, snap: Snapshot) -> None:
        lag = snap.loop_lag_ms
        lag_txt = f"[b $warning]{lag:.1f} ms[/]" if lag > 5.0 else f"{lag:.1f} ms"
        cpu = snap.client_cpu_pct
        cpu_txt = f"[b $warning]{cpu:.0f}%[/]" if cpu > 85 else f"{cpu:.0f}%"
        health = self.query_one("#health", Field)
        if snap.client_limited:
            # the reason first: the threshold crossed and by how much (lag alone can raise it at 6% CPU)
            why = snap.client_limited_why
            parts = [f"[b]{escape(why)}[/]"] if why else []
            parts += [f"CPU {cpu_txt}"] if "CPU" not in why else []  # what the reason does not already name
            parts += [f"lag {lag_txt}"] if "lag" not in why else []
            health.set("[b reverse $error] CLIENT-LIMITED [/] " + " · ".join(parts))
        else:
            health.set(f"client CPU {cpu_txt}  loop lag {lag_txt}")
        tip = f"client-limited: {snap.client_limited_why}" if snap.client_limited and snap.client_limited_why else None
        if tip != health.tooltip:
            health.tooltip = tip
        self.set_class(snap.client_limited, "-limited")
        if snap.message:
            notice = f"[b]{escape(snap.message)}[/]"
        elif snap.client_limited:
            notice = "the client may set the pace: its numbers are suspect"
        elif snap.records_path:
            notice = f"[$text-muted]records {escape(snap.records_path)}[/]"
        else:
            notice = ""
        self.query_one("#notice", Field).set(notice)


# ---------------------------------------------------------------- throughput


class ThroughputPanel(Vertical):
    """Client and server output tok/s over time. The server's line counts every client's tokens (and its own
    clock), so the two part when something else loads the server or the client falls behind."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.border_title = "Throughput · tok/s, x: seconds ago"

    def compose(self) -> ComposeResult:
        yield Field("", id="tp-numbers")
        yield TimeChart(id="tp-chart")

    @property
    def draws(self) -> int:
        return self.query_one(TimeChart).draws

    def show(self, snap: Snapshot, now: float) -> None:
        gen = snap.server.gen_tok_s
        # the coloured labels are the chart's legend
        gen_txt = f"  [$accent]server[/] [b]{num(gen)}[/] tok/s" if gen is not None else ""
        self.query_one("#tp-numbers", Field).set(
            f"[$primary]client[/] [b]{num(snap.out_tok_s)}[/] tok/s{gen_txt}  [b]{num(snap.req_s, 2)}[/] req/s"
            f"  [$text-muted]last {snap.window_s:.0f} s[/]"
        )
        chart = self.query_one(TimeChart)
        series = [("primary", snap.tok_s_history)]
        if snap.server.gen_tok_s_history:
            series.append(("accent", snap.server.gen_tok_s_history))
        chart.set_series(*series)
        chart.maybe_draw(now)


# ---------------------------------------------------------------- latency


class LatencyBlock(Vertical):
    def __init__(self, title: str, **kw) -> None:
        super().__init__(**kw)
        self.border_title = title
        self.title = title

    def compose(self) -> ComposeResult:
        yield Field("", classes="lat-stats")
        yield HistogramBars()

    def show(self, view: LatencyView, now: float) -> None:
        self.query_one(".lat-stats", Field).set(
            f"p50 [b]{dur(view.p50)}[/]  p90 [b]{dur(view.p90)}[/]  p99 [b]{dur(view.p99)}[/]"
            f"  max {dur(view.max)}  [$text-muted]n={view.count:,}[/]"
        )
        self.query_one(HistogramBars).set_view(view)


def ttft_split(client: LatencyView, server: ServerView) -> str:
    """Client TTFT against the server's own (arrival in its handler -> first token out): the difference is
    the network, the API server's queue and streaming, and the client itself. Means, because vLLM's TTFT buckets
    (10, 20, 40 ms ...) are too coarse for a useful quantile; the server's counts every client's requests."""
    if server.ttft_mean is None or client.mean is None:
        return ""
    diff = client.mean - server.ttft_mean
    sign = "+" if diff >= 0 else "-"
    return (f"server mean {dur(server.ttft_mean)} · client mean {dur(client.mean)} "
            f"({sign}{dur(abs(diff))} outside the engine)")


class LatencyPanel(Horizontal):
    """TTFT, ITL and E2E side by side; on narrow screens only `current` shows (the dashboard's `l` cycles)."""

    KINDS = ("ttft", "itl", "e2el")
    TITLES = {"ttft": "TTFT", "itl": "ITL", "e2el": "E2E latency"}
    HIST_PERIOD = 1.0

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.current = 0
        self._last_draw = -1e9

    def compose(self) -> ComposeResult:
        for i, k in enumerate(self.KINDS):
            yield LatencyBlock(self.TITLES[k], id=f"lat-{k}", classes="-current" if i == 0 else "")

    def select(self, kind: str) -> None:
        """The histogram narrow screens show (the dashboard's `l` cycle)."""
        self.current = self.KINDS.index(kind)
        for i, k in enumerate(self.KINDS):
            self.query_one(f"#lat-{k}").set_class(i == self.current, "-current")

    def show(self, snap: Snapshot, now: float) -> None:
        # stats text ticks with the snapshot; bars follow the chart budget (<= 1 Hz)
        draw = now - self._last_draw >= self.HIST_PERIOD
        changed = False
        self.query_one("#lat-ttft", LatencyBlock).border_subtitle = ttft_split(snap.ttft, snap.server)
        for k in self.KINDS:
            block = self.query_one(f"#lat-{k}", LatencyBlock)
            view: LatencyView = getattr(snap, k)
            if draw:
                block.show(view, now)
                changed = True
            else:
                block.query_one(".lat-stats", Field).set(
                    f"p50 [b]{dur(view.p50)}[/]  p90 [b]{dur(view.p90)}[/]  p99 [b]{dur(view.p99)}[/]"
                    f"  max {dur(view.max)}  [$text-muted]n={view.count:,}[/]"
                )
        if changed:
            self._last_draw = now


# ---------------------------------------------------------------- server


class ServerPanel(Vertical):
    """The server's numbers, its KV cache on a fixed 0-100% scale, and running/waiting requests over time (folded
    away on short screens, where the numbers stay)."""

    GAUGE_WIDTH = 20

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.border_title = "Server"

    def compose(self) -> ComposeResult:
        yield Field("", id="srv-model")
        yield Field("", id="srv-kv")
        yield ScaleSpark(1.0, id="srv-kv-spark", top_label="100%", bottom_label="0%", span_label="KV 0-100%")
        yield Field("", id="srv-sched")
        yield TimeChart(id="srv-queue-chart")
        yield Field("", id="srv-extra")
        yield Field("", id="srv-error")

    def show(self, snap: Snapshot, now: float) -> None:
        sv = snap.server
        model = escape(sv.model) if sv.model else "?"
        ver = f"  [$text-muted]vLLM {escape(sv.vllm_version)}[/]" if sv.vllm_version else ""
        self.query_one("#srv-model", Field).set(f"[b]{model}[/]{ver}")
        none = sv.schema == "none"
        self.set_class(none, "-no-metrics")
        if none:
            self.query_one("#srv-kv", Field).set("[b $text-warning]no server metrics[/]")
            self.query_one("#srv-sched", Field).set(
                "[$text-muted]the server has no vLLM /metrics:\nonly client-side numbers[/]")
            self.query_one("#srv-extra", Field).set("")
        else:
            kv = sv.kv_cache_usage
            colour = "$error" if (kv or 0) >= 0.95 else "$warning" if (kv or 0) >= 0.8 else "$success"
            self.query_one("#srv-kv", Field).set(
                f"KV cache [{colour}]{bar(kv, self.GAUGE_WIDTH)}[/] [b]{pct(kv)}[/]"
            )
            pre = f"{num(sv.preemptions_total)}"
            if sv.preemptions_per_s is not None:
                pre += f" ({sv.preemptions_per_s:.2f}/s)"
            self.query_one("#srv-sched", Field).set(
                f"prefix hit [b]{pct(sv.prefix_hit_rate)}[/]  gen [b]{num(sv.gen_tok_s)}[/] tok/s\n"
                f"[$success]running[/] [b]{num(sv.num_running)}[/]  [$warning]waiting[/] [b]{num(sv.num_waiting)}[/]"
                f"\npreemptions [b]{pre}[/]"
            )
            extra = [f"prompt [b]{num(sv.prompt_tok_s)}[/] tok/s"]
            if sv.num_gpu_blocks is not None:
                blocks = f"{sv.num_gpu_blocks:,}"
                if sv.block_size:
                    blocks += f" × {sv.block_size} = {sv.num_gpu_blocks * sv.block_size:,} tokens"
                extra.append(f"KV blocks {blocks}")
            if sv.engines > 1:
                extra.append(f"engines {sv.engines}")
            self.query_one("#srv-extra", Field).set("\n".join(extra))
            self.query_one(ScaleSpark).set_values(sv.kv_history)
            chart = self.query_one("#srv-queue-chart", TimeChart)
            chart.set_series(("success", sv.running_history), ("warning", sv.waiting_history))
            chart.maybe_draw(now)
        err = sv.error
        if not sv.reachable and not err:
            err = "server unreachable"
        self.query_one("#srv-error", Field).set(f"[$error]⚠ {escape(err)}[/]" if err else "")


# ---------------------------------------------------------------- failures, GPU, log


class FailuresPanel(Vertical):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.border_title = "Failures"

    def compose(self) -> ComposeResult:
        yield Field("", id="fail-text")

    def show(self, snap: Snapshot) -> None:
        if not snap.failed_total and not snap.failures:
            self.query_one("#fail-text", Field).set("[$success]none[/]")
            return
        lines = [f"[b $error]{snap.failed_total:,}[/] failed"]
        lines += [f"  {escape(reason)}: {count:,}" for reason, count in snap.failures[:4]]
        if snap.last_error:
            lines.append(f"[$text-muted]last:[/] {escape(snap.last_error)}")
        self.query_one("#fail-text", Field).set("\n".join(lines))


class GpuPanel(Vertical):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.border_title = "GPU"
        self._count = -1
        self.display = False  # until a snapshot reports GPUs

    def compose(self) -> ComposeResult:
        yield Field("", id="gpu-text")

    def show(self, snap: Snapshot) -> None:
        gpus = snap.server.gpu
        if bool(gpus) != self.display:
            self.display = bool(gpus)
        if not gpus:
            return
        if len(gpus) != self._count:  # one line per GPU; the count rarely changes, so relayout only then
            self._count = len(gpus)
            self.styles.height = min(10, 2 + len(gpus))
        names = {g.name for g in gpus}
        if len(names) == 1 and "" not in names:
            self.border_title = f"GPU · {escape(names.pop())}"
        self.query_one("#gpu-text", Field).set("\n".join(gpu_line(g) for g in gpus))


def gpu_line(g: GpuSample) -> str:
    """index, utilisation, memory used/total, power; what NVML could not say is left out."""
    parts = [str(g.index)]
    if g.util_pct is not None:
        parts.append(f"util [b]{g.util_pct:3.0f}%[/]")
    if g.mem_used_mib is not None and g.mem_total_mib:
        parts.append(f"mem [b]{g.mem_used_mib / 1024:.1f}[/]/{g.mem_total_mib / 1024:.0f} GiB")
    if g.power_w is not None:
        parts.append(f"{g.power_w:.0f} W")
    return "  ".join(parts)


class LogPanel(Vertical):
    """The server's log, newest line at the bottom: a tail taller than the panel keeps only the lines that fit, so
    the line that explains a failure (usually the last) is never the one cut off."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.border_title = "vLLM log"
        self._lines: list[str] = []

    def compose(self) -> ComposeResult:
        yield Field("", id="log-text")

    def show_lines(self, lines: list[str], state: str = "") -> None:
        if state:
            self.border_title = f"vLLM log ({state})"
        self._lines = list(lines)
        self._paint()

    def on_resize(self) -> None:
        self._paint()

    def _paint(self) -> None:
        text = self.query_one("#log-text", Field)
        rows = text.size.height
        shown = self._lines[-rows:] if rows > 0 else self._lines  # not laid out yet: all, the next paint cuts
        text.set("\n".join(escape(line) for line in shown))
