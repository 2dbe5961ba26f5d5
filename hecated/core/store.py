"""The store: ``plugin.toml`` files on disk, read and written without following a link.

The index (index.py) decides *what* the registry holds; this module only
knows the ``plugin.toml`` files: reading one name's entry (through the manifest
cache on scans), writing an entry atomically, removing it, and cleaning temp
files a crashed writer left. Everything below the data root is reached through
directory fds (files.py). A namespace's purge is purge.py's, a plugin's run
state runstate.py's, the start scan's child and the cache file startscan.py's.

Two rules live here because every reader must obey them:

- A file that is being written is not condemned (issue 13). A parse failure
  of a ``plugin.toml`` that a writer still holds open (or that changed while
  it was read), within ``SETTLE_NS`` of its last change, reads as *in flux*:
  the index keeps what it had and reads again later. A file that stays broken
  past the window is reported invalid, as before.
- A registration publishes what it wrote. ``write`` remembers the bytes it
  wrote and the file's stat identity afterwards; a later read of the same
  name that finds that identity and those bytes takes the manifest it wrote
  instead of parsing the file again (the watcher's echo of our own write).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from hecated.core import manifest
from hecated.core.errors import UnsafePathError
from hecated.core.files import (
    GroupCommit,
    atomic_write,
    open_dir,
    open_root,
    opened,
    read_regular,
    remove_file,
    remove_stale_temps,
)
from hecated.core.layout import MANIFEST_NAME, Layout
from hecated.core.manifest import Manifest, ManifestError
from hecated.core.manifestcache import Key, ManifestCache, key_of, now_ns

log = logging.getLogger("hecated.core.store")

# How long after its last change a broken file may still be a write in progress: the
# watcher waits at most this long for a writer's close (watch.MAX_DEFER) before it reads.
SETTLE_NS = 1_000_000_000
# Re-read an in-flux file no sooner than this (a writer's next write is usually that close).
REREAD_MIN_NS = 20_000_000
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)


@dataclass(frozen=True)
class Entry:
    """What the index holds for one name: a valid manifest, or why the file is not one."""

    name: str
    manifest: Manifest | None = None
    error: ManifestError | None = None


@dataclass(frozen=True)
class Found:
    """One read of a name. ``reread_in`` (seconds) set: the file is still being written,
    ``entry`` means nothing, and the caller keeps what it had and reads again then."""

    entry: Entry | None
    reread_in: float | None = None


@dataclass(frozen=True)
class Written:
    """What a registration wrote: published as is, recognised when it comes back."""

    manifest: Manifest
    data: bytes
    key: Key | None
    created: bool


@dataclass
class Raw:
    """One ``plugin.toml`` read but not parsed yet: its bytes and the file's identity
    before and after the read (``ns_fd`` kept open only by single reads)."""

    name: str
    path: str
    data: bytes
    before: Key | None
    after: Key | None
    started: int
    cached: bool
    ns_fd: int | None = None


@dataclass(frozen=True)
class _Crash:
    """A parse that failed with something other than a ``ManifestError`` (a bug, never a file)."""

    exc: Exception


# What parsing one file's bytes gave: ``Store.finish`` decides what it means.
ParseOutcome = Manifest | ManifestError | _Crash


class Root:
    """The data root, opened once for a scan or per call, or absent (no tree yet).

    Replaces the old ``root_fd=-1 / None / fd`` sentinel: whoever reads gets a
    ``Root`` and asks it for namespaces; a missing root reads as empty.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        try:
            self.fd: int | None = open_root(layout.root, create=False)
        except FileNotFoundError:
            self.fd = None

    @property
    def present(self) -> bool:
        return self.fd is not None

    def names(self) -> list[str]:
        """The plugin names present, sorted; none when there is no root."""
        if self.fd is None:
            return []
        return sorted(n for n in os.listdir(self.fd) if self.layout.is_plugin_name(n))

    def namespace(self, name: str) -> int:
        """A directory fd on ``name`` (FileNotFoundError when it, or the root, is missing)."""
        if self.fd is None:
            raise FileNotFoundError(errno.ENOENT, "no data root", str(self.layout.root))
        return open_dir(self.fd, name)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Store:
    """Reads and writes the registry's files; holds no index, only the parse memos."""

    def __init__(self, layout: Layout, settle_ns: int = SETTLE_NS) -> None:
        self.layout = layout
        self.settle_ns = settle_ns
        # Concurrent registrations share their syncs (files.GroupCommit).
        self.commit = GroupCommit()
        # Parsed manifests by file identity, for scans (see manifestcache.py).
        self.cache = ManifestCache()
        self._written: dict[str, Written] = {}
        self._written_lock = threading.Lock()
        self.parses = 0  # parses of plugin.toml files (tests and the closing note count them)
        self.parsed_in_child = 0  # of which the start scan's child did (startscan.py)

    @contextlib.contextmanager
    def root(self) -> Iterator[Root]:
        with Root(self.layout) as root:
            yield root

    # -- reading -----------------------------------------------------------------------

    def read(self, name: str, root: Root, cached: bool = False) -> Found:
        """Read ``name``'s entry below ``root``; ``cached``: use the manifest cache (scans)."""
        step = self.fetch(name, root, cached)
        if isinstance(step, Found):
            return step
        try:
            return self.finish(step, self.parse_raw(step))
        finally:
            if step.ns_fd is not None:
                os.close(step.ns_fd)

    def adopt(
        self, name: str, before: Key | None, after: Key | None, started: int, parsed: Manifest
    ) -> None:
        """Take a manifest another process read and parsed (the start scan's child)."""
        self.parses += 1
        self.parsed_in_child += 1
        self.cache.put(name, before if before == after else None, parsed, started)

    def read_in(self, name: str, ns_fd: int, cached: bool = False) -> Found:
        """``read`` of a namespace the caller opened and closes (the start scan reads
        its run dir through the same fd)."""
        step = self.fetch_in(name, ns_fd, cached)
        return step if isinstance(step, Found) else self.finish(step, self.parse_raw(step))

    def fetch(self, name: str, root: Root, cached: bool) -> Found | Raw:
        """The I/O half of a read: a final ``Found``, or the bytes still to be parsed
        (with the namespace's fd, which the caller closes)."""
        path = self.layout.manifest_str(name)
        try:
            ns_fd = root.namespace(name)
        except FileNotFoundError:
            return Found(None)
        except UnsafePathError as exc:
            return Found(
                Entry(name, error=ManifestError(self.layout.namespace_str(name), exc.message))
            )
        except OSError as exc:
            return Found(Entry(name, error=ManifestError(path, exc.strerror or str(exc))))
        step = self.fetch_in(name, ns_fd, cached)
        if isinstance(step, Found):
            os.close(ns_fd)
        return step

    def fetch_in(self, name: str, ns_fd: int, cached: bool) -> Found | Raw:
        """``fetch`` in a namespace already open (``Raw.ns_fd`` is that fd: not ours)."""
        path = self.layout.manifest_str(name)
        try:
            step = self._fetch_manifest(ns_fd, name, path, cached)
        except ManifestError as exc:
            step = Found(Entry(name, error=exc))
        except OSError as exc:
            step = Found(Entry(name, error=ManifestError(path, exc.strerror or str(exc))))
        except Exception as exc:  # one strange file must never stop a scan or a start
            log.exception("reading %s failed", path)
            step = Found(Entry(name, error=ManifestError(path, f"cannot be read: {exc}")))
        if isinstance(step, Raw):
            step.ns_fd = ns_fd
        return step

    def _fetch_manifest(self, ns_fd: int, name: str, path: str, cached: bool) -> Found | Raw:
        before = _key(ns_fd)
        if cached:
            hit = self.cache.get(name, before)
            if hit is not None:
                return Found(Entry(name, manifest=hit))
        started = now_ns()
        try:
            data = _read_bytes(ns_fd, path)
        except BaseException:
            if cached:
                self.cache.put(name, None, None, started)
            raise
        after = _key(ns_fd)
        if data is None:
            return Found(None)
        return Raw(name, path, data, before, after, started, cached)

    def parse_raw(self, raw: Raw) -> ParseOutcome:
        """``manifest.parse`` of the bytes read, its failure as a value (``finish`` decides)."""
        try:
            return self._parse(raw.name, raw.data, raw.before, raw.path)
        except ManifestError as exc:
            return exc
        except Exception as exc:
            return _Crash(exc)

    def finish(self, raw: Raw, parsed: ParseOutcome) -> Found:
        """What a parsed (or unparsable) file means for the index: the other half of a read."""
        name, path, cached = raw.name, raw.path, raw.cached
        if isinstance(parsed, Manifest):
            if cached:
                same = raw.before if raw.before == raw.after else None
                self.cache.put(name, same, parsed, raw.started)
            return Found(Entry(name, manifest=parsed))
        if isinstance(parsed, _Crash):
            log.error("reading %s failed", path, exc_info=parsed.exc)
            return Found(Entry(name, error=ManifestError(path, f"cannot be read: {parsed.exc}")))
        if cached:
            self.cache.put(name, None, None, raw.started)
        assert raw.ns_fd is not None
        reread = self._in_flux(raw.ns_fd, raw.before, raw.after, raw.started)
        if reread is not None:
            return Found(None, reread_in=reread)
        return Found(Entry(name, error=parsed))

    def _parse(self, name: str, data: bytes, key: Key | None, path: str) -> Manifest:
        """The manifest in ``data``; no parse when these are the very bytes we wrote."""
        mine = self._mine(name, data, key)
        if mine is not None:
            return mine
        self.parses += 1
        return manifest.parse(data, name, path)

    def _mine(self, name: str, data: bytes, key: Key | None) -> Manifest | None:
        """The manifest we wrote, when ``data`` and ``key`` are still what we wrote."""
        with self._written_lock:
            mine = self._written.get(name)
        if mine is not None and key is not None and mine.key == key and mine.data == data:
            return mine.manifest
        return None

    def _in_flux(self, ns_fd: int, before: Key | None, after: Key | None, now: int) -> float | None:
        """Seconds until a broken file should be read again, or None: it is broken for real.

        In flux means: it changed while we read it, or it changed within the
        settle window *and* a writer still holds it open. Whether a writer holds
        it is asked of the kernel: a read lease is refused while any fd has the
        file open for writing. Where leases are unavailable (another owner, a
        filesystem without them), the window alone decides.
        """
        if before != after:
            return REREAD_MIN_NS / 1e9
        if before is None:
            return None
        changed = max(before[1], before[3])
        # At most one window from now: a clock ahead of ours (NFS, touch -d) must not
        # keep a broken file "in flux" for as long as the gap.
        left = min(changed + self.settle_ns - now, self.settle_ns)
        if left <= 0:
            return None
        if _writer_holds(ns_fd) is False:
            return None  # the writer closed it: this is what it wrote, broken or not
        return max(left, REREAD_MIN_NS) / 1e9

    # -- writing -----------------------------------------------------------------------

    def write(
        self, name: str, version: str, description: str, now: datetime, unit: str | None = None
    ) -> Written:
        """Create or update ``name``'s file (caller holds the name's lock); what was written.

        The merge base is the file on disk (a hand edit's keys are kept), read
        once; a broken one is replaced by a valid entry. ``unit`` None keeps the
        file's own ``unit`` (a re-registration need not repeat it).
        """
        with opened(self.layout.open_namespace(name, create=True)) as ns_fd:
            path = self.layout.manifest_str(name)
            try:
                data = _read_bytes(ns_fd, path)
                existing = None if data is None else self._parse(name, data, _key(ns_fd), path)
            except ManifestError:
                existing = None  # a broken hand edit is replaced by a valid entry
            if existing is None:
                new = Manifest(name, version, description, registered_at=now, updated_at=now)
            else:
                new = existing.updated(version, description, now)
                if new.registered_at is None:
                    new = replace(new, registered_at=now)
            if unit is not None:
                new = replace(new, unit=unit)
            raw = manifest.dumps(new)
            try:
                atomic_write(ns_fd, MANIFEST_NAME, raw, sync=self.commit.sync)
            except BaseException:
                self.forget(name)
                raise
            written = Written(new, raw, _key(ns_fd), existing is None)
        with self._written_lock:
            self._written[name] = written
        return written

    def forget(self, name: str) -> None:
        with self._written_lock:
            self._written.pop(name, None)

    def remove(self, name: str) -> bool:
        """Unlink ``name``'s ``plugin.toml`` durably; False when there was none."""
        self.forget(name)
        try:
            ns_fd = self.layout.open_namespace(name)
        except FileNotFoundError:
            return False
        with opened(ns_fd):
            return remove_file(ns_fd, MANIFEST_NAME)

    # -- temp files ---------------------------------------------------------------------

    def clean_temps(self, root: Root | None = None, names: list[str] | None = None) -> int:
        """Remove crashed writers' temp files; returns how many.

        Safe beside live writes: a temp file named with this run's owner (pid and
        token, ``files.OWNER``) is never removed, and every temp of ours carries it.
        """
        if root is None:
            with Root(self.layout) as own:
                return self.clean_temps(own, names)
        if root.fd is None:
            return 0
        removed = 0
        for name in root.names() if names is None else names:
            try:
                with opened(open_dir(root.fd, name)) as ns_fd:
                    removed += remove_stale_temps(ns_fd, MANIFEST_NAME)
            except (OSError, UnsafePathError):
                pass
        return removed


# -- helpers --------------------------------------------------------------------------------


def _read_bytes(ns_fd: int, path: str) -> bytes | None:
    """The raw ``plugin.toml`` (None when absent), with manifest.read's error shapes."""
    try:
        return read_regular(ns_fd, MANIFEST_NAME, manifest.MAX_FILE_BYTES)
    except UnsafePathError as exc:
        raise ManifestError(path, exc.message) from None
    except PermissionError:
        raise ManifestError(path, "permission denied") from None


def _key(ns_fd: int) -> Key | None:
    try:
        return key_of(os.stat(MANIFEST_NAME, dir_fd=ns_fd, follow_symlinks=False))
    except OSError:
        return None


def _writer_holds(ns_fd: int) -> bool | None:
    """True when some fd has ``plugin.toml`` open for writing; None when we cannot tell.

    A read lease is refused (EAGAIN) exactly then. It is held for no longer than
    the two calls; its break signal is SIGWINCH (ignored by default), never the
    default SIGIO, whose default action would end the daemon.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(MANIFEST_NAME, flags, dir_fd=ns_fd)
    except OSError:
        return None
    with opened(fd):
        try:
            fcntl.fcntl(fd, _F_SETSIG, signal.SIGWINCH)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            return True if exc.errno == errno.EAGAIN else None
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
