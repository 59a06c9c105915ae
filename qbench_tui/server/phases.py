"""vLLM startup log lines -> Phase (pure; no I/O).

vLLM's wording drifts between versions (0.6 .. 0.13 .. the CPU build's 0.32), so matching is by short, stable
substrings after the colour codes and the `(APIServer pid=N) INFO MM-DD HH:MM:SS [file.py:N]` prefix are removed.
Unknown lines are simply not phases. `PhaseTracker` adds what one line cannot know: which line came first, which
phases were already seen, and the KV cache numbers that may arrive on one line or two.
"""
from __future__ import annotations

import re
from dataclasses import replace

from qbench_tui.server.handle import Phase

# Phase names, in the order vLLM normally reaches them.
PROCESS_STARTED = "process started"
LOADING_WEIGHTS = "loading weights"
WEIGHTS_LOADED = "weights loaded"
COMPILING = "compiling"
KV_CACHE = "KV cache"
ENGINE_INITIALIZED = "engine initialized"
API_SERVER = "API server"
READY = "ready"
PHASE_ORDER = (PROCESS_STARTED, LOADING_WEIGHTS, WEIGHTS_LOADED, COMPILING, KV_CACHE, ENGINE_INITIALIZED,
               API_SERVER, READY)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# "(APIServer pid=12)", "(EngineCore_DP0 pid=13)", "(VllmWorker rank=0 pid=14)" ... then the logger's own prefix.
_PROCESS_TAG = re.compile(r"^\s*\([^()]*pid=\d+\)\s*")
_LOG_PREFIX = re.compile(
    r"^\s*(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)"
    r"(?:\s+\d\d-\d\d\s+\d\d:\d\d:\d\d(?:\.\d+)?\s*(?:\[[^\]]*\]\s*)?|:\s+)"  # vLLM's logger | uvicorn's
)
_NUM = r"(\d[\d,]*(?:\.\d+)?)"
_KV_TOKENS = re.compile(r"\b(?:GPU|CPU|XPU|TPU|NPU|HPU)?\s*KV cache size:\s*" + _NUM + r"\s*tokens", re.I)
_MAX_CONC = re.compile(r"Maximum concurrency for\s*" + _NUM + r"\s*tokens per request:\s*" + _NUM + r"\s*x", re.I)
_MODEL_GIB = re.compile(r"Model loading took\s*" + _NUM + r"\s*GiB", re.I)
_COMPILE = re.compile(r"torch\.compile\s+(?:takes|took)|start(?:ing)? (?:torch\.)?compil", re.I)
_OLD_GB = re.compile(r"took\s*" + _NUM + r"\s*GB", re.I)
_SECONDS = re.compile(r"(?:took|takes)\s*" + _NUM + r"\s*(?:s\b|sec|seconds)", re.I)
_URL = re.compile(r"on\s+(https?://\S+)")
_EXCEPTION = re.compile(r"^[\w.]*(?:Error|Exception)\b")
_ERROR_WORDS = ("does not exist", "not a valid", "invalid repository", "no such file", "out of memory",
                "cuda error", "cannot find", "not found")
_ERROR_LEVEL = re.compile(r"\b(?:ERROR|CRITICAL)\s+\d\d-\d\d\s")


def strip_ansi(line: str) -> str:
    return _ANSI.sub("", line)


def clean(line: str) -> str:
    """The message part of a log line: colours, process tag and logger prefix removed."""
    text = _ANSI.sub("", line).replace("\r", "").rstrip("\n")
    text = _PROCESS_TAG.sub("", text, count=1)
    return _LOG_PREFIX.sub("", text, count=1).strip()


def _num(s: str) -> float:
    return float(s.replace(",", ""))


def kv_cache_tokens(line: str) -> int | None:
    m = _KV_TOKENS.search(_ANSI.sub("", line))
    return int(_num(m.group(1))) if m else None


def max_concurrency(line: str) -> tuple[int, float] | None:
    """(tokens per request, concurrency) from 'Maximum concurrency for 4,096 tokens per request: 30.14x'."""
    m = _MAX_CONC.search(_ANSI.sub("", line))
    return (int(_num(m.group(1))), _num(m.group(2))) if m else None


def kv_detail(tokens: int | None, conc: tuple[int, float] | None) -> str:
    parts = []
    if tokens is not None:
        parts.append(f"{tokens:,} tokens")
    if conc is not None:
        parts.append(f"max concurrency {conc[1]:.2f}x at {conc[0]:,} tokens/request")
    return ", ".join(parts)


def parse_line(line: str, t: float) -> Phase | None:
    """The phase a single log line announces, or None. Never raises."""
    try:
        return _parse(clean(line), t)
    except Exception:  # a parser must not take the supervisor down over one odd line
        return None


def _took(msg: str) -> str:
    m = _SECONDS.search(msg)
    return f"{m.group(1)} s" if m else ""


def _parse(msg: str, t: float) -> Phase | None:
    if not msg:
        return None
    low = msg.lower()
    if "application startup complete" in low:
        return Phase(READY, t)
    if "starting vllm api server" in low or "starting vllm server" in low:
        m = _URL.search(msg)
        return Phase(API_SERVER, t, m.group(1).rstrip(".,") if m else "")
    if "init engine" in low and "took" in low:
        return Phase(ENGINE_INITIALIZED, t, _took(msg))
    tokens, conc = kv_cache_tokens(msg), max_concurrency(msg)
    if tokens is not None or conc is not None:
        return Phase(KV_CACHE, t, kv_detail(tokens, conc))
    if "model loading took" in low:
        m = _MODEL_GIB.search(msg)
        return Phase(WEIGHTS_LOADED, t, f"{m.group(1)} GiB" if m else _took(msg))
    if "loading weights took" in low:
        return Phase(WEIGHTS_LOADED, t, _took(msg))
    if "loading model weights took" in low:  # vLLM <= 0.5: "Loading model weights took 14.99 GB"
        m = _OLD_GB.search(msg)
        return Phase(WEIGHTS_LOADED, t, f"{m.group(1)} GB" if m else "")
    if ("loading weights" in low or "starting to load model" in low or "loading model weights" in low
            or "loading safetensors checkpoint shards" in low):
        return Phase(LOADING_WEIGHTS, t)
    if "disabl" in low or "will be ignored" in low:
        return None  # "Enforce eager set, disabling torch.compile, CUDAGraphs, ..." is the opposite of compiling
    if (_COMPILE.search(msg) or "compiling a graph" in low or "capturing cuda graph" in low
            or "graph capturing" in low or "dynamo bytecode transform" in low):
        return Phase(COMPILING, t, _took(msg))
    return None


def is_error_line(line: str) -> bool:
    """A line worth showing a user when startup fails (vLLM's own exception or error message)."""
    if _ERROR_LEVEL.search(_ANSI.sub("", line)):
        return True
    msg = clean(line)
    return bool(_EXCEPTION.match(msg)) or any(w in msg.lower() for w in _ERROR_WORDS)


class PhaseTracker:
    """Feeds lines in order; keeps the first sighting of each phase and the KV cache numbers.

    Not thread-safe by itself: the launcher calls it from its reader thread only.
    """

    def __init__(self, started_detail: str = "") -> None:
        self.started_detail = started_detail  # e.g. "pid 1234", for the "process started" phase
        self.phases: list[Phase] = []
        self.kv_tokens: int | None = None
        self.max_conc: tuple[int, float] | None = None
        self._seen: dict[str, int] = {}

    def _add(self, phase: Phase) -> bool:
        if phase.name in self._seen:
            return False
        self._seen[phase.name] = len(self.phases)
        self.phases.append(phase)
        return True

    def add(self, phase: Phase) -> bool:
        """Record a phase found some other way (e.g. the first /health 200). False when already seen."""
        return self._add(phase)

    def seen(self, name: str) -> bool:
        return name in self._seen

    def feed(self, line: str, t: float) -> bool:
        """True when this line added a phase or changed one (KV cache detail)."""
        changed = False
        if not self.phases:
            changed = self._add(Phase(PROCESS_STARTED, t, self.started_detail))
        phase = parse_line(line, t)
        if phase is None:
            return changed
        if phase.name == KV_CACHE:
            tokens, conc = kv_cache_tokens(line), max_concurrency(line)
            self.kv_tokens = tokens if tokens is not None else self.kv_tokens
            self.max_conc = conc if conc is not None else self.max_conc
            if phase.name in self._seen:
                # the concurrency line usually follows the size line: fold it into the one KV cache phase
                i = self._seen[phase.name]
                detail = kv_detail(self.kv_tokens, self.max_conc)
                if detail != self.phases[i].detail:
                    self.phases[i] = replace(self.phases[i], detail=detail)
                    return True
                return changed
            phase = replace(phase, detail=kv_detail(self.kv_tokens, self.max_conc))
        if phase.name == WEIGHTS_LOADED and phase.name in self._seen and phase.detail.endswith(("GiB", "GB")):
            # "Loading weights took 3.2 seconds" comes first; the memory figure on the next line says more
            i = self._seen[phase.name]
            if self.phases[i].detail != phase.detail:
                self.phases[i] = replace(self.phases[i], detail=phase.detail)
                return True
        return self._add(phase) or changed
