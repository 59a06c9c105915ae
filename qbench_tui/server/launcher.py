"""Launch and supervise `vllm serve`: argv from ServerConfig, phases from its log, readiness, a stop that
leaves nothing behind.

Lifetime rules (why the code below looks the way it does):
- vLLM runs in its own session/process group, so the terminal's Ctrl-C reaches qbench only and qbench decides how
  to stop it (SIGINT to the API server, then SIGTERM and SIGKILL to the whole group: vLLM's EngineCore is a child
  of the API server).
- Nothing may outlive qbench. A normal exit, Ctrl-C and a Python crash go through `stop()` / atexit; SIGTERM and
  SIGHUP (a dropped SSH session) through `install_signal_handlers()`; a SIGKILLed qbench through PR_SET_PDEATHSIG
  on the API server plus a tiny watchdog process that kills the group when qbench's pid goes away (vLLM's
  EngineCore has no parent-death watch of its own, so PDEATHSIG on the API server alone can orphan it).
- PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so children are always forked from the
  main thread or from one long-lived spawner thread, never from a short-lived worker thread.
- stdout is drained continuously: a full pipe would stall vLLM.
"""
from __future__ import annotations

import atexit
import collections
import dataclasses
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qbench_tui.config import SERVER_OWN_KEYS, ServerConfig
from qbench_tui.server import phases as _ph
from qbench_tui.server.handle import Phase

LOG_RING = 2000
STRAGGLER_GRACE = 5.0  # seconds the rest of the group gets once the API server itself has exited
USE_WATCHDOG = True  # tests turn it off to check PR_SET_PDEATHSIG on its own
TAIL_ON_ERROR = 40
# A name is secret when any part is one of _SECRET_PARTS or its last part is one of _SECRET_LAST, so --api-key,
# --hf-token and HF_TOKEN are hidden but --max-num-batched-tokens and --long-prefill-token-threshold are not.
_SECRET_PARTS = ("secret", "password", "passwd", "apikey", "credential", "credentials")
_SECRET_LAST = ("key", "token", "pass", "pat", "auth")
_SECRET_FLAGS = ("--api-key", "--hf-token")


class LaunchError(Exception):
    """The server could not be started or did not become ready. str(e) is the whole user-facing message."""


# ---------------------------------------------------------------------------------------------------- argv


def _flag(key: str) -> str:
    return "--" + key.strip().lstrip("-").replace("_", "-")


def build_argv(server: ServerConfig) -> list[str]:
    """`vllm serve MODEL --host H --port P` + [server] flags (vLLM's spelling) + extra_args verbatim."""
    argv = [server.vllm_bin, "serve", server.model, "--host", server.host, "--port", str(server.port)]
    for key, value in server.flags:
        flag = _flag(key)
        if isinstance(value, bool):
            # argparse.BooleanOptionalAction: --enable-prefix-caching / --no-enable-prefix-caching
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            argv.append(flag)
            argv.extend(str(v) for v in value)
        else:
            argv.extend((flag, str(value)))
    argv.extend(server.extra_args)
    return argv


def is_secret_name(name: str) -> bool:
    parts = [p for p in re.split(r"[-_.\s]+", name.lower()) if p]
    return bool(parts) and (parts[-1] in _SECRET_LAST or any(p in _SECRET_PARTS for p in parts))


def _is_secret_flag(arg: str) -> bool:
    if not arg.startswith("--"):
        return False
    name = arg.split("=", 1)[0]
    return name in _SECRET_FLAGS or is_secret_name(name)


def secrets_in(argv: list[str] | tuple[str, ...], env: Any = ()) -> list[str]:
    """Values that must never be printed: secret flag values from argv, secret-named env values."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if _is_secret_flag(arg):
            if "=" in arg:
                out.append(arg.split("=", 1)[1])
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out.append(argv[i + 1])
                i += 1
        i += 1
    items = env.items() if isinstance(env, dict) else env
    out.extend(v for k, v in items if is_secret_name(k))
    return [s for s in out if s]


def redact_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("--"):
            out.append("***")
            hide_next = False
            continue
        hide_next = False
        if _is_secret_flag(arg):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=***")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out


def command_line(argv: list[str] | tuple[str, ...], env: Any = ()) -> str:
    """A copyable shell line for `argv` (with env assignments in front), secrets shown as ***."""
    items = env.items() if isinstance(env, dict) else env
    prefix = [f"{k}={'***' if is_secret_name(k) else shlex.quote(v)}" for k, v in items]
    return " ".join(prefix + [shlex.quote(a) if a != "***" else a for a in redact_argv(argv)])


def redact_text(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if len(s) >= 4:  # short values would blank out ordinary text
            text = text.replace(s, "***")
    return text


def config_label(server: ServerConfig) -> str:
    """A short description of the vLLM flags, to label measurements taken under this server config."""
    parts = []
    for key, value in server.flags:
        name = key.replace("-", "_")
        if isinstance(value, bool):
            parts.append(name if value else f"no_{name}")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{name}={','.join(str(v) for v in value)}")
        elif is_secret_name(name):
            parts.append(f"{name}=***")
        else:
            parts.append(f"{name}={value}")
    extra = redact_argv(list(server.extra_args))
    return " ".join(parts + extra) or "default"


def _norm(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


_FIXED_ON_RESTART = {"host": "the load is pointed at this address", "port": "the load is pointed at this port",
                     "model": "the load asks for this model by name", "vllm_bin": "restart qbench to change it"}
_FLAG_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")


def _scalar(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_flag_overrides(text: str) -> dict[str, Any]:
    """What a user types to restart a launched server with other flags, as apply_overrides() takes it:
    `max_num_seqs=128 --enforce-eager --no-enable-prefix-caching gpu_memory_utilization=0.85 quantization=`
    (key=value sets, `key=` removes, --flag is true, --no-flag false). Raises ValueError naming the bad part."""
    try:
        parts = shlex.split(text)
    except ValueError as e:
        raise ValueError(f"cannot split {text!r}: {e}") from None
    out: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if eq:
            k = _norm(key)
            v: Any = None if value == "" else _scalar(value)
        elif part.startswith("--no-"):
            k, v = _norm(part[len("--no-"):]), False
        elif part.startswith("-"):
            k, v = _norm(part), True
        else:
            raise ValueError(f"{part!r}: expected key=value, --flag or --no-flag")
        if not _FLAG_NAME.fullmatch(k):
            raise ValueError(f"{part!r}: {k!r} is not a flag name")
        if k in _FIXED_ON_RESTART:
            raise ValueError(f"{k} cannot change on a restart: {_FIXED_ON_RESTART[k]}")
        out[k] = v
    if not out:
        raise ValueError("no flags given")
    return out


def apply_overrides(server: ServerConfig, overrides: dict[str, Any]) -> ServerConfig:
    """`server` with flags changed ({"max_num_seqs": 128, "enforce-eager": True}; None removes a flag).
    Keys that are ServerConfig's own fields (port, model, ...) set the field instead."""
    flags = dict(server.flags)
    own: dict[str, Any] = {}
    for key, value in overrides.items():
        k = _norm(key)
        if k in SERVER_OWN_KEYS:
            if k in ("extra_args",) and isinstance(value, (list, tuple)):
                value = tuple(str(v) for v in value)
            elif k == "env" and isinstance(value, dict):
                value = tuple((str(a), str(b)) for a, b in value.items())
            own[k] = value
            continue
        existing = next((fk for fk in flags if _norm(fk) == k), None)
        if value is None:
            if existing is not None:
                del flags[existing]
        else:
            flags[existing if existing is not None else k] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(server, flags=tuple(flags.items()), **own)


# ---------------------------------------------------------------------------------------------------- checks


def find_executable(vllm_bin: str) -> str | None:
    if os.sep in vllm_bin or (os.altsep and os.altsep in vllm_bin):
        p = Path(vllm_bin).expanduser()
        return str(p) if p.is_file() and os.access(p, os.X_OK) else None
    return shutil.which(vllm_bin)


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port (we try to bind it, as vLLM will)."""
    bind_host = host or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # an unresolvable host is vLLM's error to report, in its own words
    family, socktype, proto, _, addr = infos[0]
    with socket.socket(family, socktype, proto) as s:
        # SO_REUSEADDR like uvicorn: a port in TIME_WAIT is free for vLLM, a listening one is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError:
            return True
    return False


def _free_port_near(host: str, port: int) -> int | None:
    for p in range(port + 1, min(port + 50, 65535)):
        if not port_in_use(host, p):
            return p
    return None


def _url_for(server: ServerConfig) -> str:
    host = server.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{server.port}"


# ---------------------------------------------------------------------------------------------------- process tree


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process is in group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # kill(0) also succeeds for zombies nobody reaped yet; they hold no memory or ports
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return True
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError, OSError):
            continue
    return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to SIGTERM the child when its parent dies. Everything is looked up before
    fork, so the child only makes two system calls (preexec_fn runs between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    getppid = os.getppid
    kill = os.kill
    getpid = os.getpid
    PR_SET_PDEATHSIG = 1

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if getppid() != parent:  # the parent died before prctl took effect
            kill(getpid(), signal.SIGTERM)

    return preexec


# Runs beside vLLM; kills vLLM's group when qbench's pid goes away (SIGKILL, OOM killer) and exits as soon as the
# group is empty. It is its own session so the terminal's SIGHUP/SIGINT do not stop it first.
_WATCHDOG = r"""
import os, signal, sys, time
pgid, parent = int(sys.argv[1]), int(sys.argv[2])
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
def alive():
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
def running():  # like alive(), but unreaped zombies (their parent died too) do not count
    try:
        names = os.listdir("/proc")
    except OSError:
        return alive()
    for name in names:
        if name.isdigit():
            try:
                with open("/proc/" + name + "/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
while alive():
    if os.getppid() != parent:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                sys.exit(0)
            end = time.monotonic() + wait
            while time.monotonic() < end and running():
                time.sleep(0.1)
        sys.exit(0)
    time.sleep(0.25)
"""


class _Spawner:
    """One long-lived thread that forks children when start() is called off the main thread (see module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._jobs: collections.deque = collections.deque()
        self._cv = threading.Condition(self._lock)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        if threading.current_thread() is threading.main_thread():
            return subprocess.Popen(*args, **kwargs)
        done = threading.Event()
        box: dict[str, Any] = {}
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="qbench-spawner", daemon=True)
                self._thread.start()
            self._jobs.append((args, kwargs, box, done))
            self._cv.notify()
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["proc"]

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    self._cv.wait()
                args, kwargs, box, done = self._jobs.popleft()
            try:
                box["proc"] = subprocess.Popen(*args, **kwargs)
            except BaseException as e:  # handed back to the caller's thread
                box["error"] = e
            done.set()


_SPAWNER = _Spawner()

# ---------------------------------------------------------------------------------------------------- registry

_LIVE: set[LaunchedServer] = set()
_LIVE_LOCK = threading.Lock()
_HANDLERS_INSTALLED: dict[int, Any] = {}


def live_servers() -> list[LaunchedServer]:
    """Servers this process launched and has not stopped. Empty in a forked child (e.g. a multiprocessing engine
    process): only the process that started vLLM may stop it."""
    with _LIVE_LOCK:
        return [s for s in _LIVE if s._owner == os.getpid()]


def stop_all(timeout_int: float = 15.0, timeout_term: float = 10.0) -> None:
    """Stop every server this process launched (atexit, signal handlers, crash paths)."""
    for s in live_servers():
        try:
            s.stop(timeout_int=timeout_int, timeout_term=timeout_term)
        except Exception:  # one failure must not keep the others alive
            pass


atexit.register(stop_all)


def install_signal_handlers() -> bool:
    """Stop launched servers on SIGTERM and SIGHUP, then behave as before (chain to the previous handler, else
    exit with 128+signal). A signal that was ignored (e.g. SIGHUP under nohup) stays ignored. Main thread only;
    returns False when it could not install."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None or sig in _HANDLERS_INSTALLED:
            continue
        prev = signal.getsignal(sig)
        if prev == signal.SIG_IGN:
            continue
        _HANDLERS_INSTALLED[sig] = prev

        def handler(signum: int, frame: Any, _prev: Any = prev) -> None:
            stop_all()  # a no-op in a forked child that inherited this handler
            if callable(_prev) and _prev not in (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler):
                _prev(signum, frame)
                return
            raise SystemExit(128 + signum)

        signal.signal(sig, handler)
    return True


def uninstall_signal_handlers() -> None:
    """Put back the handlers install_signal_handlers() replaced (tests, embedding)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, prev in list(_HANDLERS_INSTALLED.items()):
        signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        del _HANDLERS_INSTALLED[sig]


# ---------------------------------------------------------------------------------------------------- server


def _health_ok(url: str, timeout: float) -> bool:
    import urllib.error
    import urllib.request

    # no proxies: a corporate http_proxy must not see (or break) a loopback health check
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _signame(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class LaunchedServer:
    """A `vllm serve` child qbench owns. Implements ServerHandle; see the module doc for lifetime rules."""

    def __init__(self, server: ServerConfig, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._lock = threading.RLock()
        self._cv = threading.Condition()  # new log lines / phases
        self._proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_RING)
        self._tracker = _ph.PhaseTracker()
        self._state = "stopped"
        self._error = ""
        self._returncode: int | None = None
        self._t0 = 0.0
        self._stopping = False
        self._stop_depth = 0
        self._log_file: Any = None
        self.log_path: Path | None = None
        self.pid: int | None = None
        self.pgid: int | None = None
        self._owner = os.getpid()
        self._configure(server)

    # -- configuration ---------------------------------------------------------------------------------

    def _configure(self, server: ServerConfig) -> None:
        self.server = server
        self.argv = build_argv(server)
        self.url = _url_for(server)
        self.command_line = command_line(self.argv, server.env)
        self.config_label = config_label(server)
        known = secrets_in(self.argv, server.env) + getattr(self, "_secrets", [])  # keep add_secret()'s
        known += [os.environ[n] for n in ("QBENCH_API_KEY", "OPENAI_API_KEY", "VLLM_API_KEY", "HF_TOKEN")
                  if os.environ.get(n)]
        self._secrets = list(dict.fromkeys(known))

    def add_secret(self, value: str | None) -> None:
        """Hide `value` (e.g. the --api-key qbench sends) in the log file and tail from now on."""
        if value:
            self._secrets.append(value)

    # -- ServerHandle ----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        self._check_exit()
        return self._state

    @property
    def returncode(self) -> int | None:
        self._check_exit()
        return self._returncode

    @property
    def error(self) -> str:
        self._check_exit()
        return self._error

    def phases(self) -> list[Phase]:
        with self._cv:
            return list(self._tracker.phases)

    def log_tail(self, n: int = 40) -> list[str]:
        with self._cv:
            if n <= 0:
                return []
            return list(self._lines)[-n:]

    def kv_cache_tokens(self) -> int | None:
        with self._cv:
            return self._tracker.kv_tokens

    def max_concurrency(self) -> float | None:
        with self._cv:
            return self._tracker.max_conc[1] if self._tracker.max_conc else None

    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self._t0 if self._t0 else 0.0

    # -- start -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Check, then spawn. Returns at once; use wait_ready() for readiness."""
        with self._lock:
            if self.alive():
                raise LaunchError(f"vLLM is already running (pid {self.pid})")
            if self._proc is not None:
                self.stop()  # a previous run that died on its own: reap it, end its watchdog
            if not self.server.model:
                self._refuse("no model to serve: set [server] model in the config")
            exe = find_executable(self.server.vllm_bin)
            if exe is None:
                self._refuse(f"vllm executable not found: {self.server.vllm_bin} "
                             "(install vLLM or set vllm_bin / --vllm-bin)")
            if port_in_use(self.server.host, self.server.port):
                alt = _free_port_near(self.server.host, self.server.port)
                hint = f" (e.g. --port {alt})" if alt else ""
                self._refuse(f"port {self.server.port} on {self.server.host} is already in use: stop what "
                             f"is using it or choose another port{hint}")
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self.log_path = self._new_log_path()
                self._log_file = open(self.log_path, "a", encoding="utf-8", errors="replace")
            except OSError as e:
                self._refuse(f"cannot write the vLLM log in {self.log_dir}: {e.strerror or e}")
            self._log_file.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {self.command_line}\n")
            self._log_file.flush()
            with self._cv:
                self._lines.clear()
                self._tracker = _ph.PhaseTracker()
            self._state, self._error, self._returncode = "starting", "", None
            self._stopping = False
            env = dict(os.environ)
            env.update(dict(self.server.env))
            env.setdefault("PYTHONUNBUFFERED", "1")  # log lines as they happen, not in 8 KiB lumps
            argv = [exe] + self.argv[1:]
            self._t0 = time.monotonic()
            try:
                self._proc = _SPAWNER.popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True, preexec_fn=_pdeathsig_preexec(), close_fds=True,
                )
            except OSError as e:
                self._close_log()
                self._refuse(f"could not start {exe}: {e.strerror or e}")
            self.pid = self._proc.pid
            self._owner = os.getpid()
            self._tracker.started_detail = f"pid {self.pid}"
            self.pgid = self._proc.pid  # start_new_session: the child leads its own group
            with _LIVE_LOCK:
                _LIVE.add(self)
            self._start_watchdog()
            self._reader = threading.Thread(target=self._read, args=(self._proc,), name="vllm-log", daemon=True)
            self._reader.start()

    def _refuse(self, msg: str) -> None:
        self._state, self._error = "failed", msg
        err = LaunchError(msg)
        err.__suppress_context__ = True  # the message says it all; no "during handling of OSError" noise
        raise err

    def _new_log_path(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.log_dir / f"vllm_{stamp}.log"
        n = 2
        while path.exists():
            path = self.log_dir / f"vllm_{stamp}-{n}.log"
            n += 1
        return path

    def _start_watchdog(self) -> None:
        if not USE_WATCHDOG:
            return
        try:
            self._watchdog = _SPAWNER.popen(
                [sys.executable, "-S", "-c", _WATCHDOG, str(self.pgid), str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True,
            )
        except OSError:  # PDEATHSIG still covers the API server itself
            self._watchdog = None

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            # tqdm redraws with \r: keep the latest state of the bar
            shown = text.rsplit("\r", 1)[-1] if "\r" in text else text
            # colour codes would be noise in the log file, the dashboard's log panel and error messages
            shown = redact_text(_ph.strip_ansi(shown), self._secrets)
            t = time.monotonic() - self._t0
            f = self._log_file
            if f is not None:
                try:
                    f.write(shown + "\n")
                    f.flush()
                except (OSError, ValueError):
                    pass
            with self._cv:
                self._lines.append(shown)
                self._tracker.feed(shown, t)
                self._cv.notify_all()
        try:
            proc.stdout.close()
        except OSError:
            pass
        with self._cv:
            self._cv.notify_all()

    def _check_exit(self) -> None:
        """Notice a child that died on its own (crash after ready) without anyone polling."""
        proc = self._proc
        if proc is None or self._stopping or self._state not in ("starting", "ready"):
            return
        code = proc.poll()
        if code is None:
            return
        with self._lock:
            # self._proc may be a successor by now: restart() holds the lock while this thread waits for it
            if self._proc is not proc or self._stopping or self._state not in ("starting", "ready"):
                return
            self._returncode = code
            was = self._state
            how = f"was killed by {_signame(code)}" if code < 0 else f"exited with code {code}"
            when = "during startup" if was == "starting" else "while serving"
            self._error = f"vLLM {how} {when}"
            self._state = "failed"
        # reap the rest of the group (an orphaned EngineCore would hold GPU memory)
        threading.Thread(target=self._reap, args=(proc,), name="vllm-reap", daemon=True).start()

    def _reap(self, proc: subprocess.Popen) -> None:
        """stop(), but only for the process that died: a restart() may have started a new one before this thread
        got the lock, and stop() acts on whatever runs now (seen: the new server SIGINTed during its startup)."""
        with self._lock:
            if self._proc is proc:
                self.stop()

    # -- readiness -------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float | None = None,
                   on_phase: Callable[[Phase], None] | None = None) -> None:
        """Block until the first 200 from /health; on_phase gets each phase (in this thread) as it is seen.
        Raises LaunchError (and stops the process) on exit, timeout or stop()."""
        limit = self.server.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delivered: dict[str, str] = {}
        next_poll = 0.0
        poll_now = (_ph.API_SERVER, _ph.READY)
        polled_for = ""

        def deliver(final: bool = False) -> None:
            if on_phase is None:
                return
            seen = self.phases()
            now = self.elapsed()
            for i, ph in enumerate(seen):
                # The newest phase is held back briefly: its detail often grows on the very next line (KV cache
                # size, then max concurrency; load time, then GiB). Delivered again only if it grows later.
                if not final and i == len(seen) - 1 and now - ph.at < 0.3 and ph.name != _ph.READY:
                    break
                if delivered.get(ph.name) != ph.detail:
                    delivered[ph.name] = ph.detail
                    on_phase(ph)

        while True:
            deliver()
            proc = self._proc
            if proc is None:
                raise LaunchError("vLLM was not started")
            if self._state == "stopped" or (self._stopping and self._state != "failed"):
                raise LaunchError("vLLM was stopped before it became ready")
            code = proc.poll()
            if code is not None:
                msg = self._fail_exit(code)
                deliver(final=True)
                raise LaunchError(msg)
            now = time.monotonic()
            seen = self.phases()
            if seen and seen[-1].name in poll_now and polled_for != seen[-1].name:
                polled_for, next_poll = seen[-1].name, now  # it says it is up: ask now, not in 0.5 s
            if now >= next_poll:
                next_poll = now + 0.5
                if _health_ok(self.url, timeout=min(2.0, max(0.2, deadline - now))):
                    with self._cv:
                        self._tracker.add(Phase(_ph.READY, self.elapsed(), "/health 200"))
                    with self._lock:
                        if self._state == "starting":
                            self._state = "ready"
                    deliver(final=True)
                    return
            if time.monotonic() >= deadline:
                msg = self._fail_timeout(limit)
                deliver(final=True)
                raise LaunchError(msg)
            with self._cv:
                self._cv.wait(timeout=0.1)

    def _fail_exit(self, code: int) -> str:
        if self._stopping and self._state != "failed":
            return "vLLM was stopped before it became ready"  # by stop() from another thread, not a failure
        if self._reader is not None:
            self._reader.join(timeout=3.0)  # take in its last words
        how = f"was killed by {_signame(code)}" if code < 0 else f"exited with code {code}"
        lines = self.log_tail(TAIL_ON_ERROR)
        errors = [ln for ln in lines if _ph.is_error_line(ln)]
        msg = f"vLLM {how} during startup"
        if errors:
            msg += f": {_ph.clean(errors[-1])}"
        msg += f"\n--- last {len(lines)} log lines ({self.log_path}) ---\n" + "\n".join(lines)
        with self._lock:
            self._returncode = code
            self._state, self._error = "failed", msg
        self.stop()
        return msg

    def _fail_timeout(self, limit: float) -> str:
        elapsed = self.elapsed()
        last = self.phases()
        at = f"; last phase: {last[-1].name} at {last[-1].at:.1f} s" if last else "; it printed nothing"
        lines = self.log_tail(TAIL_ON_ERROR)
        msg = (f"vLLM did not become ready within {limit:g} s (waited {elapsed:.1f} s{at}); stopped it. "
               f"Raise startup_timeout / --startup-timeout if it is still loading."
               f"\n--- last {len(lines)} log lines ({self.log_path}) ---\n" + "\n".join(lines))
        self.stop()
        with self._lock:
            self._state, self._error = "failed", msg
        return msg

    # -- stop ------------------------------------------------------------------------------------------

    def stop(self, timeout_int: float = 15.0, timeout_term: float = 10.0) -> None:
        """SIGINT to the API server, wait for the whole group to end; then SIGTERM the group, wait; then SIGKILL
        the group. Idempotent; safe from any thread."""
        with self._lock:
            if self._stop_depth:
                return  # re-entered from a signal handler while this thread was already stopping
            self._stop_depth += 1
            try:
                self._stop(timeout_int, timeout_term)
            finally:
                self._stop_depth -= 1

    def _stop(self, timeout_int: float, timeout_term: float) -> None:
        proc = self._proc
        if proc is None or os.getpid() != self._owner:
            return  # a forked child (multiprocessing) must never stop its parent's vLLM
        self._stopping = True
        pgid = self.pgid or proc.pid
        for sig, wait in ((signal.SIGINT, timeout_int), (signal.SIGTERM, timeout_term), (signal.SIGKILL, 5.0)):
            if not self._group_running(proc, pgid):
                break
            if sig == signal.SIGINT and proc.poll() is None:
                # Ctrl-C for the API server alone: it then stops its EngineCore in order. SIGINT to the whole
                # group (what a terminal does) kills EngineCore first and vLLM logs an EngineDeadError traceback.
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass
            else:
                _killpg(pgid, sig)
            end = time.monotonic() + wait
            leader_gone = False
            while time.monotonic() < end and self._group_running(proc, pgid):
                if not leader_gone and proc.poll() is not None:
                    leader_gone = True
                    # the API server is done; what is left of its group gets a short grace, not the full wait
                    end = min(end, time.monotonic() + STRAGGLER_GRACE)
                time.sleep(0.1)
        code = proc.poll()
        if code is None:
            try:
                code = proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                code = None
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2.0)
        self._close_log()
        if self._watchdog is not None:
            try:
                self._watchdog.kill()
                self._watchdog.wait(timeout=2.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._watchdog = None
        if self._returncode is None:
            self._returncode = code
        if self._state != "failed":
            self._state = "stopped"
        with _LIVE_LOCK:
            _LIVE.discard(self)
        with self._cv:
            self._cv.notify_all()

    @staticmethod
    def _group_running(proc: subprocess.Popen, pgid: int) -> bool:
        if proc.poll() is None:  # also reaps the leader, so a dead one stops counting as a group member
            return True
        return _group_alive(pgid)

    def _close_log(self) -> None:
        f, self._log_file = self._log_file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    # -- restart / context manager -----------------------------------------------------------------------

    def restart(self, overrides: dict[str, Any]) -> None:
        """Stop, apply flag overrides ({"max_num_seqs": 128}; None removes a flag; model/port/... set the
        field), start again. Call wait_ready() afterwards."""
        with self._lock:  # one step for other threads: none sees the stopped gap or acts on the old process
            self.stop()
            server = apply_overrides(self.server, overrides)
            self._configure(server)
            self._state, self._error, self._returncode = "stopped", "", None
            self.start()

    def __enter__(self) -> LaunchedServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LaunchedServer {self.url} pid={self.pid} state={self._state}>"
