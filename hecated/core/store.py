"""The store: ``plugin.toml`` files on disk, read and written without following a link.

The index (index.py) decides *what* the registry holds; this module only
knows the files: reading one name's entry (through the manifest cache on
scans), writing an entry atomically, removing it, purging a namespace, and
cleaning temp files a crashed writer left. Everything below the data root is
reached through directory fds (files.py).

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
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from hecated.core import manifest
from hecated.core.errors import (
    NotFoundError,
    PluginRunningError,
    StillRegisteredError,
    StorageError,
    UnsafePathError,
)
from hecated.core.files import (
    GroupCommit,
    atomic_write,
    connect_unix_at,
    open_dir,
    open_root,
    opened,
    read_regular,
    remove_file,
    remove_stale_temps,
)
from hecated.core.layout import (
    INDEX_CACHE_FILE,
    MANIFEST_NAME,
    PID_FILE,
    SOCKET_NAME,
    SOCKETS_DIR,
    Layout,
)
from hecated.core.manifest import Manifest, ManifestError
from hecated.core.manifestcache import Key, ManifestCache, key_of, now_ns

log = logging.getLogger("hecated.core.store")

RUN_DIR = "run"
PURGE_CONNECT_TIMEOUT = 1.0  # seconds; a Unix connect answers at once
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
class _Raw:
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


Parsed = Manifest | ManifestError | _Crash


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
        self.parsed_in_child = 0  # of which a forked child did (read_each, a large tree)

    @contextlib.contextmanager
    def root(self) -> Iterator[Root]:
        with Root(self.layout) as root:
            yield root

    # -- reading -----------------------------------------------------------------------

    def read(self, name: str, root: Root, cached: bool = False) -> Found:
        """Read ``name``'s entry below ``root``; ``cached``: use the manifest cache (scans)."""
        step = self._fetch(name, root, cached)
        if isinstance(step, Found):
            return step
        try:
            return self._finish(step, self._parse_raw(step))
        finally:
            if step.ns_fd is not None:
                os.close(step.ns_fd)

    def read_each(self, names: list[str], root: Root) -> Iterator[tuple[str, Found]]:
        """Each name's entry in order, the same as ``read(name, root, cached=True)`` each;
        on a large tree never seen, the later names read and parsed by a forked child
        while these are read here and published by the caller.

        For the start scan only: nothing is served and nobody writes through us yet,
        so no name's lock needs holding between its read and its publication.
        """
        split = _split(len(names), len(self.cache))
        child = _ReadChild.start(self, names[split:], root) if split < len(names) else None
        for name in names[:split]:
            yield name, self.read(name, root, cached=True)
        theirs = child.results() if child is not None else None
        for i, name in enumerate(names[split:]):
            got = theirs[i] if theirs is not None else None
            if got is None:  # not read there, or not a plain valid file: read it here
                yield name, self.read(name, root, cached=True)
                continue
            before, after, started, parsed = got
            self.parses += 1
            self.parsed_in_child += 1
            self.cache.put(name, before if before == after else None, parsed, started)
            yield name, Found(Entry(name, manifest=parsed))

    def read_parsed(self, name: str, root: Root) -> _Parsed | None:
        """For the child: a valid file's manifest and identity; None for anything else
        (absent, cached, invalid, unreadable), which the parent reads itself."""
        step = self._fetch(name, root, cached=True)
        if not isinstance(step, _Raw):
            return None
        try:
            parsed = self._parse_raw(step)
        finally:
            if step.ns_fd is not None:
                os.close(step.ns_fd)
        if not isinstance(parsed, Manifest):
            return None
        return step.before, step.after, step.started, parsed

    def _fetch(self, name: str, root: Root, cached: bool) -> Found | _Raw:
        """The I/O half of a read: a final ``Found``, or the bytes still to be parsed."""
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
        try:
            step = self._fetch_manifest(ns_fd, name, path, cached)
        except ManifestError as exc:
            step = Found(Entry(name, error=exc))
        except OSError as exc:
            step = Found(Entry(name, error=ManifestError(path, exc.strerror or str(exc))))
        except Exception as exc:  # one strange file must never stop a scan or a start
            log.exception("reading %s failed", path)
            step = Found(Entry(name, error=ManifestError(path, f"cannot be read: {exc}")))
        if isinstance(step, _Raw):
            step.ns_fd = ns_fd  # the caller closes it
        else:
            os.close(ns_fd)
        return step

    def _fetch_manifest(self, ns_fd: int, name: str, path: str, cached: bool) -> Found | _Raw:
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
        return _Raw(name, path, data, before, after, started, cached)

    def _parse_raw(self, raw: _Raw) -> Parsed:
        """``manifest.parse`` of the bytes read, its failure as a value (``_finish`` decides)."""
        try:
            return self._parse(raw.name, raw.data, raw.before, raw.path)
        except ManifestError as exc:
            return exc
        except Exception as exc:
            return _Crash(exc)

    def _finish(self, raw: _Raw, parsed: Parsed) -> Found:
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

    def write(self, name: str, version: str, description: str, now: datetime) -> Written:
        """Create or update ``name``'s file (caller holds the name's lock); what was written.

        The merge base is the file on disk (a hand edit's keys are kept), read
        once; a broken one is replaced by a valid entry.
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

    def purge(self, name: str) -> None:
        """Delete a deregistered, stopped plugin's namespace without following links.

        The running check is made here, on disk, at purge time (stdlib only, no
        adapter): deleting data must never depend on how the daemon was wired,
        nor on a liveness value that may be a moment old.
        """
        self.forget(name)
        with Root(self.layout) as root:
            try:
                ns_fd = root.namespace(name)
            except FileNotFoundError:
                raise NotFoundError(f"no namespace {name!r}") from None
            with opened(ns_fd):
                if _exists(ns_fd, MANIFEST_NAME):
                    raise StillRegisteredError(
                        f"plugin {name!r} is still registered; deregister it before purging"
                    )
                pid = read_pid(ns_fd)
                if pid is not None and pid_alive(pid):
                    raise PluginRunningError(
                        f"plugin {name!r} is running (run/{PID_FILE} names a live process)"
                    )
                if _socket_accepts(ns_fd):
                    raise PluginRunningError(
                        f"plugin {name!r} accepts connections on sockets/{SOCKET_NAME}; "
                        "stop it before purging its data"
                    )
            assert root.fd is not None
            try:
                # rmtree on a dir fd never follows a symlink found inside the tree.
                shutil.rmtree(name, dir_fd=root.fd)
                os.fsync(root.fd)
            except OSError as exc:
                raise StorageError(f"cannot remove namespace {name!r}: {exc.strerror}") from exc

    # -- temp files and the cache file ---------------------------------------------------

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

    def load_cache(self) -> int:
        """Take the manifest cache a previous run saved; 0 entries when there is none."""
        try:
            with opened(self._run_fd()) as run_fd:
                return self.cache.load(run_fd, INDEX_CACHE_FILE)
        except (OSError, UnsafePathError):
            return 0

    def save_cache(self) -> bool:
        """Save the manifest cache (atomically) if it changed; a failure only costs speed."""
        try:
            with opened(self._run_fd()) as run_fd:
                return self.cache.save(run_fd, INDEX_CACHE_FILE)
        except (OSError, UnsafePathError, StorageError) as exc:
            log.warning("cannot save the manifest cache: %s", exc)
            return False

    def _run_fd(self) -> int:
        with opened(self.layout.open_namespace(self.layout.primary_name)) as ns_fd:
            return open_dir(ns_fd, RUN_DIR)


# -- pid files: the stdlib check purge needs, shared with the liveness adapter -------------


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


def read_pid(ns_fd: int) -> int | None:
    """The pid in a namespace's ``run/daemon.pid``; None when absent or not a number."""
    try:
        run_fd = open_dir(ns_fd, RUN_DIR)
    except (OSError, UnsafePathError):
        return None
    with opened(run_fd):
        return pid_in(run_fd)


def pid_in(run_fd: int) -> int | None:
    """``read_pid`` for a ``run/`` already open (a reader of more than that one file)."""
    try:
        raw = read_regular(run_fd, PID_FILE, 64)
    except (OSError, UnsafePathError):
        return None
    try:
        return int(raw.strip()) if raw else None
    except ValueError:
        return None


# -- parsing in a second process -----------------------------------------------------------

# Below this many files a fork costs more than the parsing it shares (~100 µs a file).
PARALLEL_MIN = 1000
# The parent's share: it also publishes what it reads (the run dirs, the index) while
# the child only reads and parses, so the child takes the larger part.
PARENT_SHARE = 0.42

_Parsed = tuple[Key | None, Key | None, int, Manifest]


def _split(count: int, cached: int) -> int:
    """Where the child's part of ``count`` names starts (``count``: no child).

    A child pays only with a second CPU, enough files to parse (a restart finds
    most of them in the manifest cache), and no other thread running: a fork
    copies locks other threads may hold, and the start scan runs before any.
    """
    if (
        count - cached < PARALLEL_MIN
        or len(os.sched_getaffinity(0)) < 2
        or threading.active_count() != 1
        or not hasattr(os, "fork")
    ):
        return count
    return int(count * PARENT_SHARE)


class _ReadChild:
    """A forked child reading and parsing the later names while the parent does the rest.

    It sends back one pickled list, per name the manifest and file identity of a
    valid file (``Store.read_parsed``), or None: the parent reads those names
    itself, so what an invalid, missing or odd file says is never the child's.
    Any failure of the child reads as "nothing read": the parent reads them all.
    """

    def __init__(self, pid: int, fd: int, count: int) -> None:
        self.pid, self.fd, self.count = pid, fd, count

    @classmethod
    def start(cls, store: Store, names: list[str], root: Root) -> _ReadChild | None:
        import pickle  # here, not at the top: 2 ms of every cold start otherwise

        try:
            rfd, wfd = os.pipe2(os.O_CLOEXEC)
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            return None
        if pid == 0:  # pragma: no cover - the child; its output is checked by the parent
            code = 1
            try:
                os.close(rfd)
                logging.disable(logging.CRITICAL)  # the parent says it, if anything, once
                out: list[_Parsed | None] = []
                for name in names:
                    try:
                        out.append(store.read_parsed(name, root))
                    except Exception:
                        out.append(None)
                with os.fdopen(wfd, "wb") as pipe:
                    pipe.write(pickle.dumps(out, pickle.HIGHEST_PROTOCOL))
                code = 0
            finally:
                os._exit(code)
        os.close(wfd)
        return cls(pid, rfd, len(names))

    def results(self) -> list[_Parsed | None] | None:
        """The child's findings, in order; None when it failed in any way."""
        import pickle

        try:
            with os.fdopen(self.fd, "rb") as pipe:
                data = pipe.read()
        except OSError:
            data = b""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 1
        if status != 0 or not data:
            log.warning("the reading child failed (status %d); reading its part here", status)
            return None
        try:
            out = pickle.loads(data)
        except Exception:
            log.exception("the reading child's answer is unreadable; reading its part here")
            return None
        if not isinstance(out, list) or len(out) != self.count:
            return None
        if not all(x is None or isinstance(x[3], Manifest) for x in out):
            return None
        return out


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


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _socket_accepts(ns_fd: int) -> bool:
    """Whether something accepts on the namespace's ``sockets/api.sock`` right now.

    Asked at purge time, under the name's lock, of the socket itself (a plugin that
    writes no pid file is known alive only this way): a connect to a Unix socket
    answers at once, so the check costs nothing and never rests on an old probe.
    """
    try:
        with opened(open_dir(ns_fd, SOCKETS_DIR)) as sockets_fd:
            connect_unix_at(sockets_fd, SOCKET_NAME, PURGE_CONNECT_TIMEOUT).close()
    except TimeoutError:
        return True  # a listener whose backlog is full is still a listener
    except (OSError, UnsafePathError):
        return False  # no socket, a stale one (refused), or a link we never follow
    return True
