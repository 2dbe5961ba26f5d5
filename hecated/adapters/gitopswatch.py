"""The gitops reconciler's ears: inotify on the tree, and bursts of changes made one.

A ``git pull`` that changes ten files makes dozens of events within milliseconds;
the user manager must reload once for all of them. ``Burst`` gathers the paths
touched until the tree has been quiet for ``quiet`` seconds (or ``longest`` has
passed since the first, so a tree that never rests is still reconciled), then
hands them over in one piece. ``TreeWatch`` is a watchdog inotify observer on the
gitops directory, recursive (``system/`` and ``apps/`` and whatever a checkout
makes), listening only for changes (not opens and reads: the user manager reading
the files through our links must not wake us), and armed again when the directory
itself is replaced (``rm -rf`` and a fresh clone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

log = logging.getLogger("hecated.adapters.gitops")

QUIET = 0.1  # seconds without an event that end a burst
LONGEST = 2.0  # seconds a burst may last at most, from its first event

_CHANGES: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
]


class Burst:
    """Touched paths gathered until quiet; ``take`` hands them over in one piece."""

    def __init__(self, quiet: float = QUIET, longest: float = LONGEST) -> None:
        self.quiet = quiet
        self.longest = longest
        self._cond = threading.Condition()
        self._paths: set[str] = set()
        self._first: float | None = None  # when the burst began
        self._last = 0.0
        self._now = False  # a pass is wanted at once (start, rescan, retry)
        self._busy = False  # a pass runs on what ``take`` handed over
        self._closed = False

    def touch(self, path: str) -> None:
        with self._cond:
            now = time.monotonic()
            if self._first is None:
                self._first = now
            self._last = now
            self._paths.add(path)
            self._cond.notify_all()

    def now(self) -> None:
        """A pass as soon as possible, without waiting for quiet."""
        with self._cond:
            self._now = True
            self._cond.notify_all()

    @property
    def pending(self) -> bool:
        """Changes heard and not yet reconciled, or a pass under way."""
        with self._cond:
            return self._now or self._busy or self._first is not None

    def done(self) -> None:
        """The pass on what ``take`` handed over has ended."""
        with self._cond:
            self._busy = False

    def _due_in(self) -> float | None:
        """Seconds until the burst is due (<= 0: due); None when nothing is gathered."""
        if self._now:
            return 0.0
        if self._first is None:
            return None
        now = time.monotonic()
        return min(self._last + self.quiet, self._first + self.longest) - now

    def take(self, until: float | None = None) -> set[str] | None:
        """Block until a burst is due (its paths), ``until`` (monotonic) passes (an empty
        set: a pass wanted by the clock), or ``close`` (None)."""
        with self._cond:
            while not self._closed:
                due = self._due_in()
                if due is not None and due <= 0:
                    paths, self._paths = self._paths, set()
                    self._first, self._now, self._busy = None, False, True
                    return paths
                left = None if until is None else until - time.monotonic()
                if left is not None and left <= 0:
                    self._busy = True
                    return set()
                waits = [w for w in (due, left) if w is not None]
                self._cond.wait(min(waits) if waits else None)
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Handler(FileSystemEventHandler):
    def __init__(self, touch: Callable[[str], None]) -> None:
        self.touch = touch

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.touch(os.fsdecode(event.src_path))
        if event.dest_path:
            self.touch(os.fsdecode(event.dest_path))


class TreeWatch:
    """An inotify observer on the gitops directory, re-armed when the directory is replaced."""

    def __init__(self, folder: Path, touch: Callable[[str], None]) -> None:
        self.folder = folder
        self.touch = touch
        self._observer: InotifyObserver | None = None
        self._armed: tuple[int, int] | None = None  # (st_dev, st_ino) of the watched dir
        self._lock = threading.Lock()

    def arm(self) -> bool:
        """Watch the directory as it is now (again, if it was replaced); True when a new
        watch was set up, so that the caller reads the tree once more behind it."""
        try:
            st = os.stat(self.folder)
        except OSError:
            return False
        with self._lock:
            if self._armed == (st.st_dev, st.st_ino) and self._observer is not None:
                return False
            self._stop_locked()
            observer = InotifyObserver(timeout=1.0)  # as the tree watcher: stop latency only
            try:
                observer.schedule(
                    _Handler(self.touch),
                    os.fspath(self.folder),
                    recursive=True,
                    event_filter=_CHANGES,
                )
                observer.daemon = True
                observer.start()
            except OSError as exc:  # out of inotify watches or instances: the periodic look
                log.warning("cannot watch %s (%s); it is read every few minutes", self.folder, exc)
                return False
            self._observer, self._armed = observer, (st.st_dev, st.st_ino)
            return True

    def current(self) -> bool:
        """The directory there now is the one watched (False: missing, replaced, unwatched)."""
        try:
            st = os.stat(self.folder)
        except OSError:
            return False
        with self._lock:
            return self._observer is not None and self._armed == (st.st_dev, st.st_ino)

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        observer, self._observer, self._armed = self._observer, None, None
        if observer is not None:
            observer.stop()
            with contextlib.suppress(RuntimeError):
                observer.join(timeout=5)
