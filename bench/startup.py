"""Startup: wall time of `qbench --help`, and of `qbench demo` until its first frame is on the terminal.

`qbench demo` runs on a pseudo-terminal (160x48, TERM=xterm-256color). Reported per run:
  - first output: the first byte the app writes (Textual switching to the alternate screen);
  - first frame:  the dashboard's title text ("SIMULATED") has been written, i.e. a screen was drawn.
Then "q" is sent and the exit is timed too. Medians over --runs runs.

    .venv/bin/python bench/startup.py [--runs 5]
"""
from __future__ import annotations

import argparse
import fcntl
import os
import select
import signal
import statistics
import struct
import subprocess
import sys
import termios
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QBENCH = os.path.join(os.path.dirname(sys.executable), "qbench")
MARKER = b"SIMULATED"


def time_help(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([QBENCH, "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t)
    return out


def time_demo(timeout: float = 60.0) -> dict:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 48, 160, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="160", LINES="48")
    env.pop("TEXTUAL", None)
    out_dir = f"/tmp/qbench-startup-{os.getpid()}"
    t0 = time.perf_counter()
    p = subprocess.Popen([QBENCH, "demo", "--out", out_dir], stdin=slave, stdout=slave, stderr=slave, env=env,
                         cwd=ROOT, start_new_session=True)
    os.close(slave)
    buf = b""
    first_out = first_frame = None
    try:
        deadline = t0 + timeout
        while time.perf_counter() < deadline and first_frame is None:
            r, _, _ = select.select([master], [], [], 0.05)
            if r:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                now = time.perf_counter()
                if first_out is None:
                    first_out = now - t0
                buf += data
                if MARKER in buf:
                    first_frame = now - t0
            elif p.poll() is not None:
                break
        tq = time.perf_counter()
        os.write(master, b"q")
        exit_s = None
        while time.perf_counter() - tq < 20:
            r, _, _ = select.select([master], [], [], 0.05)
            if r:
                try:
                    if not os.read(master, 65536):
                        pass
                except OSError:
                    pass
            if p.poll() is not None:
                exit_s = time.perf_counter() - tq
                break
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        os.close(master)
    return {"first_output_s": first_out, "first_frame_s": first_frame, "exit_s": exit_s,
            "tail": buf[-300:] if first_frame is None else b""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    print(f"# startup  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  cores={os.cpu_count()}  loadavg="
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    helps = time_help(a.runs)
    print(f"qbench --help: median {statistics.median(helps):.3f} s  (runs: {', '.join(f'{x:.3f}' for x in helps)})")
    firsts, frames, exits = [], [], []
    for i in range(a.runs):
        r = time_demo()
        print(f"qbench demo run {i}: first output {r['first_output_s']}, first frame {r['first_frame_s']}, "
              f"exit after q {r['exit_s']}", flush=True)
        if r["first_frame_s"] is None:
            print(f"   no frame seen; last output: {r['tail']!r}")
        for lst, k in ((firsts, "first_output_s"), (frames, "first_frame_s"), (exits, "exit_s")):
            if r[k] is not None:
                lst.append(r[k])
    for name, lst in (("first output", firsts), ("first frame", frames), ("exit after q", exits)):
        if lst:
            print(f"qbench demo {name}: median {statistics.median(lst):.3f} s  (n={len(lst)})")


if __name__ == "__main__":
    main()
