from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qbench_tui.config import ConfigError, load_config, resolve_api_key

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_configs" / "qwen2.5-14b-awq.toml"


def test_sample_config_reproduces_the_classic_setup():
    cfg = load_config(SAMPLE)
    assert cfg.server.model == "Qwen/Qwen2.5-14B-Instruct-AWQ"
    assert cfg.server.port == 8001
    assert cfg.server.host == "127.0.0.1"
    flags = dict(cfg.server.flags)
    assert flags == {"max_model_len": 4096, "enable_chunked_prefill": True, "max_num_batched_tokens": 2048,
                     "enable_prefix_caching": True}
    assert cfg.load.prompt == "Write a short paragraph explaining why GPUs are good for AI."
    assert cfg.load.max_tokens == 200
    assert cfg.sweep.levels == (40, 60, 80)
    assert cfg.sweep.mode == "wave"
    assert cfg.source("load.max_tokens") == f"file:{SAMPLE}"
    assert cfg.source("load.endpoint") == "default"


def test_cli_wins_and_is_recorded():
    cfg = load_config(SAMPLE, {"load.max_tokens": 50, "sweep.levels": "1, 2,3", "load.model": None})
    assert cfg.load.max_tokens == 50
    assert cfg.source("load.max_tokens") == "cli"
    assert cfg.sweep.levels == (1, 2, 3)
    assert cfg.source("load.model") == "default"  # None means "flag not given"


def _write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, needles", [
    ("[load]\nmax_tokenz = 3\n", ["c.toml", "max_tokenz", "did you mean 'max_tokens'"]),
    ("[lode]\nx = 1\n", ["unknown section [lode]", "did you mean 'load'"]),
    ("[load]\nmax_tokens = 'many'\n", ["max_tokens", "must be an integer", "'many'"]),
    ("[load]\nmax_tokens = 0\n", ["max_tokens", "> 0"]),
    ("[sweep]\nmode = 'burst'\n", ["mode", "wave, steady"]),
    ("[sweep]\nlevels = []\n", ["levels", "non-empty list"]),
    ("[server]\nport = 70000\n", ["port", "65535"]),
    ("[load\n", ["not valid TOML"]),
    ("[load]\nignore_eos = 3\n", ["ignore_eos", "true or false"]),
])
def test_bad_config_names_file_key_and_expectation(tmp_path, text, needles):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    for n in needles:
        assert n in str(e.value)


def test_bad_cli_value_names_the_flag():
    with pytest.raises(ConfigError, match="--max-tokens"):
        load_config(None, {"load.max_tokens": -1})


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/qbench.toml")


def test_server_flags_keep_order_and_accept_lists(tmp_path):
    p = _write(tmp_path, '[server]\nmodel = "m"\nb = true\na = ["x", "y"]\nextra_args = ["--foo"]\n'
                        '[server.env]\nHF_HUB_OFFLINE = "1"\n')
    cfg = load_config(p)
    assert cfg.server.flags == (("b", True), ("a", ("x", "y")))
    assert cfg.server.extra_args == ("--foo",)
    assert cfg.server.env == (("HF_HUB_OFFLINE", "1"),)


def test_steady_without_stop_rule_gets_a_duration():
    cfg = load_config(None, {"sweep.mode": "steady"})
    assert cfg.sweep.duration == 30.0


def test_api_key_sources(monkeypatch):
    monkeypatch.delenv("QBENCH_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert resolve_api_key(None) == (None, "none")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-o")
    assert resolve_api_key(None) == ("sk-o", "env:OPENAI_API_KEY")
    monkeypatch.setenv("QBENCH_API_KEY", "sk-q")
    assert resolve_api_key(None) == ("sk-q", "env:QBENCH_API_KEY")
    assert resolve_api_key("sk-c") == ("sk-c", "cli")


def test_bad_config_exits_2_and_starts_nothing(tmp_path):
    p = _write(tmp_path, "[load]\nmax_tokenz = 3\n")
    r = subprocess.run([sys.executable, "-m", "qbench_tui.cli", "sweep", "--config", str(p), "--url",
                        "http://127.0.0.1:9", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "max_tokenz" in r.stderr and "did you mean 'max_tokens'" in r.stderr
    assert not (tmp_path / "out").exists()


def test_local_model_paths_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    p = _write(tmp_path, '[server]\nmodel = "~/m"\nvllm_bin = "$HOME/bin/vllm"\n')
    cfg = load_config(p)
    assert cfg.server.model == f"{tmp_path}/m" and cfg.server.vllm_bin == f"{tmp_path}/bin/vllm"
    assert load_config(None, {"server.model": "Qwen/Qwen2.5-14B-Instruct-AWQ"}).server.model == \
        "Qwen/Qwen2.5-14B-Instruct-AWQ"


@pytest.mark.parametrize("text, needles", [
    ("[load]\ntimeout = nan\n", ["timeout", "finite number", "nan"]),
    ("[load]\ntemperature = nan\n", ["temperature", "finite number"]),
    ("[load]\nwindow_s = inf\n", ["window_s", "finite number"]),
    ("[sweep]\nduration = -inf\n", ["duration", "finite number"]),
    ("[server]\nmax_model_len = inf\n", ["max_model_len", "finite number"]),
    ("[server]\nport = 0\n", ["port", "> 0"]),
    ("[server]\nport = -1\n", ["port", "> 0"]),
    ("[load]\nurl = 'ftp://h/'\n", ["c.toml [load]", "http:// and https:// only", "ftp://"]),
])
def test_non_finite_and_out_of_range_numbers_are_refused(tmp_path, text, needles):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    for n in needles:
        assert n in str(e.value)


@pytest.mark.parametrize("flag, value", [("load.timeout", float("nan")), ("load.timeout", "inf"),
                                         ("load.temperature", "nan"), ("load.max_error_rate", float("nan")),
                                         ("sweep.warmup", float("inf")), ("sweep.duration", -3.0)])
def test_non_finite_flags_are_refused(flag, value):
    with pytest.raises(ConfigError, match="--" + flag.split(".")[1].replace("_", "-")):
        load_config(None, {flag: value})


@pytest.mark.parametrize("given, url, note", [
    ("http://127.0.0.1:8001", "http://127.0.0.1:8001", ""),
    ("http://127.0.0.1:8001/ \n", "http://127.0.0.1:8001", ""),
    (" HTTPS://host.example/v1/", "https://host.example", "ends in /v1"),
    ("http://[::1]:8001/v1", "http://[::1]:8001", "ends in /v1"),
    ("http://gw.example/team-a/", "http://gw.example/team-a", ""),  # a reverse proxy's prefix stays
    ("http://gw.example/team-a/v1", "http://gw.example/team-a", "using http://gw.example/team-a"),
])
def test_base_urls_accepted(given, url, note):
    from qbench_tui.config import check_url

    got, why = check_url(given)
    assert got == url
    assert (note in why) if note else why == ""


@pytest.mark.parametrize("given, needle", [
    ("127.0.0.1:8001", "has no scheme: give http://127.0.0.1:8001"),
    ("localhost:8001", "has no scheme: give http://localhost:8001"),
    ("ftp://h", "http:// and https:// only, not ftp://"),
    ("http://h:99999", "port must be a number from 1 to 65535, got '99999'"),
    ("http://h:0", "got '0'"),
    ("http://h:-5", "got '-5'"),
    ("http://", "names no host"),
    ("http://h :8001", "contains a space"),
    ("http://h/v1/chat/completions", "is an endpoint, not a base URL: give http://h "),
    ("http://h/?a=1", "without '?'"),
    ("   ", "the URL is empty"),
])
def test_base_urls_refused_in_one_line(given, needle):
    from qbench_tui.config import check_url

    with pytest.raises(ConfigError) as e:
        check_url(given)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_url_note_comes_only_from_the_value_that_wins(tmp_path):
    p = _write(tmp_path, '[load]\nurl = "http://a.example/v1"\n')
    assert load_config(p).notes and load_config(p).load.url == "http://a.example"
    cfg = load_config(p, {"load.url": "http://b.example"})
    assert (cfg.load.url, cfg.notes) == ("http://b.example", ())


def test_loopback_hosts():
    from qbench_tui.config import is_loopback_host

    assert all(is_loopback_host(h) for h in ("localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "a.localhost"))
    assert not any(is_loopback_host(h) for h in ("10.0.0.5", "example.com", "0.0.0.0", "localhost.example.com"))


def test_ca_cert_must_be_a_pem_file(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a PEM file"):
        load_config(None, {"load.ca_cert": str(bad)})
    with pytest.raises(ConfigError, match="no such file"):
        load_config(None, {"load.ca_cert": str(tmp_path / "missing.pem")})
