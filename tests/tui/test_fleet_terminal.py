"""`qbench tui` with two endpoints (one a dead port) and two client shards in a real terminal (tmux, as
tests/e2e/test_tmux_stops.py runs it): the endpoints panel on screen, `q` saves levels that carry both endpoints,
and nothing is left running: no qbench, engine, shard or simulator process, no listening port."""
from __future__ import annotations

import re
import shutil
import socket

import pytest

from qbench_tui.server.net import free_port
from tests.e2e.test_tmux_stops import done, gone, saved_run

pytestmark = pytest.mark.tmux

if shutil.which("tmux") is None:
    pytest.skip("tmux not installed (apt-get install tmux); CI installs it and runs this test",
                allow_module_level=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_tui_two_endpoints_and_shards_in_a_terminal(term, sim_proc, tmp_path):
    a = sim_proc("h200-fast", "--model", "m")
    dead, mport = f"http://127.0.0.1:{free_port()}", free_port()
    out = tmp_path / "results"
    t = term(["tui", "--url", a.url, "--url", dead, "--client-procs", "2", "--metrics-port", str(mport),
              "-c", "4", "--max-tokens", "16", "--ignore-eos", "--out", str(out)])
    # a settled level of C=4 in the segment table ("#  level  secs  req/s ..."): what `q` must save
    level = re.compile(r"│ \d+\s+4\s+\d+\s+[\d.]+\s+[\d,.]+")
    screen = t.wait_for(lambda s: "1 dead" in s and done(s) >= 60 and bool(level.search(s)), 120,
                        "the endpoints panel with a dead one, and a level")
    assert "Endpoints · 2 · 1 dead" in screen and "dead: connect error" in screen
    family = t.family()
    shards = [p for p in family if "spawn_main" in " ".join(p.cmdline())]
    assert len(shards) >= 3, family  # the engine process and its two shards
    assert _listening(mport)
    t.keys("q")
    assert t.exit_status() == 0
    assert gone(family) == [] and not _listening(mport)
    data, records, _ = saved_run(out)
    assert data["levels"]
    for lv in data["levels"]:
        eps = {e["url"]: e for e in lv["endpoints"]}
        assert list(eps) == [a.url, dead] and eps[a.url]["completed"] == lv["completed"] > 0
        assert not eps[dead]["alive"] and eps[dead]["completed"] == 0
    assert {r.get("endpoint") for r in records} == {a.url, dead}
