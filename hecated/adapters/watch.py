"""Keeps the registry in step with hand edits: inotify events -> ``registry.refresh(name)``.

What is watched, and why no more: the root's parent (the root may be removed
and created again; a watch on the root itself dies with it), the root (namespace
directories come and go), each namespace directory *non-recursively* (its
``plugin.toml``, and its ``run/`` appearing), each ``run/`` (pid and state
files), and each ``sockets/`` (``api.sock`` bound or removed: ``Change.SOCKET``,
handed to the liveness prober, no file read). That is three inotify watches
per plugin, plus two; ``sqlite/`` and
``reckon-db/``, which plugins fill with their own data, are never watched.

Why a watchdog emitter of our own rather than ``Observer.schedule()`` per
directory: every scheduled watch gets its own emitter thread (watchdog 7), and
on watchdog 2.2.1 its own inotify instance too, of which a user gets 128. For
10,000 plugins that is 20,000 threads, or a failure at the 128th. A recursive
``schedule()`` on the root would watch every directory plugins create, and with
the default event mask its own walk overflows the kernel queue beyond ~4,000
directories. So this module plugs one ``TreeEmitter`` into a watchdog
``BaseObserver``: one thread, one inotify instance, exactly the watches above,
with a mask that leaves out open/access/close-nowrite events. It uses only
what watchdog 2.2.1 and 7.x both have (``inotify_c``'s ctypes bindings and
constants, ``EventEmitter``, ``BaseObserver``, ``FileSystemEvent``).

One vocabulary from the raw event to the refresh: the emitter turns an inotify
mask into a ``Change`` (WRITING, COMPLETE, GONE, RESCAN) once, and the
refresher schedules by it. "Settle" means one thing here: ``Watcher.settle()``,
a barrier (every event made before the call read, dispatched, and its refresh
done), built on a marker written into the same inotify queue.

Moves are not paired (no 0.5 s wait for a matching ``IN_MOVED_TO``): a move is
a deletion here and a creation there, and each name involved is refreshed.
Bursts are debounced per name: one save is one refresh. A deleted
``plugin.toml`` is dropped only after a short grace, because vim moves the
file away and writes a new one. On a queue overflow or an unexpected error the
watches are rebuilt and the whole tree rescanned.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import heapq
import logging
import os
import select
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver, EventEmitter
from watchdog.observers.inotify_c import (
    InotifyConstants as IN,
)
from watchdog.observers.inotify_c import (
    inotify_add_watch,
    inotify_init,
    inotify_rm_watch,
)

from hecated.core.index import Index as Registry  # (helper B: the alias is gone)
from hecated.core.layout import MANIFEST_NAME, PID_FILE, SOCKET_NAME, SOCKETS_DIR, STATE_FILE

log = logging.getLogger("hecated.adapters.watch")

RUN_DIR = "run"
RUN_FILES = frozenset({PID_FILE, STATE_FILE})
_CHANGES = IN.IN_CREATE | IN.IN_DELETE | IN.IN_MOVED_FROM | IN.IN_MOVED_TO
_SELF = IN.IN_DELETE_SELF | IN.IN_MOVE_SELF
_SAFE = IN.IN_ONLYDIR | IN.IN_DONT_FOLLOW | IN.IN_EXCL_UNLINK
# No IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE: reading a file must not make an event.
PARENT_MASK = IN.IN_CREATE | IN.IN_DELETE | IN.IN_MOVED_FROM | IN.IN_MOVED_TO | _SELF | _SAFE
ROOT_MASK = _CHANGES | IN.IN_ATTRIB | _SELF | _SAFE  # attrib: a namespace chmod 000 and back
FILES_MASK = _CHANGES | IN.IN_MODIFY | IN.IN_CLOSE_WRITE | IN.IN_ATTRIB | _SELF | _SAFE
# sockets/: only a socket bound or unlinked (or moved) matters, never its traffic.
SOCKETS_MASK = _CHANGES | _SELF | _SAFE
_HEADER = struct.Struct("iIII")

DEBOUNCE = 0.002  # a save's events arrive within microseconds of each other
CLOSE_WAIT = 0.5  # after IN_MODIFY, wait this long for the writer's close
MAX_DEFER = 2 * CLOSE_WAIT  # a name's refresh is never put off longer than this
DELETE_GRACE = 0.1  # vim: plugin.toml moved away, a new one written at once


class Change(enum.Enum):
    """What an inotify event means for the refresh of one name: the watcher's one vocabulary.

    The emitter decides it once, from the raw mask; the refresher schedules by it.
    """

    WRITING = enum.auto()  # created or modified in place: wait for the writer's close
    COMPLETE = enum.auto()  # closed after writing, moved in, a namespace came: read soon
    GONE = enum.auto()  # deleted or moved away (moves are not paired): read after a grace
    RESCAN = enum.auto()  # events may have been lost (overflow, errors): rebuild from the tree
    SOCKET = enum.auto()  # sockets/api.sock bound or removed: probe the plugin, read no file


class TreeEvent(FileSystemEvent):
    """A watchdog event carrying a ``Change`` for a plugin name ("" for a rescan).

    ``event_type`` spells the change so that watchdog's queue, which drops an
    event equal to the one just before it, only folds true repeats.
    """

    def __init__(self, src_path: str, name: str, change: Change) -> None:
        super().__init__(src_path)
        self.name = name
        self.change = change
        self.event_type = f"hecate-{change.name.lower()}"


class BarrierEvent(FileSystemEvent):
    """Every inotify event read before marker ``seq`` has been queued ahead of this one."""

    is_directory = True

    def __init__(self, src_path: str, seq: int) -> None:
        super().__init__(src_path)
        self.seq = seq
        self.event_type = f"hecate-barrier-{seq}"


@dataclass(frozen=True)
class Place:
    """What a watch descriptor watches: the parent, the root, a namespace, a ``run/``,
    or a ``sockets/``."""

    kind: str  # "parent" | "root" | "ns" | "run" | "sockets"
    name: str = ""


class TreeEmitter(EventEmitter):
    """A watchdog emitter for the ``~/.hecate`` tree: one inotify fd, only the needed watches.

    Emits a ``TreeEvent`` (a name and its ``Change``) for the paths that matter,
    a ``Change.RESCAN`` whenever events may have been lost, and a ``BarrierEvent``
    for each marker ``settle()`` writes into the inotify stream.
    """

    def __init__(self, event_queue, watch, timeout=1.0, event_filter=None, *, is_plugin_name):
        super().__init__(event_queue, watch, timeout=timeout)
        self.root = Path(watch.path)
        self.parent = self.root.parent
        self._is_plugin_name: Callable[[str], bool] = is_plugin_name
        self._fd = -1
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._places: dict[int, Place] = {}
        self._wds: dict[Place, int] = {}
        self._lock = threading.Lock()
        # Markers: a private directory whose file creations travel through the same
        # inotify queue as every other event, so reading marker N proves that all
        # events made before it were read. Made on the first ``mark()`` only.
        self._marker_dir: Path | None = None
        self._marker_wd = -1
        self._marker_seq = 0

    # -- watchdog's hooks ---------------------------------------------------------------

    def on_thread_start(self) -> None:
        fd = inotify_init()
        if fd == -1:
            raise OSError(errno.EMFILE, "cannot create an inotify instance")
        os.set_blocking(fd, False)
        self._fd = fd
        self._establish()

    def on_thread_stop(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            self._places.clear()
            self._wds.clear()
            self._marker_wd = -1
            marker_dir, self._marker_dir = self._marker_dir, None
        if marker_dir is not None:
            shutil.rmtree(marker_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")  # end the select() now, not at its timeout
        if fd != -1:
            with contextlib.suppress(OSError):
                os.close(fd)

    def run(self) -> None:
        try:
            super().run()
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)

    def queue_events(self, timeout: float) -> None:
        if self._fd == -1:
            return
        if Place("parent") not in self._wds:  # the parent itself is missing: retry
            timeout = min(timeout, 1.0)  # markers are still read meanwhile
            self._establish()
        try:
            # poll, not select: the fd limit is raised, and select() fails past fd 1023.
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(timeout * 1000)}
            if self._fd not in ready:
                return
            data = os.read(self._fd, 64 * 1024)
        except (OSError, ValueError) as exc:
            if self._fd == -1:
                return  # stopped while reading
            log.warning("reading inotify events failed (%s); rescanning", exc)
            self._establish()
            return
        try:
            self._handle(data)
        except Exception:
            log.exception("handling inotify events failed; rescanning")
            self._establish()

    # -- watches ------------------------------------------------------------------------

    @property
    def watch_count(self) -> int:
        with self._lock:
            return len(self._wds)

    def mark(self) -> int | None:
        """Write marker ``seq`` into the inotify stream; its ``BarrierEvent`` follows
        every event made before this call. None when the emitter is not running."""
        with self._lock:
            if self._fd == -1:
                return None
            if self._marker_wd == -1:
                if self._marker_dir is None:
                    self._marker_dir = Path(tempfile.mkdtemp(prefix="hecated-marker-"))
                wd = inotify_add_watch(
                    self._fd, os.fsencode(self._marker_dir), IN.IN_CREATE | _SAFE
                )
                if wd == -1:
                    return None
                self._marker_wd = wd
            self._marker_seq += 1
            seq = self._marker_seq
            path = self._marker_dir / str(seq)
            try:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
                os.unlink(path)
            except OSError:
                return None
            return seq

    def _add(self, place: Place, path: Path, mask: int) -> bool:
        wd = inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd == -1:
            err = ctypes_errno()
            if err == errno.ENOSPC:
                log.error(
                    "inotify watch limit reached at %d watches; raise "
                    "fs.inotify.max_user_watches (hand edits of %s go unseen until a rescan)",
                    len(self._wds),
                    path,
                )
            return False
        old = self._places.get(wd)
        if old is not None and old != place:  # the same inode seen under a new name
            self._wds.pop(old, None)
        self._places[wd] = place
        self._wds[place] = wd
        return True

    def _remove(self, place: Place) -> None:
        wd = self._wds.pop(place, None)
        if wd is not None:
            self._places.pop(wd, None)
            inotify_rm_watch(self._fd, wd)  # fails harmlessly when the kernel dropped it

    def _path_of(self, place: Place) -> Path:
        if place.kind == "parent":
            return self.parent
        if place.kind == "root":
            return self.root
        if place.kind == "ns":
            return self.root / place.name
        if place.kind == "sockets":
            return self.root / place.name / SOCKETS_DIR
        return self.root / place.name / RUN_DIR

    def _watch_namespace(self, name: str) -> None:
        if self._add(Place("ns", name), self.root / name, FILES_MASK):
            self._add(Place("run", name), self.root / name / RUN_DIR, FILES_MASK)
            # IN_DONT_FOLLOW | IN_ONLYDIR: a sockets/ that is a symlink is never watched.
            self._add(Place("sockets", name), self.root / name / SOCKETS_DIR, SOCKETS_MASK)

    def _unwatch_namespace(self, name: str) -> None:
        self._remove(Place("sockets", name))
        self._remove(Place("run", name))
        self._remove(Place("ns", name))

    def _establish(self, notify: bool = True) -> None:
        """(Re)build every watch from what is on disk now, then ask for a full rescan.

        Watches come first, the rescan after: whatever changes after a watch is
        in place makes an event, whatever changed before is read by the rescan.
        """
        with self._lock:
            if self._fd == -1:
                return
            for place in list(self._wds):
                self._remove(place)
            if not self._add(Place("parent"), self.parent, PARENT_MASK):
                return
            self._watch_root()
        if notify:
            self.queue_event(TreeEvent(os.fsdecode(self.root), "", Change.RESCAN))

    def _watch_root(self) -> None:
        if not self._add(Place("root"), self.root, ROOT_MASK):
            return
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for name in names:
            if self._is_plugin_name(name):
                self._watch_namespace(name)

    # -- events -------------------------------------------------------------------------

    def _handle(self, data: bytes) -> None:
        out: list[TreeEvent] = []
        rescan = False
        marker = 0
        with self._lock:
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                raw = data[offset + _HEADER.size : offset + _HEADER.size + length]
                offset += _HEADER.size + length
                name = os.fsdecode(raw.rstrip(b"\0"))
                if mask & IN.IN_Q_OVERFLOW:
                    log.warning("inotify queue overflowed; rebuilding watches and rescanning")
                    rescan = True
                    marker = self._marker_seq  # markers may be lost: the rescan covers them
                    continue
                if wd == self._marker_wd and wd != -1:
                    if mask & IN.IN_IGNORED:
                        self._marker_wd = -1
                    elif name.isdigit():
                        marker = max(marker, int(name))
                    continue
                place = self._places.get(wd)
                if place is None:
                    continue  # a watch we already removed
                if mask & IN.IN_IGNORED:
                    self._places.pop(wd, None)
                    if self._wds.get(place) == wd:
                        del self._wds[place]
                    continue
                rescan |= self._on_event(place, mask, name, out)
        for event in out:
            self.queue_event(event)
        if rescan:
            self._establish()
        if marker:
            self.queue_event(BarrierEvent(os.fsdecode(self.root), marker))

    def _emit(self, out: list[TreeEvent], path: Path, name: str, change: Change) -> None:
        out.append(TreeEvent(os.fsdecode(path), name, change))

    def _on_event(self, place: Place, mask: int, name: str, out: list[TreeEvent]) -> bool:
        """Keep the watches in step and say what changed; True when a rescan is due."""
        gone = bool(mask & (IN.IN_DELETE | IN.IN_MOVED_FROM))
        came = bool(mask & (IN.IN_CREATE | IN.IN_MOVED_TO))
        is_dir = bool(mask & IN.IN_ISDIR)
        if place.kind == "parent":
            if name != self.root.name:
                return bool(mask & _SELF)  # the parent itself moved: start over
            if came:
                self._watch_root()
                return True
            if gone:
                for p in [p for p in self._wds if p.kind != "parent"]:
                    self._remove(p)
                return True
            return False
        if mask & _SELF:
            # The root moved or vanished under the parent's nose: the parent says
            # so too, but a namespace or run/ going is also reported by its parent.
            return place.kind == "root"
        if place.kind == "root":
            if not self._is_plugin_name(name):
                return False
            path = self.root / name
            if is_dir and came:
                self._watch_namespace(name)
                self._emit(out, path, name, Change.COMPLETE)
            elif is_dir and gone:
                self._unwatch_namespace(name)
                self._emit(out, path, name, Change.GONE)
            else:  # a file where a namespace would be, or a namespace's mode changed
                self._emit(out, path, name, Change.COMPLETE)
            return False
        base = self._path_of(place)
        if place.kind == "ns" and name == RUN_DIR:
            if is_dir and came:
                self._add(Place("run", place.name), base / RUN_DIR, FILES_MASK)
            elif gone:
                self._remove(Place("run", place.name))
            self._emit(out, base / RUN_DIR, place.name, Change.COMPLETE)  # pid files come/go
            return False
        if place.kind == "ns" and name == SOCKETS_DIR:
            if is_dir and came:
                self._add(Place("sockets", place.name), base / SOCKETS_DIR, SOCKETS_MASK)
            elif gone:
                self._remove(Place("sockets", place.name))
            self._emit(out, base / SOCKETS_DIR, place.name, Change.SOCKET)
            return False
        if place.kind == "sockets":
            if name == SOCKET_NAME:
                self._emit(out, base / name, place.name, Change.SOCKET)
            return False
        wanted = MANIFEST_NAME if place.kind == "ns" else None
        if (wanted and name != wanted) or (place.kind == "run" and name not in RUN_FILES):
            return False
        self._emit(out, base / name, place.name, file_change(mask))
        return False


def file_change(mask: int) -> Change:
    """What an event on ``plugin.toml`` or a ``run/`` file means.

    Created and modified mean a writer may still be at work (wait for its
    close); closed and moved-in mean the file is complete; deleted covers
    moved-away too (moves are not paired).
    """
    if mask & (IN.IN_DELETE | IN.IN_MOVED_FROM):
        return Change.GONE
    if mask & (IN.IN_CLOSE_WRITE | IN.IN_MOVED_TO):
        return Change.COMPLETE
    return Change.WRITING  # created, written or attributes changed


def ctypes_errno() -> int:
    """errno of the last inotify call (watchdog's bindings are made with use_errno=True)."""
    return ctypes.get_errno()


@dataclass(order=True)
class _Due:
    at: float
    name: str = field(compare=False)


class Refresher:
    """Turns bursts of events per name into one ``registry.refresh(name)`` each."""

    def __init__(self, registry: Registry, debounce: float = DEBOUNCE) -> None:
        self.registry = registry
        self.debounce = debounce
        self._cond = threading.Condition()
        self._due: dict[str, float] = {}
        self._first: dict[str, float] = {}  # when the pending events of a name began
        self._heap: list[_Due] = []
        self._deleted_at: dict[str, float] = {}
        self._rescan = False
        self._stop = False
        self._idle = True  # nothing due and no refresh running
        self._barrier = 0  # the last marker whose events have all been noted
        self.refreshes = 0
        self.rescans = 0
        self._thread = threading.Thread(target=self._run, name="hecated-refresher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def touch(self, name: str, change: Change) -> None:
        """Schedule the refresh of ``name`` as ``change`` asks (a rescan for RESCAN)."""
        if change is Change.RESCAN:
            self.request_rescan()
            return
        now = time.monotonic()
        with self._cond:
            if change is Change.GONE:
                self._deleted_at.setdefault(name, now)
            writing = change is Change.WRITING
            at = now + (CLOSE_WAIT if writing else self.debounce)
            current = self._due.get(name)
            first = self._first.setdefault(name, now)
            if writing and current is not None:
                # Wait on for the writer's close, but a writer that never closes (a log
                # kept open) must not hold the name's refresh off for ever.
                at = min(max(at, current), first + MAX_DEFER)
            self._due[name] = at
            heapq.heappush(self._heap, _Due(at, name))
            self._idle = False
            self._cond.notify_all()

    def request_rescan(self) -> None:
        with self._cond:
            self._rescan = True
            self._idle = False
            self._cond.notify_all()

    def reached(self, seq: int) -> None:
        """Every event before marker ``seq`` has been noted (called in event order)."""
        with self._cond:
            self._barrier = max(self._barrier, seq)
            self._cond.notify_all()

    def wait_done(self, seq: int, timeout: float) -> bool:
        """Wait until marker ``seq`` has been reached and every refresh due is done."""
        with self._cond:
            return self._cond.wait_for(lambda: self._barrier >= seq and self._idle, timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is due and no refresh runs."""
        with self._cond:
            return self._cond.wait_for(lambda: self._idle, timeout)

    def _next(self) -> str | Change | None:
        """The next name due, waiting for it; ``Change.RESCAN`` for a rescan; None to stop."""
        with self._cond:
            while True:
                if self._stop:
                    return None
                if self._rescan:
                    self._rescan = False
                    self._due.clear()
                    self._first.clear()
                    self._heap.clear()
                    self._deleted_at.clear()
                    return Change.RESCAN
                now = time.monotonic()
                while self._heap and self._due.get(self._heap[0].name) != self._heap[0].at:
                    heapq.heappop(self._heap)  # superseded
                if not self._heap:
                    self._idle = True
                    self._cond.notify_all()
                    self._cond.wait()
                    continue
                head = self._heap[0]
                if head.at > now:
                    self._cond.wait(head.at - now)
                    continue
                heapq.heappop(self._heap)
                del self._due[head.name]
                self._first.pop(head.name, None)
                deleted = self._deleted_at.pop(head.name, None)
                if deleted is not None and not self._manifest_exists(head.name):
                    grace = deleted + DELETE_GRACE
                    if grace > now:  # give vim's new file a moment to appear
                        self._deleted_at[head.name] = deleted
                        self._due[head.name] = grace
                        heapq.heappush(self._heap, _Due(grace, head.name))
                        continue
                return head.name

    def _manifest_exists(self, name: str) -> bool:
        try:
            os.lstat(self.registry.layout.manifest_path(name))
        except OSError:
            return False
        return True

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                if job is Change.RESCAN:
                    count = self.registry.scan()
                    self.rescans += 1
                    # Not "rescanned the tree", which is what SIGHUP and POST /api/rescan
                    # log: a reader of the log can tell a reload from the watcher's work.
                    log.info("watcher: watches (re)built, tree read: %d plugin(s)", count)
                else:
                    self.registry.refresh(job)
                    self.refreshes += 1
            except Exception:
                name = job if isinstance(job, str) else ""
                log.exception("refreshing %r failed; rescanning", name or "the tree")
                if name:
                    self.request_rescan()


class RegistryHandler(FileSystemEventHandler):
    """Hands the emitter's events to the refresher: changes per name, and barriers."""

    def __init__(
        self, refresher: Refresher, on_socket: Callable[[str], None] | None = None
    ) -> None:
        self.refresher = refresher
        self.on_socket = on_socket

    def dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, TreeEvent) and event.change is Change.SOCKET:
            if self.on_socket is not None:  # the prober: it queues, never blocks
                self.on_socket(event.name)
        elif isinstance(event, TreeEvent):
            self.refresher.touch(event.name, event.change)
        elif isinstance(event, BarrierEvent):
            self.refresher.reached(event.seq)


class Watcher:
    """The composition: observer + tree emitter + refresher, started and stopped together."""

    def __init__(
        self,
        registry: Registry,
        debounce: float = DEBOUNCE,
        timeout: float = 1.0,
        on_socket: Callable[[str], None] | None = None,
    ):
        self.registry = registry
        self.root = registry.layout.root
        self.refresher = Refresher(registry, debounce)
        emitter_class = partial(TreeEmitter, is_plugin_name=registry.layout.is_plugin_name)
        self.observer = BaseObserver(emitter_class, timeout=timeout)
        self.handler = RegistryHandler(self.refresher, on_socket)
        self.observer.schedule(self.handler, os.fspath(self.root))

    def start(self) -> Watcher:
        self.refresher.start()
        self.observer.start()
        return self

    def stop(self) -> None:
        self.observer.stop()
        with contextlib.suppress(RuntimeError):
            self.observer.join(timeout=5)
        self.refresher.stop()

    def rescan(self) -> int:
        """Rebuild the watches and rescan now (SIGHUP, ``POST /api/rescan``)."""
        emitter = self.emitter
        if emitter is not None:
            emitter._establish(notify=False)  # the scan below reads what changed meanwhile
        return self.registry.scan()

    @property
    def emitter(self) -> TreeEmitter | None:
        return next(iter(self.observer.emitters), None)  # type: ignore[return-value]

    @property
    def watch_count(self) -> int:
        emitter = self.emitter
        return 0 if emitter is None else emitter.watch_count

    def settle(self, timeout: float = 30.0) -> bool:
        """A barrier: True once every event made before this call has been read and
        dispatched, and every refresh it scheduled (and any other then due) is done.

        "Settled" means that and nothing else in this module. A marker file created
        in a private directory goes through the same inotify queue as the tree's
        events, so its arrival proves the ones before it were read; a queue overflow
        stands in for lost markers, the rescan it causes covering them. Tests and
        benchmarks use it; False when the watcher is not running or on timeout.
        """
        emitter = self.emitter
        seq = None if emitter is None else emitter.mark()
        if seq is None:
            return False
        return self.refresher.wait_done(seq, timeout)
