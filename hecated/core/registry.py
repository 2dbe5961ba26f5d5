"""The registry: an in-memory index of ``plugin.toml`` files, kept in step with them.

Files are the truth. Every change, whether it comes from the API or from a
person's editor, ends in ``refresh(name)``: re-read that one name from disk
and put what was read into the index. Because there is only that one path,
the index and the tree cannot disagree for long, and a watcher (watch.py)
can keep the index current by calling ``refresh`` on the names it sees move.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from hecated.core import manifest
from hecated.core.errors import (
    BusyError,
    NotFoundError,
    PluginRunningError,
    StillRegisteredError,
    StorageError,
    UnsafePathError,
)
from hecated.core.files import (
    GroupCommit,
    open_dir,
    open_root,
    opened,
    read_regular,
    remove_file,
    remove_stale_temps,
)
from hecated.core.layout import INDEX_CACHE_FILE, MANIFEST_NAME, PID_FILE, STATE_FILE, Layout
from hecated.core.manifest import DESCRIPTION_MAX, VERSION_MAX, Manifest, ManifestError, check_text
from hecated.core.manifestcache import ManifestCache, key_of, now_ns
from hecated.core.procwatch import ProcessWatcher

log = logging.getLogger("hecated.core.registry")

RUNNING = "running"
STOPPED = "stopped"
INVALID = "invalid"
STATE_MAX = 4096
MAX_WAITERS = 8


@dataclass(frozen=True)
class Entry:
    """What the index holds for one name: a valid manifest, or why the file is not one."""

    name: str
    manifest: Manifest | None = None
    error: ManifestError | None = None


@dataclass(frozen=True)
class Liveness:
    """What a plugin's ``run/`` directory says about its process."""

    status: str
    pid: int | None = None
    state: str | None = None


@dataclass(frozen=True)
class Plugin:
    entry: Entry
    live: Liveness

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def status(self) -> str:
        return INVALID if self.entry.manifest is None else self.live.status


@dataclass(frozen=True)
class Change:
    """One change of the index, numbered so a client can ask for what came after."""

    seq: int
    name: str
    entry: Entry | None
    live: Liveness | None = None


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


class Registry:
    """Thread-safe index of the registered plugins, fed by single-name refreshes.

    The index holds each plugin's manifest *and* its liveness, both read by
    ``refresh(name)``: requests answer from memory, and a status change (a pid
    file written, a process gone) is a change like any other, with its own
    ``seq``. Process exits are learnt from pidfds (procwatch.py), file changes
    from whoever calls ``refresh`` (the API's writes, watch.py).
    """

    def __init__(
        self,
        layout: Layout,
        clock: Callable[[], datetime] = manifest.now_utc,
        max_waiters: int = MAX_WAITERS,
    ):
        self.layout = layout
        self._clock = clock
        self._plugins: dict[str, Plugin] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._seq = 0
        self._closed = False
        self.max_waiters = max_waiters
        self._waiters = 0
        # Writers of one name are serialised; different names proceed in parallel.
        self._stripes = tuple(threading.Lock() for _ in range(64))
        self._listeners: list[Callable[[Change], None]] = []
        self._procs = ProcessWatcher(self._on_exit, pid_alive)
        # Concurrent registrations share their syncs (files.GroupCommit).
        self.commit = GroupCommit()
        # Parsed manifests by file identity, for scans only (see manifestcache.py).
        self.cache = ManifestCache()

    # -- the one path ----------------------------------------------------------------

    def subscribe(self, listener: Callable[[Change], None]) -> None:
        """Call ``listener`` after every change of the index (from any thread)."""
        self._listeners.append(listener)

    def refresh(self, name: str) -> Change | None:
        """Re-read ``name`` from disk and bring the index in step with it."""
        with self._name_lock(name):
            return self._refresh_locked(name)

    def _refresh_locked(self, name: str) -> Change | None:
        entry, live = self._read(name)
        return self._apply(name, entry, live)

    def scan(self, clean_temps: bool = False) -> int:
        """Rebuild the whole index from the tree; returns the number of entries.

        The safety net behind the incremental refreshes: at start, on SIGHUP, and
        whenever a watcher may have missed events. The root is opened once for
        the whole scan (not once per name), each name read under its writer lock.
        With ``clean_temps``, crashed writers' temp files go too.
        """
        try:
            root_fd = open_root(self.layout.root, create=False)
        except FileNotFoundError:
            root_fd = None
        try:
            names = set()
            if root_fd is not None:
                names.update(n for n in os.listdir(root_fd) if self.layout.is_plugin_name(n))
            with self._lock:
                names.update(self._plugins)
            for name in sorted(names):
                with self._name_lock(name):
                    entry, live = self._read(name, root_fd)
                    self._apply(name, entry, live)
            self.cache.retain(names)
            if clean_temps and root_fd is not None:
                for name in sorted(names):
                    self._clean_temps(root_fd, name)
        finally:
            if root_fd is not None:
                os.close(root_fd)
        with self._lock:
            return len(self._plugins)

    @staticmethod
    def _clean_temps(root_fd: int, name: str) -> int:
        try:
            with opened(open_dir(root_fd, name)) as ns_fd:
                return remove_stale_temps(ns_fd, MANIFEST_NAME)
        except (OSError, UnsafePathError):
            return 0

    def _name_lock(self, name: str) -> threading.Lock:
        return self._stripes[hash(name) % len(self._stripes)]

    def _read(self, name: str, root_fd: int | None = -1) -> tuple[Entry | None, Liveness]:
        """Read ``name`` from disk: below ``root_fd`` when the caller holds the root open
        (a scan), else through a fresh open of the root; ``None``: there is no root."""
        path = self.layout.manifest_str(name)
        stopped = Liveness(STOPPED)
        try:
            if root_fd is None:
                return None, stopped
            ns_fd = self.layout.open_namespace(name) if root_fd < 0 else open_dir(root_fd, name)
        except FileNotFoundError:
            return None, stopped
        except UnsafePathError as exc:
            error = ManifestError(self.layout.namespace_str(name), exc.message)
            return Entry(name, error=error), stopped
        except OSError as exc:
            return Entry(name, error=ManifestError(path, exc.strerror or str(exc))), stopped
        with opened(ns_fd):
            try:
                if root_fd < 0:
                    found = manifest.read(ns_fd, name, path)
                else:
                    found = self._read_cached(ns_fd, name, path)
            except ManifestError as exc:
                return Entry(name, error=exc), self._liveness(ns_fd)
            except OSError as exc:
                error = ManifestError(path, exc.strerror or str(exc))
                return Entry(name, error=error), self._liveness(ns_fd)
            except Exception as exc:  # one strange file must never stop a scan or a start
                log.exception("reading %s failed", path)
                error = ManifestError(path, f"cannot be read: {exc}")
                return Entry(name, error=error), self._liveness(ns_fd)
            if found is None:
                return None, stopped
            return Entry(name, manifest=found), self._liveness(ns_fd)

    def _read_cached(self, ns_fd: int, name: str, path: str) -> Manifest | None:
        """``manifest.read``, skipped when the file is the very one parsed before.

        The file's key is taken before and after the read; the parse is
        remembered only when both agree (nobody replaced it meanwhile).
        """
        try:
            before = key_of(os.stat(MANIFEST_NAME, dir_fd=ns_fd, follow_symlinks=False))
        except OSError:
            before = None
        hit = self.cache.get(name, before)
        if hit is not None:
            return hit
        started = now_ns()
        try:
            found = manifest.read(ns_fd, name, path)
        except BaseException:
            self.cache.put(name, None, None, started)
            raise
        try:
            after = key_of(os.stat(MANIFEST_NAME, dir_fd=ns_fd, follow_symlinks=False))
        except OSError:
            after = None
        self.cache.put(name, before if before == after else None, found, started)
        return found

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
            return open_dir(ns_fd, "run")

    def clean_temps(self) -> int:
        """Remove crashed writers' temp files from every namespace; returns how many.

        Safe beside live writes: a temp file named with this run's owner (pid and
        token, ``files.OWNER``) is never removed, and every temp of ours carries it.
        """
        removed = 0
        try:
            root_fd = open_root(self.layout.root, create=False)
        except OSError:
            return 0
        with opened(root_fd):
            for name in sorted(os.listdir(root_fd)):
                if self.layout.is_plugin_name(name):
                    removed += self._clean_temps(root_fd, name)
        return removed

    def _apply(self, name: str, entry: Entry | None, live: Liveness) -> Change | None:
        plugin = None if entry is None else Plugin(entry, live)
        with self._lock:
            old = self._plugins.get(name)
            if old == plugin:
                return None
            if plugin is None:
                del self._plugins[name]
            else:
                self._plugins[name] = plugin
            self._seq += 1
            change = Change(self._seq, name, entry, None if plugin is None else live)
            self._changed.notify_all()
        self._track(name, plugin)
        if entry is not None and entry.error is not None:
            if old is None or old.entry != entry:
                log.warning("plugin %s is invalid: %s", name, entry.error)
        elif entry is not None and old is not None and old.entry.error is not None:
            log.info("plugin %s is valid again", name)
        for listener in self._listeners:
            listener(change)
        return change

    def _track(self, name: str, plugin: Plugin | None) -> None:
        """Hold a pidfd on a running plugin's process, so its exit is a change too."""
        try:
            if plugin is not None and plugin.live.status == RUNNING and plugin.live.pid:
                self._procs.track(name, plugin.live.pid)
            else:
                self._procs.untrack(name)
        except OSError as exc:  # e.g. out of fds: the next refresh of this name tries again
            log.warning("cannot watch the process of plugin %s: %s", name, exc)

    def _on_exit(self, name: str) -> None:
        self.refresh(name)

    # -- the change feed -------------------------------------------------------------------

    def wait(self, since: int, timeout: float) -> int:
        """Block until ``seq`` passes ``since`` (or ``timeout``, or ``close``); return ``seq``.

        At most ``max_waiters`` callers wait at once, so long polls can never
        take every worker thread of the server; the next one gets ``BusyError``.
        A ``since`` ahead of ``seq`` (a client that saw a previous run of the
        daemon) answers at once, so the client resynchronises.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            if self._seq != since or self._closed or timeout <= 0:
                return self._seq
            if self._waiters >= self.max_waiters:
                raise BusyError(
                    f"{self._waiters} clients are already waiting for changes; retry shortly"
                )
            self._waiters += 1
            try:
                while self._seq == since and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
            finally:
                self._waiters -= 1
            return self._seq

    def snapshot(self) -> tuple[int, list[Plugin]]:
        """The sorted list and the ``seq`` it belongs to, read together."""
        with self._lock:
            return self._seq, [self._plugins[n] for n in sorted(self._plugins)]

    def close(self) -> None:
        """Release every waiter at once and stop watching processes (shutdown)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._procs.close()

    # -- writes: each ends in the same refresh ---------------------------------------------

    def register(self, name: object, version: object, description: object) -> tuple[Entry, bool]:
        """Create or update ``name``'s entry; True in the pair when it is new.

        Re-registering is how a plugin daemon restarts: version and description
        are updated, ``registered_at`` and any keys a person added are kept.
        """
        name = self.layout.check_plugin_name(name)
        version = check_text("version", version, VERSION_MAX)
        description = check_text("description", description, DESCRIPTION_MAX)
        with self._name_lock(name):
            try:
                with opened(self.layout.open_namespace(name, create=True)) as ns_fd:
                    path = self.layout.manifest_str(name)
                    try:
                        existing = manifest.read(ns_fd, name, path)
                    except ManifestError:
                        existing = None  # a broken hand edit is replaced by a valid entry
                    now = self._clock()
                    if existing is None:
                        new = Manifest(
                            name, version, description, registered_at=now, updated_at=now
                        )
                    else:
                        new = existing.updated(version, description, now)
                        if new.registered_at is None:
                            new = replace(new, registered_at=now)
                    manifest.write(ns_fd, new, sync=self.commit.sync)
            finally:
                self._refresh_locked(name)  # even after a failure: the index follows the disk
            with self._lock:
                plugin = self._plugins.get(name)
        if plugin is None or plugin.entry.manifest is None:
            raise StorageError(f"the entry of {name!r} changed while it was written; retry")
        return plugin.entry, existing is None

    def deregister(self, name: object) -> None:
        """Remove the registry entry only; the namespace and its data stay."""
        name = self.layout.check_plugin_name(name)
        with self._name_lock(name):
            try:
                try:
                    ns_fd = self.layout.open_namespace(name)
                except FileNotFoundError:
                    raise NotFoundError(f"plugin {name!r} is not registered") from None
                with opened(ns_fd):
                    if not remove_file(ns_fd, MANIFEST_NAME):
                        raise NotFoundError(f"plugin {name!r} is not registered")
            finally:
                self._refresh_locked(name)

    def purge(self, name: object) -> None:
        """Delete a deregistered plugin's namespace and all its data: explicit cleanup."""
        name = self.layout.check_plugin_name(name)
        with self._name_lock(name):
            try:
                self._purge_locked(name)
            finally:
                self._refresh_locked(name)  # a half-done purge still shows as it is

    def _purge_locked(self, name: str) -> None:
        try:
            root_fd = open_root(self.layout.root, create=False)
        except FileNotFoundError:
            raise NotFoundError(f"no namespace {name!r}") from None
        with opened(root_fd):
            try:
                ns_fd = open_dir(root_fd, name)
            except FileNotFoundError:
                raise NotFoundError(f"no namespace {name!r}") from None
            with opened(ns_fd):
                if _exists(ns_fd, MANIFEST_NAME):
                    raise StillRegisteredError(
                        f"plugin {name!r} is still registered; deregister it before purging"
                    )
                if self._liveness(ns_fd).status == RUNNING:
                    raise PluginRunningError(
                        f"plugin {name!r} is running (run/{PID_FILE} names a live process)"
                    )
            try:
                # rmtree on a dir fd never follows a symlink found inside the tree.
                shutil.rmtree(name, dir_fd=root_fd)
                os.fsync(root_fd)
            except OSError as exc:
                raise StorageError(f"cannot remove namespace {name!r}: {exc.strerror}") from exc

    # -- reads: from the index --------------------------------------------------------------

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def __len__(self) -> int:
        with self._lock:
            return len(self._plugins)

    def get(self, name: str) -> Plugin | None:
        with self._lock:
            return self._plugins.get(name)

    def list(self) -> list[Plugin]:
        return self.snapshot()[1]

    def liveness(self, name: str) -> Liveness:
        """Probe a plugin's ``run/`` now (the index holds the value of the last refresh)."""
        try:
            with opened(self.layout.open_namespace(name)) as ns_fd:
                return self._liveness(ns_fd)
        except (OSError, UnsafePathError):
            return Liveness(STOPPED)

    @staticmethod
    def _liveness(ns_fd: int) -> Liveness:
        try:
            run_fd = open_dir(ns_fd, "run")
        except (OSError, UnsafePathError):
            return Liveness(STOPPED)
        with opened(run_fd):
            pid = _read_pid(run_fd)
            try:
                raw = read_regular(run_fd, STATE_FILE, STATE_MAX)
            except (OSError, UnsafePathError):
                raw = None
        state = raw.decode("utf-8", "replace").strip() if raw else None
        alive = pid is not None and pid_alive(pid)
        return Liveness(RUNNING if alive else STOPPED, pid if alive else None, state)


def _read_pid(run_fd: int) -> int | None:
    try:
        raw = read_regular(run_fd, PID_FILE, 64)
    except (OSError, UnsafePathError):
        return None
    try:
        return int(raw.strip()) if raw else None
    except ValueError:
        return None


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
