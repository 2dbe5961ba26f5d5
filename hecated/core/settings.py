"""Every setting of hecated, spelled once: one table, one line a setting.

Modelled on systemd's ``load-fragment-gperf.gperf.in`` (one line per unit
setting: its name, its parser, where it lands) and git's ``parse-options``
arrays (flag, help and target in one entry). From ``SETTINGS`` come the
command line (``cli.py`` builds argparse from it), the config file's keys, the
environment variables, ``Config``'s fields (``config.py``), each component's
defaults (``default``) and its settings (``section``), and the README's table
(``markdown``; a test holds the README to it). uvicorn resolves its ``Config``
once but spells every default again in its click options: the half not copied.

Adding a setting is one line here; the component that uses it reads
``config.KEY`` or takes its section.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_LEVELS = ("debug", "info", "warning", "error")
MiB = 1024 * 1024


class ConfigError(ValueError):
    """A setting is wrong; the message says which and where it came from."""


# A parser turns what a flag, variable or file gave (a string, or a TOML value) into
# the setting's value, or raises ConfigError naming ``source`` and the setting's ``key``.
Parser = Callable[[Any, str, str], Any]


def path(value: Any, source: str, key: str) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise ConfigError(f"{source}: expected a path")
    return Path(os.path.expanduser(value)).absolute()


def level(value: Any, source: str, key: str) -> str:
    text = str(value).lower()
    if text not in LOG_LEVELS:
        raise ConfigError(f"{source}: log level must be one of {', '.join(LOG_LEVELS)}")
    return text


def number(low: float = 0.0, whole: bool = False) -> Parser:
    """A number no smaller than ``low``; ``whole``: an int (a TOML or flag "1.5" is refused)."""

    def parse(value: Any, source: str, key: str) -> float | int:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: expected a number, got {value!r}")
        try:
            got = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: expected a number, got {value!r}") from None
        if got != got or got in (float("inf"), float("-inf")):
            raise ConfigError(f"{source}: expected a finite number, got {value!r}")
        if got < 0:
            raise ConfigError(f"{source}: {key} must not be negative")
        if got < low:
            raise ConfigError(f"{source}: {key} must be at least {low:g}")
        if whole and got != int(got):
            raise ConfigError(f"{source}: expected a whole number, got {value!r}")
        return int(got) if whole else got

    return parse


def off_if_zero(parse: Parser) -> Parser:
    """0 means "off": the value is None (the idle exit)."""

    def off(value: Any, source: str, key: str) -> Any:
        got = parse(value, source, key)
        return got or None

    return off


@dataclass(frozen=True)
class Setting:
    """One setting: its config-file key (also ``Config``'s field), parser, default and help.

    ``env`` is its environment variable (None: none); ``flag`` its option when not
    ``--key-with-dashes``; ``section``/``field``: the component that takes it
    (``section``) and the name it has there (default: the key less ``section_``).
    ``shown`` is the default as people read it, when ``default`` does not say it well;
    ``choices``, the values it takes when they are few.
    """

    key: str
    parse: Parser
    default: Any
    help: str
    env: str | None = None
    flag: str | None = None
    section: str = ""
    field: str = ""
    shown: str = ""
    choices: tuple[str, ...] = ()

    @property
    def option(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")

    @property
    def field_name(self) -> str:
        if self.field:
            return self.field
        prefix = f"{self.section}_"
        return self.key[len(prefix) :] if self.key.startswith(prefix) else self.key

    @property
    def default_text(self) -> str:
        if self.shown:
            return self.shown
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)


# fmt: off
SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", path, None, "the primary's data dir", env="HECATE_DATA_DIR",
            shown="~/.hecate/hecate-daemon"),
    Setting("socket_path", path, None, "the API socket", env="HECATE_SOCKET_PATH",
            flag="--socket", shown="DATA_DIR/sockets/api.sock"),
    Setting("gitops_dir", path, None, "the desired-state tree (system/, apps/) hecated links "
            "into the user manager", env="HECATE_GITOPS_DIR", shown="DATA_DIR/../gitops"),
    Setting("gitops_settle", number(0.001), 0.1, "seconds the gitops tree must be quiet before "
            "it is reconciled (a burst of changes: one reload)", env="HECATE_GITOPS_SETTLE",
            section="gitops", field="quiet"),
    Setting("log_level", level, "info", "log level", env="HECATE_LOG_LEVEL",
            choices=LOG_LEVELS),
    Setting("idle_timeout", off_if_zero(number()), None, "exit after this many idle seconds",
            env="HECATE_IDLE_TIMEOUT", shown="0: never"),
    Setting("workers", number(1, whole=True), 16, "threads that answer API requests"),
    Setting("probe_interval", number(), 10.0, "seconds between probes of each plugin's socket "
            "(0: on events only)", env="HECATE_PROBE_INTERVAL", section="probe", field="interval"),
    Setting("forward_body_limit", number(whole=True), 16 * MiB, "largest request body forwarded "
            "to a plugin, in bytes", env="HECATE_FORWARD_BODY_LIMIT", section="forward",
            shown="16 MiB"),
    Setting("forward_streams", number(1, whole=True), 256, "forwarded requests served at once; "
            "beyond, 503 busy", env="HECATE_FORWARD_STREAMS", section="forward",
            field="max_streams"),
    Setting("forward_idle_timeout", number(), 300.0, "end a forwarded stream that carries "
            "nothing this many seconds (0: never)", env="HECATE_FORWARD_IDLE_TIMEOUT",
            section="forward"),
    Setting("forward_timeout", number(0.001), 30.0, "seconds to wait for a plugin's first byte "
            "before a 504", env="HECATE_FORWARD_TIMEOUT", section="forward",
            field="first_byte_timeout"),
    Setting("unit_job_timeout", number(0.001), 30.0, "seconds a plugin's start, stop or restart "
            "waits for its systemd job", env="HECATE_UNIT_JOB_TIMEOUT", section="units",
            field="job_timeout"),
    Setting("events_heartbeat", number(0.01), 15.0, "seconds of silence before an event stream "
            "gets a comment line", env="HECATE_EVENTS_HEARTBEAT", section="events"),
    Setting("events_clients", number(1, whole=True), 16, "event streams served at once; beyond, "
            "503 busy", env="HECATE_EVENTS_CLIENTS", section="events", field="clients"),
    Setting("events_backlog", number(1, whole=True), 4096, "recent events kept to resume a "
            "stream; a client further behind gets a resync", env="HECATE_EVENTS_BACKLOG",
            section="events", field="backlog"),
)
# fmt: on

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


def default(key: str) -> Any:
    """The table's default for ``key``: what a component uses when built without a config."""
    return BY_KEY[key].default


def in_section(name: str) -> Iterator[Setting]:
    return (s for s in SETTINGS if s.section == name)


def section(values: Any, name: str) -> dict[str, Any]:
    """The settings of component ``name`` from ``values`` (a ``Config``), by their field names."""
    return {s.field_name: getattr(values, s.key) for s in in_section(name)}


def section_defaults(name: str) -> dict[str, Any]:
    """The settings of component ``name`` as the table's defaults, by their field names."""
    return {s.field_name: s.default for s in in_section(name)}


def markdown() -> str:
    """The README's configuration table, made from ``SETTINGS`` (a test compares them)."""
    rows = ["| setting | default | flag | environment | config file key |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        env = f"`{s.env}`" if s.env else ""
        rows.append(f"| {s.help} | {s.default_text} | `{s.option}` | {env} | `{s.key}` |")
    return "\n".join(rows) + "\n"
