"""The registry: an in-memory index of ``plugin.toml`` files, kept in step with them.

Files are the truth. Every change, whether it comes from the API or from a
person's editor, ends in ``refresh(name)``: re-read that one name from disk
and put what was read into the index. Because there is only that one path,
the index and the tree cannot disagree for long, and a watcher (watch.py)
can keep the index current by calling ``refresh`` on the names it sees move.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from . import manifest
from .errors import (
    NotFoundError,
    PluginRunningError,
    StillRegisteredError,
    StorageError,
    UnsafePathError,
)
from .files import open_dir, open_root, opened, read_regular, remove_file, remove_stale_temps
from .layout import MANIFEST_NAME, PID_FILE, STATE_FILE, Layout
from .manifest import DESCRIPTION_MAX, VERSION_MAX, Manifest, ManifestError, check_text

RUNNING = "running"
STOPPED = "stopped"
INVALID = "invalid"
STATE_MAX = 4096


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
    """Thread-safe index of the registered plugins, fed by single-name refreshes."""

    def __init__(self, layout: Layout, clock: Callable[[], datetime] = manifest.now_utc):
        self.layout = layout
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._seq = 0
        # Writers of one name are serialised; different names proceed in parallel.
        self._stripes = tuple(threading.Lock() for _ in range(64))
        self._listeners: list[Callable[[Change], None]] = []

    # -- the one path ----------------------------------------------------------------

    def subscribe(self, listener: Callable[[Change], None]) -> None:
        """Call ``listener`` after every change of the index (from any thread)."""
        self._listeners.append(listener)

    def refresh(self, name: str) -> Change | None:
        """Re-read ``name`` from disk and bring the index in step with it."""
        with self._name_lock(name):
            return self._apply(name, self._read(name))

    def scan(self, clean_temps: bool = False) -> int:
        """Rebuild the whole index from the tree; returns the number of entries.

        The safety net behind the incremental refreshes: at start, on SIGHUP, and
        whenever a watcher may have missed events.
        """
        names = set(self._names_on_disk(clean_temps))
        with self._lock:
            names.update(self._entries)
        for name in sorted(names):
            self.refresh(name)
        with self._lock:
            return len(self._entries)

    def _names_on_disk(self, clean_temps: bool) -> Iterable[str]:
        try:
            root_fd = open_root(self.layout.root, create=False)
        except FileNotFoundError:
            return []
        with opened(root_fd):
            names = [n for n in os.listdir(root_fd) if self.layout.is_plugin_name(n)]
            if clean_temps:
                for name in names:
                    self._clean_temps(root_fd, name)
        return names

    @staticmethod
    def _clean_temps(root_fd: int, name: str) -> None:
        try:
            with opened(open_dir(root_fd, name)) as ns_fd:
                remove_stale_temps(ns_fd, MANIFEST_NAME)
        except (OSError, UnsafePathError):
            pass

    def _name_lock(self, name: str) -> threading.Lock:
        return self._stripes[hash(name) % len(self._stripes)]

    def _read(self, name: str) -> Entry | None:
        path = str(self.layout.manifest_path(name))
        try:
            ns_fd = self.layout.open_namespace(name)
        except FileNotFoundError:
            return None
        except UnsafePathError as exc:
            return Entry(name, error=ManifestError(str(self.layout.namespace(name)), exc.message))
        except OSError as exc:
            return Entry(name, error=ManifestError(path, exc.strerror or str(exc)))
        with opened(ns_fd):
            try:
                found = manifest.read(ns_fd, name, path)
            except ManifestError as exc:
                return Entry(name, error=exc)
            except OSError as exc:
                return Entry(name, error=ManifestError(path, exc.strerror or str(exc)))
        return None if found is None else Entry(name, manifest=found)

    def _apply(self, name: str, entry: Entry | None) -> Change | None:
        with self._lock:
            if self._entries.get(name) == entry:
                return None
            if entry is None:
                del self._entries[name]
            else:
                self._entries[name] = entry
            self._seq += 1
            change = Change(self._seq, name, entry)
            self._changed.notify_all()
        for listener in self._listeners:
            listener(change)
        return change

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
            with opened(self.layout.open_namespace(name, create=True)) as ns_fd:
                path = str(self.layout.manifest_path(name))
                try:
                    existing = manifest.read(ns_fd, name, path)
                except ManifestError:
                    existing = None  # a broken hand edit is replaced by a valid entry
                now = self._clock()
                if existing is None:
                    new = Manifest(name, version, description, registered_at=now, updated_at=now)
                else:
                    new = existing.updated(version, description, now)
                    if new.registered_at is None:
                        new = replace(new, registered_at=now)
                manifest.write(ns_fd, new)
            entry = self._read(name)
            self._apply(name, entry)
        assert entry is not None and entry.manifest is not None
        return entry, existing is None

    def deregister(self, name: object) -> None:
        """Remove the registry entry only; the namespace and its data stay."""
        name = self.layout.check_plugin_name(name)
        with self._name_lock(name):
            try:
                ns_fd = self.layout.open_namespace(name)
            except FileNotFoundError:
                raise NotFoundError(f"plugin {name!r} is not registered") from None
            with opened(ns_fd):
                if not remove_file(ns_fd, MANIFEST_NAME):
                    raise NotFoundError(f"plugin {name!r} is not registered")
            self._apply(name, self._read(name))

    def purge(self, name: object) -> None:
        """Delete a deregistered plugin's namespace and all its data: explicit cleanup."""
        name = self.layout.check_plugin_name(name)
        with self._name_lock(name):
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
            self._apply(name, self._read(name))

    # -- reads: from the index --------------------------------------------------------------

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, name: str) -> Plugin | None:
        with self._lock:
            entry = self._entries.get(name)
        return None if entry is None else Plugin(entry, self.liveness(name))

    def list(self) -> list[Plugin]:
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.name)
        return [Plugin(e, self.liveness(e.name)) for e in entries]

    def liveness(self, name: str) -> Liveness:
        """Read a plugin's ``run/daemon.pid`` and ``run/daemon.state``."""
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
