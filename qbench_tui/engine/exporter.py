"""qbench's own client-side view as Prometheus metrics (`--metrics-port`), so a Grafana board can show the client
beside vLLM: requests by outcome, tokens, TTFT / ITL / E2E histograms, in flight, target concurrency, loop lag.

Fed from records as they finish (`observe`, on the engine loop). The hot path stays cheap by not using
prometheus_client's Histogram per value: its observe() takes a lock per call (0.93 us measured,
ARCHITECTURE.md), and a request carries hundreds of ITLs. Instead ClientMetrics is a custom Collector over plain
lists: one bisect per value into vLLM's own bucket bounds (the simulator's Histogram, server/sim/metrics.py), so
the client's and the server's histograms share their `le` and read side by side, and every value is counted
exactly (count, sum and buckets; no sampling). bench/exporter_cost.py measures the choice. The registry is its
own CollectorRegistry, never the global one, so nothing else in the process shows up on the page (and two
sessions in one test process do not collide). The HTTP server is prometheus_client's (a daemon thread) on
127.0.0.1 unless a host is given; the collector reads the lists under the GIL, and the page's _count is summed
from the same bucket copy, so buckets and count always agree.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from qbench_tui.server.sim.metrics import ITL_BUCKETS, REQ_BUCKETS, TTFT_BUCKETS, Histogram

if TYPE_CHECKING:  # pragma: no cover
    from qbench_tui.engine.records import RequestRecord

OUTCOMES = ("ok", "failed", "refused")


def _histogram(name: str, help_: str, h: Histogram) -> Metric:
    counts = list(h.counts)  # one copy: buckets and count from the same numbers while the loop adds
    fam = HistogramMetricFamily(name, help_)
    acc = 0
    buckets = []
    for le, c in zip(h._le, counts):
        acc += c
        buckets.append((le, acc))
    fam.add_metric((), buckets, h.sum)
    return fam


class ClientMetrics:
    """The counters and histograms, and the prometheus_client Collector that exposes them (see module doc)."""

    def __init__(self, in_flight: Callable[[], float] | None = None, target: Callable[[], float] | None = None,
                 loop_lag_s: Callable[[], float] | None = None) -> None:
        self.requests = dict.fromkeys(OUTCOMES, 0)
        self.output_tokens = 0
        self.prompt_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(REQ_BUCKETS)
        self._gauges = {"in_flight": in_flight, "target": target, "lag": loop_lag_s}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server = None
        self._thread = None

    def set_gauges(self, *, in_flight: Callable[[], float] | None = None, target: Callable[[], float] | None = None,
                   loop_lag_s: Callable[[], float] | None = None) -> None:
        """Where the gauges read from (read at scrape time, in the server's thread: plain attribute reads)."""
        for k, f in (("in_flight", in_flight), ("target", target), ("lag", loop_lag_s)):
            if f is not None:
                self._gauges[k] = f

    def observe(self, rec: RequestRecord) -> None:
        """One finished request; on the engine loop. Warm-up requests count too: they were sent."""
        # tokens of every record: a cut stream's delivered tokens were generated all the same (refused: 0)
        self.output_tokens += rec.out_tokens
        self.prompt_tokens += rec.in_tokens
        if not rec.ok:
            self.requests["refused" if rec.refused else "failed"] += 1
            return
        self.requests["ok"] += 1
        if rec.ttft is not None:
            self.ttft.observe(rec.ttft)
        self.e2e.observe(rec.end - rec.start)
        itl = rec.itl
        if itl:
            # the per-value loop, inlined: a method call per ITL would cost as much as the bisect itself
            h = self.itl
            counts, bounds = h.counts, h.bounds
            for v in itl:
                counts[bisect_left(bounds, v)] += 1
            h.count += len(itl)
            h.sum += sum(itl)

    def collect(self) -> Iterator[Metric]:
        req = CounterMetricFamily("qbench_requests", "Requests qbench finished, by outcome (ok, failed, refused: "
                                  "never sent, the prompt source refused it).", labels=("outcome",))
        for k in OUTCOMES:
            req.add_metric((k,), self.requests[k])
        yield req
        yield CounterMetricFamily("qbench_output_tokens", "Output tokens received (usage counts).",
                                  value=self.output_tokens)
        yield CounterMetricFamily("qbench_prompt_tokens", "Prompt tokens sent (usage counts).",
                                  value=self.prompt_tokens)
        yield _histogram("qbench_time_to_first_token_seconds", "Client-side time to first token, ok requests.",
                         self.ttft)
        yield _histogram("qbench_inter_token_latency_seconds", "Client-side gaps between content events.", self.itl)
        yield _histogram("qbench_e2e_request_latency_seconds", "Client-side request latency, ok requests.", self.e2e)
        for key, name, help_ in (("in_flight", "qbench_requests_in_flight", "Requests sent and not finished."),
                                 ("target", "qbench_target_concurrency", "The concurrency qbench holds."),
                                 ("lag", "qbench_event_loop_lag_seconds",
                                  "How late the load engine's event loop wakes (worst of the last second).")):
            f = self._gauges[key]
            if f is None:
                continue
            try:
                v = float(f())
            except Exception:  # a gauge that cannot be read is left out, never a failed scrape
                continue
            yield GaugeMetricFamily(name, help_, value=v)

    # ------------------------------------------------------------------ serving

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on host:port (port 0: a free one); returns the port bound."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

