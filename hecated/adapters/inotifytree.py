"""The ``~/.hecate`` tree as inotify events: one inotify fd, exactly the watches that matter.

What is watched, and why no more: the root's parent (the root may be removed
and created again; a watch on the root itself dies with it), the root (namespace
directories come and go), each namespace directory *non-recursively* (its
``plugin.toml``, and its ``run/`` or ``sockets/`` appearing), each ``run/`` (pid
and state files), and each ``sockets/`` (``api.sock`` bound or removed). That is
three watches per plugin, plus two; ``sqlite/`` and ``reckon-db/``, which
plugins fill with their own data, are never watched. The masks leave out
open/access/close-nowrite: reading a file (ours included) makes no event.

Why a watchdog emitter of our own rather than ``Observer.schedule()`` per
directory: every scheduled watch gets its own emitter thread (watchdog 7), and
on watchdog 2.2.1 its own inotify instance too, of which a user gets 128. A
recursive ``schedule()`` on the root would watch every directory plugins create,
and its own walk overflows the kernel queue beyond ~4,000 directories. This
module uses only what watchdog 2.2.1 and 7.x both have (``inotify_c``'s ctypes
bindings and constants, ``EventEmitter``, ``FileSystemEvent``).

One vocabulary from the raw event to the refresh: the emitter turns an inotify
mask into a ``Cue`` once, and the refresher (``adapters/refresher.py``)
schedules by it. Moves are not paired (no 0.5 s wait for a matching
``IN_MOVED_TO``): a move is a deletion here and a creation there.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from watchdog.events import FileSystemEvent
from watchdog.observers.api import EventEmitter
from watchdog.observers.inotify_c import InotifyConstants as IN
from watchdog.observers.inotify_c import inotify_add_watch, inotify_init, inotify_rm_watch

from hecated.adapters.barrier import Barrier
from hecated.core.layout import (
    MANIFEST_NAME,
    PID_FILE,
    RUN_DIR,
    SOCKET_NAME,
    SOCKETS_DIR,
    STATE_FILE,
)

log = logging.getLogger("hecated.adapters.watch")

RUN_FILES = frozenset({PID_FILE, STATE_FILE})
_CHANGES = IN.IN_CREATE | IN.IN_DELETE | IN.IN_MOVED_FROM | IN.IN_MOVED_TO
_SELF = IN.IN_DELETE_SELF | IN.IN_MOVE_SELF
SAFE = IN.IN_ONLYDIR | IN.IN_DONT_FOLLOW | IN.IN_EXCL_UNLINK  # never a symlink, only a dir
# No IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE: reading a file must not make an event.
PARENT_MASK = _CHANGES | _SELF | SAFE
ROOT_MASK = _CHANGES | IN.IN_ATTRIB | _SELF | SAFE  # attrib: a namespace chmod 000 and back
FILES_MASK = _CHANGES | IN.IN_MODIFY | IN.IN_CLOSE_WRITE | IN.IN_ATTRIB | _SELF | SAFE
# sockets/: only a socket bound or unlinked (or moved) matters, never its traffic.
SOCKETS_MASK = _CHANGES | _SELF | SAFE
_HEADER = struct.Struct("iIII")
_RUN = os.fsencode(f"/{RUN_DIR}")
_SOCKETS = os.fsencode(f"/{SOCKETS_DIR}")
_GONE = IN.IN_DELETE | IN.IN_MOVED_FROM
_CAME = IN.IN_CREATE | IN.IN_MOVED_TO


class Cue(enum.Enum):
    """What an inotify event means for the refresh of one name: the watcher's one vocabulary.

    The emitter decides it once, from the raw mask; the refresher schedules by it.
    (Not ``core.index.Change``, which is a change *of the index*, with its ``seq``.)
    """

    WRITING = enum.auto()  # created or modified in place: wait for the writer's close
    COMPLETE = enum.auto()  # closed after writing, moved in, a namespace came: read soon
    GONE = enum.auto()  # deleted or moved away (moves are not paired): read after a grace
    RESCAN = enum.auto()  # events may have been lost (overflow, errors): rebuild from the tree
    CATCH_UP = enum.auto()  # first watches over a tree already read: read what changed since
    SOCKET = enum.auto()  # sockets/api.sock bound or removed: probe the plugin, read no file


class TreeEvent(FileSystemEvent):
    """A watchdog event carrying a ``Cue`` for a plugin name ("" for a rescan).

    ``event_type`` spells the cue so that watchdog's queue, which drops an
    event equal to the one just before it, only folds true repeats.
    """

    def __init__(self, src_path: str, name: str, cue: Cue) -> None:
        super().__init__(src_path)
        self.name = name
        self.cue = cue
        self.event_type = f"hecate-{cue.name.lower()}"


def file_cue(mask: int) -> Cue:
    """What an event on ``plugin.toml`` or a ``run/`` file means.

    Created and modified mean a writer may still be at work (wait for its
    close); closed and moved-in mean the file is complete; deleted covers
    moved-away too (moves are not paired).
    """
    if mask & _GONE:
        return Cue.GONE
    if mask & (IN.IN_CLOSE_WRITE | IN.IN_MOVED_TO):
        return Cue.COMPLETE
    return Cue.WRITING  # created, written or attributes changed


class Place(NamedTuple):
    """What a watch descriptor watches: the parent, the root, a namespace, a ``run/``,
    or a ``sockets/``. (A tuple: 30,000 of them are made and hashed at 10,000 plugins.)"""

    kind: str  # "parent" | "root" | "ns" | "run" | "sockets"
    name: str = ""


class TreeEmitter(EventEmitter):
    """A watchdog emitter for the ``~/.hecate`` tree: one inotify fd, only the needed watches.

    Emits a ``TreeEvent`` (a name and its ``Cue``) for the paths that matter, and
    a ``Cue.RESCAN`` whenever events may have been lost. Events of the barrier's
    own watch (``adapters/barrier.py``) are handed to it unread.
    """

    def __init__(
        self,
        event_queue,
        watch,
        timeout: float = 1.0,
        event_filter=None,
        *,
        is_plugin_name: Callable[[str], bool],
        barrier: Barrier,
    ) -> None:
        super().__init__(event_queue, watch, timeout=timeout)
        self.root = Path(watch.path)
        self.parent = self.root.parent
        self._is_plugin_name = is_plugin_name
        self.barrier = barrier
        self._fd = -1
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._places: dict[int, Place] = {}
        self._wds: dict[Place, int] = {}
        self._lock = threading.Lock()

    # -- watchdog's hooks ---------------------------------------------------------------

    def on_thread_start(self) -> None:
        fd = inotify_init()
        if fd == -1:
            raise OSError(errno.EMFILE, "cannot create an inotify instance")
        os.set_blocking(fd, False)
        self._fd = fd
        self.barrier.attach(fd)
        self.establish(Cue.CATCH_UP)  # the index has read the tree: what changed since

    def on_thread_stop(self) -> None:
        self.barrier.detach()
        with self._lock:
            fd, self._fd = self._fd, -1
            self._places.clear()
            self._wds.clear()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")  # end the poll() now, not at its timeout
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
            timeout = min(timeout, 1.0)
            self.establish()
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
            self.establish()
            return
        try:
            self._handle(data)
        except Exception:
            log.exception("handling inotify events failed; rescanning")
            self.establish()

    # -- watches ------------------------------------------------------------------------

    @property
    def watch_count(self) -> int:
        with self._lock:
            return len(self._wds)

    def _add(self, place: Place, path: Path | bytes, mask: int) -> bool:
        wd = inotify_add_watch(self._fd, path if isinstance(path, bytes) else bytes(path), mask)
        if wd == -1:
            if ctypes.get_errno() == errno.ENOSPC:  # watchdog's bindings use use_errno=True
                log.error(
                    "inotify watch limit reached at %d watches; raise "
                    "fs.inotify.max_user_watches (hand edits of %s go unseen until a rescan)",
                    len(self._wds),
                    os.fsdecode(path),
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
        # Paths as bytes, joined by hand: pathlib was half the cost of 30,000 watches.
        ns = bytes(self.root) + b"/" + os.fsencode(name)
        if self._add(Place("ns", name), ns, FILES_MASK):
            self._add(Place("run", name), ns + _RUN, FILES_MASK)
            # IN_DONT_FOLLOW | IN_ONLYDIR: a sockets/ that is a symlink is never watched.
            self._add(Place("sockets", name), ns + _SOCKETS, SOCKETS_MASK)

    def _unwatch_namespace(self, name: str) -> None:
        self._remove(Place("sockets", name))
        self._remove(Place("run", name))
        self._remove(Place("ns", name))

    def establish(self, cue: Cue | None = Cue.RESCAN) -> None:
        """(Re)build every watch from what is on disk now, then ask for a read (``cue``:
        RESCAN, the whole tree; CATCH_UP, what changed since the index read it; None,
        the caller reads).

        Watches come first, the read after: whatever changes after a watch is
        in place makes an event, whatever changed before is read then.
        """
        with self._lock:
            if self._fd == -1:
                return
            for place in list(self._wds):
                self._remove(place)
            if not self._add(Place("parent"), self.parent, PARENT_MASK):
                return
            self._watch_root()
        if cue is not None:
            self.queue_event(TreeEvent(os.fsdecode(self.root), "", cue))

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
        """Turn one read of the inotify fd into events, queued in the order they came."""
        out: list[TreeEvent] = []
        rescan = False
        reached = 0  # the last barrier marker in this read
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
                    reached = self.barrier.lost()  # the rescan stands in for lost markers
                elif self.barrier.owns(wd):
                    reached = max(reached, self.barrier.read(mask, name))
                else:
                    rescan |= self._on_watch(wd, mask, name, out)
        for event in out:
            self.queue_event(event)
        if rescan:
            self.establish()
        if reached:
            self.queue_event(self.barrier.event(reached))  # behind everything read before it

    def _on_watch(self, wd: int, mask: int, name: str, out: list[TreeEvent]) -> bool:
        """One event of one of our watches; True when a rescan is due."""
        place = self._places.get(wd)
        if place is None:
            return False  # a watch we already removed
        if mask & IN.IN_IGNORED:
            self._places.pop(wd, None)
            if self._wds.get(place) == wd:
                del self._wds[place]
            return False
        if place.kind == "parent":
            return self._on_parent(mask, name)
        if mask & _SELF:
            # The root moved or vanished under the parent's nose: the parent says
            # so too, but a namespace or run/ going is also reported by its parent.
            return place.kind == "root"
        if place.kind == "root":
            self._on_root(mask, name, out)
        elif place.kind == "ns" and name in (RUN_DIR, SOCKETS_DIR):
            self._on_subdir(place.name, mask, name, out)
        else:
            self._on_file(place, mask, name, out)
        return False

    def _on_parent(self, mask: int, name: str) -> bool:
        if name != self.root.name:
            return bool(mask & _SELF)  # the parent itself moved: start over
        if mask & _CAME:
            self._watch_root()
            return True
        if mask & _GONE:
            for place in [p for p in self._wds if p.kind != "parent"]:
                self._remove(place)
            return True
        return False

    def _on_root(self, mask: int, name: str, out: list[TreeEvent]) -> None:
        if not self._is_plugin_name(name):
            return
        cue = Cue.COMPLETE  # a file where a namespace would be, or a namespace's mode changed
        if mask & IN.IN_ISDIR and mask & _CAME:
            self._watch_namespace(name)
        elif mask & IN.IN_ISDIR and mask & _GONE:
            self._unwatch_namespace(name)
            cue = Cue.GONE
        out.append(TreeEvent(os.fsdecode(self.root / name), name, cue))

    def _on_subdir(self, name: str, mask: int, sub: str, out: list[TreeEvent]) -> None:
        """A namespace's ``run/`` or ``sockets/`` came or went: watch it, and say so."""
        place = Place("run" if sub == RUN_DIR else "sockets", name)
        if mask & IN.IN_ISDIR and mask & _CAME:
            self._add(place, self._path_of(place), FILES_MASK if sub == RUN_DIR else SOCKETS_MASK)
        elif mask & _GONE:
            self._remove(place)
        cue = Cue.COMPLETE if sub == RUN_DIR else Cue.SOCKET  # pid files / a socket came or went
        out.append(TreeEvent(os.fsdecode(self._path_of(place)), name, cue))

    def _on_file(self, place: Place, mask: int, name: str, out: list[TreeEvent]) -> None:
        if place.kind == "sockets":
            cue = Cue.SOCKET if name == SOCKET_NAME else None
        elif place.kind == "ns":
            cue = file_cue(mask) if name == MANIFEST_NAME else None
        else:
            cue = file_cue(mask) if name in RUN_FILES else None
        if cue is not None:
            out.append(TreeEvent(os.fsdecode(self._path_of(place) / name), place.name, cue))
