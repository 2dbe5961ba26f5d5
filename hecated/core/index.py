"""The index: an in-memory view of the ``plugin.toml`` files, and its change feed.

Files are the truth. Every change, whether it comes from the API or from a
person's editor, ends in ``refresh(name)``: re-read that one name (store.py)
and put what was read into the index. Because there is only that one path,
the index and the tree cannot disagree for long, and a watcher (adapters/watch)
keeps the index current by calling ``refresh`` on the names it sees move.

A plugin's status is computed here by one rule (status.combine) from three
findings: its run dir, which every refresh reads itself (runstate.read_run: a
new entry and its status are one change), the last look at its socket, which
an adapter (adapters/liveness) publishes with ``set_finding``, and its unit's
state, which the unit adapters (adapters/unitstatus) publish with ``set_unit``. The core
calls no adapter: adapters learn of changes from the change feed
(``subscribe``) and publish into the index; the daemon wires them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from hecated.core import manifest, startscan
from hecated.core.errors import (
    BusyError,
    NotFoundError,
    PluginRunningError,
    StillRegisteredError,
    UnsafePathError,
)
from hecated.core.files import GroupCommit, opened
from hecated.core.layout import Layout
from hecated.core.manifest import DESCRIPTION_MAX, VERSION_MAX, check_text, check_unit
from hecated.core.manifestcache import ManifestCache
from hecated.core.runstate import RunState, read_run
from hecated.core.status import Liveness, SocketFinding, UnitFinding, combine
from hecated.core.store import Entry, Found, Root, Store
from hecated.protocol import PluginStatus

if TYPE_CHECKING:  # only in annotations here: the module loads with the gitops reconciler
    from hecated.core.installed import Installed

log = logging.getLogger("hecated.core.index")

MAX_WAITERS = 8

__all__ = [
    "Change",
    "Entry",
    "Index",
    "Plugin",
]


@dataclass(frozen=True)
class Plugin:
    """One name in the index. ``registered`` False: discovered, no ``plugin.toml``
    (its ``entry`` then holds no manifest and no error); kept only while its
    socket answers, or while it is ``installed`` (a desired-state file in the
    gitops tree names it, core/installed.py)."""

    entry: Entry
    live: Liveness
    registered: bool = True
    installed: Installed | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def status(self) -> PluginStatus:
        if self.registered and self.entry.manifest is None:
            return PluginStatus.INVALID
        return self.live.status


@dataclass(frozen=True)
class Change:
    """One change of the index, numbered so a client can ask for what came after.

    ``old`` and ``plugin`` are the name's entry before and after (None: not listed):
    what changed is told by comparing them (core/events.py names it), so no writer
    has to say which kind of change it made."""

    seq: int
    name: str
    entry: Entry | None
    live: Liveness | None = None
    old: Plugin | None = None
    plugin: Plugin | None = None


class Index:
    """Thread-safe index of the registered plugins, fed by single-name refreshes.

    Requests answer from memory; a status change (a pid file written, a process
    gone) is a change like any other, with its own ``seq``.
    """

    def __init__(
        self,
        layout: Layout,
        clock: Callable[[], datetime] = manifest.now_utc,
        max_waiters: int = MAX_WAITERS,
        store: Store | None = None,
    ):
        self.layout = layout
        self.store = store or Store(layout)
        self._clock = clock
        self._plugins: dict[str, Plugin] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._seq = 0
        self._closed = False
        self.max_waiters = max_waiters
        self._waiters = 0
        # Writers of one name are serialised; different names proceed in parallel.
        # Re-entrant: a listener may publish (set_finding) from inside a refresh.
        self._stripes = tuple(threading.RLock() for _ in range(64))
        self._listeners: list[Callable[[Change], None]] = []
        # Called under self._lock, in seq order (``follow``): a record of the changes.
        self._followers: list[Callable[[Change], None]] = []
        # The last look at each listed name's socket, as an adapter published it.
        self._findings: dict[str, SocketFinding] = {}
        # What the user manager last said of each listed name's unit (absent: nothing).
        self._units: dict[str, UnitFinding] = {}
        # What the gitops reconciler last found installed, by plugin (absent: not installed).
        self._installed: dict[str, Installed] = {}
        self._rereads: dict[str, threading.Timer] = {}
        self._rereads_lock = threading.Lock()
        self._head: startscan.HeadStart | None = None  # the start scan begun early
        self.cached_at_start = 0  # manifests the cache held when the start scan began

    @property
    def cache(self) -> ManifestCache:
        return self.store.cache

    @property
    def commit(self) -> GroupCommit:
        return self.store.commit

    def subscribe(self, listener: Callable[[Change], None]) -> None:
        """Call ``listener`` after every change of the index (from any thread, under
        the changed name's lock: a listener queues work, it never blocks)."""
        self._listeners.append(listener)

    def follow(self, follower: Callable[[Change], None]) -> int:
        """Call ``follower`` with every change from now on, in ``seq`` order without a gap,
        under the index's own lock; returns the ``seq`` it starts after.

        For a record of the changes that clients resume by ``seq`` (core/events.py):
        ``subscribe``'s listeners run under the name's lock only, so two names'
        changes may reach them out of order. A follower only appends to memory: it
        never blocks, never calls the index, never takes a lock a writer may hold."""
        with self._lock:
            self._followers.append(follower)
            return self._seq

    def name_lock(self, name: str) -> AbstractContextManager[bool]:
        """``name``'s writer lock, to hold with ``with``: a probe and its publication are
        then one step. (The lock itself, not a generator around it: a start scan takes
        10,000.)"""
        return self._stripes[hash(name) % len(self._stripes)]

    # -- the one path ----------------------------------------------------------------

    def refresh(self, name: str) -> Change | None:
        """Re-read ``name`` from disk and bring the index in step with it."""
        with self.name_lock(name), self.store.root() as root:
            return self._refresh_locked(name, root)

    def _refresh_locked(self, name: str, root: Root, cached: bool = False) -> Change | None:
        found = self.store.read(name, root, cached)
        return self._publish(name, found, root)

    def _publish(
        self, name: str, found: Found, root: Root, run: RunState | None = None
    ) -> Change | None:
        """Put what was read into the index (``run``: the run dir, when the reader has
        already read it through the namespace's fd; else it is read here)."""
        if found.reread_in is not None:
            # Still being written: keep what we had, say nothing, look again later.
            self._reread_later(name, found.reread_in)
            old = self.get(name)
            entry = None if old is None else old.entry
            if old is None:
                return None
        else:
            entry = found.entry
        return self._apply(name, entry, self._liveness(name, root, run))

    def _liveness(self, name: str, root: Root, run: RunState | None = None) -> Liveness:
        """``name``'s status now: its run dir read (unless given), combined with its last
        socket finding (cheap: two small file reads and a kill(pid, 0); no socket I/O)."""
        if run is None:
            run = _read_run(root, name)
        with self._lock:
            found, unit = self._findings.get(name), self._units.get(name)
        return combine(run, found, unit)

    def scan(self, clean_temps: bool = False, at_start: bool = False) -> int:
        """Rebuild the whole index from the tree; returns the number of entries.

        The safety net behind the incremental refreshes: at start, on SIGHUP, and
        whenever a watcher may have missed events. The root is opened once for
        the whole scan (not once per name), each name read under its writer lock.
        With ``clean_temps``, crashed writers' temp files go too.

        ``at_start``: the daemon's first scan, before anything is served or
        watched. On a large tree never seen, a forked child reads and parses the
        later names while this process reads and publishes the earlier ones
        (``startscan.read_each``); the names are published in the same order and
        with the same result as the one-by-one reads. After ``head_start``, the
        scan goes on with the root, the names and the child it began with.
        """
        head = self._take_head(at_start)
        with head.root if head is not None else self.store.root() as root:
            names = set(head.names if head is not None else root.names())
            with self._lock:
                names.update(self._plugins)
            ordered = sorted(names)
            if at_start:
                for name, found, run in self._start_reads(ordered, root, head):
                    with self.name_lock(name):
                        self._publish(name, found, root, run)
            else:
                for name in ordered:
                    with self.name_lock(name):
                        self._refresh_locked(name, root, cached=True)
            self.cache.retain(names)
            if clean_temps:
                self.store.clean_temps(root, sorted(names))
        with self._lock:
            return len(self._plugins)

    def _take_head(self, at_start: bool) -> startscan.HeadStart | None:
        """The head start, for the start scan only (any other scan stops it)."""
        head, self._head = self._head, None
        if head is not None and not at_start:
            head.close()
            return None
        return head

    def _start_reads(
        self, ordered: list[str], root: Root, head: startscan.HeadStart | None
    ) -> Iterator[startscan.Read]:
        """The start scan's reads: with the head start's child, else one started now."""
        if head is not None:
            child = head.child_for(ordered)
        else:
            child = startscan.start_child(self.store, ordered, root)
        return startscan.read_with(self.store, ordered, root, child)

    def head_start(self) -> int:
        """Begin the daemon's start scan now, before its heavier imports: the manifest
        cache loaded, the tree listed, the reading child forked (``startscan.HeadStart``);
        ``scan(at_start=True)`` goes on from there. Call it only while no other thread
        runs. The number of cached manifests; a tree that cannot be opened is left for
        the scan to report.
        """
        self.cached_at_start = self.load_cache()
        try:
            self._head = startscan.HeadStart.begin(self.store)
        except (OSError, UnsafePathError):
            self._head = None
        return self.cached_at_start

    def drop_head_start(self) -> None:
        """A start that ends before its scan: the reading child stopped, the root closed."""
        head, self._head = self._head, None
        if head is not None:
            head.close()

    def _reread_later(self, name: str, delay: float) -> None:
        """One pending re-read per name, however often a half-written file is met."""
        with self._rereads_lock:
            if self._closed or name in self._rereads:
                return
            timer = threading.Timer(delay, self._reread, (name,))
            timer.daemon = True
            timer.name = f"hecated-reread-{name}"
            self._rereads[name] = timer
        try:
            timer.start()
        except RuntimeError:  # no thread to be had: forget it, so the next read asks again
            with self._rereads_lock:
                self._rereads.pop(name, None)
            raise

    def _reread(self, name: str) -> None:
        with self._rereads_lock:
            self._rereads.pop(name, None)
            if self._closed:
                return
        try:
            self.refresh(name)
        except Exception:
            log.exception("re-reading %s failed", name)

    @property
    def pending_rereads(self) -> set[str]:
        with self._rereads_lock:
            return set(self._rereads)

    def _apply(self, name: str, entry: Entry | None, live: Liveness) -> Change | None:
        with self._lock:
            plugin = _plugin_of(name, entry, live, self._installed.get(name))
            old = self._plugins.get(name)
            if old == plugin:
                return None
            change = self._put_locked(name, plugin, entry, live)
        if entry is not None and entry.error is not None:
            if old is None or old.entry != entry:
                log.warning("plugin %s is invalid: %s", name, entry.error)
        elif entry is not None and old is not None and old.entry.error is not None:
            log.info("plugin %s is valid again", name)
        self._tell(change)
        return change

    def _put_locked(
        self, name: str, plugin: Plugin | None, entry: Entry | None, live: Liveness
    ) -> Change:
        """Store (or drop) ``name``'s plugin and number the change; under ``self._lock``."""
        old = self._plugins.get(name)
        if plugin is None:
            del self._plugins[name]
            self._findings.pop(name, None)
            self._units.pop(name, None)
        else:
            self._plugins[name] = plugin
        self._seq += 1
        if self._waiters:  # only ``wait`` waits on it (a notify costs µs: 10,000 at start)
            self._changed.notify_all()
        change = Change(self._seq, name, entry, None if plugin is None else live, old, plugin)
        for follower in self._followers:
            try:
                follower(change)
            except Exception:  # a record's fault never fails the write it records
                log.exception("recording change %d failed", change.seq)
        return change

    def set_finding(self, name: str, found: SocketFinding) -> Change | None:
        """Publish what a look at ``name``'s socket found; a change (new ``seq``) only
        when the status it makes (with the run dir read now) differs.

        For the adapter that probes sockets; it calls this under ``name_lock(name)``
        with its probe, so an older finding never overwrites a newer one. A name
        not in the index is added as discovered when its socket answers, and a
        discovered name goes when it stops answering; otherwise ignored.
        """
        with self.name_lock(name):
            with self._lock:
                self._findings[name] = found
            return self.refresh_status(name)

    def set_unit(self, name: str, unit: UnitFinding | None) -> Change | None:
        """Publish what the user manager says of ``name``'s unit (None: nothing now, the
        manager is away or the plugin has no unit); a change only when the status or the
        unit block it makes differs. For the unit adapters, like ``set_finding``: a name
        not in the index is ignored (a unit never makes a plugin listed)."""
        with self.name_lock(name):
            with self._lock:
                if name not in self._plugins:
                    return None
                if unit is None:
                    self._units.pop(name, None)
                else:
                    self._units[name] = unit
            return self.refresh_status(name)

    def unit(self, name: str) -> UnitFinding | None:
        """The last unit finding published for ``name`` (None: none)."""
        with self._lock:
            return self._units.get(name)

    def set_installed(self, name: str, installed: Installed | None) -> Change | None:
        """Publish what the gitops reconciler found installed for ``name`` (None: no
        desired-state file names it now); a change only when it differs. An installed
        name is listed registered or not, answering or not; uninstalled, a name neither
        registered nor answering goes (its namespace and data stay)."""
        with self.name_lock(name):
            with self._lock:
                if self._installed.get(name) == installed:
                    return None
                if installed is None:
                    del self._installed[name]
                else:
                    self._installed[name] = installed
            return self.refresh_status(name)

    def installed(self, name: str) -> Installed | None:
        """What the reconciler last published for ``name`` (None: not installed)."""
        with self._lock:
            return self._installed.get(name)

    def refresh_status(self, name: str) -> Change | None:
        """Compute ``name``'s status again (its run dir read now, its last socket
        finding, what is installed) without reading its ``plugin.toml``: a process
        exit, a finding, an install."""
        with self.name_lock(name), self.store.root() as root:
            live = self._liveness(name, root)
            with self._lock:
                old = self._plugins.get(name)
                installed = self._installed.get(name)
                if old is not None and old.registered:
                    plugin: Plugin | None = Plugin(old.entry, live, installed=installed)
                else:  # discovered, or not in the index: an answering socket or a file keeps it
                    plugin = _plugin_of(name, None, live, installed)
                if plugin is None and old is None:
                    self._findings.pop(name, None)
                    self._units.pop(name, None)
                    return None
                if plugin == old:
                    return None
                entry = None if plugin is None or not plugin.registered else plugin.entry
                change = self._put_locked(name, plugin, entry, live)
            self._tell(change)  # under the name's lock: a name's changes told in order
        return change

    def finding(self, name: str) -> SocketFinding | None:
        """The last socket finding published for ``name`` (None: never probed)."""
        with self._lock:
            return self._findings.get(name)

    def _tell(self, change: Change) -> None:
        for listener in self._listeners:
            listener(change)

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
        """Release every waiter at once, drop pending re-reads (adapters are the daemon's)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        with self._rereads_lock:
            timers, self._rereads = list(self._rereads.values()), {}
        for timer in timers:
            timer.cancel()

    # -- writes ------------------------------------------------------------------------------

    def register(
        self, name: object, version: object, description: object, unit: object = None
    ) -> tuple[Entry, bool]:
        """Create or update ``name``'s entry; True in the pair when it is new.

        Re-registering is how a plugin daemon restarts: version and description
        are updated, ``registered_at`` and any keys a person added are kept.
        What was written is published as is, not read back; the watcher's echo
        of the write is recognised by the store and costs no parse. ``unit``
        (the systemd user unit that runs it) is written when given, else kept.
        """
        name = self.layout.check_plugin_name(name)
        version = check_text("version", version, VERSION_MAX)
        description = check_text("description", description, DESCRIPTION_MAX)
        unit = None if unit is None else check_unit(unit)
        with self.name_lock(name):
            try:
                written = self.store.write(name, version, description, self._clock(), unit)
            except BaseException:
                with self.store.root() as root:
                    self._refresh_locked(name, root)  # the index follows the disk
                raise
            entry = Entry(name, manifest=written.manifest)
            with self.store.root() as root:
                self._apply(name, entry, self._liveness(name, root))
        return entry, written.created

    def deregister(self, name: object) -> None:
        """Remove the registry entry only; the namespace and its data stay."""
        name = self.layout.check_plugin_name(name)
        with self.name_lock(name):
            try:
                if not self.store.remove(name):
                    raise NotFoundError(f"plugin {name!r} is not registered")
            finally:
                with self.store.root() as root:
                    self._refresh_locked(name, root)

    def purge(self, name: object) -> None:
        """Delete a deregistered plugin's namespace and all its data: explicit cleanup."""
        name = self.layout.check_plugin_name(name)
        with self.name_lock(name):
            found = self.get(name)
            if found is not None and not found.registered and found.live.answering:
                # No pid file to refuse by: a discovered plugin is known alive by its socket.
                raise PluginRunningError(
                    f"plugin {name!r} answers on its socket; stop it before purging its data"
                )
            installed = self.installed(name)
            if installed is not None:  # its unit would start again into a missing namespace
                raise StillRegisteredError(
                    f"plugin {name!r} is installed by {installed.path}; uninstall it (remove "
                    "that file) before purging its data"
                )
            from hecated.core.purge import purge_namespace  # a purge is rare: off the start

            self.store.forget(name)
            with self.store.root() as root:
                try:
                    purge_namespace(root, name)
                finally:
                    self._refresh_locked(name, root)  # a half-done purge still shows as it is

    # -- start-up and shut-down chores (the store's) ------------------------------------------

    def clean_temps(self) -> int:
        return self.store.clean_temps()

    def load_cache(self) -> int:
        return startscan.load_cache(self.store, self.layout)

    def save_cache(self) -> bool:
        return startscan.save_cache(self.store, self.layout)

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


def _read_run(root: Root, name: str) -> RunState:
    try:
        with opened(root.namespace(name)) as ns_fd:
            return read_run(ns_fd)
    except (OSError, UnsafePathError):
        return RunState()


def _plugin_of(
    name: str, entry: Entry | None, live: Liveness, installed: Installed | None = None
) -> Plugin | None:
    """What the index holds for ``name``: the registered entry, or an unregistered one
    while its socket answers or a desired-state file installs it (no ``plugin.toml`` is
    ever made, changed or removed for it)."""
    if entry is not None:
        return Plugin(entry, live, installed=installed)
    if live.answering or installed is not None:
        return Plugin(Entry(name), live, registered=False, installed=installed)
    return None
