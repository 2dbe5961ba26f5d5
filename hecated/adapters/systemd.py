"""The systemd adapter: socket activation, sd_notify, the watchdog and the journal.

Everything systemd-specific lives here so that the daemon's composition root
only asks plain questions ("was a socket handed to us?", "tell the manager we
are ready"). Every piece is inert when systemd did not start us: no
``LISTEN_FDS`` means we bind the socket ourselves, no ``NOTIFY_SOCKET`` means
notifications go nowhere, no matching ``JOURNAL_STREAM`` means plain stderr.

The libraries (``systemd-python``, ``sdnotify``) are imported lazily, only on
the path that needs them, so a cold start through socket activation pays for
nothing it does not use before the first answer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hecated.protocol import PRIMARY_NAME

log = logging.getLogger("hecated.adapters.systemd")

LISTEN_FDS_START = 3
# The name hecate.socket gives its fd (FileDescriptorName=api); a socket unit
# without that line passes its own unit name instead.
API_FD_NAMES = ("api", "hecate.socket")

# One MESSAGE_ID per kind of registry change, so `journalctl MESSAGE_ID=...`
# finds every registration (or deregistration, or purge) whatever its wording.
# (128-bit ids as journalctl prints them; plain strings, no uuid import at start.)
MESSAGE_IDS: dict[str, str] = {
    "register": "3c1f0a4e8b6d4f2a9d5e7b1c2a4f6e80",
    "deregister": "3c1f0a4e8b6d4f2a9d5e7b1c2a4f6e81",
    "purge": "3c1f0a4e8b6d4f2a9d5e7b1c2a4f6e82",
    "rescan": "3c1f0a4e8b6d4f2a9d5e7b1c2a4f6e83",
}
# Log record extras (set by http/app.py and daemon.py) → journal field names.
RECORD_FIELDS = {
    "hecate_action": "HECATE_ACTION",
    "hecate_plugin": "PLUGIN",
    "hecate_peer_pid": "HECATE_PEER_PID",
    "hecate_peer_uid": "HECATE_PEER_UID",
}


class ActivationError(RuntimeError):
    """systemd handed us sockets, but none we may serve the API on."""


# -- socket activation ------------------------------------------------------------------


@dataclass(frozen=True)
class ListenFd:
    """A socket systemd passed us (``LISTEN_FDS``) and its ``FileDescriptorName=``."""

    fd: int
    name: str


def listen_fds() -> list[ListenFd]:
    """The sockets systemd passed us, with their names; empty when not socket-activated.

    Call it once, early: ``sd_listen_fds`` unsets ``LISTEN_*`` so a second call
    (or a child process) sees nothing.
    """
    if not os.environ.get("LISTEN_FDS"):
        return []
    try:
        from systemd.daemon import listen_fds_with_names
    except ImportError:  # systemd-python is optional; the protocol is three variables
        return _listen_fds_from_env()
    return [ListenFd(fd, name or "unknown") for fd, name in listen_fds_with_names(True).items()]


def _listen_fds_from_env() -> list[ListenFd]:
    """sd_listen_fds(3) without libsystemd, for installations without systemd-python."""
    env = os.environ
    try:
        pid, count = int(env.get("LISTEN_PID", "")), int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    names = env.get("LISTEN_FDNAMES", "").split(":")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if pid != os.getpid() or count <= 0:
        return []
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + count)
    for fd in fds:
        os.set_inheritable(fd, False)
    return [ListenFd(fd, names[i] if i < len(names) else "unknown") for i, fd in enumerate(fds)]


def _is_unix_listener(sock: socket.socket) -> bool:
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        return False
    return sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM and bool(listening)


def api_sockets(fds: list[ListenFd], expected: Path) -> list[socket.socket]:
    """The API sockets among the passed fds: every one named for the API (hecate.socket
    names both of its paths ``api``: the registry's and hecate-tui's
    ``~/.hecate/daemon.sock``), else the first Unix stream one; ``expected`` first.

    A passed socket that is not a listening AF_UNIX stream (a TCP port, say) is
    never served: hecated does not listen on TCP, whatever the unit says. What is
    not served is closed (systemd keeps its own copy).
    """
    candidates: list[tuple[ListenFd, socket.socket]] = []
    for item in fds:
        try:
            sock = socket.socket(fileno=item.fd)
        except OSError:
            log.warning("ignoring passed fd %d (%s): not a socket", item.fd, item.name)
            continue
        if _is_unix_listener(sock):
            candidates.append((item, sock))
        else:
            log.warning(
                "refusing passed fd %d (%s): not a listening Unix stream socket (never TCP)",
                item.fd,
                item.name,
            )
            sock.close()
    named = [c for c in candidates if c[0].name in API_FD_NAMES]
    chosen = named or candidates[:1]
    if not chosen:
        raise ActivationError("systemd passed no listening Unix stream socket to serve on")
    for item, other in candidates:
        if (item, other) not in chosen:
            other.close()
    chosen.sort(key=lambda c: _bound_path(c[1]) != os.fspath(expected))
    if _bound_path(chosen[0][1]) != os.fspath(expected):
        log.warning(
            "serving on the passed socket %s; clients look for %s",
            _bound_path(chosen[0][1]),
            expected,
        )
    for item, sock in chosen:
        log.info(
            "socket-activated: serving on fd %d (%s) %s", item.fd, item.name, _bound_path(sock)
        )
    return [sock for _item, sock in chosen]


def _bound_path(sock: socket.socket) -> str:
    name = sock.getsockname()
    return name.decode(errors="replace") if isinstance(name, bytes) else name


# -- sd_notify ---------------------------------------------------------------------------


class Notifier:
    """``sd_notify`` through ``sdnotify``; a no-op when the manager did not ask for it."""

    def __init__(self, enabled: bool) -> None:
        """``enabled``: the manager set ``NOTIFY_SOCKET`` (``Config.notify``)."""
        self.enabled = enabled
        self._notifier: Any = None
        self._lock = threading.Lock()
        self._status: str | None = None
        if self.enabled:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()

    def send(self, *assignments: str) -> None:
        if self._notifier is not None:
            with self._lock:
                self._notifier.notify("\n".join(assignments))

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """Send ``STATUS=`` only when the line changed."""
        if status != self._status:
            self._status = status
            self.send(f"STATUS={status}")

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=rescanning the tree")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=shutting down")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


class Supervisor(threading.Thread):
    """Pings the watchdog while the serving loop turns, and keeps ``STATUS=`` current.

    The ping is not blind: it is sent only when ``heartbeat()`` (the monotonic
    time the serving loop last turned) is recent. A stuck loop stops the pings,
    and systemd kills and restarts the service after ``WatchdogSec=``.
    """

    STATUS_PERIOD = 5.0  # plugins start and stop without telling us: look now and then

    def __init__(
        self,
        notifier: Notifier,
        heartbeat: Callable[[], float],
        status: Callable[[], str],
        timeout: float | None,
    ) -> None:
        super().__init__(name="hecated-systemd", daemon=True)
        self.notifier = notifier
        self.heartbeat = heartbeat
        self.status_line = status
        self.interval = timeout / 2 if timeout else None
        # A loop turns at least every poll interval (0.5 s); older than this is stuck.
        self.stale_after = max(self.interval or 0.0, 1.0)
        self._halt = threading.Event()
        self._dirty = threading.Event()
        self._warned = False

    def changed(self, *_args: object) -> None:
        """Registry listener: the index changed, refresh ``STATUS=`` soon.

        Set only when not set: ``Event.set`` takes a lock and notifies, and the start
        scan tells 10,000 changes in a row. A flag seen set is cleared by ``run``
        only before it reads the index, which already holds this change."""
        if not self._dirty.is_set():
            self._dirty.set()

    def stop(self) -> None:
        self._halt.set()
        self._dirty.set()

    def run(self) -> None:
        next_ping = next_status = 0.0
        while not self._halt.is_set():
            now = time.monotonic()
            if self.interval is not None and now >= next_ping:
                self._ping(now)
                next_ping = now + self.interval
            if self._dirty.is_set() or now >= next_status:
                self._dirty.clear()
                self._update_status()
                next_status = now + self.STATUS_PERIOD
            wake = min(next_status, next_ping) if self.interval is not None else next_status
            self._dirty.wait(max(0.0, wake - time.monotonic()))

    def _ping(self, now: float) -> None:
        age = now - self.heartbeat()
        if age <= self.stale_after:
            self.notifier.watchdog()
            self._warned = False
        elif not self._warned:
            self._warned = True
            log.error("serving loop has not turned for %.1f s: withholding the watchdog ping", age)

    def _update_status(self) -> None:
        try:
            self.notifier.status(self.status_line())
        except Exception:  # a status line is never worth the daemon
            log.exception("could not compute the status line")


# -- the journal -------------------------------------------------------------------------


def stderr_is_journal(journal_stream: str) -> bool:
    """True when systemd connected our stderr to the journal.

    ``journal_stream`` is ``JOURNAL_STREAM`` (``Config.journal_stream``): the
    device and inode of the stream systemd gave us, which stderr must still be.
    """
    dev, _, ino = journal_stream.partition(":")
    try:
        st = os.fstat(2)
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return False


# The shipped unit (tools/units.py); hecate-daemon.service aliases it.
SERVICE_UNIT = "hecate.service"
ALIAS = f"{PRIMARY_NAME}.service"


def own_unit(cgroup: str | None = None) -> str | None:
    """The unit this process runs in, from ``/proc/self/cgroup`` (v2, or v1's name=systemd).

    The last component of the cgroup path is the unit (``.../app.slice/hecate.service``);
    anything else (a scope, a slice, no systemd) answers None.
    """
    if cgroup is None:
        try:
            with open("/proc/self/cgroup", encoding="utf-8") as fh:
                cgroup = fh.read()
        except OSError:
            return None
    paths = {}
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:  # "ID:CONTROLLERS:PATH"; anything else is not ours to guess
            paths[parts[1]] = parts[2]
    for hierarchy in ("", "name=systemd"):  # v2 first; a hybrid host may track units in v1
        unit = paths.get(hierarchy, "").rstrip("/").rpartition("/")[2]
        if unit.endswith(".service"):
            return unit
    return None


def alias_fields(user_manager: bool, unit: str | None) -> dict[str, str]:
    """``USER_UNIT=hecate-daemon.service`` on our records, when we are the user's hecate.service.

    ``journalctl --user -u hecate-daemon`` (the hecate CLI's ``logs``) matches
    ``_SYSTEMD_USER_UNIT=`` or ``USER_UNIT=`` literally and does not resolve aliases,
    so without this it shows nothing. ``-u hecate`` keeps working through the
    trusted ``_SYSTEMD_USER_UNIT=hecate.service`` journald adds itself.
    """
    return {"USER_UNIT": ALIAS} if user_manager and unit == SERVICE_UNIT else {}


def journal_handler(extra: dict[str, str] | None = None) -> logging.Handler | None:
    """A handler that sends records to journald with structured fields, if we can;
    ``extra`` fields go on every record."""
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None

    class FieldsJournalHandler(JournalHandler):
        """Maps the API's record extras to journal fields (PLUGIN=, MESSAGE_ID=, ...)."""

        def emit(self, record: logging.LogRecord) -> None:
            fields = journal_fields(record)
            if fields:
                record = logging.makeLogRecord({**record.__dict__, **fields})
            super().emit(record)

    return FieldsJournalHandler(SYSLOG_IDENTIFIER="hecated", **(extra or {}))


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """Upper-case journal fields for the ``hecate_*`` extras a record carries."""
    fields = {
        field: str(getattr(record, attr))
        for attr, field in RECORD_FIELDS.items()
        if getattr(record, attr, None) is not None
    }
    action = getattr(record, "hecate_action", None)
    if action in MESSAGE_IDS:
        fields["MESSAGE_ID"] = MESSAGE_IDS[action]
    return fields
