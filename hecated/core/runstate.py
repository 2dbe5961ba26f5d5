"""A plugin's run state, read in one room: its pid file, whether that pid lives, its
state line, and the one safe connect to its socket.

Every reader of a plugin's ``run/`` or ``sockets/api.sock`` comes here: the index
(a refresh reads the run dir), purge (is it still running?), the liveness probes,
forwarding and ``hecatectl doctor``. Standard library only, and everything is
reached through directory fds that refuse symlinks and other users' files
(``files.open_dir``), so a pid file or socket planted by someone else is never
believed and never connected to.

The API:

- ``pid_alive(pid)``: a live process (a zombie is dead).
- ``pid_file(run_fd)`` (strict) / ``pid_in(run_fd)`` / ``read_pid(ns_fd)``: the pid a
  pid file names.
- ``RunState`` / ``read_run(ns_fd)``: what a namespace's ``run/`` says (live pid, state line).
- ``connect_plugin(layout, name, timeout)``: a connected socket to the plugin's
  ``sockets/api.sock``, whose other end runs as this user (``SO_PEERCRED``).
- ``listens(ns_fd)``: does anything listen on that socket (purge's check)?
"""

from __future__ import annotations

import os
import socket
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from hecated.core.errors import ForeignOwnerError, UnsafePathError
from hecated.core.files import connect_unix_at, open_dir, opened, read_regular
from hecated.core.layout import PID_FILE, RUN_DIR, SOCKET_NAME, SOCKETS_DIR, STATE_FILE, Layout
from hecated.protocol import NOBODY_LISTENS

__all__ = [
    "PID_MAX_BYTES",
    "STATE_MAX",
    "RunState",
    "connect_plugin",
    "listens",
    "nobody_listens",
    "pid_alive",
    "pid_file",
    "pid_in",
    "read_pid",
    "read_run",
]

PID_MAX_BYTES = 64  # the most of a pid file read
STATE_MAX = 4096  # the most of a state line read
LISTEN_CHECK_TIMEOUT = 1.0  # seconds; a Unix connect answers at once
_RUN_FILES = frozenset({PID_FILE, STATE_FILE})


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live process (a zombie is dead: it only awaits reaping)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # a pid file may hold any number
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True
    # The state follows the parenthesised command name, which may itself hold ")".
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def pid_file(run_fd: int) -> int | None:
    """The pid ``run/daemon.pid`` names, strictly: None when there is no such file,
    ``ValueError`` when it holds no number, ``OSError`` / ``UnsafePathError`` when it
    cannot be read (a link, a FIFO, another user's); ``hecatectl doctor`` reports those."""
    raw = read_regular(run_fd, PID_FILE, PID_MAX_BYTES)
    return int(raw.strip()) if raw else None


def pid_in(run_fd: int) -> int | None:
    """``pid_file`` for those who only believe a good one: None for anything else."""
    try:
        return pid_file(run_fd)
    except (OSError, UnsafePathError, ValueError):
        return None


def read_pid(ns_fd: int, strict: bool = False) -> int | None:
    """The pid in a namespace's ``run/daemon.pid`` (``pid_in``'s rules, or with
    ``strict`` ``pid_file``'s; a missing ``run/`` is no pid file either way)."""
    try:
        run_fd = open_dir(ns_fd, RUN_DIR)
    except FileNotFoundError:
        return None
    except (OSError, UnsafePathError):
        if strict:
            raise
        return None
    with opened(run_fd):
        return pid_file(run_fd) if strict else pid_in(run_fd)


@dataclass(frozen=True)
class RunState:
    """What a namespace's ``run/`` says: the pid of a live process (None: no pid file,
    or its process is gone) and the plugin's own state line."""

    pid: int | None = None
    state: str | None = None

    @property
    def alive(self) -> bool:
        return self.pid is not None


def read_run(ns_fd: int) -> RunState:
    """A namespace's ``run/``, opened once for both files (a start scan reads 10,000)."""
    try:
        run_fd = open_dir(ns_fd, RUN_DIR)
    except (OSError, UnsafePathError):
        return RunState()
    with opened(run_fd):
        present = _present(run_fd)
        pid = pid_in(run_fd) if PID_FILE in present else None
        try:
            raw = read_regular(run_fd, STATE_FILE, STATE_MAX) if STATE_FILE in present else None
        except (OSError, UnsafePathError):
            raw = None
    state = raw.decode("utf-8", "replace").strip() if raw else None
    return RunState(pid if pid is not None and pid_alive(pid) else None, state)


def _present(run_fd: int) -> AbstractSet[str]:
    """The run files in ``run/``, by one read of the directory: a plugin that is not
    running often has none, and two failed opens cost more than one listing (10,000 at
    start). When the listing fails, both are looked for as before."""
    try:
        return set(os.listdir(run_fd))
    except OSError:
        return _RUN_FILES


def connect_plugin(layout: Layout, name: str, timeout: float | None) -> socket.socket:
    """A connected socket to ``name``'s ``sockets/api.sock``, and to nothing else.

    The namespace, ``sockets/`` and the socket are reached through fds that refuse
    symlinks and other users' files, the socket's inode is pinned before the
    connect, and the process that accepted must run as this user (``SO_PEERCRED``;
    both in ``files.connect_unix_at``). Raises ``FileNotFoundError`` (no namespace
    or no socket file), ``UnsafePathError`` (a link, a non-socket; another user's
    file or peer: ``ForeignOwnerError``), or the connect's ``OSError``
    (``ECONNREFUSED``: nothing listens; ``EAGAIN``: its listen queue is full;
    ``TimeoutError``).
    """
    with (
        opened(layout.open_namespace(name)) as ns_fd,
        opened(open_dir(ns_fd, SOCKETS_DIR)) as sockets_fd,
    ):
        return connect_unix_at(sockets_fd, SOCKET_NAME, timeout)


def listens(ns_fd: int) -> bool:
    """Whether anything listens on the namespace's ``sockets/api.sock`` right now.

    Purge asks it under the name's lock, of the socket itself (a plugin that writes
    no pid file is known alive only this way). Any answer but "nothing listens
    here" (``ECONNREFUSED``, ``ENOENT``) counts as a listener: a full listen queue
    (``EAGAIN``), a timeout, a listener of another user's. A symlink or a
    non-socket is no listener (and is never followed). Nothing is sent.
    """
    try:
        with opened(open_dir(ns_fd, SOCKETS_DIR)) as sockets_fd:
            connect_unix_at(sockets_fd, SOCKET_NAME, LISTEN_CHECK_TIMEOUT, any_owner=True).close()
    except FileNotFoundError:
        return False
    except ForeignOwnerError:
        return True  # another user's sockets/: it may be anything; deleting it is not ours
    except UnsafePathError:
        return False  # a link or a non-socket where the socket belongs: nobody listens there
    except OSError as exc:
        return not nobody_listens(exc)
    return True


def nobody_listens(exc: OSError) -> bool:
    """Does this failed connect say "nothing listens here"? Only ``ECONNREFUSED`` and
    ``ENOENT`` do; ``EAGAIN`` (a full listen queue) and a timeout are a listener."""
    return exc.errno in NOBODY_LISTENS
