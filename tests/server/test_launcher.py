"""LaunchedServer against tests/fakes/vllm (a stand-in `vllm` executable): readiness, phases, every failure mode's
message, stop/escalation, restart. The fake serves a tiny built-in HTTP server on a free loopback port."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from qbench_tui.config import ServerConfig
from qbench_tui.server.launcher import LaunchedServer, LaunchError
from qbench_tui.server.net import free_port, port_in_use
from qbench_tui.server.proctree import live_children as live_servers

FAKE = str(Path(__file__).resolve().parents[1] / "fakes" / "vllm")


@pytest.fixture(autouse=True)
def fake_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_VLLM_SERVER", "builtin")
    monkeypatch.setenv("FAKE_VLLM_DELAY", "0.01")
    for name in ("FAKE_VLLM_MODE", "FAKE_VLLM_ARGV_FILE", "FAKE_VLLM_ECHO_ENV", "FAKE_VLLM_PIDFILE",
                 "FAKE_VLLM_NOISE"):
        monkeypatch.delenv(name, raising=False)


def cfg(**kw: object) -> ServerConfig:
    base: dict = dict(model="fake-model", host="127.0.0.1", port=free_port(), vllm_bin=FAKE, startup_timeout=60.0)
    base.update(kw)
    return ServerConfig(**base)


def group_gone(pgid: int, within: float = 15.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def pid_gone(pid: int, within: float = 15.0) -> bool:
    import psutil

    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def http_get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as r:
        return r.status, r.read()


def test_ready_via_health_phases_in_order_then_stop_frees_everything(tmp_path: Path) -> None:
    server = cfg(flags=(("max_model_len", 1024),))
    s = LaunchedServer(server, tmp_path)
    seen = []
    try:
        assert s.state == "stopped" and s.url == f"http://127.0.0.1:{server.port}"
        assert s.command_line == f"{FAKE} serve fake-model --host 127.0.0.1 --port {server.port} --max-model-len 1024"
        s.start()
        assert s.state == "starting" and s in live_servers()
        s.wait_ready(timeout=60, on_phase=seen.append)
        assert s.state == "ready" and s.alive() and s.error == "" and s.returncode is None
        assert http_get(s.url + "/health")[0] == 200
        assert json.loads(http_get(s.url + "/v1/models")[1])["data"][0]["id"] == "fake-model"
        names = [p.name for p in s.phases()]
        assert names == ["process started", "loading weights", "weights loaded", "compiling", "KV cache",
                         "engine initialized", "API server", "ready"]
        ats = [p.at for p in s.phases()]
        assert ats == sorted(ats) and ats[0] >= 0
        assert s.kv_cache_tokens() == 8192 and s.max_concurrency() == 8.0
        assert next(p for p in s.phases() if p.name == "weights loaded").detail == "0.01 GiB"
        assert next(p for p in s.phases() if p.name == "API server").detail == f"http://127.0.0.1:{server.port}"
        # every phase reached the callback, in order (KV cache may come twice as its detail grows)
        assert list(dict.fromkeys(p.name for p in seen)) == names
        assert seen[-1].name == "ready"
        tail = s.log_tail(5)
        assert len(tail) == 5 and "Application startup complete." in tail[-1]
        assert s.log_path is not None and s.log_path.parent == tmp_path and s.log_path.name.startswith("vllm_")
        pgid = s.pgid
        assert pgid == s.pid
    finally:
        s.stop()
    assert s.state == "stopped" and s.returncode == 0 and not s.alive()
    assert group_gone(pgid)
    assert not port_in_use("127.0.0.1", server.port)
    assert s not in live_servers()
    text = s.log_path.read_text()
    assert s.command_line in text.splitlines()[0] and "GPU KV cache size: 8,192 tokens" in text
    s.stop()  # idempotent
    assert s.state == "stopped"


def test_executable_missing(tmp_path: Path) -> None:
    for bin_ in ("/nonexistent/dir/vllm", "no-such-vllm-binary-xyz"):
        s = LaunchedServer(cfg(vllm_bin=bin_), tmp_path)
        with pytest.raises(LaunchError) as ei:
            s.start()
        assert str(ei.value) == (f"vllm executable not found: {bin_} (install vLLM or set vllm_bin / --vllm-bin)")
        assert s.pid is None and s.state == "failed" and s.error == str(ei.value)


def test_port_in_use_is_checked_before_launch(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv_file = tmp_path / "argv.json"
        s = LaunchedServer(cfg(port=port, env=(("FAKE_VLLM_ARGV_FILE", str(argv_file)),)), tmp_path)
        with pytest.raises(LaunchError) as ei:
            s.start()
    msg = str(ei.value)
    assert f"port {port}" in msg and "already in use" in msg and "--port" in msg
    assert s.pid is None and not argv_file.exists()  # nothing was launched


def test_missing_model_surfaces_vllms_message(tmp_path: Path) -> None:
    s = LaunchedServer(cfg(model="/no/such/model", env=(("FAKE_VLLM_MODE", "missing_model"),)), tmp_path)
    s.start()
    with pytest.raises(LaunchError) as ei:
        s.wait_ready(timeout=60)
    msg = str(ei.value)
    assert msg.startswith("vLLM exited with code 1 during startup: ValueError: Invalid repository ID or local "
                          "directory specified: '/no/such/model'.")
    assert "Please verify the following requirements:" in msg  # the log tail follows
    assert s.state == "failed" and s.returncode == 1 and s.error == msg
    assert group_gone(s.pgid)


def test_exit_during_startup_has_code_and_last_40_lines(tmp_path: Path) -> None:
    env = (("FAKE_VLLM_MODE", "exit_during_startup"), ("FAKE_VLLM_NOISE", "60"))
    s = LaunchedServer(cfg(env=env), tmp_path)
    s.start()
    with pytest.raises(LaunchError) as ei:
        s.wait_ready(timeout=60)
    msg = str(ei.value)
    head, _, tail = msg.partition("\n--- last 40 log lines")
    assert head == ("vLLM exited with code 3 during startup: RuntimeError: Engine core initialization failed. "
                    "See root cause above.")
    lines = tail.split("\n")[1:]
    assert len(lines) == 40
    assert "Loading weights took" in tail and "noise line 59" in tail and "noise line 0\n" not in tail
    assert s.state == "failed" and s.returncode == 3


def test_startup_timeout_stops_the_process(tmp_path: Path) -> None:
    s = LaunchedServer(cfg(env=(("FAKE_VLLM_MODE", "hang"),), startup_timeout=1.5), tmp_path)
    s.start()
    with pytest.raises(LaunchError) as ei:
        s.wait_ready()  # default: server.startup_timeout
    msg = str(ei.value)
    assert msg.startswith("vLLM did not become ready within 1.5 s (waited ")
    assert "startup_timeout" in msg and "Maximum concurrency for 1,024 tokens" in msg
    assert s.state == "failed" and s.error == msg and not s.alive()
    assert group_gone(s.pgid)


def test_stop_escalates_to_sigterm_when_sigint_is_ignored(tmp_path: Path) -> None:
    s = LaunchedServer(cfg(env=(("FAKE_VLLM_MODE", "ignore_sigint"),)), tmp_path)
    s.start()
    try:
        s.wait_ready(timeout=60)
    finally:
        s.stop(timeout_int=0.5, timeout_term=10)
    assert group_gone(s.pgid)
    assert any("received SIGTERM" in ln for ln in s.log_tail(10))
    assert s.returncode == 0 and s.state == "stopped"


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    s = LaunchedServer(cfg(env=(("FAKE_VLLM_MODE", "ignore_sigint,ignore_sigterm"),)), tmp_path)
    s.start()
    try:
        s.wait_ready(timeout=60)
    finally:
        s.stop(timeout_int=0.3, timeout_term=0.3)
    assert s.returncode == -9 and group_gone(s.pgid)


def test_crash_after_ready_is_noticed(tmp_path: Path) -> None:
    s = LaunchedServer(cfg(env=(("FAKE_VLLM_MODE", "crash_after=0.3"),)), tmp_path)
    s.start()
    try:
        s.wait_ready(timeout=60)
        end = time.monotonic() + 30
        while s.state == "ready" and time.monotonic() < end:
            time.sleep(0.05)
        assert s.state == "failed"
        assert s.returncode == 9 and s.error == "vLLM exited with code 9 while serving"
    finally:
        s.stop()
    assert s.state == "failed" and group_gone(s.pgid)


def test_restart_with_overrides_changes_argv(tmp_path: Path) -> None:
    argv_file = tmp_path / "argv.json"
    server = cfg(flags=(("max_num_seqs", 256), ("enforce_eager", True)),
                 env=(("FAKE_VLLM_ARGV_FILE", str(argv_file)),))
    s = LaunchedServer(server, tmp_path)
    s.start()
    try:
        s.wait_ready(timeout=60)
        first_log, first_pid = s.log_path, s.pid
        assert json.loads(argv_file.read_text())[-3:] == ["--max-num-seqs", "256", "--enforce-eager"]
        assert s.config_label == "max_num_seqs=256 enforce_eager"
        s.restart({"max_num_seqs": 32, "enforce_eager": False, "max_num_batched_tokens": 512})
        s.wait_ready(timeout=60)
        assert s.state == "ready" and s.pid != first_pid and s.log_path != first_log
        expected = ["--max-num-seqs", "32", "--no-enforce-eager", "--max-num-batched-tokens", "512"]
        assert json.loads(argv_file.read_text())[-5:] == expected and s.argv[-5:] == expected
        assert s.config_label == "max_num_seqs=32 no_enforce_eager max_num_batched_tokens=512"
        assert "--max-num-seqs 32" in s.command_line
        assert group_gone(first_pid)
        assert s.kv_cache_tokens() == 8192  # phases were reset and seen again
    finally:
        s.stop()
    assert group_gone(s.pgid)


def test_context_manager_always_stops(tmp_path: Path) -> None:
    with LaunchedServer(cfg(), tmp_path) as s:
        assert s.state == "ready"
        pgid = s.pgid
    assert s.state == "stopped" and group_gone(pgid)
    s2 = LaunchedServer(cfg(env=(("FAKE_VLLM_MODE", "exit_during_startup"),)), tmp_path)
    with pytest.raises(LaunchError, match="exited with code 3"):
        with s2:
            pytest.fail("must not get here")
    assert s2.state == "failed" and group_gone(s2.pgid)


def test_env_is_passed_and_secrets_never_logged(tmp_path: Path) -> None:
    secret = "hf_SuperSecretValue42"
    env = (("HF_TOKEN", secret), ("FAKE_VLLM_ECHO_ENV", "HF_TOKEN"))
    s = LaunchedServer(cfg(env=env + (("FAKE_VLLM_MODE", ""),), flags=(("api_key", "sk-qbench-key-1"),)), tmp_path)
    s.add_secret("fake-model")  # e.g. qbench's own --api-key; here a word the fake prints
    with s:
        assert not any("fake-model" in ln for ln in s.log_tail(100))
        assert any("env HF_TOKEN=***" in ln for ln in s.log_tail(100))  # the child got it; we hid it
        assert "HF_TOKEN=***" in s.command_line and "--api-key ***" in s.command_line
        log_path = s.log_path
    text = log_path.read_text()
    assert secret not in text and "sk-qbench-key-1" not in text and "env HF_TOKEN=***" in text
    assert "--api-key ***" in text  # the command line header, redacted


def test_start_from_a_short_lived_thread_survives_the_thread(tmp_path: Path) -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* exits: the launcher must fork from a long-lived thread
    s = LaunchedServer(cfg(), tmp_path)
    t = threading.Thread(target=s.start)
    t.start()
    t.join(30)
    try:
        s.wait_ready(timeout=60)
        time.sleep(0.3)  # a PDEATHSIG would have been delivered at thread exit, well before this
        assert s.alive() and s.state == "ready"
        assert http_get(s.url + "/health")[0] == 200
    finally:
        s.stop()


def test_engine_child_is_stopped_with_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    env = (("FAKE_VLLM_MODE", "engine_child"), ("FAKE_VLLM_PIDFILE", str(pidfile)))
    with LaunchedServer(cfg(env=env), tmp_path) as s:
        pids = dict(line.split() for line in pidfile.read_text().splitlines())
        assert int(pids["api"]) == s.pid
    assert group_gone(s.pgid) and pid_gone(int(pids["engine"]))


def test_stop_reaches_children_the_api_server_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qbench_tui.server import proctree

    monkeypatch.setattr(proctree, "STRAGGLER_GRACE", 0.2)
    pidfile = tmp_path / "pids"
    env = (("FAKE_VLLM_MODE", "engine_child"), ("FAKE_VLLM_PIDFILE", str(pidfile)), ("FAKE_VLLM_ORPHAN_CHILD", "1"))
    s = LaunchedServer(cfg(env=env), tmp_path)
    s.start()
    try:
        s.wait_ready(timeout=60)
        engine_pid = int(dict(ln.split() for ln in pidfile.read_text().splitlines())["engine"])
    finally:
        # the API server exits on SIGINT; its orphaned child gets STRAGGLER_GRACE, then the group SIGTERM. Were
        # the grace ignored, this would wait an hour and the test would hit pytest's timeout.
        s.stop(timeout_int=3600, timeout_term=10)
    assert s.returncode == 0 and pid_gone(engine_pid) and group_gone(s.pgid)


def test_start_twice_and_no_model(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="no model"):
        LaunchedServer(cfg(model=""), tmp_path).start()
    with LaunchedServer(cfg(), tmp_path) as s:
        with pytest.raises(LaunchError, match="already running"):
            s.start()


@pytest.mark.skipif(importlib.util.find_spec("qbench_tui.server.sim") is None
                    or importlib.util.find_spec("qbench_tui.server.sim.__main__") is None,
                    reason="simulator not built yet")
def test_fake_serves_the_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_SERVER", "sim")
    with LaunchedServer(cfg(), tmp_path) as s:
        assert http_get(s.url + "/health")[0] == 200
        assert http_get(s.url + "/v1/models")[0] == 200


def test_stop_from_another_thread_ends_wait_ready(tmp_path: Path) -> None:
    s = LaunchedServer(cfg(env=(("FAKE_VLLM_MODE", "hang"),)), tmp_path)
    s.start()
    stopper = threading.Timer(0.5, s.stop)
    stopper.start()
    try:
        with pytest.raises(LaunchError, match="stopped before it became ready"):
            s.wait_ready(timeout=60)
    finally:
        stopper.join()
        s.stop()
    assert s.state == "stopped" and group_gone(s.pgid)


def test_unwritable_log_dir_is_a_launch_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LaunchError, match="cannot write the vLLM log"):
        LaunchedServer(cfg(), blocker / "logs").start()


def test_forked_child_never_stops_the_parents_server(tmp_path: Path) -> None:
    # a multiprocessing engine process forked after launch inherits the registry and signal handlers
    with LaunchedServer(cfg(), tmp_path) as s:
        pid = os.fork()
        if pid == 0:  # child: what atexit / a SIGTERM handler would do there
            try:
                from qbench_tui.server.proctree import stop_all

                stop_all()
                s.stop()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert s.alive() and s.state == "ready" and http_get(s.url + "/health")[0] == 200


def test_parse_flag_overrides() -> None:
    from qbench_tui.server.argv import apply_overrides, config_label, parse_flag_overrides

    got = parse_flag_overrides("max_num_seqs=128 --enforce-eager --no-enable-prefix-caching "
                               "gpu_memory_utilization=0.85 quantization= kv_cache_dtype=fp8 'served_model_name=a b'")
    assert got == {"max_num_seqs": 128, "enforce_eager": True, "enable_prefix_caching": False,
                   "gpu_memory_utilization": 0.85, "quantization": None, "kv_cache_dtype": "fp8",
                   "served_model_name": "a b"}
    server = cfg(flags=(("quantization", "awq"), ("max_num_seqs", 256)))
    new = apply_overrides(server, got)
    assert dict(new.flags)["max_num_seqs"] == 128 and "quantization" not in dict(new.flags)
    assert config_label(new).startswith("max_num_seqs=128 enforce_eager no_enable_prefix_caching")
    for bad, why in (("port=9000", "port cannot change"), ("model=x", "model cannot change"),
                     ("hello", "expected key=value"), ("x='a", "cannot split"), ("=3", "not a flag name"),
                     ("", "no flags given"), ("Bad Name=1", "expected key=value")):
        with pytest.raises(ValueError, match=why):
            parse_flag_overrides(bad)


def test_late_reap_of_a_dead_server_leaves_its_restarted_successor_alone(tmp_path: Path) -> None:
    # A server that died spawns a reaper thread; if restart() won the lock first, that reaper must not stop the
    # new process (it used to: the restarted server was SIGINTed during its startup).
    s = LaunchedServer(cfg(), tmp_path)
    s.start()
    try:
        s.wait_ready(timeout=60)
        old = s._proc
        s.restart({"max_num_seqs": 8})
        s.wait_ready(timeout=60)
        new_pid = s.pid
        s._reap(old)  # what the old process's late reaper runs
        time.sleep(0.5)
        assert s.state == "ready" and s.pid == new_pid and s._proc.poll() is None
        s._reap(s._proc)  # its own reaper does stop it
        assert s.state == "stopped"
    finally:
        s.stop()
