"""Configuration: TOML file merged with CLI flags (CLI wins), frozen, validated, with provenance.

Each value remembers where it came from ("default", "file:<path>", "cli", "env:<NAME>") so a results file
can say why a number was used. Bad input raises ConfigError with one message naming the file, the key and
what was expected; the CLI turns that into exit status 2 before anything starts.
"""
from __future__ import annotations

import difflib
import ipaddress
import math
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class ConfigError(ValueError):
    """A config or flag value that cannot be used. str(e) is the whole user-facing message."""


# Keys of [server] with a meaning to qbench itself; every other key becomes a `vllm serve` flag.
SERVER_OWN_KEYS = ("model", "host", "port", "vllm_bin", "extra_args", "env", "startup_timeout")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    model: str = ""
    host: str = "127.0.0.1"  # launched servers stay on loopback unless the user asks
    port: int = 8001
    vllm_bin: str = "vllm"
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    startup_timeout: float = 900.0
    # Every other [server] key, in file order: ("max_model_len", 4096) -> --max-model-len 4096.
    flags: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class LoadConfig:
    url: str = ""
    model: str = ""  # empty: first id from /v1/models
    endpoint: str = "chat"
    prompt: str = "Write a short paragraph explaining why GPUs are good for AI."
    prompts_file: str = ""
    unique_prefix: bool = False
    prompt_len: int = 0  # >0: synthetic prompt of about N tokens instead of `prompt`
    max_tokens: int = 200
    ignore_eos: bool = False
    temperature: float = 0.0
    concurrency: int = 8
    timeout: float = 600.0  # read stall that fails a request
    window_s: float = 5.0  # the live rolling rates: short, so a change shows within seconds (issue #11)
    max_error_rate: float = 1.0  # exit 3 above it; the load also stops when a level is clearly above it
    max_consecutive_failures: int = 0  # the load stops after this many failures in a row; 0: automatic
    ca_cert: str = ""  # PEM file of CAs to trust for an https:// server (with the system's)
    insecure: bool = False  # https:// without checking the certificate
    # shaped datasets (engine/datasets.py): vllm bench serve's random dataset, sized by the server's /tokenize
    random_input_len: int = 0  # 0: the prompt as given
    random_output_len: int = 0  # 0: max_tokens for every request
    random_range_ratio: float = 0.0  # lengths uniform in [L(1-r), L(1+r)]
    shared_prefix_len: int = 0  # tokens shared within a prefix group, before each request's own content
    prefix_groups: int = 1
    num_prompts: int = 1000  # distinct prompts in a shaped dataset, used in turn
    seed: int = 0
    # multi-turn conversations (engine/conversations.py): turns per conversation (1: single requests) and the
    # seconds a user waits between turns
    turns: int = 1
    think_time: float = 0.0


@dataclass(frozen=True, slots=True)
class SweepConfig:
    levels: tuple[int, ...] = (40, 60, 80)
    mode: str = "wave"
    duration: float = 0.0  # steady mode: seconds per level (0 = use `requests`)
    requests: int = 0  # steady mode: requests per level
    warmup: float = 0.0
    out: str = "results"
    # --auto: the ladder (engine/ladder.py) from `start` up to `max_concurrency` within `budget` seconds
    auto: bool = False
    start: int = 1
    max_concurrency: int = 1024
    budget: float = 900.0
    slo: str = ""  # "ttft_p99=2s,itl_p99=100ms" (engine/slo.py); "" = none
    hold: float = 0.0  # seconds to stay at the found level after the ladder (a demo or soak at the knee)
    knee_share: float = 0.9  # the knee: the lowest level within this share of the peak throughput
    # open-loop sweeps (commands/sweep_rates.py): the offered rates in requests/s, or with `auto` the rate ladder
    # (engine/rate_ladder.py) from `request_rate` up to `max_request_rate`; gamma arrivals of shape `burstiness`
    request_rates: tuple[float, ...] = ()
    request_rate: float = 0.0  # 0: no rate ladder
    max_request_rate: float = 1024.0
    burstiness: float = 1.0


@dataclass(frozen=True, slots=True)
class ReportConfig:
    gpu_cost_per_hour: float = 0.0  # USD per GPU-hour: cost per million output tokens in reports; 0 = none
    gpus: int = 0  # GPUs the price covers; 0: from the server's parallel sizes, else NVML, else 1


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Past one endpoint and one client process (issue #15): several endpoints, where the server's metrics come
    from, qbench's own exporter, client shards. `[[targets]]` tables (url, optional metrics_url) fill urls."""

    urls: tuple[str, ...] = ()  # every endpoint the load goes to when more than one (the first is load.url)
    balance: str = "round-robin"
    metrics_urls: tuple[str, ...] = ()  # replicas whose /metrics are summed (behind a router)
    prometheus: str = ""  # read the server's view through PromQL here instead of scraping
    prometheus_selector: str = ""
    metrics_port: int = 0  # >0: serve qbench's client metrics for Prometheus on this port
    metrics_host: str = "127.0.0.1"
    client_procs: int = 0  # client processes doing the HTTP; 0: automatic (engine/shards.default_procs)
    ray: str = ""  # a Ray cluster's address: the shards run there as actors


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    path: str = ""  # the TOML file, "" when none
    # ("load.max_tokens", "file:x.toml"), ... for every value not left at its default: origins, never values;
    # results files carry them as "config_sources" so a number can be traced to the flag or file that set it
    sources: tuple[tuple[str, str], ...] = ()
    # what was accepted but changed on the way ("the base URL ... ends in /v1 ..."): printed once, on stderr
    notes: tuple[str, ...] = ()

    def source(self, key: str) -> str:
        return dict(self.sources).get(key, "default")


_SECTIONS = {"server": ServerConfig, "load": LoadConfig, "sweep": SweepConfig, "report": ReportConfig,
             "fleet": FleetConfig}
_ENUMS = {"load.endpoint": ("chat", "completions"), "sweep.mode": ("wave", "steady"),
          "fleet.balance": ("round-robin", "least-busy")}


def _expected(typ: Any) -> str:
    return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(
        typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ)), str(typ)
    )


def _coerce(where: str, key: str, ftype: str, value: Any) -> Any:
    """Check one value against the dataclass field's annotation (annotations are strings here)."""
    bad = ConfigError(f"{where}: '{key}' must be {_expected(ftype)}, got {value!r}")
    if ftype == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad
    if ftype == "int":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if ftype == "float":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            f = float(value)
        elif isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(f):  # TOML and float() both accept nan and inf; no setting means either
            raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
        return f
    if ftype == "str":
        if isinstance(value, str):
            return value
        raise bad
    if ftype == "tuple[int, ...]":
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{where}: '{key}' must be a non-empty list of integers, got {value!r}")
        return tuple(_coerce(where, key, "int", v) for v in value)
    if ftype == "tuple[float, ...]":
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{where}: '{key}' must be a non-empty list of numbers, got {value!r}")
        return tuple(_coerce(where, key, "float", v) for v in value)
    if ftype == "tuple[str, ...]":
        if isinstance(value, str):
            import shlex

            value = shlex.split(value)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: '{key}' must be a list of strings, got {value!r}")
        return tuple(value)
    if ftype == "tuple[tuple[str, str], ...]":  # env table
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a table of NAME = \"value\", got {value!r}")
        return tuple((str(k), str(v)) for k, v in value.items())
    raise bad  # pragma: no cover - a field type this function does not know


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_range(where: str, section: str, key: str, value: Any) -> None:
    full = f"{section}.{key}"
    if full in _ENUMS and value not in _ENUMS[full]:
        raise ConfigError(f"{where}: '{key}' must be one of {', '.join(_ENUMS[full])}, got {value!r}")
    positive = {"load.max_tokens", "sweep.levels", "server.port", "load.timeout", "load.window_s",
                "server.startup_timeout", "sweep.start", "sweep.max_concurrency", "sweep.budget",
                "load.prefix_groups", "load.num_prompts", "load.turns"}
    non_negative = {"load.concurrency", "load.prompt_len", "sweep.duration", "sweep.requests", "sweep.warmup",
                    "sweep.hold", "load.max_consecutive_failures", "load.random_input_len",
                    "load.random_output_len", "load.shared_prefix_len", "load.seed", "load.think_time",
                    "fleet.metrics_port", "fleet.client_procs"}
    vals = value if isinstance(value, tuple) and full == "sweep.levels" else (value,)
    for v in vals:
        if full in positive and v <= 0:
            raise ConfigError(f"{where}: '{key}' must be > 0, got {value!r}")
        if full in non_negative and v < 0:
            raise ConfigError(f"{where}: '{key}' must be >= 0, got {value!r}")
    if full in ("sweep.request_rates", "sweep.max_request_rate", "sweep.burstiness"):
        for v in value if isinstance(value, tuple) else (value,):
            if v <= 0:
                unit = " (1 = Poisson)" if key == "burstiness" else " (requests/s)"
                raise ConfigError(f"{where}: '{key}' must be > 0{unit}, got {v:g}")
        if isinstance(value, tuple) and len(set(value)) < len(value):
            dup = next(v for v in value if value.count(v) > 1)
            raise ConfigError(f"{where}: '{key}' names {dup:g} twice: give each rate once")
    if full == "sweep.request_rate" and value < 0:
        raise ConfigError(f"{where}: 'request_rate' must be > 0 (requests/s), got {value:g}")
    if full in ("server.port", "fleet.metrics_port") and value > 65535:
        raise ConfigError(f"{where}: 'port' must be <= 65535, got {value!r}")
    if full == "load.max_error_rate" and not 0 <= value <= 1:
        raise ConfigError(f"{where}: 'max_error_rate' must be between 0 and 1, got {value!r}")
    if full == "load.random_range_ratio" and not 0 <= value < 1:
        raise ConfigError(f"{where}: 'random_range_ratio' must be within [0, 1), got {value!r}")
    if full == "load.temperature" and value < 0:
        raise ConfigError(f"{where}: 'temperature' must be >= 0, got {value!r}")
    if full in ("report.gpu_cost_per_hour", "report.gpus") and value < 0:
        raise ConfigError(f"{where}: '{key}' must be >= 0 (0: {'no cost' if key != 'gpus' else 'automatic'}), "
                          f"got {value!r}")


def check_url(url: str, where: str = "--url") -> tuple[str, str]:
    """The one rule for the base URL of the server under test: (the URL to use, a note for stderr or "").

    Whitespace around it goes (pasted URLs carry it). A trailing /v1 is dropped, with a note, rather than
    refused: OpenAI clients take base URLs ending in /v1, so that is what people copy, and qbench adds /v1/...
    itself (and reads /metrics and /version at the root, where /v1/metrics would 404). Any other path stays: it
    is the prefix of a server behind a reverse proxy. Anything else unusable raises ConfigError, one line."""
    given = url
    url = url.strip()
    if not url:
        raise ConfigError(f"{where}: the URL is empty")
    if any(c.isspace() for c in url):
        raise ConfigError(f"{where}: {given!r} contains a space")
    if "://" not in url:
        raise ConfigError(f"{where}: {given!r} has no scheme: give http://{url} (or https://{url})")
    u = urlsplit(url)
    scheme = u.scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"{where}: {given!r}: qbench speaks http:// and https:// only, not {u.scheme}://")
    if not u.hostname:
        raise ConfigError(f"{where}: {given!r} names no host")
    hostport = u.netloc.rpartition("@")[2]
    port_text = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    port_text = port_text.partition(":")[2]
    if port_text and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ConfigError(f"{where}: {given!r}: the port must be a number from 1 to 65535, got {port_text!r}")
    if u.query or u.fragment:
        raise ConfigError(f"{where}: {given!r}: give the server's base URL, without '?' or '#' parts")
    path = u.path.rstrip("/")
    i = (path + "/").find("/v1/")
    if i >= 0 and path[i:] != "/v1":
        raise ConfigError(f"{where}: {given!r} is an endpoint, not a base URL: give {scheme}://{u.netloc}{path[:i]} "
                          "(qbench adds /v1/... itself)")
    note = ""
    if path.endswith("/v1"):
        path = path[:-3]
        note = (f"{where}: the URL ends in /v1, which qbench adds itself; using {scheme}://{u.netloc}{path}")
    return f"{scheme}://{u.netloc}{path}", note


def is_loopback_host(host: str) -> bool:
    """By name or address only (no lookup): localhost, 127.0.0.0/8, ::1."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_ca_file(path: str, where: str = "--ca-cert") -> str:
    """A CA file that TLS can load, now, rather than a handshake error on every request later."""
    import ssl

    p = os.path.expanduser(path)
    try:
        ssl.create_default_context(cafile=p)
    except FileNotFoundError:
        raise ConfigError(f"{where}: {path}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{where}: {path}: not a PEM file of CA certificates ({e.strerror or e})") from None
    return p


def check_flag(flag: str, value: float | int | None, positive: bool = False) -> None:
    """A number given on the command line that no config key holds (e.g. `qbench run --duration`)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise ConfigError(f"command line {flag}: must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"command line {flag}: must be {'> 0' if positive else '>= 0'}, got {value!r}")


def _apply(cfg_parts: dict[str, dict[str, Any]], sources: dict[str, str], section: str, key: str,
           value: Any, where: str, origin: str, notes: dict[str, str]) -> None:
    cls = _SECTIONS[section]
    types = {f.name: f.type for f in fields(cls)}
    if section == "server" and key not in SERVER_OWN_KEYS:
        if not isinstance(value, (str, int, float, bool, list)):
            raise ConfigError(f"{where}: [server] '{key}' must be a string, number, boolean or list, "
                              f"got {type(value).__name__}")
        if isinstance(value, list) and not all(isinstance(v, (str, int, float)) for v in value):
            raise ConfigError(f"{where}: [server] '{key}' must be a list of strings or numbers")
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"{where}: [server] '{key}' must be a finite number, got {value!r}")
        flags = dict(cfg_parts[section].get("flags", ()))
        flags[key] = tuple(value) if isinstance(value, list) else value
        cfg_parts[section]["flags"] = tuple(flags.items())
        sources[f"server.{key}"] = origin
        return
    if key not in types or key == "flags":
        known = [k for k in types if k != "flags"]
        raise ConfigError(f"{where}: unknown key '{key}' in [{section}]{_suggest(key, known)}")
    coerced = _coerce(where, key, types[key], value)
    if section == "server" and key in ("model", "vllm_bin") and ("~" in coerced or "$" in coerced):
        # a local model directory may be written ~/... or $HOME/...; hub ids ("org/name") never contain either
        coerced = os.path.expandvars(os.path.expanduser(coerced))
    _check_range(where, section, key, coerced)
    notes.pop(f"{section}.{key}", None)  # only the value that wins may leave a note
    if section == "load" and key == "url" and coerced:
        coerced, note = check_url(coerced, where)
        if note:
            notes[f"{section}.{key}"] = note
    if section == "fleet" and key == "urls" and coerced:
        checked = [check_url(u, where)[0] for u in coerced]
        seen: set[str] = set()
        for u in checked:
            if u in seen:
                raise ConfigError(f"{where}: {u} is given twice: each endpoint once")
            seen.add(u)
        coerced = tuple(checked)
    if section == "fleet" and key == "prometheus" and coerced:
        coerced = check_url(coerced, where)[0]
    if section == "load" and key == "ca_cert" and coerced:
        coerced = check_ca_file(coerced, where)
    cfg_parts[section][key] = coerced
    sources[f"{section}.{key}"] = origin


def _targets_table(data: dict, p: Path) -> dict:
    """`[[targets]]` (url, optional metrics_url) folded into [fleet] urls / metrics_urls and, unless [load] has
    one, load.url: the first target is the one models and the tokenizer are asked about."""
    targets = data.pop("targets")
    where = f"{p} [[targets]]"
    if not isinstance(targets, list) or not targets or not all(isinstance(t, dict) for t in targets):
        raise ConfigError(f"{where}: give one [[targets]] table per endpoint, each with url = \"http://...\"")
    urls, metrics = [], []
    for i, t in enumerate(targets):
        unknown = set(t) - {"url", "metrics_url"}
        if unknown:
            raise ConfigError(f"{where} #{i + 1}: unknown key '{sorted(unknown)[0]}' (a target has url and "
                              "metrics_url)")
        if not isinstance(t.get("url"), str) or not t["url"]:
            raise ConfigError(f"{where} #{i + 1}: url = \"http://host:port\" is missing")
        urls.append(t["url"])
        if t.get("metrics_url"):
            metrics.append(t["metrics_url"])
    data = dict(data)
    fleet = dict(data.get("fleet") or {})
    fleet.setdefault("urls", urls)
    if metrics:
        fleet.setdefault("metrics_urls", metrics)
    data["fleet"] = fleet
    load = dict(data.get("load") or {})
    load.setdefault("url", urls[0])
    data["load"] = load
    return data


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read `path` (TOML) and apply `overrides` ({"load.max_tokens": 100, ...}; None values are ignored)."""
    parts: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    sources: dict[str, str] = {}
    notes: dict[str, str] = {}
    where_file = ""
    if path:
        p = Path(path)
        where_file = str(p)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read config file: {e.strerror}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
        if "targets" in data:
            data = _targets_table(data, p)
        for section, table in data.items():
            if section not in _SECTIONS:
                raise ConfigError(f"{p}: unknown section [{section}]{_suggest(section, list(_SECTIONS))}")
            if not isinstance(table, dict):
                raise ConfigError(f"{p}: '{section}' must be a table ([{section}])")
            for key, value in table.items():
                _apply(parts, sources, section, key, value, f"{p} [{section}]", f"file:{p}", notes)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        flag = {"fleet.urls": "--url", "fleet.metrics_urls": "--metrics-url"}.get(dotted,
                                                                                 "--" + key.replace("_", "-"))
        _apply(parts, sources, section, key, value, f"command line {flag}", "cli", notes)
    cfg = Config(
        server=ServerConfig(**parts["server"]),
        load=LoadConfig(**parts["load"]),
        sweep=SweepConfig(**parts["sweep"]),
        report=ReportConfig(**parts["report"]),
        fleet=FleetConfig(**parts["fleet"]),
        path=where_file,
        sources=tuple(sorted(sources.items())),
        notes=tuple(notes.values()),
    )
    if cfg.sweep.mode == "steady" and cfg.sweep.duration <= 0 and cfg.sweep.requests <= 0:
        # steady needs a stopping rule; pick one a user would expect rather than refusing
        cfg = replace(cfg, sweep=replace(cfg.sweep, duration=30.0))
    return cfg


def resolve_api_key(cli_value: str | None) -> tuple[str | None, str]:
    """The API key and where it came from. The key itself must never be written to any output."""
    if cli_value:
        return cli_value, "cli"
    for name in ("QBENCH_API_KEY", "OPENAI_API_KEY"):
        if os.environ.get(name):
            return os.environ[name], f"env:{name}"
    return None, "none"
