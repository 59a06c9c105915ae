"""Prometheus text for the simulator, rendered by hand in the shape prometheus_client gives vLLM.

Hand rendering keeps the hot path to integer increments and one bisect per observation; a scrape renders ~300 lines.
Names, types, help texts, labels and buckets follow vLLM 0.13 `vllm/v1/metrics/loggers.py` (schema "v1"); schema
"v0" serves the pre-V1 names (gpu_cache_usage_perc, gpu_prefix_cache_*, time_per_output_token_seconds, no engine
label) so clients' alias tables can be tested.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from typing import TYPE_CHECKING

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


def _num(v: float) -> str:
    """prometheus_client's floatToGoString for the values we emit."""
    if v == float("inf"):
        return "+Inf"
    return repr(float(v))


class Histogram:
    __slots__ = ("bounds", "counts", "sum", "count", "_le")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self._le = [_num(b) for b in bounds] + ["+Inf"]

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str, labels: str, out: list[str]) -> None:
        """labels: the label text without braces, sorted, *without* `le`; le is inserted in sorted position."""
        acc = 0
        # prometheus_client sorts labels: engine < le < model_name, so le goes between them when both exist.
        if labels.startswith('engine="'):
            cut = labels.index(",") + 1 if "," in labels else len(labels)
            head, tail = labels[:cut], labels[cut:]
        else:
            head, tail = "", labels
        for le, c in zip(self._le, self.counts):
            acc += c
            sep = "," if tail else ""
            out.append(f'{name}_bucket{{{head}le="{le}"{sep}{tail}}} {float(acc)!r}')
        out.append(f"{name}_count{{{labels}}} {float(self.count)!r}")
        out.append(f"{name}_sum{{{labels}}} {float(self.sum)!r}")


class SimMetrics:
    """All counters, gauges and histograms of one simulated engine (engine "0")."""

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
        name = model_name.replace("\\", "\\\\").replace('"', '\\"')
        if schema == "v1":
            self._lbl = f'engine="0",model_name="{name}"'
        else:
            self._lbl = f'model_name="{name}"'
        self._model_lbl = name
        self._cache_info_line = self._cache_info()

    # ------------------------------------------------------------------ rendering
    def _cache_info(self) -> str:
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
        }
        if self.schema == "v1":
            labels["engine"] = "0"
        else:
            labels["model_name"] = self._model_lbl
        body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"vllm:cache_config_info{{{body}}} 1.0"

    def render(self) -> str:
        return self._render_v1() if self.schema == "v1" else self._render_v0()

    def _head(self, out: list[str], name: str, typ: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {typ}")

    def _counter(self, out: list[str], base: str, help_: str, value: float) -> None:
        lbl = self._lbl
        self._head(out, f"{base}_total", "counter", help_)
        out.append(f"{base}_total{{{lbl}}} {float(value)!r}")
        self._head(out, f"{base}_created", "gauge", help_)
        out.append(f"{base}_created{{{lbl}}} {self.created!r}")

    def _gauge(self, out: list[str], name: str, help_: str, value: float) -> None:
        self._head(out, name, "gauge", help_)
        out.append(f"{name}{{{self._lbl}}} {float(value)!r}")

    def _hist(self, out: list[str], name: str, help_: str, h: Histogram) -> None:
        self._head(out, name, "histogram", help_)
        h.lines(name, self._lbl, out)
        self._head(out, f"{name}_created", "gauge", help_)
        out.append(f"{name}_created{{{self._lbl}}} {self.created!r}")

    def _render_v1(self) -> str:
        out: list[str] = []
        lbl = self._lbl
        self._gauge(out, "vllm:num_requests_running", "Number of requests in model execution batches.",
                    self.num_running)
        self._gauge(out, "vllm:num_requests_waiting", "Number of requests waiting to be processed.", self.num_waiting)
        self._head(out, "vllm:engine_sleep_state", "gauge",
                   "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
                   "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.")
        for state, v in (("awake", 1.0), ("weights_offloaded", 0.0), ("discard_all", 0.0)):
            out.append(f'vllm:engine_sleep_state{{{lbl},sleep_state="{state}"}} {v!r}')
        self._gauge(out, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", self.kv_usage)
        self._counter(out, "vllm:prefix_cache_queries",
                      "Prefix cache queries, in terms of number of queried tokens.", self.prefix_queries)
        self._counter(out, "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                      self.prefix_hits)
        self._counter(out, "vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                      self.preemptions)
        self._counter(out, "vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens)
        self._counter(out, "vllm:generation_tokens", "Number of generation tokens processed.",
                      self.generation_tokens)
        help_s = "Count of successfully processed requests."
        self._head(out, "vllm:request_success_total", "counter", help_s)
        for r in FINISHED_REASONS:
            out.append(f'vllm:request_success_total{{engine="0",finished_reason="{r}",model_name="{self._model_lbl}"}}'
                       f" {float(self.success[r])!r}")
        self._head(out, "vllm:request_success_created", "gauge", help_s)
        for r in FINISHED_REASONS:
            out.append(f'vllm:request_success_created{{engine="0",finished_reason="{r}",'
                       f'model_name="{self._model_lbl}"}} {self.created!r}')
        self._hist(out, "vllm:request_prompt_tokens", "Number of prefill tokens processed.", self.req_prompt_tokens)
        self._hist(out, "vllm:request_generation_tokens", "Number of generation tokens processed.",
                   self.req_generation_tokens)
        self._hist(out, "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                   self.iteration_tokens)
        self._hist(out, "vllm:request_max_num_generation_tokens",
                   "Histogram of maximum number of requested generation tokens.", self.req_max_gen_tokens)
        self._hist(out, "vllm:request_params_n", "Histogram of the n request parameter.", self.req_params_n)
        self._hist(out, "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
                   self.req_params_max_tokens)
        self._hist(out, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                   self.ttft)
        self._hist(out, "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                   self.itl)
        self._hist(out, "vllm:request_time_per_output_token_seconds",
                   "Histogram of time_per_output_token_seconds per request.", self.tpot_req)
        self._hist(out, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                   self.e2e)
        self._hist(out, "vllm:request_queue_time_seconds",
                   "Histogram of time spent in WAITING phase for request.", self.queue_time)
        self._hist(out, "vllm:request_inference_time_seconds",
                   "Histogram of time spent in RUNNING phase for request.", self.inference_time)
        self._hist(out, "vllm:request_prefill_time_seconds",
                   "Histogram of time spent in PREFILL phase for request.", self.prefill_time)
        self._hist(out, "vllm:request_decode_time_seconds",
                   "Histogram of time spent in DECODE phase for request.", self.decode_time)
        self._hist(out, "vllm:request_prefill_kv_computed_tokens",
                   "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
                   self.req_prefill_kv_computed)
        self._head(out, "vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
        out.append(self._cache_info_line)
        out.append("")
        return "\n".join(out)

    def _render_v0(self) -> str:
        out: list[str] = []
        lbl = self._lbl
        self._head(out, "vllm:cache_config_info", "gauge", "Information of cache_config")
        out.append(self._cache_info_line)
        self._gauge(out, "vllm:num_requests_running", "Number of requests currently running on GPU.",
                    self.num_running)
        self._gauge(out, "vllm:num_requests_swapped", "Number of requests swapped to CPU.", 0)
        self._gauge(out, "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                    self.num_waiting)
        self._gauge(out, "vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
                    self.kv_usage)
        self._gauge(out, "vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.", 0.0)
        rate = self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0
        self._gauge(out, "vllm:cpu_prefix_cache_hit_rate", "CPU prefix cache block hit rate.", -1.0)
        self._gauge(out, "vllm:gpu_prefix_cache_hit_rate", "GPU prefix cache block hit rate.", rate)
        self._counter(out, "vllm:gpu_prefix_cache_queries",
                      "GPU prefix cache queries, in terms of number of queried blocks.", self.prefix_queries)
        self._counter(out, "vllm:gpu_prefix_cache_hits",
                      "GPU prefix cache hits, in terms of number of cached blocks.", self.prefix_hits)
        self._counter(out, "vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                      self.preemptions)
        self._counter(out, "vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens)
        self._counter(out, "vllm:generation_tokens", "Number of generation tokens processed.",
                      self.generation_tokens)
        help_s = "Count of successfully processed requests."
        self._head(out, "vllm:request_success_total", "counter", help_s)
        for r in FINISHED_REASONS:
            out.append(f'vllm:request_success_total{{finished_reason="{r}",model_name="{self._model_lbl}"}}'
                       f" {float(self.success[r])!r}")
        self._hist(out, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                   self.ttft)
        self._hist(out, "vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
                   self.itl)
        self._hist(out, "vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                   self.e2e)
        self._hist(out, "vllm:request_prompt_tokens", "Number of prefill tokens processed.", self.req_prompt_tokens)
        self._hist(out, "vllm:request_generation_tokens", "Number of generation tokens processed.",
                   self.req_generation_tokens)
        del lbl
        out.append("")
        return "\n".join(out)
