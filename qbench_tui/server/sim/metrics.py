"""The simulator's /metrics page, rendered by prometheus_client from the simulated engine's state.

vLLM builds its page with prometheus_client, so the simulator does too: SimMetrics is a custom Collector whose
families prometheus_client's generate_latest renders, and `_total`, the `_created` gauge families, `le` text, label
order and escaping come out as on a single-API-server vLLM by construction. A Collector rather than live
Counter/Histogram objects because the scheduler updates this state per token: a bisect into a bucket list costs
a quarter of prometheus_client's Histogram.observe (a lock per child), and the state is only read once a second.
Names, types, help texts, labels and buckets follow vLLM 0.13 `vllm/v1/metrics/loggers.py` (schema "v1"); schema
"v0" serves the pre-V1 names (gpu_cache_usage_perc, gpu_prefix_cache_*, time_per_output_token_seconds, no engine
label) so clients' alias tables can be tested.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:  # pragma: no cover
    from .profile import Profile

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
REQ_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)
ITER_BUCKETS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0)
N_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0)
# vLLM V0 (<= 0.6) bucket sets.
V0_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
V0_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
V0_E2E_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)

FINISHED_REASONS = ("stop", "length", "abort", "error")


def buckets_1_2_5(max_value: int) -> tuple[float, ...]:
    """vLLM's build_1_2_5_buckets: 1, 2, 5, 10, ... while <= max_value."""
    out: list[float] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exponent
            if v > max_value:
                return tuple(out)
            out.append(float(v))
        exponent += 1


class Histogram:
    """One histogram's running state; the scheduler observes into it on the hot path."""

    __slots__ = ("bounds", "counts", "sum", "count", "_le")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self._le = [floatToGoString(b) for b in bounds] + ["+Inf"]

    def observe(self, v: float) -> None:
        # bisect_left finds the first bound >= v: Prometheus buckets are `le`, upper bound inclusive
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs, +Inf last, as HistogramMetricFamily takes them."""
        out = []
        acc = 0
        for le, c in zip(self._le, self.counts):
            acc += c
            out.append((le, acc))
        return out


def _by(value: float | dict[str, float]) -> list[tuple[tuple[str, ...], float]]:
    """A plain value, or {extra label value: value} for a family with one label more than the engine's."""
    if isinstance(value, dict):
        return [((k,), v) for k, v in value.items()]
    return [((), value)]


class _Families:
    """Builds metric families that carry one engine's labels, as vLLM's `.labels(...)` children do."""

    def __init__(self, labels: dict[str, str], created: float):
        self.names = tuple(labels)
        self.values = tuple(labels.values())
        self.created = created

    def _names(self, by: str | None) -> tuple[str, ...]:
        return (*self.names, by) if by else self.names

    def gauge(self, name: str, help_: str, value: float | dict[str, float], by: str | None = None) -> Metric:
        fam = GaugeMetricFamily(name, help_, labels=self._names(by))
        for extra, v in _by(value):
            fam.add_metric((*self.values, *extra), v)
        return fam

    def counter(self, name: str, help_: str, value: float | dict[str, float], by: str | None = None) -> Metric:
        """name without `_total`, as vLLM declares it; the family adds `_total` and the `_created` sample."""
        fam = CounterMetricFamily(name, help_, labels=self._names(by))
        for extra, v in _by(value):
            fam.add_metric((*self.values, *extra), v, created=self.created)
        return fam

    def histogram(self, name: str, help_: str, h: Histogram) -> Metric:
        fam = HistogramMetricFamily(name, help_, labels=self.names)
        fam.add_metric(self.values, h.buckets(), h.sum)
        # a live prometheus_client Histogram carries `_created`; HistogramMetricFamily has no argument for it
        fam.samples.append(Sample(name + "_created", dict(zip(self.names, self.values)), self.created))
        return fam


# (name, help, SimMetrics attribute), in vLLM's registration order
V1_HISTOGRAMS = (
    ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", "req_prompt_tokens"),
    ("vllm:request_generation_tokens", "Number of generation tokens processed.", "req_generation_tokens"),
    ("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", "iteration_tokens"),
    ("vllm:request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.",
     "req_max_gen_tokens"),
    ("vllm:request_params_n", "Histogram of the n request parameter.", "req_params_n"),
    ("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", "req_params_max_tokens"),
    ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", "ttft"),
    ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", "itl"),
    ("vllm:request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.",
     "tpot_req"),
    ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", "e2e"),
    ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", "queue_time"),
    ("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.",
     "inference_time"),
    ("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", "prefill_time"),
    ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", "decode_time"),
    ("vllm:request_prefill_kv_computed_tokens",
     "Histogram of new KV tokens computed during prefill (excluding cached tokens).", "req_prefill_kv_computed"),
)
V0_HISTOGRAMS = (
    ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", "ttft"),
    ("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.", "itl"),
    ("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", "e2e"),
    ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", "req_prompt_tokens"),
    ("vllm:request_generation_tokens", "Number of generation tokens processed.", "req_generation_tokens"),
)
V1_IDLE_COUNTERS = (
    ("vllm:external_prefix_cache_queries", "External prefix cache queries from KV connector cross-instance cache "
                                           "sharing, in terms of number of queried tokens."),
    ("vllm:external_prefix_cache_hits", "External prefix cache hits from KV connector cross-instance cache sharing, "
                                        "in terms of number of cached tokens."),
    ("vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items."),
    ("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items."),
)
# CacheConfig fields 0.13 added (unset on a plain single-GPU serve); the V0 page predates them.
V1_CACHE_FIELDS = {
    "cpu_kvcache_space_bytes": "None", "kv_cache_memory_bytes": "None", "kv_offloading_backend": "None",
    "kv_offloading_size": "None", "kv_sharing_fast_prefill": "False", "mamba_block_size": "None",
    "mamba_cache_dtype": "auto", "mamba_page_size_padded": "None", "mamba_ssm_cache_dtype": "auto",
}
SLEEP_HELP = ("Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
              "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.")


class SimMetrics:
    """All counters, gauges and histograms of one simulated engine (engine "0"), and the Collector that exposes them."""

    def __init__(self, profile: Profile, model_name: str, schema: str = "v1"):
        if schema not in ("v1", "v0"):
            raise ValueError("metrics schema must be v1 or v0")
        self.profile = profile
        self.schema = schema
        self.model_name = model_name
        self.created = time.time()
        # gauges, set by the engine after every step
        self.num_running = 0
        self.num_waiting = 0
        self.kv_usage = 0.0
        # counters
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = {r: 0 for r in FINISHED_REASONS}
        # histograms
        ttft_b, itl_b, req_b = (TTFT_BUCKETS, ITL_BUCKETS, REQ_BUCKETS) if schema == "v1" else (
            V0_TTFT_BUCKETS, V0_TPOT_BUCKETS, V0_E2E_BUCKETS)
        tok_b = buckets_1_2_5(profile.max_model_len)
        self.ttft = Histogram(ttft_b)
        self.itl = Histogram(itl_b)
        self.tpot_req = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(req_b)
        self.queue_time = Histogram(REQ_BUCKETS)
        self.inference_time = Histogram(REQ_BUCKETS)
        self.prefill_time = Histogram(REQ_BUCKETS)
        self.decode_time = Histogram(REQ_BUCKETS)
        self.req_prompt_tokens = Histogram(tok_b)
        self.req_generation_tokens = Histogram(tok_b)
        self.req_max_gen_tokens = Histogram(tok_b)
        self.req_params_max_tokens = Histogram(tok_b)
        self.req_prefill_kv_computed = Histogram(tok_b)
        self.req_params_n = Histogram(N_BUCKETS)
        self.iteration_tokens = Histogram(ITER_BUCKETS)
        # One registry per simulated server, never the process-wide default: an in-thread sim shares its process
        # with tests and with other sims.
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        labels = {"engine": "0", "model_name": self.model_name} if self.schema == "v1" else {
            "model_name": self.model_name}
        f = _Families(labels, self.created)
        if self.schema == "v1":
            yield from self._v1(f)
        else:
            yield from self._v0(f)

    def _v1(self, f: _Families) -> Iterator[Metric]:
        yield f.gauge("vllm:num_requests_running", "Number of requests in model execution batches.", self.num_running)
        yield f.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", self.num_waiting)
        yield f.gauge("vllm:engine_sleep_state", SLEEP_HELP,
                      {"awake": 1.0, "weights_offloaded": 0.0, "discard_all": 0.0}, by="sleep_state")
        yield f.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", self.kv_usage)
        yield f.counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                        self.prefix_queries)
        yield f.counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                        self.prefix_hits)
        # No KV connector and no multi-modal inputs here, but a 0.13 page carries these families at 0 all the same.
        for name, help_ in V1_IDLE_COUNTERS:
            yield f.counter(name, help_, 0)
        yield from self._engine_counters(f)
        for name, help_, attr in V1_HISTOGRAMS:
            yield f.histogram(name, help_, getattr(self, attr))
        yield self._cache_info("Information of the LLMEngine CacheConfig", {**V1_CACHE_FIELDS, "engine": "0"})

    def _v0(self, f: _Families) -> Iterator[Metric]:
        yield self._cache_info("Information of cache_config", {"model_name": self.model_name})
        yield f.gauge("vllm:num_requests_running", "Number of requests currently running on GPU.", self.num_running)
        yield f.gauge("vllm:num_requests_swapped", "Number of requests swapped to CPU.", 0)
        yield f.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", self.num_waiting)
        yield f.gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", self.kv_usage)
        yield f.gauge("vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.", 0.0)
        rate = self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0
        yield f.gauge("vllm:cpu_prefix_cache_hit_rate", "CPU prefix cache block hit rate.", -1.0)
        yield f.gauge("vllm:gpu_prefix_cache_hit_rate", "GPU prefix cache block hit rate.", rate)
        yield f.counter("vllm:gpu_prefix_cache_queries",
                        "GPU prefix cache queries, in terms of number of queried blocks.", self.prefix_queries)
        yield f.counter("vllm:gpu_prefix_cache_hits", "GPU prefix cache hits, in terms of number of cached blocks.",
                        self.prefix_hits)
        yield from self._engine_counters(f)
        for name, help_, attr in V0_HISTOGRAMS:
            yield f.histogram(name, help_, getattr(self, attr))

    def _engine_counters(self, f: _Families) -> Iterator[Metric]:
        yield f.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", self.preemptions)
        yield f.counter("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens)
        yield f.counter("vllm:generation_tokens", "Number of generation tokens processed.", self.generation_tokens)
        yield f.counter("vllm:request_success", "Count of successfully processed requests.", self.success,
                        by="finished_reason")

    def _cache_info(self, help_: str, extra: dict[str, str]) -> Metric:
        """vLLM's CacheConfig as the labels of a constant-1 gauge (a Gauge in loggers.py, not an Info)."""
        p = self.profile
        labels = {
            "block_size": str(p.block_size),
            "cache_dtype": "auto",
            "calculate_kv_scales": "False",
            "cpu_offload_gb": "0",
            "enable_prefix_caching": str(bool(p.enable_prefix_caching)),
            "gpu_memory_utilization": str(p.gpu_memory_utilization),
            "is_attention_free": "False",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(p.num_gpu_blocks),
            "num_gpu_blocks_override": "None",
            "prefix_caching_hash_algo": "sha256",
            "sliding_window": "None",
            "swap_space": "4",
            **extra,
        }
        fam = GaugeMetricFamily("vllm:cache_config_info", help_, labels=tuple(labels))
        fam.add_metric(tuple(labels.values()), 1.0)
        return fam
