"""The engine never imports Textual: timing must not share a process with rendering."""
from __future__ import annotations

import subprocess
import sys

# Every module of the layers that must not share a process with rendering, found by walking the packages, so a
# new module is covered without editing this list (import-linter checks the same statically; this checks what
# actually lands in sys.modules, lazy imports included).
LAYERS = ("qbench_tui.engine", "qbench_tui.server", "qbench_tui.report")


def _modules() -> list[str]:
    import importlib
    import pkgutil

    out = ["qbench_tui.headless"]
    for name in LAYERS:
        pkg = importlib.import_module(name)
        out += [m.name for m in pkgutil.walk_packages(pkg.__path__, name + ".") if not m.name.endswith("__main__")]
    return out


ENGINE_MODULES = _modules()


def test_engine_imports_no_textual():
    assert "qbench_tui.engine.session" in ENGINE_MODULES and len(ENGINE_MODULES) > 20
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
