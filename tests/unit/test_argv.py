"""ServerConfig -> `vllm serve` argv, the printable command line, secret redaction, labels, overrides."""
from __future__ import annotations

import shlex

import pytest

from qbench_tui.config import ServerConfig
from qbench_tui.server.argv import apply_overrides, build_argv, config_label
from qbench_tui.server.secrets import command_line, is_secret_name, redact_text, secrets_in


def test_argv_base_and_flag_kinds() -> None:
    server = ServerConfig(
        model="Qwen/Qwen2.5-14B-Instruct-AWQ", host="127.0.0.1", port=8001, vllm_bin="/opt/v/bin/vllm",
        flags=(("max_model_len", 4096), ("enable_chunked_prefill", True), ("enable_prefix_caching", False),
               ("gpu_memory_utilization", 0.9), ("quantization", "awq_marlin"),
               ("served_model_name", ("qwen", "q14")), ("cuda-graph-sizes", (1, 2, 4))),
        extra_args=("--seed", "0", "--some flag with space"),
    )
    assert build_argv(server) == [
        "/opt/v/bin/vllm", "serve", "Qwen/Qwen2.5-14B-Instruct-AWQ", "--host", "127.0.0.1", "--port", "8001",
        "--max-model-len", "4096", "--enable-chunked-prefill", "--no-enable-prefix-caching",
        "--gpu-memory-utilization", "0.9", "--quantization", "awq_marlin",
        "--served-model-name", "qwen", "q14", "--cuda-graph-sizes", "1", "2", "4",
        "--seed", "0", "--some flag with space",
    ]


def test_argv_is_a_list_never_a_shell_string() -> None:
    server = ServerConfig(model="m; rm -rf /", flags=(("chat_template", "$(whoami) `id` 'x'"),))
    argv = build_argv(server)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert "m; rm -rf /" in argv and "$(whoami) `id` 'x'" in argv
    # the printed line quotes them, so copying it into a shell runs the same argv
    assert shlex.split(command_line(argv)) == argv


def test_argv_defaults() -> None:
    assert build_argv(ServerConfig(model="m")) == ["vllm", "serve", "m", "--host", "127.0.0.1", "--port", "8001"]


@pytest.mark.parametrize(
    "name, secret",
    [("api_key", True), ("--api-key", True), ("--hf-token", True), ("HF_TOKEN", True), ("OPENAI_API_KEY", True),
     ("DB_PASSWORD", True), ("client_secret_id", True), ("--max-num-batched-tokens", False),
     ("--long-prefill-token-threshold", False), ("--tokenizer", False), ("--ssl-keyfile", False),
     ("VLLM_CPU_KVCACHE_SPACE", False), ("--enable-prompt-tokens-details", False)],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_command_line_redacts_secrets() -> None:
    server = ServerConfig(
        model="m", flags=(("api_key", "sk-live-123456"), ("max_num_batched_tokens", 2048)),
        extra_args=("--hf-token", "hf_abcdef", "--other-secret=shh-1234"),
        env=(("HF_TOKEN", "hf_envtoken"), ("VLLM_CPU_KVCACHE_SPACE", "1")),
    )
    argv = build_argv(server)
    line = command_line(argv, server.env)
    for secret in ("sk-live-123456", "hf_abcdef", "shh-1234", "hf_envtoken"):
        assert secret not in line
    assert "--api-key ***" in line and "--hf-token ***" in line and "--other-secret=***" in line
    assert line.startswith("HF_TOKEN=*** VLLM_CPU_KVCACHE_SPACE=1 vllm serve m ")
    assert "--max-num-batched-tokens 2048" in line  # not a secret despite "tokens"
    assert sorted(secrets_in(argv, server.env)) == sorted(["sk-live-123456", "hf_abcdef", "shh-1234",
                                                            "hf_envtoken"])
    assert redact_text("key is sk-live-123456 ok", secrets_in(argv)) == "key is *** ok"


def test_config_label() -> None:
    server = ServerConfig(model="m", flags=(("max_num_seqs", 256), ("enable_prefix_caching", False),
                                            ("api_key", "sk-1234567"), ("sizes", (1, 2))))
    label = config_label(server)
    assert label == "max_num_seqs=256 no_enable_prefix_caching api_key=*** sizes=1,2"
    assert config_label(ServerConfig(model="m")) == "default"


def test_apply_overrides() -> None:
    server = ServerConfig(model="m", port=8001, flags=(("max_num_seqs", 256), ("enforce-eager", True)))
    out = apply_overrides(server, {"max-num-seqs": 64, "enforce_eager": None, "max_num_batched_tokens": 512,
                                   "port": 9001})
    assert out.flags == (("max_num_seqs", 64), ("max_num_batched_tokens", 512))
    assert out.port == 9001 and server.port == 8001  # the original is untouched
    assert build_argv(out)[-4:] == ["--max-num-seqs", "64", "--max-num-batched-tokens", "512"]
