"""File primitives that never follow a symlink and never leave a half-written file.

Everything under the data root is reached through directory file descriptors
opened with ``O_NOFOLLOW``, so a symlink planted in the tree (a namespace that
points at ``/etc``, a ``plugin.toml`` that points at a secret) can neither
redirect a write nor leak a read. Writes go temp file, fsync, rename, fsync dir:
after a crash a reader sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import struct
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from hecated.core.errors import ForeignOwnerError, StorageError, UnsafePathError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_SUFFIX = ".tmp"
CREATE_TRIES = 4  # mkdir + open of a directory someone keeps moving away
# .NAME.OWNER.HEX.tmp, OWNER being PID-HEX8 (or a bare PID, as earlier versions wrote it).
_TEMP_RE = re.compile(r"\.[^/]+\.\d+(-[0-9a-f]{8})?\.[0-9a-f]+" + re.escape(TEMP_SUFFIX))


# Who wrote a temp file: this process's pid plus a token of this run, so that a
# crashed predecessor that had the same pid (PID 1 in a container) is not taken for us.
OWNER = f"{os.getpid()}-{os.urandom(4).hex()}"


def _temp_name(name: str) -> str:
    return f".{name}.{OWNER}.{os.urandom(4).hex()}{TEMP_SUFFIX}"


def is_temp_name(entry: str, name: str) -> bool:
    """Exactly the shape our writers use (``.NAME.PID-HEX8.HEX.tmp``): another tool's
    ``.plugin.toml.XXXXXXXX.tmp`` (NamedTemporaryFile's idiom) is never taken for ours."""
    return _TEMP_RE.fullmatch(entry) is not None and entry.startswith(f".{name}.")


def temp_owner(entry: str) -> str | None:
    """The writer embedded in a temp file's name, to tell our own writes from a crash's."""
    parts = entry.split(".")
    return parts[-3] if len(parts) >= 4 else None


def _storage(exc: OSError, what: str) -> StorageError:
    return StorageError(f"cannot write {what}: {os.strerror(exc.errno or errno.EIO)}")


def open_root(root: Path, create: bool = True) -> int:
    """Open (and if asked, create with 0700) the data root itself.

    The root is the user's choice and may itself be a symlink (e.g. to a bigger
    disk); everything below it is reached without following links.
    """
    if create:
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage(exc, str(root)) from exc
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError as exc:  # a chmod 000 root: the envelope's unsafe_path, not a 500
        raise UnsafePathError(f"{root} cannot be opened: {exc.strerror}") from exc
    if create:  # a read never changes modes: doctor must still see a chmod someone made
        _tighten(fd)
    return fd


def _tighten(fd: int) -> None:
    """Directories we own are private to their user: drop group/other bits.

    On failure the fd is closed before the error goes up: callers only own it on success.
    """
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
    except BaseException:
        os.close(fd)
        raise


def check_owner(fd: int, name: str, st: os.stat_result | None = None) -> None:
    """Refuse what another user owns (``ForeignOwnerError``); the fd stays the caller's.

    Below the data root everything is made by this user (hecated or its plugins):
    anything else was planted while the tree was open to others (issue 23, 8).
    """
    uid = (st or os.fstat(fd)).st_uid
    if uid != os.geteuid():
        raise ForeignOwnerError(
            f"{name!r} belongs to uid {uid}, not to hecated's user (uid {os.geteuid()}); "
            "refusing it"
        )


def open_dir(parent_fd: int, name: str, create: bool = False, private: bool = False) -> int:
    """Open the directory ``name`` below ``parent_fd`` without following a symlink.

    Raises ``FileNotFoundError`` when it is missing (and not created),
    ``UnsafePathError`` when the entry is a symlink or not a directory, and
    ``ForeignOwnerError`` when another user owns it. With ``create``, a directory
    moved away between its mkdir and its open is made again, a few times, then
    refused with ``StorageError`` (never a bare ``FileNotFoundError``: a 500).
    """
    for _ in range(CREATE_TRIES if create else 1):
        if create:
            _mkdir(parent_fd, name)
        try:
            fd = _open_dir(parent_fd, name)
        except FileNotFoundError:
            if not create:
                raise
            continue
        try:
            check_owner(fd, name)
        except BaseException:
            os.close(fd)
            raise
        if private:
            _tighten(fd)  # closes fd on failure
        return fd
    raise StorageError(f"cannot create {name}: it keeps being moved away as it is made")


def _mkdir(parent_fd: int, name: str) -> None:
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _storage(exc, name) from exc


def _open_dir(parent_fd: int, name: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(f"{name!r} is a symlink or not a directory; refusing it") from exc
        if exc.errno == errno.EACCES:
            # A directory someone closed (chmod 000): the tree refuses us, say so (not a 500).
            raise UnsafePathError(f"{name!r} cannot be opened: permission denied") from exc
        raise


def connect_unix_at(
    dir_fd: int, name: str, timeout: float | None, any_owner: bool = False
) -> socket.socket:
    """Connect to the socket ``name`` in ``dir_fd``, the very inode that was checked.

    The entry is opened with ``O_PATH | O_NOFOLLOW`` and must be a socket (a symlink
    or anything else is ``UnsafePathError``); the connect then goes through
    ``/proc/self/fd/N`` of that fd, so a symlink swapped in after the check cannot
    redirect it. Unless ``any_owner``, the socket file and the process that
    accepted (``SO_PEERCRED``) must be this user's (``ForeignOwnerError``).
    ``FileNotFoundError``: no socket file; the connect's ``OSError``
    (``ECONNREFUSED``: nothing accepts on it) goes up as it is.
    """
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with opened(fd):
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a socket"
            raise UnsafePathError(f"{name} is {what}")
        if not any_owner:
            check_owner(fd, name, st)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(f"/proc/self/fd/{fd}")
            if not any_owner:
                _check_peer(sock, name)
        except BaseException:
            sock.close()
            raise
        return sock


_PEERCRED = struct.Struct("3i")


def _check_peer(sock: socket.socket, name: str) -> None:
    """The accepting end runs as this user, as the kernel vouches (``SO_PEERCRED``):
    our own socket file may still be served by a process of another user's."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(raw)
    if uid != os.geteuid():
        raise ForeignOwnerError(
            f"{name} is served by uid {uid}, not by hecated's user (uid {os.geteuid()}); "
            "refusing it"
        )


class opened:
    """Close ``fd`` when the block ends, however it ends. A class, not a generator
    context manager: a start scan enters 40,000 of them, and this costs a quarter."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *_exc: object) -> None:
        os.close(self.fd)


def read_regular(dir_fd: int, name: str, limit: int, any_owner: bool = False) -> bytes | None:
    """Read a small regular file of this user's; ``None`` when it does not exist.

    ``O_NONBLOCK`` keeps a FIFO planted under the name from hanging the reader;
    anything but a regular file (a socket: ``ENXIO`` on open) is refused, and so
    is a file another user owns (``ForeignOwnerError``) unless ``any_owner`` (a
    file the user named, e.g. a packaged unit file of root's to install).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{name} is a symlink; refusing to follow it") from exc
        if exc.errno == errno.ENXIO:  # a Unix socket: open() is refused, not a 500
            raise UnsafePathError(f"{name} is a socket, not a regular file") from exc
        raise
    with opened(fd):
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{name} is not a regular file")
        if not any_owner:
            check_owner(fd, name, st)
        if st.st_size > limit:
            raise UnsafePathError(f"{name} is {st.st_size} bytes; at most {limit} are read")
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise UnsafePathError(f"{name} grew past {limit} bytes while being read")
        return data


Sync = Callable[[int], None]


def atomic_write(
    dir_fd: int,
    name: str,
    data: bytes,
    mode: int = 0o600,
    sync: Sync = os.fsync,
    replace: bool = True,
) -> None:
    """Replace ``name`` with ``data`` durably: temp file, fsync, rename, fsync dir.

    ``sync`` makes an fd's file durable; ``GroupCommit.sync`` shares that
    work between concurrent writers. Either way the data is durable before
    the rename, and the rename before this returns. Without ``replace`` the
    temp file is hard-linked to ``name`` instead of renamed over it, which the
    kernel refuses when ``name`` exists (any kind of entry, a symlink too):
    ``FileExistsError``, and nothing was changed.
    """
    tmp = _temp_name(name)
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
            dir_fd=dir_fd,
        )
    except OSError as exc:
        raise _storage(exc, name) from exc
    try:
        with opened(fd):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            sync(fd)
        _put(dir_fd, tmp, name, replace)
        sync(dir_fd)
    except FileExistsError:
        _unlink_quietly(dir_fd, tmp)
        raise
    except OSError as exc:
        _unlink_quietly(dir_fd, tmp)
        raise _storage(exc, name) from exc
    except BaseException:
        _unlink_quietly(dir_fd, tmp)
        raise


def _put(dir_fd: int, tmp: str, name: str, replace: bool) -> None:
    """The written temp file becomes ``name``: renamed over it, or linked where it is not."""
    if replace:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    os.unlink(tmp, dir_fd=dir_fd)


def remove_file(dir_fd: int, name: str) -> bool:
    """Unlink ``name`` durably; False when it was not there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except IsADirectoryError as exc:
        raise UnsafePathError(f"{name} is a directory") from exc
    except OSError as exc:
        raise _storage(exc, name) from exc
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        raise _storage(exc, name) from exc
    return True


def remove_stale_temps(dir_fd: int, name: str) -> int:
    """Remove temp files of ``name`` left by a writer that is no longer us (a crash)."""
    removed = 0
    try:
        entries = os.listdir(dir_fd)
    except OSError:
        return 0
    for entry in entries:
        if is_temp_name(entry, name) and temp_owner(entry) != OWNER:
            _unlink_quietly(dir_fd, entry)
            removed += 1
    return removed


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


class GroupCommit:
    """Concurrent writers share their syncs: one ``syncfs`` covers every write that joined.

    A write is durable once a ``syncfs`` of its filesystem that *began after
    the write* has returned. A caller takes as its target the next sync to
    begin; if none is running, it begins that sync itself (the leader), else
    it waits, and the leader of the next round covers it and everyone who
    came meanwhile. On this VM's ext4 one ``syncfs`` also costs less than one
    ``fsync`` of a new file (bench: docs/benchmarks.md, table 3).

    A failed sync fails every caller it covered. ``syncfs`` reports writeback
    errors only since Linux 5.8; before that (or without ``syncfs``) every
    call is a plain ``fsync`` of its own fd.
    """

    def __init__(self, syncfs: Sync | None = None) -> None:
        self._syncfs = syncfs
        self._lock = threading.Lock()
        self._groups: dict[int, _SyncRound] = {}

    def sync(self, fd: int) -> None:
        syncfs = self._syncfs or _libc_syncfs()
        if syncfs is None:
            os.fsync(fd)
            return
        dev = os.fstat(fd).st_dev  # one syncfs covers one filesystem only
        with self._lock:
            group = self._groups.get(dev)
            if group is None:
                group = self._groups[dev] = _SyncRound(syncfs)
        group.sync(fd)

    @property
    def rounds(self) -> int:
        """Syncs begun so far, over all filesystems (the tests compare it with the writes)."""
        with self._lock:
            return sum(g.started for g in self._groups.values())


class _SyncRound:
    """The leader/follower rounds of one filesystem; see ``GroupCommit``."""

    def __init__(self, syncfs: Sync) -> None:
        self._syncfs = syncfs
        self._cond = threading.Condition()
        self.started = 0  # rounds begun; they run one at a time, in order
        self._finished = 0
        self._running = False
        self._results: dict[int, BaseException | None] = {}
        self._waiting: dict[int, int] = {}

    def sync(self, fd: int) -> None:
        with self._cond:
            target = self.started + 1  # the first round to begin after this call
            self._waiting[target] = self._waiting.get(target, 0) + 1
            try:
                while self._finished < target:
                    if self._running:
                        self._cond.wait()
                    else:
                        self._lead(fd)
                error = self._results.get(target)
            finally:
                self._waiting[target] -= 1
                if not self._waiting[target]:
                    del self._waiting[target]
                    self._results.pop(target, None)
        if error is not None:
            raise error

    def _lead(self, fd: int) -> None:
        """Run one round (called and returning with the condition held)."""
        self._running = True
        self.started += 1
        round_no = self.started
        error: BaseException | None = OSError(errno.EIO, "sync interrupted")
        self._cond.release()
        try:
            self._syncfs(fd)
            error = None
        except OSError as exc:
            error = exc
        finally:
            self._cond.acquire()
            self._running = False
            self._finished = round_no
            if round_no in self._waiting:
                self._results[round_no] = error
            self._cond.notify_all()


_SYNCFS: list[Sync | None] = []


def _libc_syncfs() -> Sync | None:
    """libc's ``syncfs`` (Python has no ``os.syncfs``), if it reports errors (Linux >= 5.8)."""
    if not _SYNCFS:
        _SYNCFS.append(_load_syncfs())
    return _SYNCFS[0]


def _load_syncfs() -> Sync | None:
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):
        return None
    import ctypes  # only a writer pays for it, never a cold start

    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None

    def syncfs(fd: int) -> None:
        if func(fd) != 0:  # ctypes releases the GIL for the call
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs
