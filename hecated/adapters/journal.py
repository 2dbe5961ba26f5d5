"""A plugin's logs: its unit's last journal lines, and new ones as they come.

Read with systemd-python's ``systemd.journal.Reader`` (imported on first use;
without systemd-python, ``JournalUnavailable``). A unit's lines are matched
three ways, each with the user's uid (``_UID=``), so another user's unit of
the same name never shows:

- ``_SYSTEMD_USER_UNIT=unit``: what the plugin's processes write, as journald
  files them on a desktop (their cgroup is under ``user@UID.service``);
- ``USER_UNIT=unit``: what the user manager says about the unit (started,
  main process exited with status 1, start limit hit);
- ``_SYSTEMD_UNIT=unit``: the same lines where the user manager's cgroup is
  not under ``user@UID.service`` (a container, the test machine), so journald
  files its units as if the system manager ran them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hecated.adapters.units import UnitError, check_unit_name

LINES_MAX = 10_000  # the most lines one answer reads back
UNIT_FIELDS = ("_SYSTEMD_USER_UNIT", "USER_UNIT", "_SYSTEMD_UNIT")


class JournalUnavailable(UnitError):
    """systemd-python is not installed, or no journal can be opened."""


@dataclass(frozen=True)
class LogLine:
    """One journal entry of a unit: when (seconds since the epoch), who, what."""

    time: float | None
    message: str
    pid: int | None = None
    identifier: str | None = None
    priority: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "message": self.message,
            "pid": self.pid,
            "identifier": self.identifier,
            "priority": self.priority,
        }


def _line(entry: dict[str, Any]) -> LogLine:
    message = entry.get("MESSAGE", "")
    if isinstance(message, bytes):  # not UTF-8: systemd-python hands the bytes over
        message = message.decode(errors="replace")
    stamp = entry.get("__REALTIME_TIMESTAMP")
    return LogLine(
        time=stamp.timestamp() if isinstance(stamp, datetime) else None,
        message=str(message),
        pid=entry.get("_PID"),
        identifier=entry.get("SYSLOG_IDENTIFIER"),
        priority=entry.get("PRIORITY"),
    )


def open_reader(unit: str, uid: int | None = None) -> Any:
    """A Reader over the local journal matching ``unit``'s lines and ``uid`` (default: ours)."""
    check_unit_name(unit)
    try:
        from systemd import journal
    except ImportError as exc:
        raise JournalUnavailable("systemd-python is not installed") from exc
    owner = str(os.getuid() if uid is None else uid)
    try:
        reader = journal.Reader()
    except OSError as exc:
        raise JournalUnavailable(f"cannot open the journal: {exc}") from exc
    for field in UNIT_FIELDS:
        reader.add_match(**{field: unit, "_UID": owner})
        reader.add_disjunction()
    return reader


def _backlog(reader: Any, count: int) -> list[dict[str, Any]]:
    """The last ``count`` entries, oldest first; the reader is left on the newest."""
    reader.seek_tail()
    entries: list[dict[str, Any]] = []
    while len(entries) < count and (entry := reader.get_previous()):
        entries.append(entry)
    entries.reverse()
    if entries:
        reader.seek_cursor(entries[-1]["__CURSOR"])
        reader.get_next()  # onto the newest, so the next get_next is news
    return entries


def backlog_of(reader: Any, count: int) -> list[LogLine]:
    """The last ``count`` lines (at most ``LINES_MAX``), the reader left so that its
    next ``get_next`` is the first line written after them: where a follow starts."""
    entries = _backlog(reader, max(0, min(count, LINES_MAX)))
    if not entries:
        reader.seek_tail()
        reader.get_previous()  # onto the newest entry, as _backlog leaves it
    return [_line(e) for e in entries]


def line_of(entry: dict[str, Any]) -> LogLine:
    """A journal entry as a ``LogLine``."""
    return _line(entry)


def last_lines(unit: str, count: int = 100, uid: int | None = None) -> list[LogLine]:
    """The unit's last ``count`` lines (at most ``LINES_MAX``), oldest first."""
    reader = open_reader(unit, uid)
    try:
        return [_line(e) for e in _backlog(reader, max(0, min(count, LINES_MAX)))]
    finally:
        reader.close()


def follow(
    unit: str,
    stop: threading.Event,
    backlog: int = 0,
    uid: int | None = None,
    wait: float = 0.5,
) -> Iterator[LogLine]:
    """The last ``backlog`` lines, then each new line as journald writes it, until ``stop``.

    Between lines the reader sleeps in ``sd_journal_wait`` (inotify on the journal
    files), woken when journald announces new entries (it coalesces those
    announcements: ~0.46 s after the line on the test machine, docs/units.md) and
    every ``wait`` seconds to see whether ``stop`` is set, which it notices within
    ``wait``. Closing the generator stops it too."""
    reader = open_reader(unit, uid)
    try:
        yield from backlog_of(reader, backlog)
        while not stop.is_set():
            entry = reader.get_next()
            if entry:
                yield _line(entry)
            else:
                reader.wait(wait)
    finally:
        reader.close()
