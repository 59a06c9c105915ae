"""Bad input through the real CLI: exit 2, one line on stderr naming what to change, no traceback, and nothing
started — the scripted server in front of every case counts the connections that reached it (none may)."""
from __future__ import annotations

import pytest

from tests.conftest import run_qbench
from tests.fakes.scripted_sse import ScriptedSSEServer


@pytest.fixture(scope="module")
def untouched():
    with ScriptedSSEServer() as s:
        yield s


def _one_line_exit_2(r, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("qbench: ") and "Traceback" not in line, r.stderr
    for n in needles:
        assert n in line, line


@pytest.mark.parametrize("argv, needles", [
    (["run", "-c", "2", "--requests", "4", "--timeout", "nan"], ["--timeout", "finite number"]),
    (["run", "-c", "2", "--requests", "4", "--temperature", "nan"], ["--temperature", "finite number"]),
    (["run", "-c", "2", "--requests", "4", "--max-error-rate", "inf"], ["--max-error-rate", "finite"]),
    (["run", "-c", "2", "--duration", "-3"], ["--duration", "> 0", "-3"]),
    (["run", "-c", "2", "--duration", "0"], ["--duration", "> 0"]),
    (["run", "-c", "2", "--duration", "5", "--warmup", "-1"], ["--warmup", ">= 0"]),
    (["run", "-c", "2", "--duration", "nan"], ["--duration", "finite number"]),
    (["sweep", "--levels", "2", "--mode", "steady", "--duration", "-3"], ["--duration", ">= 0"]),
    (["sweep", "--levels", "2", "--mode", "steady", "--warmup", "inf", "--duration", "1"], ["--warmup", "finite"]),
])
def test_bad_numbers(untouched, tmp_path, argv, needles):
    r = run_qbench(*argv, "--url", untouched.url, "--out", str(tmp_path / "out")) if argv[0] == "sweep" else \
        run_qbench(*argv, "--url", untouched.url)
    _one_line_exit_2(r, *needles)
    assert untouched.connections == 0 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("url_of, needles", [
    (lambda s: f"ftp://127.0.0.1:{s.port}", ["http:// and https:// only, not ftp://"]),
    (lambda s: f"127.0.0.1:{s.port}", ["has no scheme: give http://127.0.0.1:{port}"]),
    (lambda s: "http://127.0.0.1:99999", ["port must be a number from 1 to 65535, got '99999'"]),
    (lambda s: "http://127.0.0.1:0", ["got '0'"]),
    (lambda s: f"{s.url}/v1/chat/completions", ["give {url} (qbench adds /v1/... itself)"]),
])
@pytest.mark.parametrize("command", ["run", "sweep", "probe", "tui"])
def test_bad_urls(untouched, tmp_path, url_of, needles, command):
    url = url_of(untouched)
    extra = {"run": ["-c", "1", "--requests", "1"], "sweep": ["--levels", "1", "--out", str(tmp_path / "o")],
             "probe": [], "tui": []}[command]
    r = run_qbench(command, "--url", url, *extra, timeout=60)  # old `tui` started its app and never returned
    _one_line_exit_2(r, *(n.format(port=untouched.port, url=untouched.url) for n in needles))
    assert untouched.connections == 0 and not (tmp_path / "o").exists()


def test_a_config_file_nan_is_refused_before_launch(untouched, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nmodel = "m"\nvllm_bin = "/nonexistent/vllm"\n[load]\ntemperature = nan\n')
    r = run_qbench("sweep", "--launch", str(cfg), "--out", str(tmp_path / "o"))
    _one_line_exit_2(r, "c.toml [load]", "temperature", "finite number")
    assert "launching" not in r.stderr and not (tmp_path / "o").exists()


def test_a_prompts_file_that_is_not_utf8_names_the_byte(untouched, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_bytes("first prompt\nsecond pr\u00f6mpt\n".encode() + b"latin-1 caf\xe9\n")
    for argv in (["run", "-c", "1", "--requests", "1"], ["sweep", "--levels", "1", "--out", str(tmp_path / "o")]):
        r = run_qbench(*argv, "--url", untouched.url, "--prompts", str(f))
        offset = f.read_bytes().index(b"\xe9")
        _one_line_exit_2(r, str(f), "not UTF-8", f"byte 0xe9 at offset {offset}", "(line 3)")
    assert untouched.connections == 0 and not (tmp_path / "o").exists()


def test_a_bad_prompts_file_stops_a_launch_before_it_starts(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nmodel = "m"\nvllm_bin = "/nonexistent/vllm"\n')
    (tmp_path / "p.jsonl").write_text('{"prompt": "ok"}\nnot json\n')
    r = run_qbench("run", "--launch", str(cfg), "-c", "1", "--requests", "1", "--prompts", str(tmp_path / "p.jsonl"))
    _one_line_exit_2(r, "p.jsonl:2: not valid JSON")
    assert "launching" not in r.stderr


def test_base_url_with_v1_and_spaces_is_accepted_with_a_note(sim_proc):
    sim = sim_proc("h200-fast")
    r = run_qbench("run", "--url", f" {sim.url}/v1/ ", "-c", "1", "--requests", "2", "--max-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert f"the URL ends in /v1, which qbench adds itself; using {sim.url}" in r.stderr
    assert '"completed": 2' in r.stdout
