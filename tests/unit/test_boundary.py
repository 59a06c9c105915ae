"""The engine never imports Textual: timing must not share a process with rendering."""
from __future__ import annotations

import subprocess
import sys

ENGINE_MODULES = ["qbench_tui.engine.load", "qbench_tui.engine.request", "qbench_tui.engine.stats",
                  "qbench_tui.engine.metrics_parse", "qbench_tui.engine.server_series",
                  "qbench_tui.engine.server_poll", "qbench_tui.engine.session", "qbench_tui.engine.process",
                  "qbench_tui.headless", "qbench_tui.sweep", "qbench_tui.report.files"]


def test_engine_imports_no_textual():
    code = ("import sys, importlib\n"
            f"for m in {ENGINE_MODULES!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m == 'textual' or m.startswith('textual.')]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_help_does_not_import_the_ui():
    code = ("import sys\nfrom qbench_tui.cli import build_parser\nbuild_parser()\n"
            "assert 'textual' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
