"""The dashboard's panels. Each has `show(snapshot)`; text is only re-set when it changed, with layout=False,
because every Static here has a fixed height and a relayout per tick would cost more than the whole update."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.color import Color
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.reactive import var
from textual.widgets import Sparkline, Static
from textual_plotext import PlotextPlot

from qbench_tui.engine.snapshot import EngineStatus, LatencyView, ServerView, Snapshot
from qbench_tui.server.gpu import GpuSample
from qbench_tui.tui.widgets.fmt import bar, dur, num, pct
from qbench_tui.tui.widgets.histogram import HistogramBars


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
    """Target, in flight, running/paused, segment: always visible. Target, paused, simulated and whether an engine
    runs are bound in from the screen (data_bind); the rest comes with each Snapshot."""

    target: var[int] = var(0)
    paused: var[bool] = var(False)
    simulated: var[bool] = var(False)
    engine_up: var[bool] = var(False)

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._snap: Snapshot | None = None

    def compose(self) -> ComposeResult:
        yield Field("", id="state")
        yield Field("", id="conc")
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
        if not self.engine_up:
            state = "[$text-muted]○ no engine[/]"
        elif snap is not None and snap.status in (EngineStatus.ERROR, EngineStatus.STOPPED):
            state = f"[b $error]■ {EngineStatus(snap.status).value.upper()}[/]"
        elif self.paused:
            state = "[b $warning]‖ PAUSED[/]"
        else:
            state = "[b $success]▶ RUNNING[/]"
        self.query_one("#state", Field).set(state)
        in_flight = "—" if snap is None else str(snap.in_flight)
        seg = "—" if snap is None else str(snap.segment)
        failed = f"  [b $error]failed {snap.failed_total:,}[/]" if snap is not None and snap.failed_total else ""
        self.query_one("#conc", Field).set(
            f"target [b reverse] {self.target} [/]  in flight [b]{in_flight}[/]  segment [b]{seg}[/]{failed}"
        )
        if snap is not None:
            self.query_one("#totals", Field).set(f"done {snap.completed_total:,}  t {snap.t:.0f} s")
        self.set_class(self.simulated, "-simulated")

    watch_target = watch_paused = watch_simulated = watch_engine_up = _paint


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
        warn = "[b reverse $error] CLIENT-LIMITED [/] " if snap.client_limited else ""
        self.query_one("#health", Field).set(f"{warn}client CPU {cpu_txt}  loop lag {lag_txt}")
        self.set_class(snap.client_limited, "-limited")
        if snap.message:
            notice = f"[b]{escape(snap.message)}[/]"
        elif snap.client_limited:
            notice = "the client, not the server, may be the limit: numbers are suspect"
        elif snap.records_path:
            notice = f"[$text-muted]records {escape(snap.records_path)}[/]"
        else:
            notice = ""
        self.query_one("#notice", Field).set(notice)


# ---------------------------------------------------------------- throughput


class ThroughputPanel(Vertical):
    CHART_PERIOD = 1.0  # plotext builds cost ~40 ms: never more than once a second

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.border_title = "Throughput · tok/s, x: seconds ago"
        self._series: tuple[float, ...] | None = None
        self._drawn: tuple[float, ...] | None = None
        self._drawn_width = -1
        self._last_draw = -1e9
        self.draws = 0  # plotext rebuilds requested, for tests and the CPU bench

    def compose(self) -> ComposeResult:
        yield Field("", id="tp-numbers")
        yield PlotextPlot(id="tp-chart")

    def on_mount(self) -> None:
        self.query_one(PlotextPlot).plt.title("")
        self.app.theme_changed_signal.subscribe(self, self._theme_changed)

    def _theme_changed(self, _theme) -> None:
        self._drawn = None
        self.call_after_refresh(self.maybe_draw, 0.0, True)

    def _line_color(self) -> tuple[int, int, int]:
        # an explicit RGB from the theme: a named ANSI colour would be mapped through the terminal's palette,
        # which differs between dark and light themes and terminals
        try:
            return Color.parse(self.app.theme_variables["primary"]).rgb
        except Exception:
            return (0, 120, 215)

    def show(self, snap: Snapshot, now: float) -> None:
        gen = snap.server.gen_tok_s
        gen_txt = f"  server [b]{num(gen)}[/] tok/s" if gen is not None else ""
        self.query_one("#tp-numbers", Field).set(
            f"client [b]{num(snap.out_tok_s)}[/] tok/s{gen_txt}  [b]{num(snap.req_s, 2)}[/] req/s"
            f"  [$text-muted]last {snap.window_s:.0f} s[/]"
        )
        self._series = snap.tok_s_history
        self.maybe_draw(now)

    def on_resize(self) -> None:
        # the series length follows the width; a resize is rare, so redraw now rather than wait for new data
        # (maybe_draw skips it when the width did not actually change)
        self.call_after_refresh(self.maybe_draw, 0.0, True)

    def maybe_draw(self, now: float, force: bool = False) -> bool:
        if not self.is_attached:  # a deferred resize redraw may land while the app is closing
            return False
        chart = self.query_one(PlotextPlot)
        width = chart.size.width
        if self._series is None or width <= 0 or not chart.display:
            return False
        keep = max(2, width - 8)  # y tick labels take ~8 columns; more points than columns is wasted work
        series = self._series[-keep:]
        if series == self._drawn and width == self._drawn_width:
            return False
        if not force and now - self._last_draw < self.CHART_PERIOD:
            return False
        self._drawn, self._drawn_width = series, width
        if not force:
            self._last_draw = now
        plt = chart.plt
        plt.clear_data()
        if series:
            n = len(series)
            plt.plot([i - n + 1 for i in range(n)], list(series), marker="braille", color=self._line_color())
        chart.refresh()
        self.draws += 1
        return True


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
    """TTFT, ITL and E2E side by side; on narrow screens only `current` shows (the `l` key cycles)."""

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

    def cycle(self) -> str:
        self.current = (self.current + 1) % len(self.KINDS)
        for i, k in enumerate(self.KINDS):
            self.query_one(f"#lat-{k}").set_class(i == self.current, "-current")
        return self.TITLES[self.KINDS[self.current]]

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
    GAUGE_WIDTH = 20
    SPARK_PERIOD = 1.0

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.border_title = "Server"
        self._spark: tuple[float, ...] | None = None
        self._history: tuple[float, ...] = ()
        self._last_spark = -1e9

    def _draw_spark(self, now: float, force: bool = False) -> None:
        if not self.is_attached:
            return
        spark = self.query_one("#srv-kv-spark", Sparkline)
        width = spark.size.width
        if width <= 0:
            return
        hist = self._history[-width:]  # one column per scrape, never more points than columns
        if hist != self._spark and (force or now - self._last_spark >= self.SPARK_PERIOD):
            self._spark = hist
            if not force:
                self._last_spark = now
            spark.data = list(hist)

    def on_resize(self) -> None:
        self.call_after_refresh(self._draw_spark, 0.0, True)

    def compose(self) -> ComposeResult:
        yield Field("", id="srv-model")
        yield Field("", id="srv-kv")
        yield Sparkline([], id="srv-kv-spark")
        yield Field("", id="srv-sched")
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
                f"running [b]{num(sv.num_running)}[/]  waiting [b]{num(sv.num_waiting)}[/]\n"
                f"preemptions [b]{pre}[/]"
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
            self._history = sv.kv_history
            self._draw_spark(now)
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
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.border_title = "vLLM log"

    def compose(self) -> ComposeResult:
        yield Field("", id="log-text")

    def show_lines(self, lines: list[str], state: str = "") -> None:
        if state:
            self.border_title = f"vLLM log ({state})"
        self.query_one("#log-text", Field).set("\n".join(escape(line) for line in lines))
