"""Settings, resolved once at start: flag, then environment, then config file, then default.

Mirrors the spec's ``{hecate, [{data_dir, "~/.hecate/hecate-daemon"}]}``: the
primary's data dir is the one setting that places everything else.

What the service manager tells us through the environment (``NOTIFY_SOCKET``,
``WATCHDOG_USEC``/``WATCHDOG_PID``, ``JOURNAL_STREAM``, ``MANAGERPID``) is read here too, once,
so that no other module looks at ``os.environ`` for a setting. The one
exception is ``LISTEN_FDS``: not a setting but a hand-over of file
descriptors, which the systemd adapter takes (and clears) at start.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hecated.core.layout import Layout, default_root

LOG_LEVELS = ("debug", "info", "warning", "error")
FILE_KEYS = {
    "data_dir",
    "socket_path",
    "log_level",
    "idle_timeout",
    "workers",
    "probe_interval",
    "forward_body_limit",
    "forward_streams",
    "forward_idle_timeout",
    "forward_timeout",
}
PROBE_INTERVAL = 10.0  # seconds between two looks at each plugin's socket
# Forwarding /plugin/{name}/... to plugin sockets (hecated.http.forward).
FORWARD_BODY_LIMIT = 16 * 1024 * 1024  # bytes of a forwarded request body
FORWARD_STREAMS = 256  # forwarded requests served at once; beyond, 503 busy
FORWARD_IDLE_TIMEOUT = 300.0  # seconds a forwarded stream may carry nothing
FORWARD_TIMEOUT = 30.0  # seconds to a plugin's first byte (hecate-web's read timeout)
# Start-up work no first request needs waits for the first answer, but not longer
# than this: a keep-alive client may hold the first connection open for ever.
DEFER_AT_MOST = 1.0


class ConfigError(ValueError):
    """A setting is wrong; the message says which and where it came from."""


@dataclass(frozen=True)
class Config:
    data_dir: Path
    socket_path: Path | None = None
    log_level: str = "info"
    idle_timeout: float | None = None
    workers: int = 16
    config_file: Path | None = None
    # From the service manager, not from the user: see the module's docstring.
    notify: bool = False  # NOTIFY_SOCKET is set: sd_notify has somewhere to go
    watchdog: float | None = None  # WatchdogSec= in seconds, when it is meant for us
    journal_stream: str = ""  # JOURNAL_STREAM, "DEV:INODE" of stderr when it is the journal
    user_manager: bool = False  # MANAGERPID is set: a systemd --user instance started us
    defer_at_most: float = DEFER_AT_MOST
    probe_interval: float = PROBE_INTERVAL  # 0: probe on events only (socket, pidfd, edits)
    forward_body_limit: int = FORWARD_BODY_LIMIT
    forward_streams: int = FORWARD_STREAMS
    forward_idle_timeout: float = FORWARD_IDLE_TIMEOUT
    forward_timeout: float = FORWARD_TIMEOUT

    @property
    def layout(self) -> Layout:
        return Layout(self.data_dir, self.socket_path)

    @property
    def max_waiters(self) -> int:
        """Long polls may take at most half the workers: the rest keep answering."""
        return max(1, self.workers // 2)


def default_config_file(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hecate" / "hecated.toml"


def _read_file(path: Path, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    section = doc.get("hecated", doc)
    unknown = set(section) - FILE_KEYS
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    return section


def _path(value: Any, source: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: expected a path")
    return Path(os.path.expanduser(value)).absolute()


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Build the one ``Config`` the daemon runs with; ``flags`` hold None where unset."""
    env = os.environ if environ is None else environ
    file_path = flags.get("config") or env.get("HECATE_CONFIG")
    path = Path(file_path) if file_path else default_config_file(env)
    from_file = _read_file(path, required=bool(file_path))

    def pick(key: str, env_key: str | None = None) -> tuple[Any, str]:
        if flags.get(key) is not None:
            return flags[key], f"--{key.replace('_', '-')}"
        if env_key and env.get(env_key):
            return env[env_key], env_key
        if key in from_file:
            return from_file[key], f"{path}: {key}"
        return None, ""

    value, src = pick("data_dir", "HECATE_DATA_DIR")
    if value is not None:
        data_dir = _path(value, src)
    else:
        home = env.get("HECATE_HOME")
        data_dir = Layout.at(Path(home) if home else default_root()).data_dir.absolute()

    value, src = pick("socket_path", "HECATE_SOCKET_PATH")
    socket_path = _path(value, src) if value is not None else None

    value, src = pick("log_level", "HECATE_LOG_LEVEL")
    log_level = str(value or "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"{src}: log level must be one of {', '.join(LOG_LEVELS)}")

    value, src = pick("idle_timeout", "HECATE_IDLE_TIMEOUT")
    idle = _number(value, src) if value is not None else None

    value, src = pick("workers")
    workers = int(_number(value, src)) if value is not None else 16
    if workers < 1:
        raise ConfigError(f"{src}: workers must be at least 1")

    def number(key: str, default: float, low: float) -> float:
        value, src = pick(key, f"HECATE_{key.upper()}")
        if value is None:
            return default
        number = _number(value, src)
        if number < low:
            raise ConfigError(f"{src}: {key} must be at least {low:g}")
        return number

    return Config(
        probe_interval=number("probe_interval", PROBE_INTERVAL, 0),
        forward_body_limit=int(number("forward_body_limit", FORWARD_BODY_LIMIT, 0)),
        forward_streams=int(number("forward_streams", FORWARD_STREAMS, 1)),
        forward_idle_timeout=number("forward_idle_timeout", FORWARD_IDLE_TIMEOUT, 0),
        forward_timeout=number("forward_timeout", FORWARD_TIMEOUT, 0.001),
        data_dir=data_dir,
        socket_path=socket_path,
        log_level=log_level,
        idle_timeout=idle if idle else None,
        workers=workers,
        config_file=path if from_file or file_path else None,
        notify=bool(env.get("NOTIFY_SOCKET")),
        watchdog=watchdog_timeout(env),
        journal_stream=env.get("JOURNAL_STREAM", ""),
        user_manager=bool(env.get("MANAGERPID")),
    )


def watchdog_timeout(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """The manager's watchdog timeout in seconds, if it set one for this process.

    ``WATCHDOG_PID`` names the process the timeout is for; a child that inherited
    the variables (or a process started by one) must not think it is watched.
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    watched = environ.get("WATCHDOG_PID")
    if usec <= 0 or (watched and watched != str(os.getpid() if pid is None else pid)):
        return None
    return usec / 1_000_000


def _number(value: Any, source: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: expected a number, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{source}: must not be negative")
    return number
