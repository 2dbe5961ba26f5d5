"""Settings, resolved once at start: flag, then environment, then config file, then default.

What each setting is (its flag, variable, key, default, bounds and help) is
spelled once, in ``settings.SETTINGS``; this module only resolves them, and
``Config``'s fields are made from that table, so a new setting is one line there.

Mirrors the spec's ``{hecate, [{data_dir, "~/.hecate/hecate-daemon"}]}``: the
primary's data dir is the one setting that places everything else.

What the service manager tells us through the environment (``NOTIFY_SOCKET``,
``WATCHDOG_USEC``/``WATCHDOG_PID``, ``JOURNAL_STREAM``, ``MANAGERPID``) is read here too, once,
so that no other module looks at ``os.environ`` for a setting. The one
exception is ``LISTEN_FDS``: not a setting but a hand-over of file
descriptors, which the systemd adapter takes (and clears) at start.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hecated.core.layout import Layout, default_root
from hecated.core.settings import BY_KEY, SETTINGS, ConfigError, section

__all__ = ["Config", "ConfigError", "default_config_file", "resolve", "watchdog_timeout"]

# Start-up work no first request needs waits for the first answer, but not longer
# than this: a keep-alive client may hold the first connection open for ever.
DEFER_AT_MOST = 1.0


class _Resolved:
    """What ``Config`` derives from its settings; its fields come from the table."""

    data_dir: Path
    socket_path: Path | None
    gitops_dir: Path | None
    workers: int

    @property
    def layout(self) -> Layout:
        return Layout(self.data_dir, self.socket_path, self.gitops_dir)

    @property
    def max_waiters(self) -> int:
        """Long polls may take at most half the workers: the rest keep answering."""
        return max(1, self.workers // 2)

    def section(self, name: str) -> dict[str, Any]:
        """Component ``name``'s settings by its own field names (``ForwardSettings(**...)``)."""
        return section(self, name)


# One field per row of the table, then what the service manager says (not settings:
# see the module's docstring).
Config = dataclasses.make_dataclass(
    "Config",
    [
        *((s.key, Any, dataclasses.field(default=s.default)) for s in SETTINGS),
        ("config_file", Path | None, dataclasses.field(default=None)),
        ("notify", bool, dataclasses.field(default=False)),  # NOTIFY_SOCKET is set
        ("watchdog", float | None, dataclasses.field(default=None)),  # WatchdogSec=, for us
        ("journal_stream", str, dataclasses.field(default="")),  # JOURNAL_STREAM of stderr
        ("user_manager", bool, dataclasses.field(default=False)),  # MANAGERPID: systemd --user
        ("defer_at_most", float, dataclasses.field(default=DEFER_AT_MOST)),
    ],
    bases=(_Resolved,),
    # Its docstring given here: without one, dataclasses makes one with inspect.signature.
    namespace={"__doc__": "The one configuration the daemon runs with (``resolve`` builds it)."},
    frozen=True,
)
Config.__module__ = __name__


def default_config_file(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hecate" / "hecated.toml"


def _read_file(path: Path, required: bool) -> dict[str, Any]:
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    import tomllib  # only when there is a file: most starts have none

    try:
        with fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    section = doc.get("hecated", doc)
    unknown = set(section) - set(BY_KEY)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    return section


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Any:
    """Build the one ``Config`` the daemon runs with; ``flags`` hold None where unset."""
    env = os.environ if environ is None else environ
    file_path = flags.get("config") or env.get("HECATE_CONFIG")
    path = Path(file_path) if file_path else default_config_file(env)
    from_file = _read_file(path, required=bool(file_path))
    values: dict[str, Any] = {}
    for s in SETTINGS:
        if flags.get(s.key) is not None:
            values[s.key] = s.parse(flags[s.key], s.option, s.key)
        elif s.env and env.get(s.env):
            values[s.key] = s.parse(env[s.env], s.env, s.key)
        elif s.key in from_file:
            values[s.key] = s.parse(from_file[s.key], f"{path}: {s.key}", s.key)
    if "data_dir" not in values:
        home = env.get("HECATE_HOME")
        values["data_dir"] = Layout.at(Path(home) if home else default_root()).data_dir.absolute()
    return Config(
        **values,
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
