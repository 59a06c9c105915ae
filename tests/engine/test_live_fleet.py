"""The live session (the dashboard's engine process) past one endpoint and one client process, against real
simulators over HTTP: a row per endpoint with a dead one shown dead and only probed, the saved levels' endpoints,
client shards following a live concurrency change, the client exporter scraped while the load runs, a start-up
failure as one line and an exit status, and nothing left running after the session stops."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qbench_tui.config import FleetConfig
from qbench_tui.engine.process import EngineProcess
from qbench_tui.engine.records import RequestSpec
from qbench_tui.engine.session import SessionConfig
from qbench_tui.engine.snapshot import Save, SetConcurrency
from qbench_tui.engine.targets import DEAD_AFTER, PROBE_S
from qbench_tui.server.net import free_port
from qbench_tui.tui.outcome import Outcome

MIN_SEGMENT_S = 0.3  # as tests/engine/test_session.py: a level once it has lasted this long


def _session(url: str, out: Path, fleet: FleetConfig, **kw) -> EngineProcess:
    spec = RequestSpec(url=url, model="m", max_tokens=16, ignore_eos=True)
    return EngineProcess(SessionConfig(spec=spec, prompt="hi", out_dir=str(out), window_s=5,
                                       min_segment_s=MIN_SEGMENT_S, fleet=fleet, **kw))


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(procs: list[psutil.Process]) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=10)
    return not alive


def _records(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_two_endpoints_one_dead_rows_probes_and_saved_levels(sim_proc, tmp_path):
    a = sim_proc("h200-fast", "--model", "m")
    dead = f"http://127.0.0.1:{free_port()}"
    eng = _session(a.url, tmp_path, FleetConfig(urls=(a.url, dead)))
    try:
        first = eng.wait_for(lambda s: s.status == "running", 30)
        assert first is not None and first.exit_code == 0
        assert "2 endpoints, round-robin" in first.message
        assert [r.url for r in first.endpoints] == [a.url, dead]
        eng.send(SetConcurrency(4))
        s = eng.wait_for(lambda s: s.completed_total >= 150 and any(r.completed for r in s.endpoints)
                         and any(not r.alive for r in s.endpoints) and bool(s.segments), 60)
        assert s is not None, eng.last
        live, gone = s.endpoints
        assert live.alive and live.completed > 0 and live.share == 1.0 and live.ttft_p50 is not None
        assert live.out_tok_s == pytest.approx(s.out_tok_s)
        assert not gone.alive and "refused" in gone.why.lower() and gone.in_flight == 0 and gone.share == 0.0
        # skipped, not hammered: the failures that killed it (one per worker at most in flight then) and a
        # probe every PROBE_S since, against the hundreds the live one took
        assert gone.sent <= DEAD_AFTER + 4 + int(s.t / PROBE_S) + 1 < live.sent
        assert 0 < s.failed_total <= gone.sent
        # the server's view: every endpoint's /metrics summed, the one that does not answer named
        assert s.server.reachable and s.server.schema == "v1" and s.server.gen_tok_s
        assert s.server.error.startswith(f"{dead}: unreachable")
        eng.send(Save(str(tmp_path)))
        saved = eng.wait_for(lambda s: bool(s.saved), 30)
        assert saved is not None, eng.last
    finally:
        eng.close()
    doc = json.load(open(saved.saved[1]))
    assert doc["levels"], "a settled segment is a saved level"
    for lv in doc["levels"]:
        eps = {e["url"]: e for e in lv["endpoints"]}
        assert list(eps) == [a.url, dead]
        assert eps[a.url]["alive"] and eps[a.url]["completed"] == lv["completed"] > 0
        assert not eps[dead]["alive"] and eps[dead]["down"].startswith("dead: ") and eps[dead]["completed"] == 0
    recs = _records(saved.saved[2])
    assert {r["endpoint"] for r in recs} == {a.url, dead}
    assert sum(r["endpoint"] == dead for r in recs) <= gone.sent


def test_client_shards_follow_a_live_concurrency_change_and_end_with_the_session(sim_proc, tmp_path):
    a = sim_proc("h200-fast", "--model", "m")
    eng = _session(a.url, tmp_path, FleetConfig(client_procs=2))
    try:
        first = eng.wait_for(lambda s: s.status == "running", 30)
        assert first is not None and "2 client processes" in first.message
        shards = [p for p in _tree(eng.pid) if "spawn_main" in " ".join(p.cmdline())]
        assert len(shards) == 2
        for c in (4, 12, 2):
            eng.send(SetConcurrency(c))
            s = eng.wait_for(lambda s, c=c: s.target_concurrency == c and s.in_flight == c, 60)
            assert s is not None, (c, eng.last)
        s = eng.wait_for(lambda s: s.completed_total >= 100, 60)
        assert s is not None and s.failed_total == 0
    finally:
        eng.close()
    assert _gone(shards) and not _tree(eng.pid)
    last = eng.last
    assert last is not None and last.status == "stopped" and last.in_flight == 0
    recs = _records(last.saved[2])
    # every finished request once, whole (the shards ship records, not summaries)
    assert sum(not r.get("warmup") for r in recs) == last.completed_total + last.failed_total
    assert all(r["ok"] and r["out_tokens"] == 16 for r in recs)


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            key = smp.name + "".join(f"{{{k}={v}}}" for k, v in sorted(smp.labels.items()))
            out[key] = smp.value
    return out


def test_the_client_exporter_grows_while_the_load_runs_and_closes_with_it(sim_proc, tmp_path):
    a = sim_proc("h200-fast", "--model", "m")
    port = free_port()
    eng = _session(a.url, tmp_path, FleetConfig(metrics_port=port))
    try:
        first = eng.wait_for(lambda s: s.status == "running", 30)
        assert first is not None and f"client metrics on http://127.0.0.1:{port}/metrics" in first.message
        eng.send(SetConcurrency(3))
        assert eng.wait_for(lambda s: s.completed_total >= 20 and s.in_flight == 3, 60) is not None
        one = _scrape(port)
        assert eng.wait_for(lambda s: s.completed_total >= 60, 60) is not None
        two = _scrape(port)
    finally:
        eng.close()
    ok = "qbench_requests_total{outcome=ok}"
    assert 20 <= one[ok] < two[ok]
    assert two["qbench_output_tokens_total"] >= 16 * two[ok]
    assert two["qbench_time_to_first_token_seconds_count"] == two[ok]
    assert one["qbench_target_concurrency"] == 3
    assert "qbench_event_loop_lag_seconds" in two
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the exporter's port is closed with the session


def test_a_fleet_that_cannot_be_is_one_line_and_exit_2(sim_proc, tmp_path):
    a = sim_proc("h200-fast", "--model", "m")
    eng = _session(a.url, tmp_path, FleetConfig(urls=(a.url, a.url)))
    try:
        last = eng.wait_for(lambda s: s.status == "error", 30)
    finally:
        eng.close()
    assert last is not None and last.exit_code == 2 and "given twice" in last.message
    code, line = Outcome().result(eng.last)
    assert code == 2 and "given twice" in line and "\n" not in line
    assert not list(tmp_path.glob("*.requests.jsonl")) and not list(tmp_path.glob("*.json"))
    assert not _tree(eng.pid)


def test_the_rolling_window_splits_its_own_records_per_endpoint():
    """The per-endpoint counters are the window's records split: they enter and leave with the window's own."""
    from qbench_tui.engine.live_fleet import endpoint_rows
    from qbench_tui.engine.records import RequestRecord
    from qbench_tui.engine.rolling import RollingWindow
    from qbench_tui.engine.targets import Targets

    a, b = "http://a:1", "http://b:1"
    w = RollingWindow(10.0, now=0.0)

    def rec(t: float, url: str, ok: bool = True, ttft: float = 0.1) -> RequestRecord:
        return RequestRecord(ok=ok, segment=1, concurrency=2, worker=0, start=t, end=t + 0.5,
                             ttft=ttft if ok else None, out_tokens=10 if ok else 0, endpoint=url)

    for k in range(6):  # a: t = 0, 2, 4; b: t = 1, 3 and a failure at 5
        w.add(rec(float(k), a if k % 2 == 0 else b, ok=k != 5, ttft=0.1 * (k + 1)))
    w.add(rec(0.5, a, ttft=0.3))
    w.evict(6.0)
    assert w.out_tokens == 60 and w.endpoint_counts(a).out_tokens == 40 and w.endpoint_counts(b).out_tokens == 20
    assert (w.endpoint_counts(b).completed, w.endpoint_counts(b).failed) == (2, 1)
    t = Targets([a, b, "http://c:1"])
    rows = endpoint_rows(t, w, out_tok_s=120.0)
    assert [r.share for r in rows] == [pytest.approx(40 / 60), pytest.approx(20 / 60), 0.0]
    assert rows[0].out_tok_s == pytest.approx(80.0) and rows[2].completed == 0 and rows[2].ttft_p50 is None
    assert rows[1].ttft_p50 == pytest.approx(0.3)  # b's ok records: 0.2 and 0.4
    w.evict(12.6)  # the window is [2.6, 12.6) by first token: those sent at 0, 0.5, 1 and 2 have left
    assert w.endpoint_counts(a).completed == 1 and w.endpoint_counts(a).out_tokens == 10
    assert list(w.endpoint_counts(a).ttft) == [pytest.approx(0.5)]
    assert (w.endpoint_counts(b).completed, w.endpoint_counts(b).failed) == (1, 1)
    assert w.out_tokens == sum(w.endpoint_counts(u).out_tokens for u in (a, b))
