"""Purging a deregistered, stopped plugin's namespace: checks first, then a careful walk.

The running check is made here, on disk, at purge time (stdlib only, no
adapter): deleting data must never depend on how the daemon was wired, nor on
a liveness value that may be a moment old. A live pid in ``run/daemon.pid`` or
anything that answers a connect on ``sockets/api.sock`` (``runstate.listens``)
refuses the purge.

The removal is an fd-relative walk that never opens anything but a directory it
asked for by ``O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK`` (a FIFO or a device swapped
in for a directory is refused at once, never waited on; a symlink is unlinked,
never followed), unlinks everything else without opening it, and is bounded in
entries, depth and time: a purge holds the name's lock, and a tree that grows
or changes as fast as it is deleted must not hold it for ever.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from hecated.core.errors import (
    NotFoundError,
    PluginRunningError,
    StillRegisteredError,
    StorageError,
)
from hecated.core.files import opened
from hecated.core.layout import MANIFEST_NAME, PID_FILE, RUN_DIR, SOCKET_NAME, SOCKETS_DIR
from hecated.core.runstate import listens, pid_alive, read_pid
from hecated.core.store import Root

__all__ = ["MAX_DEPTH", "MAX_ENTRIES", "MAX_SECONDS", "purge_namespace"]

MAX_ENTRIES = 1_000_000  # files and directories one purge removes at most
MAX_DEPTH = 256  # nested directories; deeper is refused (and each level holds one fd)
MAX_SECONDS = 60.0  # one purge's walk; a second purge goes on where it stopped
MAX_TRIES = 4  # an entry that changes kind this often while it is removed is left
_WALK_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def purge_namespace(root: Root, name: str) -> None:
    """Delete ``name``'s namespace below ``root``: refused while registered or running."""
    try:
        ns_fd = root.namespace(name)
    except FileNotFoundError:
        raise NotFoundError(f"no namespace {name!r}") from None
    with opened(ns_fd):
        _check_stopped(ns_fd, name)
        walk = _Walk(time.monotonic() + MAX_SECONDS)
        try:
            walk.empty(ns_fd, name, 0)
        except OSError as exc:
            raise StorageError(f"cannot remove namespace {name!r}: {exc.strerror}") from exc
    assert root.fd is not None
    try:
        os.rmdir(name, dir_fd=root.fd)
        os.fsync(root.fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot remove namespace {name!r}: {exc.strerror}") from exc


def _check_stopped(ns_fd: int, name: str) -> None:
    """Refuse a registered or running plugin (under the name's lock, on disk, now)."""
    try:
        os.stat(MANIFEST_NAME, dir_fd=ns_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        raise StillRegisteredError(
            f"plugin {name!r} is still registered; deregister it before purging"
        )
    pid = read_pid(ns_fd)
    if pid is not None and pid_alive(pid):
        raise PluginRunningError(
            f"plugin {name!r} is running ({RUN_DIR}/{PID_FILE} names a live process)"
        )
    if listens(ns_fd):
        raise PluginRunningError(
            f"plugin {name!r} accepts connections on {SOCKETS_DIR}/{SOCKET_NAME}; "
            "stop it before purging its data"
        )


@dataclass
class _Walk:
    """One purge's walk: its deadline and the entries it has removed so far."""

    deadline: float
    removed: int = 0

    def empty(self, dir_fd: int, where: str, depth: int) -> None:
        """Remove everything inside the directory ``dir_fd`` (``where``: for messages)."""
        if depth > MAX_DEPTH:
            raise StorageError(f"{where} is nested more than {MAX_DEPTH} directories deep")
        for entry in os.listdir(dir_fd):
            self._spend(where)
            self._remove(dir_fd, entry, f"{where}/{entry}", depth)

    def _spend(self, where: str) -> None:
        self.removed += 1
        if self.removed > MAX_ENTRIES:
            raise StorageError(
                f"purge stopped after {MAX_ENTRIES} entries (at {where}); purge again to go on"
            )
        if time.monotonic() > self.deadline:
            raise StorageError(
                f"purge stopped after {MAX_SECONDS:g} s (at {where}); purge again to go on"
            )

    def _remove(self, dir_fd: int, entry: str, where: str, depth: int) -> None:
        """Unlink ``entry``; a directory is emptied first, reached only as a directory."""
        for _ in range(MAX_TRIES):
            try:
                os.unlink(entry, dir_fd=dir_fd)  # never opens it: a FIFO, a device, a link
                return
            except FileNotFoundError:
                return
            except IsADirectoryError:
                pass
            try:
                fd = os.open(entry, _WALK_DIR_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    continue  # it stopped being a directory since the unlink: unlink it
                raise
            with opened(fd):
                self.empty(fd, where, depth + 1)
            try:
                os.rmdir(entry, dir_fd=dir_fd)
                return
            except FileNotFoundError:
                return
            except NotADirectoryError:
                continue  # swapped for something else: that is unlinked on the next turn
        raise StorageError(f"{where} keeps changing while it is removed; purge again")
